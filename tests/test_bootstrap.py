"""The paired catalog bootstrap (eclip.tasks.bootstrap) and the report's comparisons.

Hand-computed cases enumerate every resample of three catalogs; the weighted metrics are checked
against sklearn (sample weights) and against recomputing the metric on the resampled data itself."""

import itertools
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from eclip.errors import ConfigError
from eclip.tasks.bootstrap import (CHUNK, bcubed_items, check_config, choose_subject, counts_of,
                                   default_pairs, interval, mean_items, micro_f1_items,
                                   paired_bootstrap, pr_auc_items, resampled_counts, roc_auc_items, statistics,
                                   verdict_of)
from eclip.tasks.context import EvalConfig
from eclip.tasks.metrics import micro_f1
from eclip.tasks.report import Comparison, Report

# three catalogs: A has two listings, B one, C two
GROUPS = np.array(["A", "A", "B", "C", "C"])
CORRECT_A = np.array([1, 1, 0, 1, 0])  # model a: 3/5
CORRECT_B = np.array([1, 0, 1, 0, 0])  # model b: 2/5
ALL_DRAWS = np.array(list(itertools.product(range(3), repeat=3)))  # all 27 resamples of A, B, C


def _resampled(draw, values_by_catalog):
    """The items of the drawn catalogs, a catalog drawn twice contributing its items twice."""
    names = ["A", "B", "C"]
    return np.concatenate([values_by_catalog[names[g]] for g in draw])


def _by_catalog(values):
    return {g: values[GROUPS == g] for g in "ABC"}


def test_counts_of_draws():
    counts = counts_of(np.array([[0, 0, 2], [1, 2, 1]]), 3)
    assert counts.tolist() == [[2, 0, 1], [0, 2, 1]]


def test_all_27_resamples_of_three_catalogs_by_hand():
    counts = counts_of(ALL_DRAWS, 3)
    observed, resampled, catalogs = statistics(
        {"a": mean_items(GROUPS, CORRECT_A), "b": mean_items(GROUPS, CORRECT_B)}, counts=counts)
    assert catalogs.tolist() == ["A", "B", "C"]
    assert observed == {"a": pytest.approx(0.6), "b": pytest.approx(0.4)}
    # by hand: (A, A, A) -> a 6/6, b 3/6; (B, B, B) -> a 0/3, b 3/3; (A, B, C) -> the data itself
    assert resampled["a"][0] == pytest.approx(1.0) and resampled["b"][0] == pytest.approx(0.5)
    assert resampled["a"][13] == pytest.approx(0.0) and resampled["b"][13] == pytest.approx(1.0)
    assert ALL_DRAWS[5].tolist() == [0, 1, 2] and resampled["a"][5] == pytest.approx(0.6)
    # every resample against the metric recomputed on the resampled listings themselves
    for draw, a, b in zip(ALL_DRAWS, resampled["a"], resampled["b"]):
        assert a == pytest.approx(_resampled(draw, _by_catalog(CORRECT_A)).mean())
        assert b == pytest.approx(_resampled(draw, _by_catalog(CORRECT_B)).mean())
    # the interval: percentiles of the 27 paired differences
    result = paired_bootstrap(mean_items(GROUPS, CORRECT_A), mean_items(GROUPS, CORRECT_B),
                              counts=counts)
    deltas = resampled["a"] - resampled["b"]
    assert result.delta == pytest.approx(0.2)
    assert (result.low, result.high) == pytest.approx(tuple(np.quantile(deltas, [0.025, 0.975])))
    # by hand: with catalogs drawn kA, kB, kC times, delta = (kA - kB + kC) / (2 kA + kB + 2 kC).
    # Sorted: -1 (B B B), then -1/4 six times (two B), ..., and 1/2 for the 8 draws without B.
    # Linear percentiles over 27 values: 2.5 % sits at 0.65 between -1 and -1/4, 97.5 % at 1/2.
    assert sorted(deltas)[:7] == pytest.approx([-1.0] + [-0.25] * 6)
    assert (result.low, result.high) == pytest.approx((-1 + 0.65 * 0.75, 0.5))
    assert result.verdict == "tie"


def test_micro_f1_and_bcubed_on_every_resample():
    correct = np.array([1, 0, 0, 1, 0])
    made = np.array([1, 1, 0, 1, 0])  # items 2 and 4 abstain
    precision = np.array([1.0, 0.5, 1.0, 0.25, 0.75])
    recall = np.array([0.5, 0.5, 1.0, 1.0, 0.2])
    counts = counts_of(ALL_DRAWS, 3)
    _, resampled, _ = statistics({"f1": micro_f1_items(GROUPS, correct, made),
                                  "b3": bcubed_items(GROUPS, precision, recall)}, counts=counts)
    for draw, f1, b3 in zip(ALL_DRAWS, resampled["f1"], resampled["b3"]):
        c = _resampled(draw, _by_catalog(correct))
        m = _resampled(draw, _by_catalog(made))
        predicted = [("t" if ok else "x") if mk else None for ok, mk in zip(c, m)]
        assert f1 == pytest.approx(micro_f1(["t"] * len(c), predicted))
        p = _resampled(draw, _by_catalog(precision)).mean()
        r = _resampled(draw, _by_catalog(recall)).mean()
        assert b3 == pytest.approx(2 * p * r / (p + r))


