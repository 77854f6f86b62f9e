"""FSDP2 (``torch.distributed.fsdp.fully_shard``) as a training strategy: ``train.parallel: fsdp``.

Under DDP every rank holds the whole model, its gradients and the optimizer's two AdamW moments.
Under FSDP each rank holds 1/N of each (N: the ranks); a block's weights are gathered just before
it runs and freed after, its gradients are reduce-scattered back to the shards. What is sharded:

- every transformer block of both towers (the block stack that ``eclip.model.layers.block_list``
  finds: BERT's ``encoder.layer``, ViT's ``layers``, CLIP / SigLIP ``encoder.layers``,
  EfficientNet's blocks), each its own FSDP unit, gathered one at a time;
- the rest (embeddings, final norms, poolers, projections) as one unit at the root, the
  :class:`~eclip.train.accumulate.Embedder` that a step runs;
- except scalar parameters (the logit scale and bias), which ``fully_shard`` cannot split: every
  rank keeps them whole and :class:`AveragedScalars` averages their gradients over the ranks after
  each step, as DDP would.

The rest of the loop does not change: the catalog-aware loss gathers embeddings across ranks as
before (its targets stay global), multi-stream accumulation skips the reduce-scatter of every
micro-batch but the last (``distributed.no_sync``), gradient clipping measures the norm over all
shards (``clip_grad_norm_`` on DTensors: one global norm, the same on every rank). With fp32 on the
CPU the losses and parameters equal DDP's (``tests/test_fsdp.py``, 1e-5).

Precision (``train.precision``) becomes FSDP's mixed-precision policy: ``bf16`` gathers the weights
and computes in bfloat16 while the shards, the optimizer and the gradient reduction stay float32
(``param_dtype=bfloat16, reduce_dtype=float32``; autocast still wraps the step); ``fp32`` changes
nothing; ``fp16`` is refused (its loss scaler would decide to skip a step on each rank's shards
alone).

Checkpoints are sharded (``train/checkpoint.py``, ``last.dcp/``): ``torch.distributed.checkpoint``
writes each rank's shards of the model and optimizer, with the rest of the state beside them. The
whole model is gathered only to validate and at the end: ``get_model_state_dict(full_state_dict,
cpu_offload)`` collects it on rank 0, which loads it into a copy of the model kept on its CPU
(made before sharding) and writes the usual model directory, so ``eclip eval / embed / export``
load it in one process. With one process there is nothing to shard: the run is the plain one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from eclip.errors import ConfigError
from eclip.model.layers import block_list
from eclip.train.checkpoint import (LAST_SHARDED, load_sharded_checkpoint, read_sharded_tensors,
                                    save_sharded_checkpoint)
from eclip.train.distributed import DataParallel, DistEnv
from eclip.train.recipe import TrainConfig

TOWERS = ("text_tower", "image_tower")


def parallel_strategy(cfg: TrainConfig, env: DistEnv) -> DataParallel | FullyShardedParallel:
    """The strategy ``train.parallel`` names; a job of one process runs the plain one."""
    if cfg.parallel == "fsdp" and env.distributed:
        return FullyShardedParallel(env, cfg.precision)
    return DataParallel(env)


def mixed_precision(precision: str) -> Any:
    """FSDP's ``MixedPrecisionPolicy`` for ``train.precision``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if precision == "fp16":
        raise ConfigError("train.parallel=fsdp does not run with train.precision=fp16 (the loss "
                          "scaler would see only this rank's shards): use bf16 or fp32")
    return MixedPrecisionPolicy()


def tower_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer (or convolutional) blocks of the model's towers, bottom up, tower by tower:
    the units FSDP gathers one at a time. A tower without a stack of blocks gives none."""
    blocks: list[nn.Module] = []
    for name in TOWERS:
        tower = getattr(model, name, None)
        stack = block_list(tower) if isinstance(tower, nn.Module) else None
        if stack is not None:
            blocks.extend(stack)
    return blocks


def scalar_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters without dimensions (logit scale, logit bias): kept whole on every rank."""
    return [p for p in model.parameters() if p.ndim == 0]


