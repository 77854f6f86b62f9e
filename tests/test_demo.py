"""`eclip demo` end to end on a small catalog with a small recipe: every step, and the same numbers
from the same seed."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from eclip.demo import run_demo
from eclip.model import load_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMALL = ["model.scratch_hidden=32", "model.scratch_layers=1", "model.scratch_heads=2",
         "model.scratch_vocab_size=400", "model.image_size=32", "model.embed_dim=32",
         "train.epochs=1", "train.batch_size=16", "train.image_trainable_layers=2",
         "train.text_text_weight=0.5", "train.checkpoint_every=1000"]


def _run(out, log=lambda s: None):
    # jobs=2: clip and eclip train side by side, in two processes (eclip.train.concurrent)
    return run_demo(out, listings=120, seed=5, overrides=SMALL, jobs=2, progress=False, log=log)


def test_demo_trains_both_models_runs_the_suite_and_repeats_itself(tmp_path, monkeypatch):
    from eclip.tasks.context import EvalConfig

    # the demo's suite with fewer probe fits, resamples and map points (its own settings otherwise)
    monkeypatch.setattr("eclip.demo.EvalConfig", lambda: EvalConfig(
        seeds=1, probe_c=[1.0], bootstrap=200, map_points=20))
    lines: list[str] = []
    a, b = _run(tmp_path / "a", lines.append), _run(tmp_path / "b")
    rows = [dataclasses.astuple(r) for r in a.report.rows]
    assert rows == [dataclasses.astuple(r) for r in b.report.rows]

    assert {r.model for r in a.report.rows} >= {"baseline", "clip", "eclip"}
    # the phase times (printed at the end, kept in report.json) add up to the run's time
    meta = json.loads((tmp_path / "a" / "report.json").read_text())["meta"]
    phases = meta["phase_seconds"]
    assert list(phases)[:4] == ["catalog", "towers", "tower features", "train"]
    # each run's own time, shown under the training phase and not counted in the sum
    assert set(meta["train_seconds"]) == {"clip", "eclip"}
    assert all(0 < v <= phases["train"] + 0.1 for v in meta["train_seconds"].values())
    table = lines[-2]
    assert table.startswith("phase times") and "    clip " in table and "    eclip " in table
    assert any(s.startswith("[eclip] saved ") for s in lines)  # the workers' logs, prefixed
    assert {"eval embed", "eval retrieval", "eval bootstrap", "eval other"} <= set(phases)
    assert all(v >= 0 for v in phases.values())
    assert sum(phases.values()) == pytest.approx(a.seconds, abs=0.1 * len(phases))
    assert {r.task for r in a.report.rows} >= {"retrieval", "category", "matching", "clustering"}
    for name in ("baseline", "clip", "eclip"):
        config = json.loads((tmp_path / "a" / "models" / name / "config.json").read_text())
        assert config["embed_dim"] == 32
    written = json.loads((tmp_path / "a" / "report.json").read_text())
    assert written["subject"] == "eclip" and len(written["rows"]) == len(a.report.rows)
    assert {(c["model"], c["reference"]) for c in written["comparisons"]} == {
        ("eclip", "baseline"), ("eclip", "clip")}  # the demo's verdict table: eclip vs both
    assert (tmp_path / "a" / "report.md").read_text() == a.report.to_markdown()
    page = (tmp_path / "a" / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")  # whole
    assert all(f"eclip − {m}" in page for m in ("baseline", "clip"))
    # the trained models differ from the towers before alignment and from each other, and the
    # image tower changed in its top block and head only
    models = {name: load_model(tmp_path / "a" / "models" / name).state_dict()
              for name in ("baseline", "clip", "eclip")}
    for one, other in (("baseline", "clip"), ("baseline", "eclip"), ("clip", "eclip")):
        assert not torch.equal(models[one]["text_proj.weight"], models[other]["text_proj.weight"])
    top = ("image_tower.net._blocks.15.", "image_tower.net._conv_head.", "image_tower.net._bn1.")
    for key, value in models["baseline"].items():
        if key.startswith("image_tower.") and value.is_floating_point() and value.dim() == 4:
            assert torch.equal(value, models["eclip"][key]) != key.startswith(top), key
