"""Global catalog-aware negatives across processes equal the single-process computation.

The test starts 2 and 4 processes on the CPU (gloo; forked, so that they need not import torch
again, with torchrun's environment variables), each with its slice of one global batch in
which catalogs straddle ranks (row 0 on rank 0 and the last row on the last rank share a catalog). Every
rank computes the loss (whole-batch and local-loss modes, dense and chunked) and, for a toy model
wrapped in DDP, the parameter gradients of a plain step and of a multi-stream step. The test then
checks them against one process holding the whole batch. The sigmoid (SigLIP) loss runs through the
same checks, its learnable bias's gradient included. The same steps run again with the toy model
sharded by FSDP2 (``train/fsdp.py``; its scalar logit scale and bias kept whole and averaged) and
give the same gradients. ``test_torchrun.py`` launches the real ``eclip train`` under torchrun,
``test_fsdp.py`` trains with FSDP.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from toy_model import ToyDualEncoder, grads, rows_of, toy_batch

from eclip.train.accumulate import Embedder, MultiStreamStep, WholeBatchStep
from eclip.train.features import pixel_input
from eclip.train.loss import ContrastiveLoss, contrastive_loss
from eclip.train.precision import Precision
from ranks import run_ranks

pytestmark = pytest.mark.distributed

ROWS_PER_RANK = 4
DIM = 5
LOSS_MODES = {  # name: (targets, local_loss, chunk_size, (text_text, image_image) weights)
    "global": ("catalog", False, None, (0.0, 0.0)),
    "global_chunked": ("catalog", False, 3, (0.0, 0.0)),
    "local": ("catalog", True, None, (0.0, 0.0)),
    "local_chunked": ("catalog", True, 3, (0.0, 0.0)),
    "local_clip": ("clip", True, None, (0.0, 0.0)),
    "local_chunked_within_modality": ("catalog", True, 3, (0.5, 0.25)),
    "global_within_modality_clip": ("clip", False, None, (0.5, 0.25)),
}
STEP_MODES = {  # name: (step, local_loss, chunk_size)
    "plain": (WholeBatchStep(), False, None),
    "plain_local_chunked": (WholeBatchStep(), True, 3),
    "streams_local_chunked": (MultiStreamStep(), True, 2),
}
BIAS = -1.5  # the sigmoid loss's logit bias
SIGMOID_LOSS_MODES = {  # name: (targets, local_loss, chunk_size, (text_text, image_image) weights)
    "sigmoid_global": ("catalog", False, None, (0.0, 0.0)),
    "sigmoid_global_chunked": ("catalog", False, 3, (0.0, 0.0)),
    "sigmoid_local": ("catalog", True, None, (0.0, 0.0)),
    "sigmoid_local_chunked": ("catalog", True, 3, (0.0, 0.0)),
    "sigmoid_local_clip": ("clip", True, 2, (0.0, 0.0)),
    "sigmoid_local_chunked_within_modality": ("catalog", True, 3, (0.5, 0.25)),
}
SIGMOID_STEP_MODES = {  # name: (step, local_loss, chunk_size)
    "sigmoid_plain": (WholeBatchStep(), False, None),
    "sigmoid_plain_local_chunked": (WholeBatchStep(), True, 3),
    "sigmoid_streams_local_chunked": (MultiStreamStep(), True, 2),
}


def _global_embeddings(world: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    rows = ROWS_PER_RANK * world
    image = torch.nn.functional.normalize(torch.randn(rows, DIM, generator=gen, dtype=torch.float64), dim=1)
    text = torch.nn.functional.normalize(torch.randn(rows, DIM, generator=gen, dtype=torch.float64), dim=1)
    return image, text, toy_batch(rows)["group"]


def _loss_and_grads(image, text, groups, targets, loss_fn, bias=None):
    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    scale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    extra = {}
    if bias is not None:
        extra["logit_bias"] = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(image, text, scale, groups, **extra)
    value = loss_fn.global_value(loss) if hasattr(loss_fn, "global_value") else loss.detach()
    loss.backward()
    out = {"loss": value, "share": loss.detach(), "image": image.grad, "text": text.grad,
           "scale": scale.grad}
    if bias is not None:
        out["bias"] = extra["logit_bias"].grad
    return out


def _full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The gradients of a model sharded by FSDP, whole (a collective: every rank calls it)."""
    return {name: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
            for name, p in model.named_parameters()}


