"""The building blocks of the tasks on small synthetic data: kNN graph clustering, matching pairs,
probes, splits and task availability, attribute spans, report verdicts."""

import numpy as np
import pytest
import scipy.sparse as sp

from eclip.catalog.schema import Listing
from eclip.tasks import clustering
from eclip.tasks.attribute import span_extract
from eclip.tasks.category import level_metrics
from eclip.tasks.data import eval_splits, task_availability
from eclip.tasks.matching import cosine, make_pairs, pair_features
from eclip.tasks.probes import catalog_subsample, run_probe
from eclip.tasks.report import Report


def _blobs(n_clusters=20, per=5, dim=16, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim))
    x = np.repeat(centers, per, axis=0) + noise * rng.normal(size=(n_clusters * per, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [f"g{i // per}" for i in range(n_clusters * per)]


def test_knn_matches_brute_force_and_leaves_self_out():
    x, _ = _blobs()
    ids, sims = clustering.knn(x, 4)
    dense = x @ x.T
    np.fill_diagonal(dense, -np.inf)
    expected = np.argsort(-dense, axis=1)[:, :4]
    assert (ids != np.arange(len(x))[:, None]).all()
    np.testing.assert_allclose(sims, np.take_along_axis(dense, expected, axis=1), rtol=1e-5)
    sparse_ids, sparse_sims = clustering.knn(sp.csr_matrix(x), 4)
    np.testing.assert_allclose(sparse_sims, sims, rtol=1e-5)


def test_ivf_index_above_the_exact_limit_finds_the_same_clusters(monkeypatch):
    x, groups = _blobs(n_clusters=40, per=6)
    monkeypatch.setattr(clustering, "EXACT_LIMIT", 50)  # force the IVF path on 240 rows
    ids, sims = clustering.knn(x, 5)
    same = np.array(groups)[ids] == np.array(groups)[:, None]
    assert same.mean() > 0.95  # neighbours within the blob are found (5 true mates each)


def test_components_follow_the_threshold_without_a_dense_matrix():
    ids = np.array([[1, 2], [0, 2], [1, 0], [2, 1]])
    sims = np.array([[0.9, 0.1], [0.9, 0.2], [0.2, 0.1], [0.5, 0.05]])
    labels = clustering.components(ids, sims, 0.4)  # edges 0-1 (0.9) and 3-2 (0.5)
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]
    assert len(set(clustering.components(ids, sims, 0.95))) == 4
    assert len(set(clustering.components(ids, sims, 0.0))) == 1


def test_threshold_chosen_on_one_split_recovers_blobs_on_another():
    x_val, g_val = _blobs(seed=1)
    x_test, g_test = _blobs(seed=2)
    ids, sims = clustering.knn(x_val, 6)
    threshold = clustering.choose_threshold(ids, sims, g_val)
    predicted = clustering.cluster(x_test, 6, threshold)
    from eclip.tasks.metrics import clustering_metrics

    assert clustering_metrics(g_test, predicted)["bcubed_f1"] > 0.95


def _listing(i, group, category="A > x", **kw):
    return Listing(product_id=f"p{i}", title=kw.pop("title", f"item {i}"), images=["x.jpg"],
                   catalog_id=group, category=category, **kw)


def test_make_pairs_positives_share_a_catalog_and_hard_negatives_a_category():
    from sklearn.feature_extraction.text import TfidfVectorizer

    titles = ["red apple", "red apple x2", "green apple", "green apple set", "blue car",
              "blue car big", "apple red small"]
    groups = np.array(["a", "a", "b", "b", "c", "c", "d"], dtype=object)
    categories = np.array(["food"] * 4 + ["toy"] * 2 + ["food"], dtype=object)
    t = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3)).fit_transform(titles).tocsr()
    pairs = make_pairs(np.arange(7), groups, categories, t, hard=1, random=1, seed=0)
    assert len(set(zip(pairs.a, pairs.b))) == len(pairs)
    assert (pairs.a < pairs.b).all()
    assert (groups[pairs.a][pairs.label] == groups[pairs.b][pairs.label]).all()
    assert (groups[pairs.a][~pairs.label] != groups[pairs.b][~pairs.label]).all()
    assert pairs.label.sum() == 3  # one per multi-listing catalog (both members draw the same pair)
    # the singleton "apple red small" gets a hard negative from the food category
    d = np.flatnonzero((pairs.a == 6) | (pairs.b == 6))
    assert any(categories[pairs.a[i]] == categories[pairs.b[i]] == "food" for i in d)
    again = make_pairs(np.arange(7), groups, categories, t, hard=1, random=1, seed=0)
    assert (again.a == pairs.a).all() and (again.b == pairs.b).all()


def test_cosine_and_pair_features_agree_for_dense_and_sparse():
    x = np.array([[1.0, 0, 0], [0.6, 0.8, 0], [0, 0, 1]], dtype=np.float32)
    from eclip.tasks.matching import Pairs

    pairs = Pairs(np.array([0, 0]), np.array([1, 2]), np.array([True, False]))
    np.testing.assert_allclose(cosine(x, pairs), [0.6, 0.0])
    np.testing.assert_allclose(cosine(sp.csr_matrix(x), pairs), [0.6, 0.0])
    dense = pair_features(x, pairs)
    np.testing.assert_allclose(dense[0], [0.6, 0.6, 0, 0, 0.4, 0.8, 0])
    np.testing.assert_allclose(pair_features(sp.csr_matrix(x), pairs).toarray(), dense)


