"""Training seeds (eclip.tasks.seeds): several model directories per name, folded into one row of
mean and spread, compared on their outcomes stacked over the seeds; ``eclip demo --seeds``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from eclip.cli import main
from eclip.errors import ConfigError
from eclip.tasks.bootstrap import (bcubed_items, counts_of, mean_items, micro_f1_items,
                                   roc_auc_items, statistics)
from eclip.tasks.report import Report, Row
from eclip.tasks.seeds import expand_seeds, fold_rows, pool_outcomes, stack_items
from eclip.tasks.suite import parse_model_specs


# ------------------------------------------------------------------------------------ parsing


def test_comma_separated_model_directories_are_one_model_per_seed(tmp_path):
    models, overrides = parse_model_specs(["eclip=runs/e0,runs/e1, runs/e2", "clip=runs/c",
                                           "eval.bootstrap=10", "baseline=b0,b1"])
    assert models == {"eclip": [Path("runs/e0"), Path("runs/e1"), Path("runs/e2")],
                      "clip": Path("runs/c"), "baseline": [Path("b0"), Path("b1")]}
    assert overrides == ["eval.bootstrap=10"]
    odd = tmp_path / "a,b"  # an existing directory with a comma stays one directory
    odd.mkdir()
    assert parse_model_specs([f"eclip={odd}"])[0] == {"eclip": odd}
    with pytest.raises(ConfigError, match="empty directory"):
        parse_model_specs(["eclip=a,,b"])
    with pytest.raises(ConfigError, match="'#'"):
        parse_model_specs(["eclip#1=a"])


def test_expand_seeds_names_every_seed():
    flat, members = expand_seeds({"baseline": "b", "eclip": ["e0", "e1"], "clip": ["c"]})
    assert flat == {"baseline": "b", "eclip#0": "e0", "eclip#1": "e1", "clip": "c"}
    assert members == {"baseline": ["baseline"], "eclip": ["eclip#0", "eclip#1"],
                       "clip": ["clip"]}
    with pytest.raises(ConfigError, match="reserved"):
        expand_seeds({"eclip#0": "x"})


# -------------------------------------------------------------------------------- aggregation


def test_rows_fold_into_mean_seed_std_and_pooled_probe_std():
    rows = [Row("category", "image", "baseline", "acc", 0.4, 0.05),
            Row("category", "image", "eclip#0", "acc", 0.5, 0.1),
            Row("category", "image", "eclip#1", "acc", 0.7, 0.2),
            Row("category", "image", "eclip#2", "acc", 0.9, 0.2),
            Row("category", "text", "eclip#0", "tp", 3.0),
            Row("category", "text", "eclip#1", "tp", 6.0),
            Row("category", "text", "eclip#2", "tp", 6.0),
            Row("category", "text", "baseline", "tp", 4.0)]
    members = {"baseline": ["baseline"], "eclip": ["eclip#0", "eclip#1", "eclip#2"]}
    folded, per_seed = fold_rows(rows, members)
    assert per_seed == [r for r in rows if r.model != "baseline"]
    assert [(r.modality, r.model, r.metric) for r in folded] == [
        ("image", "baseline", "acc"), ("image", "eclip", "acc"), ("text", "eclip", "tp"),
        ("text", "baseline", "tp")]
    acc, tp = folded[1], folded[2]
    # by hand: mean 0.7; deviations -0.2, 0, +0.2 -> sample variance 0.08 / 2 = 0.04
    assert acc.value == pytest.approx(0.7) and acc.seed_std == pytest.approx(0.2)
    assert acc.seeds == 3 and acc.std == pytest.approx(np.sqrt((0.01 + 0.04 + 0.04) / 3))
    # 3, 6, 6: mean 5, deviations -2, 1, 1 -> variance 6 / 2 = 3; no probe std
    assert tp.value == pytest.approx(5.0) and tp.seed_std == pytest.approx(np.sqrt(3.0))
    assert tp.std is None
    assert folded[0] is rows[0] and folded[0].seeds is None

    report = Report(rows=folded, headlines={"category": "acc"})
    data = report.to_json()
    assert set(data["rows"][0]) == {"task", "modality", "model", "metric", "value", "std"}
    assert data["rows"][1]["seeds"] == 3 and data["rows"][1]["seed_std"] == pytest.approx(0.2)
    md = report.to_markdown()
    assert "0.700 ± 0.200 (3 seeds)" in md and "0.400 ± 0.050" in md


def test_outcomes_stack_on_the_seed_axis_and_the_bootstrap_averages_each_seeds_metric():
    rng = np.random.default_rng(0)
    groups = np.array([f"g{i % 7}" for i in range(30)])
    labels = rng.random(30) < 0.4
    scores = [rng.random(30) + labels * s for s in (0.2, 0.6)]  # two seeds, different scales
    correct = [rng.random((2, 30)) < p for p in (0.5, 0.8)]  # two probe seeds per training seed
    precision, recall = rng.random((2, 30)), rng.random((2, 30))
    outcomes = {("adult", "image", f"eclip#{k}", "roc_auc"): roc_auc_items(groups, labels,
                                                                             scores[k])
                for k in (1, 0)}  # kept out of order, as job threads may
    outcomes.update({("category", "image", f"eclip#{k}", "acc"): mean_items(groups, correct[k])
                     for k in (0, 1)})
    outcomes.update({("clustering", "both", f"eclip#{k}", "b3"):
                     bcubed_items(groups, precision[k], recall[k]) for k in (0, 1)})
    outcomes[("category", "image", "baseline", "acc")] = mean_items(groups, correct[0][0])
    members = {"baseline": ["baseline"], "eclip": ["eclip#0", "eclip#1"]}
    pooled = pool_outcomes(outcomes, members, log=lambda _: None)
    assert set(pooled) == {("adult", "image", "eclip", "roc_auc"),
                           ("category", "image", "eclip", "acc"),
                           ("clustering", "both", "eclip", "b3"),
                           ("category", "image", "baseline", "acc")}
    auc = pooled[("adult", "image", "eclip", "roc_auc")]
    assert np.array_equal(auc.values["scores"], np.stack(scores))  # seed order, not job order
    assert pooled[("category", "image", "eclip", "acc")].values["value"].shape == (4, 30)

    counts = counts_of(rng.integers(7, size=(25, 7)), 7)
    names = {"auc": ("adult", "image", "eclip", "roc_auc"),
             "acc": ("category", "image", "eclip", "acc"),
             "b3": ("clustering", "both", "eclip", "b3")}
    observed, resampled, _ = statistics({k: pooled[v] for k, v in names.items()}, counts=counts)
    per_seed = [statistics({k: outcomes[(*v[:2], f"eclip#{s}", v[3])] for k, v in names.items()},
                           counts=counts) for s in (0, 1)]
    for key in names:  # the statistic is the mean of the seeds' metrics, on every resample
        assert observed[key] == pytest.approx(np.mean([p[0][key] for p in per_seed]))
        assert resampled[key] == pytest.approx(np.mean([p[1][key] for p in per_seed], axis=0))
    # by hand: the observed ROC-AUC is the mean of the two seeds' AUCs (not the AUC of the mean)
    assert observed["auc"] == pytest.approx(np.mean([roc_auc_score(labels, s) for s in scores]))
    assert observed["acc"] == pytest.approx(np.mean([c.mean() for c in correct]))


def test_seeds_on_different_items_are_not_stacked():
    a = micro_f1_items(["x", "y"], [1, 0], [1, 1])
    assert stack_items([a, micro_f1_items(["x", "z"], [1, 0], [1, 1])]) is None
    assert stack_items([a, mean_items(["x", "y"], [1, 0])]) is None
    auc = roc_auc_items(["x", "y"], [True, False], [0.2, 0.1])
    assert stack_items([auc, roc_auc_items(["x", "y"], [False, True], [0.2, 0.1])]) is None
    logged = []
    other = micro_f1_items(["x", "z"], [1, 0], [1, 1])
    pooled = pool_outcomes({("t", "m", "eclip#0", "f1"): a, ("t", "m", "eclip#1", "f1"): other},
                           {"eclip": ["eclip#0", "eclip#1"]}, log=logged.append)
    assert pooled == {} and "different items" in logged[0]


# ------------------------------------------------------------------------- eval and the demo


@pytest.fixture(scope="module")
def second_seed(tiny_model_dir, tmp_path_factory):
    """The tiny model with its projections perturbed: another 'training seed'."""
    from eclip.model import load_model

    model = load_model(tiny_model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "proj" in name and param.dim() == 2:
                param.add_(0.5 * param.std() * torch.randn(param.shape, generator=generator))
    out = tmp_path_factory.mktemp("tiny_seed1") / "model"
    model.save_pretrained(out)
    return out


FAST = ["eval.seeds=2", "eval.probe_c=[1.0]", "eval.bootstrap=100", "eval.plots=false",
        "eval.map_points=20"]


@pytest.mark.e2e
def test_eval_over_two_seed_directories_reports_the_mean_of_the_single_seed_reports(
        tiny_catalog, tiny_model_dir, second_seed, tmp_path, capsys):
    seed_dirs = (tiny_model_dir, second_seed)
    for k, directory in enumerate(seed_dirs):  # one report per seed
        assert main(["eval", "--models", f"baseline={tiny_model_dir}", f"eclip={directory}",
                     "--catalog", str(tiny_catalog), "--out", str(tmp_path / f"single{k}"),
                     "--quiet", *FAST]) == 0
    assert main(["eval", "--models", f"baseline={tiny_model_dir}",
                 f"eclip={tiny_model_dir},{second_seed}", "--catalog", str(tiny_catalog),
                 "--out", str(tmp_path / "seeds"), "--quiet", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "(2 seeds)" in printed  # the headline tables: mean ± seed std

    single = [json.loads((tmp_path / f"single{k}" / "report.json").read_text()) for k in (0, 1)]
    data = json.loads((tmp_path / "seeds" / "report.json").read_text())
    by_cell = [{(r["task"], r["modality"], r["model"], r["metric"]): r for r in s["rows"]}
               for s in single]
    rows = {(r["task"], r["modality"], r["model"], r["metric"]): r for r in data["rows"]}
    assert set(rows) == set(by_cell[0])  # the same cells, the seeds folded into "eclip"
    assert data["meta"]["training_seeds"] == {"eclip": 2}
    assert data["meta"]["models"]["eclip"] == f"{tiny_model_dir},{second_seed}"
    checked = 0
    for key, row in rows.items():
        values = [b[key]["value"] for b in by_cell]
        if key[2] != "eclip":
            assert "seeds" not in row
            assert row["value"] == pytest.approx(values[0], nan_ok=True)
            continue
        checked += 1
        assert row["seeds"] == 2
        assert row["value"] == pytest.approx(np.mean(values), nan_ok=True)
        assert row["seed_std"] == pytest.approx(np.std(values, ddof=1), nan_ok=True)
    assert checked > 20
    assert any(r.get("seed_std") for r in data["rows"])  # the two seeds differ
    # the per-seed rows are those of the single-seed reports
    seed_rows = {(r["task"], r["modality"], r["model"], r["metric"]): r["value"]
                 for r in data["seed_rows"]}
    for (task, modality, model, metric), value in seed_rows.items():
        k = int(model.split("#")[1])
        assert value == pytest.approx(by_cell[k][(task, modality, "eclip", metric)]["value"],
                                      nan_ok=True)
    # comparisons: eclip (both seeds) - baseline, the delta that of the folded rows
    assert data["comparisons"] and {c["model"] for c in data["comparisons"]} == {"eclip"}
    for c in data["comparisons"]:
        eclip = rows[(c["task"], c["modality"], "eclip", c["metric"])]["value"]
        base = rows[(c["task"], c["modality"], "baseline", c["metric"])]["value"]
        assert c["delta"] == pytest.approx(eclip - base, abs=1e-9)
    md = (tmp_path / "seeds" / "report.md").read_text()
    assert "(2 seeds)" in md and "Training seeds: eclip 2" in md
    assert (tmp_path / "seeds" / "retrieval" / "text2image" / "eclip_0" / "run.json").is_file()


@pytest.mark.e2e
@pytest.mark.slow
def test_demo_with_two_seeds_trains_each_model_twice_and_folds_the_report(tmp_path, capsys):
    from eclip.demo import run_demo
    from eclip.tasks.context import EvalConfig

    small = ["model.scratch_hidden=32", "model.scratch_layers=1", "model.scratch_heads=2",
             "model.scratch_vocab_size=300", "model.image_size=32", "model.embed_dim=16",
             "train.epochs=1", "train.batch_size=16", "train.image_trainable_layers=2",
             "train.checkpoint_every=1000"]
    out = tmp_path / "demo"
    # the demo's suite with fewer probe fits and a smaller map (the demo's own settings otherwise)
    run_demo(out, listings=120, seed=3, seeds=2, overrides=small, progress=False,
             eval_config=EvalConfig(seeds=1, probe_c=[1.0], bootstrap=200, map_points=20))
    assert "(2 seeds)" in capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())
    seed = data["meta"]["recipe"]["train"]["seed"]
    assert data["meta"]["train_seeds"] == [seed, seed + 1]
    assert data["meta"]["training_seeds"] == {"clip": 2, "eclip": 2}
    for name in ("clip", "eclip"):
        for s in (seed, seed + 1):
            assert (out / "models" / name / f"seed{s}" / "config.json").is_file()
    rows = data["rows"]
    assert {r["model"] for r in rows} >= {"baseline", "clip", "eclip"}
    assert all(r["seeds"] == 2 for r in rows if r["model"] in ("clip", "eclip"))
    assert all("seeds" not in r for r in rows if r["model"] == "baseline")
    per_seed = {r["model"] for r in data["seed_rows"]}
    assert per_seed == {"clip#0", "clip#1", "eclip#0", "eclip#1"}
    # two seeds train two different models
    assert any(a["value"] != b["value"] for a, b in zip(
        [r for r in data["seed_rows"] if r["model"] == "eclip#0"],
        [r for r in data["seed_rows"] if r["model"] == "eclip#1"]))
    assert {(c["model"], c["reference"]) for c in data["comparisons"]} == {
        ("eclip", "baseline"), ("eclip", "clip")}
    assert "(2 seeds)" in (out / "report.md").read_text()
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "(2 training seeds)" in page and "Training seeds: clip 2, eclip 2" in page
    for task in {r["task"] for r in rows}:  # every task of the report has its section
        assert f"<h2>{task}</h2>" in page