def test_weighted_aucs_match_sklearn_and_the_duplicated_data():
    rng = np.random.default_rng(3)
    n = 60
    groups = np.array([f"g{i % 13}" for i in range(n)])
    labels = rng.random(n) < 0.3
    scores = np.round(rng.random((2, n)) + labels, 1)  # rounded: many ties; two seeds
    counts = counts_of(rng.integers(13, size=(20, 13)), 13)
    observed, resampled, catalogs = statistics(
        {"roc": roc_auc_items(groups, labels, scores), "pr": pr_auc_items(groups, labels, scores)},
        counts=counts)
    assert observed["roc"] == pytest.approx(np.mean([roc_auc_score(labels, s) for s in scores]))
    assert observed["pr"] == pytest.approx(
        np.mean([average_precision_score(labels, s) for s in scores]))
    code = np.searchsorted(catalogs, groups)
    for row, roc, pr in zip(counts, resampled["roc"], resampled["pr"]):
        w = row[code]
        keep = w > 0
        assert roc == pytest.approx(np.mean([roc_auc_score(labels[keep], s[keep],
                                                           sample_weight=w[keep]) for s in scores]))
        assert pr == pytest.approx(np.mean([average_precision_score(
            labels[keep], s[keep], sample_weight=w[keep]) for s in scores]))
        repeat = w.astype(int)  # the same on the resampled data, items repeated
        assert roc == pytest.approx(np.mean([roc_auc_score(np.repeat(labels, repeat),
                                                           np.repeat(s, repeat)) for s in scores]))


def test_a_pair_counts_half_for_each_of_its_catalogs():
    groups = np.array([["A", "A"], ["A", "B"], ["B", "C"], ["C", "C"], ["A", "C"], ["B", "B"]])
    labels = np.array([True, False, False, True, False, True])
    scores = np.array([0.9, 0.8, 0.1, 0.4, 0.5, 0.3])
    counts = counts_of(ALL_DRAWS, 3)
    _, resampled, _ = statistics({"roc": roc_auc_items(groups, labels, scores)}, counts=counts)
    code = np.searchsorted(["A", "B", "C"], groups)
    for row, roc in zip(counts, resampled["roc"]):
        w = (row[code[:, 0]] + row[code[:, 1]]) / 2
        if w[labels].sum() == 0 or w[~labels].sum() == 0:
            assert np.isnan(roc)
        else:
            assert roc == pytest.approx(roc_auc_score(labels, scores, sample_weight=w))


def test_resamples_are_seeded_and_draw_every_catalog_count():
    chunks = list(resampled_counts(7, 2 * CHUNK + 3, seed=5))
    assert [len(c) for c in chunks] == [CHUNK, CHUNK, 3]
    assert all((c.sum(axis=1) == 7).all() for c in chunks)
    again = list(resampled_counts(7, 2 * CHUNK + 3, seed=5))
    assert all(np.array_equal(a, b) for a, b in zip(chunks, again))
    other = np.concatenate(list(resampled_counts(7, 2 * CHUNK + 3, seed=6)))
    assert not np.array_equal(np.concatenate(chunks), other)


def _two_models(n_catalogs, rng):
    groups = np.repeat([f"c{i}" for i in range(n_catalogs)], 2)
    better = rng.random(len(groups)) < 0.8
    worse = rng.random(len(groups)) < 0.7
    return mean_items(groups, better), mean_items(groups, worse)


