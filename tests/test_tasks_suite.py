"""Each task end to end on the tiny demo catalog: with a tiny model (every modality reported) and
with oracle vectors that encode the task's label (the task must then score perfectly); the suite
with its three report files; ``eclip eval`` on a user's CSV with only some labels."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from eclip.catalog.readers import read_catalog
from eclip.catalog.schema import Listing
from eclip.cli import main
from eclip.model import load_model
from eclip.tasks import adult, attribute, category, clustering, matching
from eclip.tasks.context import EvalConfig, TaskContext
from eclip.tasks.data import eval_splits
from eclip.tasks.report import Report
from eclip.tasks.suite import HEADLINES, run_suite
from eclip.encode import fuse
from eclip.tasks.views import (MODALITIES, ModelViews, listing_cache, model_views,
                               tfidf_views)

FAST = EvalConfig(seeds=2, probe_c=[1.0, 100.0], map_points=40, bootstrap=200)
# oracle vectors are learnt perfectly by a weakly regularised probe that sees every training catalog
EXACT = EvalConfig(seeds=2, probe_c=[100.0], probe_fraction=1.0)


def _adult_by_category(listings):
    """The tiny catalog has one adult listing in train: call one top-level category adult."""
    return [dataclasses.replace(x, adult=x.top_category == "Food & Drink") for x in listings]


@pytest.fixture(scope="module")
def tiny(tiny_catalog, tiny_model_dir):
    listings = _adult_by_category(read_catalog(tiny_catalog, progress=False).listings)
    model = load_model(tiny_model_dir)
    splits = eval_splits(listings)
    cache = listing_cache(model, listings, [], progress=False)
    views = [model_views("baseline", model, listings, cache, tower=True, progress=False),
             model_views("eclip", model, listings, cache, progress=False),
             tfidf_views(listings, splits.index("train"))]
    return listings, model, splits, views


def _one_hot(keys):
    names = sorted(set(keys))
    x = np.zeros((len(keys), len(names)), dtype=np.float32)
    x[np.arange(len(keys)), [names.index(k) for k in keys]] = 1.0
    return x


def _oracle(keys):
    x = _one_hot(keys)
    return ModelViews("oracle", "joint", {m: x for m in MODALITIES})


def _context(tiny, extra=()):
    listings, _, splits, views = tiny
    return TaskContext(splits, list(views) + list(extra), EXACT, Report(), log=lambda _: None)


def _rows(report, task, model):
    return {(r.modality, r.metric): r for r in report.rows if r.task == task and r.model == model}


def _check_model_rows(report, task, metric):
    for model, modalities in (("baseline", MODALITIES), ("eclip", MODALITIES), ("tfidf", ["text"])):
        rows = _rows(report, task, model)
        for modality in modalities:
            assert 0.0 <= rows[(modality, metric)].value <= 1.0


def _check_outcomes(ctx, task, metrics):
    """The per-item outcomes kept for the bootstrap give back the report's values exactly, for
    every model and modality of the task's ``metrics``."""
    from eclip.tasks.bootstrap import statistics

    kept = {key: it for key, it in ctx.outcomes.items() if key[0] == task}
    assert {key[3] for key in kept} == set(metrics)
    observed, _, _ = statistics(kept, resamples=0)
    for (_, modality, model, metric), value in observed.items():
        assert value == pytest.approx(ctx.report.value(task, modality, model, metric), abs=1e-9)
    for views in ctx.views:
        for modality in views.modalities:
            assert (task, modality, views.name, metrics[0]) in kept


def _seen_share(listings, splits, label):
    train = {label(listings[i]) for i in splits.index("train")}
    test = [label(listings[i]) for i in splits.index("test")]
    return np.mean([t in train for t in test])


@pytest.mark.slow
def test_category_end_to_end(tiny):
    listings, _, splits, _ = tiny
    ctx = _context(tiny, [_oracle([x.category for x in listings])])
    category.run_category(ctx)
    _check_model_rows(ctx.report, "category", "probe_accuracy")
    rows = _rows(ctx.report, "category", "eclip")
    assert rows[("image", "zero_shot_accuracy")].std is None
    assert rows[("image", "probe_accuracy")].std == 0.0  # 2 seeds, each on all of train
    oracle = _rows(ctx.report, "category", "oracle")
    # a one-hot of the category is learnt perfectly for every category the training split has
    expected = _seen_share(listings, splits, lambda x: x.category)
    assert oracle[("both", "probe_accuracy")].value == pytest.approx(expected)
    assert oracle[("both", "probe_top_level_accuracy")].value >= expected
    assert set(ctx.figures["category_confusion"]) >= {("eclip", "both"), ("oracle", "image")}
    _check_outcomes(ctx, "category", ["probe_accuracy", "zero_shot_accuracy"])