def test_catalog_subsample_keeps_whole_catalogs_and_is_seeded():
    groups = [f"g{i // 3}" for i in range(30)]
    rows = np.arange(30)
    kept = catalog_subsample(groups, rows, 0.5, seed=1)
    kept_groups = {groups[i] for i in kept}
    assert len(kept_groups) == 5 and len(kept) == 15
    assert all(groups[i] not in kept_groups for i in set(rows) - set(kept))
    assert (catalog_subsample(groups, rows, 0.5, seed=1) == kept).all()
    assert not (catalog_subsample(groups, rows, 0.5, seed=2) == kept).all()
    assert (catalog_subsample(groups, rows, 1.0, seed=1) == rows).all()


def test_probe_learns_separable_classes_and_seeds_differ():
    x, groups = _blobs(n_clusters=12, per=6, noise=0.3)
    labels = np.array([f"c{int(g[1:]) % 3}" for g in groups], dtype=object)  # 3 classes
    order = np.arange(len(x))
    train, val, test = order[order % 6 < 4], order[order % 6 == 4], order[order % 6 == 5]
    run = run_probe(x, labels, train, val, test, groups, seeds=3, fraction=0.8,
                    c_grid=(0.01, 100.0))
    assert run.C == 100.0  # the weak C cannot fit the classes; val prefers the strong one
    accuracy = [(run.classes[s.argmax(1)] == labels[test]).mean() for s in run.test_scores]
    assert min(accuracy) >= 0.9
    assert len(run.val_scores) == 3 and not np.allclose(run.test_scores[0], run.test_scores[1])


def test_eval_splits_keep_the_column_hash_the_rest_and_carve_val():
    given = [_listing(i, f"g{i // 2}", split=s) for i, s in
             enumerate(["train", "train", "val", "val", "test", "test"])]
    assert list(eval_splits(given).split) == ["train", "train", "val", "val", "test", "test"]
    free = [_listing(i, f"g{i // 2}") for i in range(400)]
    splits = eval_splits(free)
    assert splits.source == "a hash of the catalog id"
    by_group = {}
    for x, s in zip(free, splits.split):
        by_group.setdefault(x.group_id, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())  # no catalog in two splits
    counts = splits.counts()
    assert 0.55 < counts["train"] / 400 < 0.85 and counts["val"] > 0 and counts["test"] > 0
    assert (eval_splits(free).split == splits.split).all()
    no_val = [_listing(i, f"g{i // 2}", split="train" if i < 300 else "test") for i in range(400)]
    carved = eval_splits(no_val)
    assert carved.counts()["val"] > 0 and "carved" in carved.source
    assert set(carved.split[300:]) == {"test"}


def test_task_availability_names_the_missing_field():
    listings = [_listing(i, f"g{i // 2}", category=None, split=("train", "val", "test")[i % 3])
                for i in range(30)]
    available = task_availability(eval_splits(listings))
    assert "no listing has a category" in available["category"]
    assert "'attributes'" in available["attribute"]
    assert "'adult'" in available["adult"]
    assert available["matching"] is None and available["clustering"] is None
    lonely = [_listing(i, None, split=("train", "val", "test")[i % 3]) for i in range(30)]
    assert "'catalog_id'" in task_availability(eval_splits(lonely))["clustering"]


def test_span_extract_finds_whole_words_and_abstains_on_ties():
    titles = ["Red apple 2 pack", "사과 빨강", "redish thing", "red or blue", "size M shirt",
              "Dark Red mug"]
    assert span_extract(titles, ["red", "blue", "M", "dark red"]) == \
        ["red", None, None, None, "M", "dark red"]


def test_top_level_scores_come_from_the_leaves():
    classes = np.array(["A > x", "A > y", "B > z"], dtype=object)
    scores = np.array([[0.3, 0.3, 0.4], [0.1, 0.2, 0.7]])
    truth = np.array(["A > y", "B > z"], dtype=object)
    summed = level_metrics(scores, classes, truth, np.sum)
    assert summed["accuracy"] == 0.5  # leaf: B > z twice
    assert summed["top_level_accuracy"] == 1.0  # A: 0.6 > B: 0.4 in row 0
    assert level_metrics(scores, classes, truth, np.max)["top_level_accuracy"] == 0.5


def test_report_verdict_margins_exclude_references_from_the_answer():
    report = Report(headlines={"matching": "auc"}, references=["tfidf"])
    for model, values in {"baseline": (0.5, 0.6), "clip": (0.7, 0.8), "eclip": (0.8, 0.9),
                          "tfidf": (None, 0.95)}.items():
        for modality, value in zip(("image", "text"), values):
            if value is not None:
                report.add("matching", modality, model, "auc", value, 0.01)
    assert report.beats_all("matching") is True
    assert report.margins("matching")["tfidf"] == {"text": pytest.approx(-0.05)}
    line = report.verdict("matching")
    assert line.startswith("matching (auc): yes") and "tfidf in 0/1 (text -0.050)" in line
    report.add("matching", "both", "eclip", "auc", 0.5)
    report.add("matching", "both", "clip", "auc", 0.6)
    assert report.beats_all("matching") is False
    md = report.to_markdown()
    assert "| text | 0.600 ± 0.010 | 0.800 ± 0.010 | 0.900 ± 0.010 | **0.950 ± 0.010** |" in md
    assert "Verdict: matching (auc): no" in md


def test_counts_are_never_bolded():
    report = Report()
    report.add("adult", "image", "a", "fp", 3)
    report.add("adult", "image", "b", "fp", 5)
    assert "| image | fp | 3.000 | 5.000 |" in report.to_markdown()