class AveragedScalars:
    """An embedding step followed by the average over ranks of the gradients of ``params`` (the
    parameters FSDP leaves whole), so that they step as under DDP."""

    def __init__(self, step: Any, params: list[nn.Parameter]):
        self.inner = step
        self.params = params

    def __call__(self, embedder: nn.Module, units: list[dict[str, Any]], loss_fn: nn.Module,
                 precision: Any) -> float:
        value = self.inner(embedder, units, loss_fn, precision)
        # the loss is global: every rank takes this branch or none
        grads = [p.grad for p in self.params if p.grad is not None]
        if math.isfinite(value) and grads:
            flat = torch.stack([g.detach().reshape(()) for g in grads])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            for grad, mean in zip(grads, flat):
                grad.copy_(mean)
        return value


class FullyShardedParallel:
    """The ``train.parallel: fsdp`` strategy; the methods of :class:`DataParallel`."""

    name = "fsdp"

    def __init__(self, env: DistEnv, precision: str = "fp32"):
        self.env = env
        self.policy = mixed_precision(precision)
        self.replicated: list[nn.Parameter] = []
        self.shadow: nn.Module | None = None  # rank 0: the whole model on the CPU

    def checkpoint_path(self, ckpt_dir: Path) -> Path:
        return Path(ckpt_dir) / LAST_SHARDED

    def wrap(self, model: nn.Module, embedder: nn.Module) -> nn.Module:
        """Shard ``model`` in place (each tower block, then the rest at ``embedder``, the root);
        returns ``embedder``. Every rank starts from rank 0's weights and buffers, as under DDP."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        for tensor in model.state_dict().values():
            dist.broadcast(tensor.detach(), src=0)
        if self.env.is_main:
            self.shadow = copy.deepcopy(model).to("cpu")
        mesh = init_device_mesh(self.env.device.type, (self.env.world_size,))
        self.replicated = scalar_params(model)
        ignored = set(self.replicated)
        for block in tower_blocks(model):
            fully_shard(block, mesh=mesh, mp_policy=self.policy, ignored_params=ignored)
        fully_shard(embedder, mesh=mesh, mp_policy=self.policy, ignored_params=ignored)
        return embedder

    def step(self, embed_step: Any) -> Any:
        return AveragedScalars(embed_step, self.replicated)

    @contextmanager
    def full_model(self, model: nn.Module) -> Iterator[nn.Module | None]:
        """The whole model gathered onto rank 0's copy, on the run's device while the block runs
        (rank 0; None on the other ranks). Collective: every rank enters it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                    cpu_offload=True))
        if self.shadow is None:
            yield None
            return
        self.shadow.load_state_dict(full)
        self.shadow.to(self.env.device)
        try:
            yield self.shadow
        finally:
            self.shadow.to("cpu")

    def save_checkpoint(self, ckpt_dir: Path, state: dict[str, Any], model: nn.Module,
                        optimizer: torch.optim.Optimizer) -> None:
        """Every rank's shards of the model and optimizer, and ``state`` with the optimizer's
        parameter groups, to ``ckpt_dir/last.dcp``. Collective."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        save_sharded_checkpoint(ckpt_dir, {"model": model_state, "optimizer": optim_state["state"]},
                                {**state, "optimizer_groups": optim_state["param_groups"]})

    def load_checkpoint(self, ckpt_dir: Path) -> dict[str, Any] | None:
        state = load_sharded_checkpoint(ckpt_dir)
        if state is not None:
            state["path"] = self.checkpoint_path(ckpt_dir)
        return state

    def restore(self, state: dict[str, Any], model: nn.Module,
                optimizer: torch.optim.Optimizer) -> None:
        """This rank's shards of the checkpoint into the sharded model and optimizer. Collective."""
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        saved = set(state["index"].state_dict_metadata)
        # the optimizer holds moments only for the parameters that have had a gradient: read
        # those the checkpoint has (get_state_dict made zero moments for all)
        moments = {fqn: values for fqn, values in optim_state["state"].items()
                   if all(f"optimizer.{fqn}.{key}" in saved for key in values)}
        tensors = {"model": model_state, "optimizer": moments}
        read_sharded_tensors(state["path"], tensors, state["index"])
        set_state_dict(model, optimizer, model_state_dict=tensors["model"],
                       optim_state_dict={"state": tensors["optimizer"],
                                         "param_groups": state["optimizer_groups"]})