@pytest.mark.slow
def test_probes_read_the_towers_features_and_similarity_tasks_the_joint_space(tiny):
    """baseline (tower views) and eclip (joint views) of one model: the same probe figures, since
    probes train on the towers' pooled features; other zero-shot and matching figures."""
    listings, _, _, views = tiny
    baseline, eclip = views[0], views[1]
    for modality in MODALITIES:
        assert np.array_equal(eclip.probe_input(modality), baseline.task[modality])
        assert eclip.task[modality].shape[1] != baseline.task[modality].shape[1]
    ctx = _context(tiny)
    category.run_category(ctx)
    adult.run_adult(ctx)
    matching.run_matching(ctx)
    base, ours = _rows(ctx.report, "category", "baseline"), _rows(ctx.report, "category", "eclip")
    for modality in MODALITIES:
        assert ours[(modality, "probe_accuracy")].value == base[(modality, "probe_accuracy")].value
        assert ours[(modality, "probe_macro_f1")].value == base[(modality, "probe_macro_f1")].value
    base, ours = _rows(ctx.report, "adult", "baseline"), _rows(ctx.report, "adult", "eclip")
    assert ours[("image", "pr_auc")].value == base[("image", "pr_auc")].value
    base, ours = _rows(ctx.report, "matching", "baseline"), _rows(ctx.report, "matching", "eclip")
    assert any(ours[(m, "cosine_roc_auc")].value != base[(m, "cosine_roc_auc")].value
               for m in MODALITIES)


def test_attribute_end_to_end(tiny):
    listings, _, splits, _ = tiny
    ctx = _context(tiny, [_oracle([x.attributes.get("color") for x in listings])])
    attribute.run_attribute(ctx)
    keys = ctx.report.meta["attribute_keys"]
    assert "color" in keys and keys == attribute.attribute_keys(ctx)
    _check_model_rows(ctx.report, "attribute", "probe_micro_f1")
    rows = _rows(ctx.report, "attribute", "oracle")
    # a one-hot of the colour is learnt perfectly for every colour the training split has
    expected = _seen_share(listings, splits, lambda x: x.attributes["color"])
    assert rows[("text", "probe_color_accuracy")].value == pytest.approx(expected)
    for key in keys:
        assert 0.0 <= rows[("image", f"probe_{key}_macro_f1")].value <= 1.0
    span = _rows(ctx.report, "attribute", "title_span")
    assert 0.0 <= span[("text", "span_coverage")].value <= 1.0
    assert 0.0 <= span[("text", "span_micro_f1")].value <= 1.0
    _check_outcomes(ctx, "attribute", ["probe_micro_f1", "zero_shot_micro_f1"])


def test_matching_end_to_end(tiny):
    listings, _, _, _ = tiny
    ctx = _context(tiny, [_oracle([x.group_id for x in listings])])
    matching.run_matching(ctx)
    _check_model_rows(ctx.report, "matching", "cosine_roc_auc")
    pairs = ctx.report.meta["matching_pairs"]
    assert pairs["test"] > pairs["test_positive"] > 0
    oracle = _rows(ctx.report, "matching", "oracle")
    for metric in ("cosine_roc_auc", "cosine_f1", "cosine_p@90r", "classifier_roc_auc",
                   "retrieval_R@1", "retrieval_mAP"):
        assert oracle[("image", metric)].value == pytest.approx(1.0), metric
    _check_outcomes(ctx, "matching", ["cosine_roc_auc"])


