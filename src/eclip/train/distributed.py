"""Processes of a torchrun job: joining the process group, and the collectives the loss needs.

``torchrun --nproc_per_node N -m eclip train ...`` starts N processes and describes the job in
environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_distributed` reads them; without them the job is one process and every helper here is the
identity, so single-process code needs no branches.

Catalog-aware negatives are global: every rank gathers the embeddings of all ranks *with gradients*
(:func:`gather_with_grad`), so that a listing on rank 0 and one of the same catalog on rank 3 are
positives of each other. The backward pass sums the gathered gradients over ranks and hands each
rank its own slice: with the loss conventions of ``ContrastiveLoss`` and gradient averaging across
ranks (DDP), the parameter gradients equal those of one process holding the whole batch.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from eclip.errors import ConfigError
from eclip.train.checkpoint import LAST, load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics and the model; the others compute."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_log(env: DistEnv, log: Callable[[str], None]) -> Callable[[str], None]:
    """The log of this process: ``log`` itself on rank 0, a log that drops every message on the
    other ranks (one report per job, not one per rank)."""
    return log if env.is_main else _silent


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but torch sees no CUDA device: use 'cpu' or 'auto'")
        return torch.device("cuda", local_rank)
    if device == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"train.device must be 'auto', 'cpu' or 'cuda', got {device!r}")


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group that torchrun's environment describes (once; later calls return it).

    Backend: NCCL on CUDA, gloo on the CPU. With ``WORLD_SIZE`` unset or 1 no group is created.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = _resolve_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world > 1 and not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ConfigError(f"WORLD_SIZE={world} but {name} is not set: start the job with torchrun")
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo", rank=rank,
                                world_size=world, timeout=timedelta(seconds=timeout_s))
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=target)


def shutdown() -> None:
    """Leave the process group (a no-op for a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; the backward sums every rank's gradient and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":  # one reduce-scatter moves 1/world of an all-reduce's data
            out = torch.empty((ctx.rows, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad)
            return out
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` concatenated in rank order, differentiable; all ranks must pass the
    same shape. The identity for a single process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` concatenated in rank order, without gradients (e.g. catalog ids)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over ranks (a new tensor; the input is left alone)."""
    out = tensor.detach().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out)
        out /= dist.get_world_size()
    return out


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj`` in rank order (``[obj]`` for a single process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_data_parallel(module: nn.Module, env: DistEnv) -> nn.Module:
    """``module`` in DistributedDataParallel for a multi-process job (rank 0's weights and buffers are
    broadcast to all ranks here, buffers not again at every forward pass); the module itself for one
    process."""
    if not env.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [env.device.index] if env.device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)
    # torch before 2.13: ``broadcast_buffers=False`` skips the buffers' sync at construction too
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


def no_sync(module: nn.Module) -> AbstractContextManager:
    """Skip the gradient reduction inside the block (gradients accumulate locally): DDP's
    all-reduce, or FSDP's reduce-scatter (``set_requires_gradient_sync``; the unsharded gradients
    wait for the next backward pass that syncs)."""
    if hasattr(module, "set_requires_gradient_sync"):
        return _fsdp_no_sync(module)
    return module.no_sync() if hasattr(module, "no_sync") else nullcontext()


@contextmanager
def _fsdp_no_sync(module: nn.Module) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


class DataParallel:
    """The ``train.parallel: ddp`` strategy (and that of every one-process run): every rank holds
    the whole model, DDP averages the gradients; checkpoints are one file, ``last.pt``, written by
    rank 0. ``train/fsdp.py`` has the sharded counterpart with the same methods."""

    name = "ddp"

    def __init__(self, env: DistEnv):
        self.env = env

    def checkpoint_path(self, ckpt_dir: Path) -> Path:
        return Path(ckpt_dir) / LAST

    def wrap(self, model: nn.Module, embedder: nn.Module) -> nn.Module:
        """What the steps run: ``embedder`` (which holds ``model``) in DDP for several ranks."""
        return wrap_data_parallel(embedder, self.env)

    def step(self, embed_step: Any) -> Any:
        """The embedding step as the strategy runs it (DDP's hooks need nothing more)."""
        return embed_step

    @contextmanager
    def full_model(self, model: nn.Module) -> Iterator[nn.Module | None]:
        """The whole model, for validation and saving (rank 0 uses it): ``model`` itself."""
        yield model

    def save_checkpoint(self, ckpt_dir: Path, state: dict[str, Any], model: nn.Module,
                        optimizer: torch.optim.Optimizer) -> None:
        """``state`` with the model and optimizer states to ``ckpt_dir/last.pt`` (rank 0)."""
        if self.env.is_main:
            save_checkpoint(ckpt_dir, {"model": model.state_dict(),
                                       "optimizer": optimizer.state_dict(), **state})

    def load_checkpoint(self, ckpt_dir: Path) -> dict[str, Any] | None:
        return load_checkpoint(ckpt_dir)

    def restore(self, state: dict[str, Any], model: nn.Module,
                optimizer: torch.optim.Optimizer) -> None:
        """The checkpoint's model and optimizer states into the run's (every rank)."""
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
