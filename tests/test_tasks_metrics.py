"""Every metric of the downstream tasks against values worked out by hand on a few items."""

import numpy as np
import pytest

from eclip.encode import retrieval as R
from eclip.tasks import metrics as M

# labels and scores of one binary example, in descending score order; its operating points are
# (precision, recall): 0.9 -> (1, 1/3), 0.8 -> (1/2, 1/3), 0.7 -> (2/3, 2/3), 0.3 -> (1/2, 2/3),
# 0.2 -> (3/5, 1)
LABELS = np.array([1, 0, 1, 0, 1])
SCORES = np.array([0.9, 0.8, 0.7, 0.3, 0.2])


def test_top_k_accuracy_counts_truth_among_the_k_best_and_never_an_unknown_class():
    scores = np.array([[0.1, 0.5, 0.4], [0.9, 0.06, 0.04], [0.2, 0.3, 0.5]])
    truth = np.array([2, 1, -1])
    assert M.top_k_accuracy(scores, truth, 1) == 0.0
    assert M.top_k_accuracy(scores, truth, 2) == pytest.approx(2 / 3)
    assert M.top_k_accuracy(scores, truth, 10) == pytest.approx(2 / 3)  # k capped at 3 classes


def test_classification_metrics_accuracy_macro_and_weighted_f1():
    # per class: a P=1 R=1/2 F1=2/3; b P=1/3 R=1 F1=1/2; c F1=0; supports 2, 1, 1
    out = M.classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "b"])
    assert out["accuracy"] == 0.5
    assert out["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert out["weighted_f1"] == pytest.approx((2 * 2 / 3 + 1 / 2 + 0) / 4)
    assert "top5" not in out


def test_classification_metrics_labels_restrict_the_f1_average():
    # an abstention ("") is wrong but is not a class of its own in the average
    out = M.classification_metrics(["a", "b"], ["a", ""], labels=["a", "b"])
    assert out["accuracy"] == 0.5
    assert out["macro_f1"] == pytest.approx((1.0 + 0.0) / 2)


def test_micro_f1_with_abstentions():
    # 3 predictions, 2 correct, 4 items: P = 2/3, R = 1/2
    assert M.micro_f1(["x", "y", "z", "w"], ["x", None, "z", "q"]) == pytest.approx(4 / 7)
    assert M.micro_f1(["x", "y"], ["x", "q"]) == pytest.approx(0.5)  # no abstention: accuracy
    assert M.micro_f1(["x"], [None]) == 0.0


def test_binary_curve_metrics_by_hand():
    assert M.roc_auc(LABELS, SCORES) == pytest.approx(3 / 6)  # 3 of 6 (pos, neg) pairs ordered
    assert M.pr_auc(LABELS, SCORES) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5)
    assert M.precision_at_recall(LABELS, SCORES, 0.9) == pytest.approx(0.6)
    assert M.precision_at_recall(LABELS, SCORES, 0.6) == pytest.approx(2 / 3)
    assert M.recall_at_precision(LABELS, SCORES, 0.95) == pytest.approx(1 / 3)
    assert M.recall_at_precision(LABELS, SCORES, 0.6) == pytest.approx(1.0)
    assert M.recall_at_precision(np.array([0, 1]), np.array([0.9, 0.1]), 0.95) == 0.0


def test_best_threshold_and_confusion_counts():
    # F1 per threshold: 0.5, 0.4, 2/3, 4/7, 0.75
    assert M.best_f1_threshold(LABELS, SCORES) == pytest.approx(0.2)
    counts = M.confusion_at(LABELS, SCORES, 0.7)
    assert counts == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert M.f1_from_confusion(counts) == pytest.approx(4 / 6)
    assert M.f1_from_confusion({"tp": 0, "fp": 0, "fn": 0, "tn": 3}) == 0.0


def test_tied_scores_form_one_operating_point():
    labels, scores = np.array([1, 0]), np.array([0.5, 0.5])
    assert M.precision_at_recall(labels, scores, 1.0) == 0.5
    assert M.recall_at_precision(labels, scores, 0.9) == 0.0


def test_same_group_retrieval_recall_mrr_and_map():
    # scores are dot products; item 2 is the only B, so it is in the gallery but not a query.
    # query 0 ranks 2(B) 1(A) 3(A): AP (1/2 + 2/3)/2, first hit rank 2
    # query 1 ranks 0(A) 2(B) 3(A): AP (1 + 2/3)/2, first hit rank 1
    # query 3 ranks 0(A) 2(B) 1(A): AP (1 + 2/3)/2, first hit rank 1
    vectors = np.array([[1.0, 0], [0.5, 0], [0.8, 0], [0.2, 0]])
    out = R.same_group_retrieval(vectors, ["A", "A", "B", "A"], ks=(1, 2))
    assert out["R@1"] == pytest.approx(2 / 3)
    assert out["R@2"] == pytest.approx(1.0)
    assert out["MRR"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert out["mAP"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 2 * (1 + 2 / 3) / 2) / 3)
    import scipy.sparse as sp

    assert R.same_group_retrieval(sp.csr_matrix(vectors), ["A", "A", "B", "A"], ks=(1, 2)) == \
        pytest.approx(out)