def test_both_finds_the_informative_modality_in_matching_and_clustering():
    rng = np.random.default_rng(0)
    listings = [Listing(product_id=f"p{i}", title=f"item {i % 7}", images=["x.jpg"],
                        catalog_id=f"g{i // 4}", category="A > x" if i % 8 < 4 else "B > y",
                        split=("train", "train", "val", "test")[(i // 4) % 4])
                for i in range(240)]

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    truth = _one_hot([x.group_id for x in listings])
    signal = unit(truth + 0.12 * rng.normal(size=truth.shape))  # informative, not perfect
    noise = unit(rng.normal(size=truth.shape))
    views = [ModelViews("a", "joint", {"image": signal, "text": noise, "both": fuse(signal, noise)}),
             ModelViews("b", "joint", {"image": noise, "text": signal, "both": fuse(noise, signal)}),
             ModelViews("c", "joint", {"image": truth, "text": truth, "both": fuse(truth, truth)})]
    ctx = TaskContext(eval_splits(listings), views, EXACT, Report())
    matching.run_matching(ctx)
    clustering.run_clustering(ctx)
    for task in ("matching", "clustering"):
        both = {m: _rows(ctx.report, task, m)[("both", HEADLINES[task])].value for m in "ab"}
        noisy = _rows(ctx.report, task, "a")[("text", HEADLINES[task])].value
        assert min(both.values()) > noisy + 0.2, task  # the fused view finds the signal



def test_clustering_end_to_end(tiny):
    listings, _, splits, _ = tiny
    ctx = _context(tiny, [_oracle([x.group_id for x in listings])])
    clustering.run_clustering(ctx)
    _check_model_rows(ctx.report, "clustering", "bcubed_f1")
    oracle = _rows(ctx.report, "clustering", "oracle")
    assert oracle[("text", "ARI")].value == pytest.approx(1.0)
    assert oracle[("text", "bcubed_f1")].value == pytest.approx(1.0)
    test_groups = {listings[i].group_id for i in splits.index("test")}
    assert oracle[("text", "clusters")].value == len(test_groups)
    _check_outcomes(ctx, "clustering", ["bcubed_f1"])


def test_adult_end_to_end(tiny):
    listings, _, _, _ = tiny
    ctx = _context(tiny, [_oracle([x.adult for x in listings])])
    adult.run_adult(ctx)
    _check_model_rows(ctx.report, "adult", "pr_auc")
    oracle = _rows(ctx.report, "adult", "oracle")
    assert oracle[("image", "pr_auc")].value == pytest.approx(1.0)
    assert oracle[("image", "fp")].value == 0 and oracle[("image", "fn")].value == 0
    n_adult = ctx.report.meta["adult_test"]["adult"]
    assert oracle[("image", "tp")].value == n_adult > 0
    _check_outcomes(ctx, "adult", ["pr_auc", "roc_auc"])


def test_suite_writes_json_markdown_and_html_and_names_skipped_tasks(tiny_catalog, tiny_model_dir,
                                                                    tmp_path):
    listings = read_catalog(tiny_catalog, progress=False).listings  # 1 adult listing in train
    model = load_model(tiny_model_dir)
    logged = []
    result = run_suite({"baseline": model, "eclip": model}, listings, config=FAST,
                       out_dir=tmp_path, log=logged.append, progress=False)
    data = json.loads((tmp_path / "report.json").read_text())
    tasks = {r["task"] for r in data["rows"]}
    assert tasks == {"retrieval", "category", "attribute", "matching", "clustering"}
    assert {r["modality"] for r in data["rows"] if r["task"] != "retrieval"} == set(MODALITIES)
    assert all(set(r) == {"task", "modality", "model", "metric", "value", "std"}
               for r in data["rows"])
    assert "'adult'" in data["skipped"]["adult"] and any("skipping adult" in m for m in logged)
    assert data["verdicts"]["matching"]["margins"]["baseline"].keys() == set(MODALITIES)
    # bootstrap comparisons: eclip - baseline (tfidf is a reference) on every headline cell, the
    # difference that of the report's rows
    comparisons = data["comparisons"]
    assert {(c["model"], c["reference"]) for c in comparisons} == {("eclip", "baseline")}
    assert all(set(c) == {"task", "modality", "model", "reference", "metric", "delta", "ci_low",
                          "ci_high", "verdict"} for c in comparisons)
    headline = {(c["task"], c["modality"]): c for c in comparisons
                if c["metric"] == HEADLINES[c["task"]] and c["task"] != "retrieval"}
    assert set(headline) == {(t, m) for t in ("category", "attribute", "matching", "clustering")
                             for m in MODALITIES}
    for (task, modality), c in headline.items():
        values = {r["model"]: r["value"] for r in data["rows"] if (r["task"], r["modality"],
                  r["metric"]) == (task, modality, c["metric"])}
        assert c["delta"] == pytest.approx(values["eclip"] - values["baseline"], abs=1e-9)
        assert c["ci_low"] <= c["ci_high"] and c["verdict"] in ("win", "tie", "loss")
    assert data["meta"]["bootstrap"]["resamples"] == FAST.bootstrap
    wins = sum(c["verdict"] == "win" for c in headline.values() if c["task"] == "matching")
    assert data["verdicts"]["matching"]["win"] == wins
    md = (tmp_path / "report.md").read_text()
    assert "## Skipped tasks" in md and "Verdict: clustering (bcubed_f1):" in md
    assert "## Verdict table" in md and "| task (metric) | modality | eclip − baseline |" in md
    page = (tmp_path / "report.html").read_text()
    assert "<th>eclip − baseline</th>" in page
    # confusion matrix, t-SNE map, matching PR curves (adult was skipped: no adult PR curves)
    assert page.count("data:image/png;base64") == 3
    assert "data:image/jpeg;base64" in page  # cluster strips
    assert result.seconds["total"] > 0


@pytest.fixture
def partial_catalog(tmp_path, write_csv):
    """A user's CSV: own column names, catalog groups and titles, no category / attributes / adult."""
    root = tmp_path / "pics"
    root.mkdir()
    rows = []
    for i in range(60):
        group = i // 3
        colour = ((group * 37) % 255, (group * 91) % 255, (group * 53) % 255)
        Image.new("RGB", (32, 32), colour).save(root / f"{i}.png")
        rows.append({"sku": f"S{i}", "family": f"F{group}", "name": f"gadget {group} v{i % 3}",
                     "picture": f"{i}.png", "part": ("train", "train", "val", "test")[group % 4]})
    path = tmp_path / "shop.csv"
    write_csv(path, rows)
    return path, root


@pytest.mark.e2e
def test_eval_cli_runs_what_the_labels_allow_and_explains_the_rest(partial_catalog,
                                                                   tiny_model_dir, tmp_path,
                                                                   capsys, killed_writer):
    path, root = partial_catalog
    out = tmp_path / "eval"
    left = [killed_writer(out / "report.json"), killed_writer(out / "retrieval" / "run.jsonl")]
    code = main(["eval", "--models", f"eclip={tiny_model_dir}",
                 "data.column_map={title: name, images: picture, product_id: sku, "
                 "catalog_id: family, split: part}",
                 f"baseline={tiny_model_dir}", "--catalog", str(path), "--image-root", str(root),
                 "--out", str(out), "--quiet", "eval.seeds=2", "eval.plots=false"])
    printed = capsys.readouterr().out
    assert code == 0
    for task, field in (("category", "'category'"), ("attribute", "'attributes'"),
                        ("adult", "'adult'")):
        assert f"skipping {task}" in printed and field in printed
    data = json.loads((out / "report.json").read_text())
    assert {r["task"] for r in data["rows"]} == {"retrieval", "matching", "clustering"}
    assert set(data["skipped"]) == {"category", "attribute", "adult"}
    assert data["meta"]["splits"] == {"train": 30, "val": 15, "test": 15}
    assert not (out / "report.html").exists()
    assert "clustering (bcubed_f1)" in printed
    assert not any(p.exists() for p in left)  # a killed eval's temporaries, swept at the start


def test_eval_cli_rejects_a_bad_model_spec(tmp_path, capsys):
    code = main(["eval", "--models", "eclip", "--catalog", "x.csv", "--out", str(tmp_path)])
    assert code == 2 and "NAME=MODEL_DIR" in capsys.readouterr().err


def test_the_title_ceiling_counts_titles_shared_across_catalogs():
    from eclip.tasks.suite import duplicate_title_share

    titles = ["Red mug", "red mug", "Blue cap", "Blue cap", "Green pen", "Green pen"]
    catalogs = ["a", "b", "c", "c", "d", "e"]  # the caps share a catalog: rankable apart is moot
    listings = [Listing(product_id=f"p{i}", title=t, images=["x.jpg"], catalog_id=c, split="test")
                for i, (t, c) in enumerate(zip(titles, catalogs))]
    ctx = TaskContext(eval_splits(listings), [], EXACT, Report())
    assert duplicate_title_share(ctx) == pytest.approx(4 / 6)  # both mugs and both pens
