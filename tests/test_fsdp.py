"""FSDP2 as a training strategy (``train.parallel=fsdp``) equals DDP and resumes exactly.

Two gloo processes on the CPU (started here with torchrun's environment variables) train the tiny
model of ``conftest.py`` (a scratch BERT and a tiny ViT, every block its own FSDP unit) on the tiny
catalog through ``eclip.train.trainer.train``. Two jobs, started once for the module: the first is
an FSDP run killed with SIGKILL in step 4 (after its checkpoint of step 2); the second trains DDP
and FSDP, each with whole-batch steps and with multi-stream accumulation under the chunked loss,
an FSDP run in bf16, and resumes the killed run from its sharded checkpoint.

With fp32, FSDP's losses, gradient norms (clipping measures the global norm over all shards) and
saved models equal DDP's (1e-5); the resumed run equals the uninterrupted one. The learning rate is
low (1e-4) because AdamW turns float noise in a gradient that is zero in exact arithmetic (the
attention key biases: softmax ignores them) into steps of up to ``lr x noise / eps``: at 1e-3 such
an element drifts by 1e-5 between two exact implementations, at 1e-4 by 5e-7. The model directory
an FSDP run writes is an ordinary one (loaded here in one process); its sharded checkpoint reads
in one process too, and a damaged one is refused with one line naming it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_logs import assert_same_losses, assert_same_models, logged_losses, logged_rows
from ranks import free_port

from eclip.model import load_model
from eclip.train.checkpoint import (LAST_SHARDED, CheckpointError, load_checkpoint,
                                    load_sharded_checkpoint, read_sharded_tensors)
from eclip.train.fsdp import parallel_strategy, tower_blocks
from eclip.train.distributed import DistEnv
from eclip.train.recipe import load_recipe

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORLD = 2
BASE = ["train.batch_size=16", "train.max_steps=4", "train.log_every=1", "train.checkpoint_every=2",
        "train.warmup_steps=1", "train.progress=false", "train.lr=0.0001", "train.device=cpu",
        "train.threads=1", "data.text.field_dropout={brand: 0.5}"]
STREAMS = ["train.micro_batch_size=4", "train.loss_chunk_size=5"]  # 2 streams x 4 rows x 2 ranks
RUNS = {  # name: overrides
    "ddp": ["train.parallel=ddp"],
    "fsdp": ["train.parallel=fsdp"],
    "ddp_streams": ["train.parallel=ddp", *STREAMS],
    "fsdp_streams": ["train.parallel=fsdp", *STREAMS],
    "fsdp_bf16": ["train.parallel=fsdp", "train.precision=bf16", "train.max_steps=2"],
    "ddp_lora": ["train.parallel=ddp", "train.lora={rank: 4}", "train.lr=0.01", "train.max_steps=2"],
    "fsdp_lora": ["train.parallel=fsdp", "train.lora={rank: 4}", "train.lr=0.01",
                  "train.max_steps=2"],
}

# One rank of a job: trains the runs it is given one after the other in one process group; with
# "stall_at", the loss call of that number (the step after) waits until the test kills the job.
CHILD = """
import json, os, sys, time
job = json.loads(sys.argv[1])
os.environ.update({"RANK": str(job["rank"]), "LOCAL_RANK": str(job["rank"]),
                   "WORLD_SIZE": str(job["world"]), "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(job["port"])})
import torch
torch.set_num_threads(1)
import eclip.train.trainer as trainer_mod
from eclip.catalog.readers import read_catalog
from eclip.catalog.splits import split_listings
from eclip.errors import EclipError
from eclip.model import DualEncoder, load_model
from eclip.train.distributed import init_distributed, shutdown
from eclip.train.recipe import load_recipe

if job.get("stall_at"):
    real_forward, calls = trainer_mod.ContrastiveLoss.forward, [0]

    def slow_forward(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == job["stall_at"]:
            time.sleep(300)
        return real_forward(self, *args, **kwargs)

    trainer_mod.ContrastiveLoss.forward = slow_forward
env = init_distributed("cpu")
splits = split_listings(read_catalog(job["catalog"]).listings, load_recipe(None).data)
try:
    for run in job["runs"]:
        recipe = load_recipe(None, [f"train.output_dir={run['out']}", *run["overrides"]])
        trainer_mod.train(recipe, load_model(job["model_dir"]), splits.train,
                          splits.val[:12], resume=run.get("resume", False), log=lambda s: None,
                          env=env)
except EclipError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
shutdown()
"""


def _start(tmp: Path, catalog, model_dir, runs: list[dict], stall_at: int | None = None):
    """The ranks of one job, started (not waited for)."""
    script = tmp / "child.py"
    script.write_text(CHILD)
    port = free_port()
    procs = []
    for rank in range(WORLD):
        job = {"rank": rank, "world": WORLD, "port": port, "catalog": str(catalog),
               "model_dir": str(model_dir), "runs": runs, "stall_at": stall_at}
        procs.append(subprocess.Popen([sys.executable, str(script), json.dumps(job)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}))
    return procs


def _wait(procs, timeout: float = 240) -> list[tuple[int, str]]:
    out = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        out.append((proc.returncode, err))
    return out


def _run(tmp: Path, catalog, model_dir, runs: list[dict]) -> None:
    for rank, (code, err) in enumerate(_wait(_start(tmp, catalog, model_dir, runs))):
        assert code == 0, f"rank {rank} failed ({code}):\n{err[-3000:]}"


def _run_dict(out: Path, name: str, **extra) -> dict:
    return {"out": str(out / name), "overrides": [*BASE, *RUNS[name]], **extra}


def _kill_midway(tmp: Path, catalog, model_dir, run: dict) -> None:
    """Start a job of ``run`` whose 4th loss call (step 4, after the checkpoint of step 2 and the
    metrics of step 3) stalls, and kill every rank with SIGKILL there."""
    killed = Path(run["out"])
    procs = _start(tmp, catalog, model_dir, [run], stall_at=4)
    try:
        deadline = time.monotonic() + 180
        while max(logged_losses(killed), default=0) < 3:
            for proc in procs:
                assert proc.poll() is None, f"a rank ended before it was killed:\n{proc.stderr.read()}"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        for proc in procs:
            proc.kill()
            proc.stderr.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_catalog, tiny_model_dir) -> Path:
    """Two jobs of two ranks: ``killed`` (an FSDP run killed at step 4; its state then kept in
    ``killed_at_kill.json``), then one that trains the four runs of :data:`RUNS` and resumes
    ``killed``."""
    out = tmp_path_factory.mktemp("fsdp_runs")
    killed = _run_dict(out, "fsdp") | {"out": str(out / "killed")}
    _kill_midway(out, tiny_catalog, tiny_model_dir, killed)
    (out / "killed_at_kill.json").write_text(json.dumps({
        "losses": logged_losses(out / "killed"),
        "checkpoint_step": load_sharded_checkpoint(out / "killed" / "checkpoints")["step"],
        "model": (out / "killed" / "model").exists()}))
    _run(out, tiny_catalog, tiny_model_dir,
         [_run_dict(out, name) for name in RUNS] + [killed | {"resume": True}])
    return out


@pytest.mark.parametrize("streams", [False, True], ids=["whole_batch", "multi_stream_chunked"])
def test_fsdp_losses_and_parameters_equal_ddp(trained, streams):
    ddp, fsdp = (trained / (name + ("_streams" if streams else "")) for name in ("ddp", "fsdp"))
    expected, got = logged_rows(ddp), logged_rows(fsdp)
    assert sorted(expected) == [1, 2, 3, 4]
    assert_same_losses(logged_losses(ddp), logged_losses(fsdp), atol=1e-5)
    for step in expected:  # the clipping norm is the global one, the logit scale steps alike
        for key in ("grad_norm", "logit_scale", "lr"):
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5), (step, key)
    assert any(row["grad_norm"] > 1.0 for row in expected.values())  # clipping was at work
    # the saved model directories: an ordinary one for FSDP, loaded in this one process
    assert_same_models(ddp / "model", fsdp / "model", atol=1e-5)
    # validation ran on rank 0's gathered copy: the same recall and fusion weight
    val = lambda out: [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                       if "val/t2i_R@1" in r]
    assert [r["val/t2i_R@1"] for r in val(ddp)] == pytest.approx([r["val/t2i_R@1"] for r in val(fsdp)])
    assert json.loads((fsdp / "model" / "config.json").read_text())["fusion_weight"] == \
        json.loads((ddp / "model" / "config.json").read_text())["fusion_weight"]
    # the checkpoints: one file under DDP, a folder of shards under FSDP
    assert (ddp / "checkpoints" / "last.pt").is_file()
    assert not (fsdp / "checkpoints" / "last.pt").exists()
    shards = sorted(p.name for p in (fsdp / "checkpoints" / LAST_SHARDED).iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt"]


def test_bf16_gathers_in_bfloat16_and_keeps_float32_weights(trained):
    """bf16: FSDP's mixed-precision policy computes in bfloat16 (losses near, not equal to, fp32's);
    the shards, the optimizer and so the saved model stay float32."""
    fp32, bf16 = logged_losses(trained / "fsdp"), logged_losses(trained / "fsdp_bf16")
    assert sorted(bf16) == [1, 2]
    assert bf16[1] == pytest.approx(fp32[1], rel=2e-2) and bf16[1] != fp32[1]
    state = load_model(trained / "fsdp_bf16" / "model").state_dict()
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float32}


def test_lora_adapters_sharded_with_their_blocks_train_as_under_ddp(trained, tiny_model_dir):
    """train.lora under FSDP: the adapters live in the sharded blocks; the losses and the saved
    (merged, plain) model equal DDP's."""
    ddp, fsdp = trained / "ddp_lora", trained / "fsdp_lora"
    assert sorted(logged_losses(fsdp)) == [1, 2]
    assert_same_losses(logged_losses(ddp), logged_losses(fsdp), atol=1e-5)
    assert_same_models(ddp / "model", fsdp / "model", atol=1e-5)
    start = load_model(tiny_model_dir).state_dict()
    saved = load_model(fsdp / "model").state_dict()
    assert sorted(saved) == sorted(start)  # merged: no adapter left
    assert any(not torch.equal(saved[k], start[k]) for k in start)
    assert torch.equal(saved["log_scale"], start["log_scale"])  # frozen with the rest


def test_the_model_really_trained_and_was_sharded_per_block(trained, tiny_model_dir):
    start = load_model(tiny_model_dir)
    # every BERT layer and every ViT layer is an FSDP unit of its own
    assert len(tower_blocks(start)) == (len(start.text_tower.model.encoder.layer)
                                        + len(start.image_tower.model.layers))
    before, after = start.state_dict(), load_model(trained / "fsdp" / "model").state_dict()
    assert sorted(before) == sorted(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_the_sharded_checkpoint_reads_in_one_process(trained):
    """The last checkpoint (step 4, the end) holds the saved model's weights, whole once read."""
    state = load_sharded_checkpoint(trained / "fsdp" / "checkpoints")
    assert state["step"] == 4 and len(state["data"]) == WORLD and len(state["torch_rng"]) == WORLD
    model = load_model(trained / "fsdp" / "model")
    tensors = {"model": {k: torch.zeros_like(v) for k, v in model.state_dict().items()}}
    read_sharded_tensors(trained / "fsdp" / "checkpoints" / LAST_SHARDED, tensors, state["index"])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(tensors["model"][key], value, atol=0, rtol=0, msg=key)
    # a DDP resume of an FSDP run is refused with the way out
    with pytest.raises(CheckpointError, match="train.parallel=fsdp"):
        load_checkpoint(trained / "fsdp" / "checkpoints")


def _copy_checkpoint(trained: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "checkpoints"
    shutil.copytree(trained / "fsdp" / "checkpoints", target)
    return target


@pytest.mark.parametrize("case", ["no_state", "state_garbage", "no_index", "index_garbage",
                                  "index_with_globals", "shard_missing", "shard_truncated"])
def test_a_damaged_sharded_checkpoint_is_one_line_naming_it(trained, tmp_path, case):
    import pickle

    ckpt = _copy_checkpoint(trained, tmp_path)
    folder = ckpt / LAST_SHARDED
    if case == "no_state":
        (folder / "state.pt").unlink()
    elif case == "state_garbage":
        (folder / "state.pt").write_bytes(b"not a checkpoint")
    elif case == "no_index":
        (folder / ".metadata").unlink()
    elif case == "index_garbage":
        (folder / ".metadata").write_bytes((folder / ".metadata").read_bytes()[:40])
    elif case == "index_with_globals":
        (folder / ".metadata").write_bytes(pickle.dumps(os.system))  # would run on a plain load
    elif case == "shard_missing":
        (folder / "__1_0.distcp").unlink()
    else:
        data = (folder / "__0_0.distcp").read_bytes()
        (folder / "__0_0.distcp").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_sharded_checkpoint(ckpt)
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and "cannot be resumed from" in message


def test_parallel_is_validated_and_one_process_runs_plain():
    from eclip.errors import ConfigError

    with pytest.raises(ConfigError, match="train.parallel must be one of ddp, fsdp"):
        load_recipe(None, ["train.parallel=zero"])
    with pytest.raises(ConfigError, match="fp16"):
        load_recipe(None, ["train.parallel=fsdp", "train.precision=fp16"])
    cfg = load_recipe(None, ["train.parallel=fsdp"]).train
    assert parallel_strategy(cfg, DistEnv()).name == "ddp"  # nothing to shard in one process


def test_an_fsdp_resume_of_a_ddp_checkpoint_says_which_strategy_wrote_it(tmp_path):
    torch.save({"step": 1}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="resume it with train.parallel=ddp"):
        load_sharded_checkpoint(tmp_path)
    assert load_sharded_checkpoint(tmp_path / "none") is None  # no checkpoint: a fresh start


def test_a_fsdp_run_killed_with_sigkill_resumes_with_the_same_losses(trained):
    at_kill = json.loads((trained / "killed_at_kill.json").read_text())
    assert max(map(int, at_kill["losses"])) == 3  # killed in step 4
    assert at_kill["checkpoint_step"] == 2 and not at_kill["model"]
    reference, killed = trained / "fsdp", trained / "killed"  # the same recipe, uninterrupted
    assert sorted(logged_losses(killed)) == [1, 2, 3, 4]
    assert_same_losses(logged_losses(reference), logged_losses(killed), atol=1e-6)
    assert_same_models(reference / "model", killed / "model", atol=1e-6)


def test_what_a_killed_sharded_save_left_is_cleaned(tmp_path):
    """A folder half written by ranks that were killed is removed; a previous checkpoint set aside
    by a replacement that never arrived is put back."""
    from eclip.train.checkpoint import clean_checkpoint_temps

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    half = tmp_path / f".{LAST_SHARDED}.tmp-{dead.pid}-0123abcd"
    aside = tmp_path / f".{LAST_SHARDED}.old-{dead.pid}-4567abcd"
    for folder in (half, aside):
        folder.mkdir()
        (folder / "__0_0.distcp").write_bytes(b"x")
        os.utime(folder, (time.time() - 3600, time.time() - 3600))
    clean_checkpoint_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST_SHARDED]
    assert (tmp_path / LAST_SHARDED / "__0_0.distcp").read_bytes() == b"x"