def test_the_fusion_weight_s_mrr_is_the_evaluation_s_with_one_tie_rule():
    from eclip.encode.fusion import same_catalog_mrr

    # every score ties: query 0 meets 1 (another catalog) before its mate 2, by index (rank 2);
    # query 2 meets its mate 0 first (rank 1)
    vectors = np.ones((3, 2)) / np.sqrt(2)
    assert same_catalog_mrr(vectors, ["A", "B", "A"]) == pytest.approx((1 / 2 + 1) / 2)
    assert R.same_group_retrieval(vectors, ["A", "B", "A"], ks=())["MRR"] == pytest.approx(0.75)
    rng = np.random.default_rng(5)
    vectors, groups = np.round(rng.standard_normal((80, 4))), list(rng.integers(0, 20, size=80))
    assert same_catalog_mrr(vectors, groups) == R.same_group_retrieval(vectors, groups)["MRR"]
    assert same_catalog_mrr(vectors, list(range(80))) == 0.0  # no catalog with two listings


def test_pairwise_and_bcubed_by_hand():
    truth, predicted = ["a", "a", "a", "b", "b"], [1, 1, 2, 2, 2]
    # 4 true pairs, 4 predicted pairs, 2 in both
    assert M.pairwise_prf(truth, predicted) == pytest.approx(
        {"pair_precision": 0.5, "pair_recall": 0.5, "pair_f1": 0.5})
    # per item precision 1, 1, 1/3, 2/3, 2/3 and recall 2/3, 2/3, 1/3, 1, 1
    out = M.bcubed_prf(truth, predicted)
    assert out["bcubed_precision"] == pytest.approx(11 / 15)
    assert out["bcubed_recall"] == pytest.approx(11 / 15)
    assert out["bcubed_f1"] == pytest.approx(11 / 15)


def test_clustering_metrics_are_perfect_for_a_relabelled_truth_and_low_for_one_cluster():
    truth = ["a", "a", "b", "b", "c", "c"]
    perfect = M.clustering_metrics(truth, [7, 7, 3, 3, 5, 5])
    for key in ("ARI", "NMI", "pair_f1", "bcubed_f1"):
        assert perfect[key] == pytest.approx(1.0)
    lumped = M.clustering_metrics(truth, [0] * 6)
    assert lumped["ARI"] == pytest.approx(0.0)
    assert lumped["pair_recall"] == 1.0 and lumped["pair_precision"] == pytest.approx(3 / 15)
    assert lumped["bcubed_precision"] == pytest.approx(1 / 3)


def _retrieval_by_full_sort(vectors, groups, ks):
    """The definition, row by row: sort every other item (stable: ties by index), read the ranks."""
    import scipy.sparse as sp

    dense = vectors.toarray() if sp.issparse(vectors) else np.asarray(vectors)
    sims = dense @ dense.T
    groups = np.asarray(groups)
    out, n = {f"R@{k}": 0.0 for k in ks} | {"MRR": 0.0, "mAP": 0.0}, 0
    for q in range(len(groups)):
        if (groups == groups[q]).sum() < 2:
            continue
        others = np.array([i for i in range(len(groups)) if i != q])
        order = others[np.argsort(-sims[q, others], kind="stable")]
        relevant = groups[order] == groups[q]
        hit_ranks = np.flatnonzero(relevant) + 1
        for k in ks:
            out[f"R@{k}"] += float(hit_ranks[0] <= k)
        out["MRR"] += 1.0 / hit_ranks[0]
        out["mAP"] += float(np.mean(np.arange(1, len(hit_ranks) + 1) / hit_ranks))
        n += 1
    return {key: value / n for key, value in out.items()}


@pytest.mark.parametrize("ties", [False, True])
def test_same_group_retrieval_equals_the_full_sort_with_ties_singletons_and_chunks(ties,
                                                                                  monkeypatch):
    import scipy.sparse as sp

    rng = np.random.default_rng(3)
    groups = [f"g{g}" for g in rng.integers(0, 60, size=300)]  # sizes 1..~12, some singletons
    vectors = rng.standard_normal((300, 8))
    if ties:  # few distinct scores: many ties, broken by index
        vectors = np.round(vectors)
    expected = _retrieval_by_full_sort(vectors, groups, (1, 5, 10))
    got = R.same_group_retrieval(vectors, groups, ks=(1, 5, 10))
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12)
    assert R.same_group_retrieval(sp.csr_matrix(vectors), groups, ks=(1, 5, 10)) == \
        pytest.approx(got, rel=1e-12)
    # chunked queries (as for a large split) give the same numbers
    monkeypatch.setattr(R, "min", lambda a, b: 7, raising=False)
    assert R.same_group_retrieval(vectors, groups, ks=(1, 5, 10)) == pytest.approx(got, rel=1e-12)