def _fsdp_step(env, step, local_batch, loss_fn, **toy):
    """``step`` on a toy model sharded by FSDP (each rank starts from other weights: rank 0's must
    win, as under DDP): the loss and the whole gradients."""
    from eclip.train.fsdp import FullyShardedParallel

    model = ToyDualEncoder(seed=env.rank, **toy)
    strategy = FullyShardedParallel(env)
    embedder = strategy.wrap(model, Embedder(model, pixel_input))
    units = [rows_of(local_batch, k, k + 2) for k in range(0, ROWS_PER_RANK, 2)]
    loss = strategy.step(step)(embedder, units, loss_fn, Precision())
    return {"loss": loss, "grads": _full_grads(model)}


def worker(rank: int, world: int, port: int, out: Path) -> None:
    from eclip.train.distributed import init_distributed, shutdown, wrap_data_parallel

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    env = init_distributed("cpu")
    rank, world = env.rank, env.world_size
    mine = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
    image, text, groups = _global_embeddings(world)
    results: dict[str, dict] = {}
    for name, (targets, local, chunk, (tt, ii)) in LOSS_MODES.items():
        loss_fn = ContrastiveLoss(targets, local_loss=local, chunk_size=chunk, text_text=tt,
                                  image_image=ii)
        results[name] = _loss_and_grads(image[mine], text[mine], groups[mine], targets, loss_fn)
    for name, (targets, local, chunk, (tt, ii)) in SIGMOID_LOSS_MODES.items():
        loss_fn = ContrastiveLoss(targets, loss="sigmoid", local_loss=local, chunk_size=chunk,
                                  text_text=tt, image_image=ii)
        results[name] = _loss_and_grads(image[mine], text[mine], groups[mine], targets, loss_fn, BIAS)

    batch = toy_batch(ROWS_PER_RANK * world)
    local_batch = rows_of(batch, mine.start, mine.stop)
    for name, (step, local, chunk) in STEP_MODES.items():
        model = ToyDualEncoder(seed=rank)  # DDP must broadcast rank 0's weights
        embedder = wrap_data_parallel(Embedder(model, pixel_input), env)
        units = [rows_of(local_batch, k, k + 2) for k in range(0, ROWS_PER_RANK, 2)]
        loss = step(embedder, units, ContrastiveLoss(local_loss=local, chunk_size=chunk), Precision())
        results[name] = {"loss": loss, "grads": grads(model)}
        results[f"fsdp_{name}"] = _fsdp_step(env, step, local_batch,
                                             ContrastiveLoss(local_loss=local, chunk_size=chunk))
    for name, (step, local, chunk) in SIGMOID_STEP_MODES.items():
        model = ToyDualEncoder(seed=rank, logit_bias=BIAS)  # DDP must broadcast rank 0's bias too
        embedder = wrap_data_parallel(Embedder(model, pixel_input), env)
        units = [rows_of(local_batch, k, k + 2) for k in range(0, ROWS_PER_RANK, 2)]
        loss_fn = ContrastiveLoss(loss="sigmoid", local_loss=local, chunk_size=chunk)
        loss = step(embedder, units, loss_fn, Precision())
        results[name] = {"loss": loss, "grads": grads(model)}
        results[f"fsdp_{name}"] = _fsdp_step(env, step, local_batch, loss_fn, logit_bias=BIAS)
    torch.save(results, out / f"rank{rank}.pt")
    shutdown()


def _launch(world: int, out: Path) -> list[dict]:
    run_ranks(worker, world, out)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """``launched(world)``: the ranks' results of one job of ``world`` processes, started once."""
    jobs: dict[int, list[dict]] = {}

    def get(world: int) -> list[dict]:
        if world not in jobs:
            jobs[world] = _launch(world, tmp_path_factory.mktemp(f"world{world}"))
        return jobs[world]

    return get