def test_the_interval_narrows_as_the_sample_grows():
    rng = np.random.default_rng(0)
    widths = []
    for n_catalogs in (50, 500, 5000):
        a, b = _two_models(n_catalogs, rng)
        result = paired_bootstrap(a, b, resamples=400, seed=1)
        assert result.low <= result.delta <= result.high
        widths.append(result.high - result.low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(10, rel=0.35)  # ~ 1 / sqrt(catalogs)


def test_two_identical_models_tie_with_an_interval_of_exactly_zero():
    rng = np.random.default_rng(1)
    a, _ = _two_models(100, rng)
    result = paired_bootstrap(a, a, resamples=200)
    assert (result.delta, result.low, result.high, result.verdict) == (0.0, 0.0, 0.0, "tie")
    groups = np.repeat(np.arange(40), 3)
    labels = rng.random(120) < 0.4
    scores = rng.random((3, 120))
    same = pr_auc_items(groups, labels, scores)
    assert paired_bootstrap(same, pr_auc_items(groups, labels, scores.copy()),
                            resamples=100).verdict == "tie"


def test_an_oracle_wins_against_noise_and_noise_loses():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(100), 3)
    labels = rng.random(300) < 0.3
    oracle = roc_auc_items(groups, labels, labels + 0.1 * rng.random(300))
    noise = roc_auc_items(groups, labels, rng.random(300))
    win = paired_bootstrap(oracle, noise, resamples=300)
    assert win.verdict == "win" and win.low > 0.3 and win.delta == pytest.approx(
        1 - roc_auc_score(labels, noise.values["scores"][0]))
    assert paired_bootstrap(noise, oracle, resamples=300).verdict == "loss"


def test_verdicts_and_intervals():
    assert verdict_of(0.01, 0.2) == "win" and verdict_of(-0.2, -0.01) == "loss"
    assert verdict_of(0.0, 0.0) == "tie" and verdict_of(-0.1, 0.1) == "tie"
    assert verdict_of(float("nan"), 0.1) == "n/a"
    assert interval(np.array([np.nan, np.nan])) != interval(np.array([np.nan, np.nan]))  # NaNs
    assert interval(np.r_[np.arange(101.0), np.nan]) == pytest.approx((2.5, 97.5))


def test_default_pairs_and_config_checks():
    assert default_pairs(["baseline", "clip", "eclip", "tfidf"], ["tfidf"]) == [
        ("eclip", "baseline"), ("eclip", "clip")]
    # every model is compared with the subject, whatever its name (the README's init=... eclip=...)
    assert default_pairs(["baseline", "eclip", "mine"]) == [("eclip", "baseline"),
                                                           ("eclip", "mine")]
    assert default_pairs(["init", "clip", "eclip"]) == [("eclip", "init"), ("eclip", "clip")]
    assert default_pairs(["init", "tuned"]) == [("tuned", "init")]  # no eclip: the last one
    assert default_pairs(["init", "clip", "tuned"], subject="init") == [("init", "clip"),
                                                                       ("init", "tuned")]
    assert default_pairs(["eclip"]) == []
    assert choose_subject(["a", "b"]) == "b" and choose_subject(["eclip", "b"]) == "eclip"
    with pytest.raises(ConfigError, match="eval.subject: 'x' is not among"):
        choose_subject(["a", "b"], "x")
    names = ["baseline", "eclip"]
    check_config(EvalConfig(compare=[["eclip", "baseline"]]), names)
    for bad in ([["eclip"]], [["eclip", "clip"]], [["eclip", "eclip"]]):
        with pytest.raises(ConfigError, match="eval.compare"):
            check_config(EvalConfig(compare=bad), names)
    with pytest.raises(ConfigError, match="eval.bootstrap"):
        check_config(EvalConfig(bootstrap=-1), names)
    with pytest.raises(ConfigError, match="eval.confidence"):
        check_config(EvalConfig(confidence=1.5), names)


def _report():
    report = Report(title="t", headlines={"matching": "cosine_roc_auc"}, references=["tfidf"])
    for modality, (mine, base, tfidf) in {"image": (0.9, 0.8, None), "text": (0.85, 0.84, 0.7),
                                          "both": (0.7, 0.75, None)}.items():
        report.add("matching", modality, "baseline", "cosine_roc_auc", base)
        report.add("matching", modality, "eclip", "cosine_roc_auc", mine)
        if tfidf is not None:
            report.add("matching", modality, "tfidf", "cosine_roc_auc", tfidf)
    report.meta["bootstrap"] = {"resamples": 1000, "confidence": 0.95}
    report.comparisons += [
        Comparison("matching", "image", "eclip", "baseline", "cosine_roc_auc", 0.1, 0.05, 0.15,
                   "win"),
        Comparison("matching", "text", "eclip", "baseline", "cosine_roc_auc", 0.01, -0.02, 0.04,
                   "tie"),
        Comparison("matching", "both", "eclip", "baseline", "cosine_roc_auc", -0.05, -0.08, -0.02,
                   "loss"),
        Comparison("matching", "image", "eclip", "baseline", "other_metric", 0.1, float("nan"),
                   float("nan"), "n/a")]
    return report


