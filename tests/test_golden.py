"""Golden numbers: the first logged losses of a tiny seeded run, pinned to recorded values.

Every other training test compares two runs of the current code (resumed vs uninterrupted, cached
vs pixels, one rank vs two, ...): a change that moves both arms alike (a different initialisation
order, an extra random draw before the first batch, a changed loss normalisation, a new default) is
invisible to them. This test is the one place where recorded numbers are right: it fails when the
numbers a seeded run produces change at all.

The run: the ``tiny_catalog`` and ``tiny_model_dir`` fixtures of ``conftest.py``, fp32 on the CPU
with one thread (``torch.set_num_threads(1)``, restored afterwards), catalog-aware targets, field
dropout on (so the order in which the run draws random numbers is pinned too), 5 steps, a loss
logged at every step.

Re-recording. Only when a change is *meant* to change the numbers (a new loss or target rule, a
different sampler or text composer, a new default in the recipe or the model, a fixture that builds
another catalog or model) run::

    GOLDEN_PRINT=1 .venv/bin/python -m pytest tests/test_golden.py -x -q -s

paste the printed list into ``GOLDEN_LOSSES``, run the file twice more to see that it passes and is
deterministic, and say in the commit message why the numbers moved. A refactoring that
claims "no behaviour change" must never re-record: if this test fails after one, the refactoring
changed behaviour (most often the order of random draws). A new torch version may move the last
digits; rtol 1e-4 absorbs reduction-order noise, a larger move needs a look before re-recording.
"""

from __future__ import annotations

import os

import pytest

from eclip.catalog.readers import read_catalog
from eclip.catalog.splits import split_listings
from eclip.model import load_model
from eclip.train.recipe import load_recipe
from eclip.train.trainer import train
from run_logs import logged_losses

# recorded from the code of commit a40403b (torch 2.13.0+cpu, CPU, 1 thread)
GOLDEN_LOSSES = [3.112957, 2.8457346, 2.791497, 2.7805829, 2.7748566]

OVERRIDES = ["train.batch_size=16", "train.max_steps=5", "train.log_every=1", "train.warmup_steps=2",
             "train.checkpoint_every=3", "train.lr=0.01", "train.precision=fp32", "train.device=cpu",
             "train.progress=false", "train.seed=0", "data.text.field_dropout={brand: 0.5}"]


def test_first_losses_of_a_tiny_seeded_run_are_the_recorded_ones(tmp_path, tiny_catalog,
                                                                 tiny_model_dir, one_thread):
    listings = split_listings(read_catalog(tiny_catalog).listings, load_recipe(None).data).train
    out = tmp_path / "run"
    recipe = load_recipe(None, [f"train.output_dir={out}", *OVERRIDES])
    train(recipe, load_model(tiny_model_dir), listings, log=lambda s: None)
    losses = logged_losses(out)
    got = [losses[step] for step in sorted(losses)]
    if os.environ.get("GOLDEN_PRINT"):
        print("GOLDEN_LOSSES =", [float(f"{x:.8g}") for x in got])
    assert sorted(losses) == [1, 2, 3, 4, 5]
    assert got == pytest.approx(GOLDEN_LOSSES, rel=1e-4, abs=0)