@pytest.mark.parametrize("world", [2, 4])
def test_global_negatives_equal_the_single_process_computation(launched, world):
    results = launched(world)
    image, text, groups = _global_embeddings(world)
    # a catalog straddles rank 0 and the last rank: without gathering it would be no positive, and
    # a rank's slice alone gives another loss than the global batch
    assert groups[0] == groups[-1]
    alone = contrastive_loss(image[:ROWS_PER_RANK], text[:ROWS_PER_RANK], 9.0, groups[:ROWS_PER_RANK])
    assert alone.item() != pytest.approx(contrastive_loss(image, text, 9.0, groups).item(), abs=1e-3)

    def reference(targets, tt, ii):
        return lambda i, t, s, g: (contrastive_loss(i, t, s, g, targets)
                                   + tt * contrastive_loss(t, t, s, g, targets)
                                   + ii * contrastive_loss(i, i, s, g, targets))

    for name, (targets, _, _, (tt, ii)) in LOSS_MODES.items():
        single = _loss_and_grads(image, text, groups, targets, reference(targets, tt, ii))
        for rank, result in enumerate(results):
            got = result[name]
            mine = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
            assert got["loss"].item() == pytest.approx(single["loss"].item(), abs=1e-10), (name, rank)
            # gathered gradients come back summed over ranks; DDP's average divides by the world
            for key in ("image", "text"):
                torch.testing.assert_close(got[key] / world, single[key][mine], atol=1e-5, rtol=0,
                                           msg=f"{name} rank {rank} {key}")
        mean_scale_grad = sum(r[name]["scale"] for r in results) / world
        torch.testing.assert_close(mean_scale_grad, single["scale"], atol=1e-5, rtol=0)

    batch = toy_batch(ROWS_PER_RANK * world)
    model = ToyDualEncoder(seed=0)
    loss = WholeBatchStep()(Embedder(model, pixel_input), [batch], ContrastiveLoss(), Precision())
    expected = grads(model)
    for name in [*STEP_MODES, *(f"fsdp_{name}" for name in STEP_MODES)]:
        for rank, result in enumerate(results):
            assert result[name]["loss"] == pytest.approx(loss, abs=1e-10), (name, rank)
            for param, grad in expected.items():
                torch.testing.assert_close(result[name]["grads"][param], grad, atol=1e-5, rtol=0,
                                           msg=f"{name} rank {rank} {param}")


def _sigmoid_reference(targets, tt, ii):
    def loss(i, t, s, g, logit_bias):
        def one(a, b):
            return contrastive_loss(a, b, s, g, targets, loss="sigmoid", logit_bias=logit_bias)
        return one(i, t) + tt * one(t, t) + ii * one(i, i)
    return loss


@pytest.mark.parametrize("world", [2, 4])
def test_global_sigmoid_loss_equals_the_single_process_computation(launched, world):
    results = launched(world)
    image, text, groups = _global_embeddings(world)
    alone = contrastive_loss(image[:ROWS_PER_RANK], text[:ROWS_PER_RANK], 9.0, groups[:ROWS_PER_RANK],
                             loss="sigmoid", logit_bias=BIAS)
    whole = contrastive_loss(image, text, 9.0, groups, loss="sigmoid", logit_bias=BIAS)
    assert alone.item() != pytest.approx(whole.item(), abs=1e-3)

    for name, (targets, local, _, (tt, ii)) in SIGMOID_LOSS_MODES.items():
        single = _loss_and_grads(image, text, groups, targets, _sigmoid_reference(targets, tt, ii), BIAS)
        for rank, result in enumerate(results):
            got = result[name]
            mine = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
            assert got["loss"].item() == pytest.approx(single["loss"].item(), abs=1e-10), (name, rank)
            for key in ("image", "text"):
                torch.testing.assert_close(got[key] / world, single[key][mine], atol=1e-6, rtol=0,
                                           msg=f"{name} rank {rank} {key}")
        for key in ("scale", "bias"):  # what DDP's average of the ranks' gradients gives
            mean = sum(r[name][key] for r in results) / world
            torch.testing.assert_close(mean, single[key], atol=1e-6, rtol=0, msg=f"{name} {key}")
        if local:  # each rank returns its rows' share: the shares average to the global loss
            shares = [r[name]["share"].item() for r in results]
            assert len(set(shares)) > 1, name
            assert sum(shares) / world == pytest.approx(single["loss"].item(), abs=1e-10), name

    batch = toy_batch(ROWS_PER_RANK * world)
    model = ToyDualEncoder(seed=0, logit_bias=BIAS)
    loss = WholeBatchStep()(Embedder(model, pixel_input), [batch], ContrastiveLoss(loss="sigmoid"),
                            Precision())
    expected = grads(model)
    assert expected["logit_bias"].abs() > 0
    for name in [*SIGMOID_STEP_MODES, *(f"fsdp_{name}" for name in SIGMOID_STEP_MODES)]:
        for rank, result in enumerate(results):
            assert result[name]["loss"] == pytest.approx(loss, abs=1e-10), (name, rank)
            assert set(result[name]["grads"]) == set(expected)
            for param, grad in expected.items():
                torch.testing.assert_close(result[name]["grads"][param], grad, atol=1e-6, rtol=0,
                                           msg=f"{name} rank {rank} {param}")