def test_report_counts_only_wins_and_shows_the_verdict_table(tmp_path):
    report = _report()
    line = report.verdict("matching")
    assert line.startswith("matching (cosine_roc_auc): no — eclip wins (interval above 0) against "
                           "baseline in 1/3 (image +0.100 [+0.050, +0.150] win, text +0.010 "
                           "[-0.020, +0.040] tie, both -0.050 [-0.080, -0.020] loss)")
    assert "tfidf (reference, no interval: text +0.150)" in line
    assert report.beats_all("matching") is False
    table = report.verdict_table()
    assert table[0] == "| task (metric) | modality | eclip − baseline |"
    assert "| matching (cosine_roc_auc) | text | +0.010 [-0.020, +0.040] tie |" in table
    assert table[-1] == "| **all** | | 1 win · 1 tie · 1 loss |"
    json_path, md_path = report.write(tmp_path)
    data = json.loads(json_path.read_text())
    assert data["comparisons"][0] == {
        "task": "matching", "modality": "image", "model": "eclip", "reference": "baseline",
        "metric": "cosine_roc_auc", "delta": 0.1, "ci_low": 0.05, "ci_high": 0.15, "verdict": "win"}
    assert data["comparisons"][3]["ci_low"] is None  # NaN: valid JSON
    roles = ("Subject: **eclip**, compared with baseline (each difference is eclip − other; "
             "`eclip eval --subject NAME` picks another). References, shown but outside the "
             "verdicts: tfidf.")
    assert roles in md_path.read_text() and roles in report.summary_markdown()
    assert data["verdicts"]["matching"] | {"line": None, "margins": None, "not_won": None} == {
        "line": None, "margins": None, "not_won": None, "beats_all": False, "win": 1, "tie": 1,
        "loss": 1}
    assert [(c["modality"], c["verdict"]) for c in data["verdicts"]["matching"]["not_won"]] == [
        ("text", "tie"), ("both", "loss")]
    md = md_path.read_text()
    assert "## Verdict table" in md and "| **all** | | 1 win · 1 tie · 1 loss |" in md
    assert "| image | other_metric | eclip − baseline | +0.100 [n/a] n/a |" in md
    assert "## Verdict table" in report.summary_markdown()
    # all wins: yes
    report.comparisons = [c for c in report.comparisons if c.verdict == "win"]
    assert report.beats_all("matching") is True


def test_html_verdict_table_colours_each_cell():
    from eclip.tasks.html import verdict_table

    page = verdict_table(_report())
    assert '<td class="win">+0.100 [+0.050, +0.150] win</td>' in page
    assert '<td class="loss">' in page and '<td class="tie">' in page
    assert "1 win · 1 tie · 1 loss" in page


def _context(config, outcomes, report):
    """A real task context: 40 test listings in catalogs of two, four models' (empty) views."""
    from eclip.catalog.schema import Listing
    from eclip.catalog.splits import EvalSplits
    from eclip.tasks.context import TaskContext
    from eclip.tasks.views import ModelViews

    listings = [Listing(product_id=f"p{i}", title="t", images=["x.png"], catalog_id=f"c{i // 2}",
                        split="test") for i in range(40)]
    splits = EvalSplits(listings, np.array(["test"] * 40), "the split column")
    views = [ModelViews(n, "joint", {}) for n in ("baseline", "clip", "eclip", "tfidf")]
    return TaskContext(splits, views, config, report, outcomes=outcomes, log=lambda _: None)


def test_compare_models_pairs_the_configured_models_in_report_order():
    from eclip.tasks.bootstrap import compare_models

    rng = np.random.default_rng(4)
    groups = np.array([f"c{i // 2}" for i in range(40)])
    truth = rng.random(40) < 0.5
    report = Report(headlines={"category": "probe_accuracy"}, references=["tfidf"])
    outcomes = {}
    for modality in ("text", "image"):  # kept out of order, as job threads may
        for model, correct in (("eclip", np.ones(40)), ("clip", truth), ("baseline", truth),
                               ("tfidf", truth)):
            outcomes[("category", modality, model, "probe_accuracy")] = mean_items(groups, correct)
    for modality in ("image", "text"):
        for model in ("baseline", "clip", "eclip"):
            report.add("category", modality, model, "probe_accuracy", 0.5)
    found = compare_models(_context(EvalConfig(bootstrap=300), dict(outcomes), report))
    assert [(c.modality, c.model, c.reference) for c in found] == [
        ("image", "eclip", "baseline"), ("image", "eclip", "clip"),
        ("text", "eclip", "baseline"), ("text", "eclip", "clip")]
    assert all(c.verdict == "win" and c.delta == pytest.approx(1 - truth.mean()) for c in found)
    assert report.meta["bootstrap"]["catalogs"] == 20
    report.comparisons = []
    found = compare_models(_context(EvalConfig(bootstrap=300, compare=[["clip", "baseline"]]),
                                    dict(outcomes), report))
    assert [(c.model, c.verdict, c.ci_low, c.ci_high) for c in found] == [
        ("clip", "tie", 0.0, 0.0), ("clip", "tie", 0.0, 0.0)]
    assert compare_models(_context(EvalConfig(bootstrap=0), dict(outcomes), report)) == []
