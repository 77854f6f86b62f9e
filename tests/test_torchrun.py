"""``torchrun --nproc_per_node 2 -m eclip train`` trains from prepared shards on the CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from eclip.catalog.readers import read_catalog
from eclip.catalog.shards import prepare_shards
from eclip.model import load_model

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TINY = ["model.scratch_hidden=32", "model.scratch_layers=1", "model.scratch_heads=2",
        "model.scratch_vocab_size=300", "model.max_length=24", "model.image_size=32",
        "model.embed_dim=16", "train.batch_schedule=[{step: 0, batch_size: 16}, {step: 2, batch_size: 32}]",
        "train.micro_batch_size=4", "train.max_steps=3", "train.log_every=1", "train.checkpoint_every=2",
        "train.progress=false"]


def test_torchrun_two_processes_train_from_shards(tmp_path, tiny_catalog):
    shards = tmp_path / "shards"
    prepare_shards(read_catalog(tiny_catalog, check_images=False), shards, shard_size=20, image_size=32,
                   progress=False)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "eclip", "train", "--config", "demo_ddp", "--output-dir", str(out),
               f"data.shards={shards}", *TINY]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    # rank 0 alone reports and writes
    assert done.stdout.count("model: ") == 1
    assert "2 rank(s) on cpu; contrastive batch 16 = 4 rows x 2 unit(s) x 2 rank(s)" in done.stdout

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["batch_size"] for r in rows] == [16, 16, 32]
    assert all(r["loss"] > 0 and r["data_wait_s"] >= 0 for r in rows)

    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 3 and len(state["data"]) == 2 and len(state["torch_rng"]) == 2
    assert not torch.equal(state["torch_rng"][0], state["torch_rng"][1])  # ranks draw their own dropout
    before = load_model(out / "init").state_dict()
    after = load_model(out / "model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
