"""Metrics of the downstream tasks: classification, binary decisions, ranking and clustering.

Every function takes plain arrays and returns floats (or a dict of floats), so each can be checked by
hand on a few items. Clustering metrics work from the contingency of (truth, prediction) label pairs
and never build an N x N matrix, so they run on a million listings.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from sklearn.metrics import (adjusted_rand_score, average_precision_score, f1_score,
                             normalized_mutual_info_score, roc_auc_score)

# ------------------------------------------------------------------------------ classification


def top_k_accuracy(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Share of rows whose true class index is among the ``k`` highest scores of the row.

    A truth of -1 (a class the scores do not cover) is never a hit.
    """
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == truth[:, None]).any(axis=1).mean()) if len(truth) else 0.0


def classification_metrics(truth: Sequence[Hashable], predicted: Sequence[Hashable],
                           scores: np.ndarray | None = None,
                           classes: Sequence[Hashable] | None = None, *,
                           labels: Sequence[Hashable] | None = None) -> dict[str, float]:
    """``accuracy``, ``macro_f1``, ``weighted_f1`` and, with ``scores`` over ``classes``, ``top5``.

    F1 averages run over ``labels`` when given, else over the classes that occur in the truth or the
    predictions (sklearn's rule); ``weighted_f1`` weights each class by its support in the truth.
    """
    truth_list, pred_list = list(truth), list(predicted)
    average = {"labels": list(labels)} if labels is not None else {}
    out = {
        "accuracy": float(np.mean([t == p for t, p in zip(truth_list, pred_list)])),
        "macro_f1": float(f1_score(truth_list, pred_list, average="macro", zero_division=0,
                                   **average)),
        "weighted_f1": float(f1_score(truth_list, pred_list, average="weighted", zero_division=0,
                                      **average)),
    }
    if scores is not None and classes is not None:
        position = {c: i for i, c in enumerate(classes)}
        index = np.array([position.get(t, -1) for t in truth_list])
        out["top5"] = top_k_accuracy(scores, index, 5)
    return out


def micro_f1(truth: Sequence[Hashable], predicted: Sequence[Hashable | None]) -> float:
    """Micro-F1 of single-label predictions that may abstain (``None``).

    Precision = correct / predicted, recall = correct / items; without abstentions it is accuracy.
    """
    made = sum(p is not None for p in predicted)
    correct = sum(p is not None and p == t for t, p in zip(truth, predicted))
    if correct == 0:
        return 0.0
    precision, recall = correct / made, correct / len(truth)
    return 2 * precision * recall / (precision + recall)


# ------------------------------------------------------------------------------------- binary


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores))


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (the step-wise area under the precision-recall curve)."""
    return float(average_precision_score(labels, scores))


def _operating_points(labels: np.ndarray, scores: np.ndarray):
    """Precision, recall and threshold at every distinct score, highest score first."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    s, y = np.asarray(scores, dtype=float)[order], labels[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # last row of each tied score
    tp = np.cumsum(y)[last]
    predicted = last + 1
    precision = tp / predicted
    recall = tp / max(int(labels.sum()), 1)
    return precision, recall, s[last]


def precision_at_recall(labels: np.ndarray, scores: np.ndarray, recall: float) -> float:
    """The best precision of any threshold whose recall is at least ``recall``."""
    p, r, _ = _operating_points(labels, scores)
    ok = r >= recall - 1e-12
    return float(p[ok].max()) if ok.any() else 0.0


def recall_at_precision(labels: np.ndarray, scores: np.ndarray, precision: float) -> float:
    """The best recall of any threshold whose precision is at least ``precision`` (0 if none)."""
    p, r, _ = _operating_points(labels, scores)
    ok = p >= precision - 1e-12
    return float(r[ok].max()) if ok.any() else 0.0


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold (predict positive when ``score >= threshold``) with the highest F1."""
    p, r, t = _operating_points(labels, scores)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    return float(t[int(np.argmax(f1))])


def confusion_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    """``tp``, ``fp``, ``fn``, ``tn`` when ``score >= threshold`` is called positive."""
    y = np.asarray(labels).astype(bool)
    hit = np.asarray(scores) >= threshold
    return {"tp": int((hit & y).sum()), "fp": int((hit & ~y).sum()),
            "fn": int((~hit & y).sum()), "tn": int((~hit & ~y).sum())}


def f1_from_confusion(counts: dict[str, int]) -> float:
    denominator = 2 * counts["tp"] + counts["fp"] + counts["fn"]
    return 2 * counts["tp"] / denominator if denominator else 0.0


# ------------------------------------------------------------------------------------ ranking


# same_group_retrieval (R@k, MRR, mAP of group mates; ties by item index) lives in
# eclip.encode.retrieval, where choosing the fusion weight uses it too


# --------------------------------------------------------------------------------- clustering


def _contingency(truth: Sequence[Hashable], predicted: Sequence[Hashable]):
    """Sizes of every (truth, predicted) cell, every truth class and every predicted cluster,
    with per-item indices into them."""
    t = np.unique(np.asarray([str(x) for x in truth]), return_inverse=True)[1]
    p = np.unique(np.asarray([str(x) for x in predicted]), return_inverse=True)[1]
    cell = np.unique(t.astype(np.int64) * (p.max() + 1) + p, return_inverse=True)[1]
    return t, p, cell, np.bincount(t), np.bincount(p), np.bincount(cell)


def _pairs(n: np.ndarray) -> float:
    return float((n.astype(np.float64) * (n - 1) / 2).sum())


def pairwise_prf(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> dict[str, float]:
    """Precision / recall / F1 over item pairs: a pair is positive when both share a cluster."""
    _, _, _, n_true, n_pred, n_cell = _contingency(truth, predicted)
    together, true_pairs, pred_pairs = _pairs(n_cell), _pairs(n_true), _pairs(n_pred)
    precision = together / pred_pairs if pred_pairs else 1.0
    recall = together / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"pair_precision": precision, "pair_recall": recall, "pair_f1": f1}


def bcubed_per_item(truth: Sequence[Hashable],
                    predicted: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """Every item's B-cubed precision (the share of its predicted cluster that shares its class)
    and recall (the share of its class that shares its cluster)."""
    t, p, cell, n_true, n_pred, n_cell = _contingency(truth, predicted)
    return n_cell[cell] / n_pred[p], n_cell[cell] / n_true[t]


def bcubed_prf(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> dict[str, float]:
    """B-cubed: per item, the share of its predicted cluster that shares its class (precision) and
    the share of its class that shares its cluster (recall), averaged over items."""
    per_precision, per_recall = bcubed_per_item(truth, predicted)
    precision, recall = float(np.mean(per_precision)), float(np.mean(per_recall))
    return {"bcubed_precision": precision, "bcubed_recall": recall,
            "bcubed_f1": 2 * precision * recall / (precision + recall)}


def clustering_metrics(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> dict[str, float]:
    """ARI, NMI, pairwise and B-cubed precision / recall / F1."""
    t = [str(x) for x in truth]
    p = [str(x) for x in predicted]
    out = {"ARI": float(adjusted_rand_score(t, p)), "NMI": float(normalized_mutual_info_score(t, p))}
    out.update(pairwise_prf(t, p))
    out.update(bcubed_prf(t, p))
    return out
