"""Faults: a run killed with SIGKILL resumes exactly; non-finite losses are skipped, then stop the run."""

from __future__ import annotations

from functools import partial

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import eclip.train.trainer as trainer_mod
from eclip.catalog.readers import read_catalog
from eclip.errors import EclipError
from eclip.model import load_model
from eclip.train.trainer import MAX_BAD_STEPS, train
from run_logs import assert_same_losses, assert_same_models, logged_losses
from recipes import tiny_recipe

OVERRIDES = ["train.batch_size=16", "train.epochs=3", "train.max_steps=8", "train.log_every=1",
             "train.checkpoint_every=3", "train.warmup_steps=2", "train.progress=false",
             "train.lr=0.01", "data.text.field_dropout={brand: 0.5}"]

# The killed run: a real process whose fifth loss call (inside step 5: after the checkpoint of step
# 3 and the metrics of step 4) waits until the test kills it.
CHILD = """
import sys, time
import eclip.train.trainer as trainer_mod
from eclip.catalog.readers import read_catalog
from eclip.model import DualEncoder, load_model
from eclip.train.recipe import load_recipe
from eclip.catalog.splits import split_listings

real_forward = trainer_mod.ContrastiveLoss.forward
calls = 0

def slow_forward(self, *args, **kwargs):
    global calls
    calls += 1
    if calls == 5:
        time.sleep(120)
    return real_forward(self, *args, **kwargs)

trainer_mod.ContrastiveLoss.forward = slow_forward
catalog, model_dir, out, *overrides = sys.argv[1:]
listings = split_listings(read_catalog(catalog).listings, load_recipe(None).data).train
trainer_mod.train(load_recipe(None, [f"train.output_dir={out}", *overrides]),
                  load_model(model_dir), listings, log=lambda s: None)
"""


_recipe = partial(tiny_recipe, base=OVERRIDES)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one thread (conftest's ``one_thread``)."""


@pytest.mark.distributed
def test_a_run_killed_with_sigkill_resumes_with_the_same_losses(tmp_path, tiny_catalog, tiny_model_dir,
                                                                train_listings):
    killed = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(tiny_catalog), str(tiny_model_dir),
                              str(killed), *OVERRIDES], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        full = tmp_path / "full"  # the uninterrupted run, while the child gets going
        reference = train(_recipe(full), load_model(tiny_model_dir), train_listings,
                          log=lambda s: None)
        assert reference.steps == 8
        deadline = time.monotonic() + 120
        while max(logged_losses(killed), default=0) < 4:
            assert child.poll() is None, f"the run ended before it was killed:\n{child.stderr.read()}"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        child.kill()
        child.stderr.close()
    assert max(logged_losses(killed)) == 4
    assert (killed / "checkpoints" / "last.pt").is_file()
    assert not (killed / "model").exists()  # the run did not finish

    messages = []
    resumed = train(_recipe(killed), load_model(tiny_model_dir), train_listings, resume=True,
                    log=messages.append)
    assert resumed.steps == 8
    assert any(m.startswith("resumed from") and m.endswith("at step 3") for m in messages)
    expected = logged_losses(full)
    assert sorted(expected) == list(range(1, 9))
    assert_same_losses(expected, logged_losses(killed), atol=1e-5)
    assert_same_models(full / "model", killed / "model", atol=1e-5)


def _nan_loss(monkeypatch, bad_calls):
    real_loss = trainer_mod.ContrastiveLoss

    class NanLoss(real_loss):
        calls = 0

        def forward(self, *args, **kwargs):
            NanLoss.calls += 1
            loss = super().forward(*args, **kwargs)
            return loss * float("nan") if NanLoss.calls in bad_calls else loss

    monkeypatch.setattr(trainer_mod, "ContrastiveLoss", NanLoss)
    return NanLoss


def test_a_non_finite_loss_is_skipped_and_logged(tmp_path, tiny_model_dir, train_listings, monkeypatch):
    loss_cls = _nan_loss(monkeypatch, bad_calls={2})
    out = tmp_path / "run"
    messages = []
    model = load_model(tiny_model_dir)
    result = train(_recipe(out, "train.max_steps=4"), model, train_listings, log=messages.append)
    assert result.steps == 4 and loss_cls.calls == 5  # one batch more than steps: the skipped one
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in rows if r.get("skipped_nonfinite_loss")]
    assert [r["step"] for r in skipped] == [1]  # after one good step
    assert any("non-finite loss; step skipped" in m for m in messages)
    assert sorted(logged_losses(out)) == [1, 2, 3, 4]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_repeated_non_finite_losses_stop_the_run(tmp_path, tiny_model_dir, train_listings, monkeypatch):
    loss_cls = _nan_loss(monkeypatch, bad_calls=set(range(3, 100)))
    out = tmp_path / "run"
    model = load_model(tiny_model_dir)
    with pytest.raises(EclipError, match=f"{MAX_BAD_STEPS} consecutive steps with a non-finite loss"):
        train(_recipe(out), model, train_listings, log=lambda s: None)
    assert loss_cls.calls == 2 + MAX_BAD_STEPS
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r.get("skipped_nonfinite_loss")) == MAX_BAD_STEPS
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_run_streaming_shards_resumes_with_the_same_losses(tmp_path, tiny_catalog, tiny_model_dir,
                                                             crash_in_loss):
    from eclip.catalog.shards import prepare_shards

    shards = tmp_path / "shards"
    prepare_shards(read_catalog(tiny_catalog, check_images=False), shards, shard_size=20, image_size=32,
                   progress=False)
    extra = [f"data.shards={shards}", "data.shuffle_buffer=16", "train.max_steps=6", "train.batch_size=8",
             "train.checkpoint_every=2"]
    full = tmp_path / "full"
    train(_recipe(full, *extra), load_model(tiny_model_dir), [], log=lambda s: None)

    crashed = tmp_path / "crashed"
    with crash_in_loss(4):  # in step 4, after the checkpoint of step 2
        train(_recipe(crashed, *extra), load_model(tiny_model_dir), [], log=lambda s: None)
    train(_recipe(crashed, *extra), load_model(tiny_model_dir), [], resume=True,
          log=lambda s: None)
    expected = logged_losses(full)
    assert sorted(expected) == list(range(1, 7))
    assert_same_losses(expected, logged_losses(crashed), atol=1e-5)
