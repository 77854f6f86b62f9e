"""Classification on top of the index: categories by neighbour vote, adult by logistic regression.

Categories: the query's nearest indexed listings vote for their categories, each with weight
``exp(scale * (similarity - best))`` (``scale`` is the model's logit scale), and the votes are
normalised to sum to one. The vote follows every add, update and delete with no refit, and on the
demo catalog it beats zero-shot category prompts by a wide margin (docs/SEARCH.md has the figures).

Adult: one logistic regression per modality (image, text, both) fitted on the listings whose adult
flag is known, refitted at every index write and stored as plain numbers in ``heads.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_FIT_ROWS = 200_000  # a random sample of this many labelled listings is enough for 256 weights


@dataclass
class AdultHead:
    """``p(adult | v) = sigmoid(v . coef + intercept)`` for unit vectors ``v`` of one modality."""

    coef: np.ndarray
    intercept: float
    n: int
    positives: int

    def probability(self, vector: np.ndarray) -> float:
        z = float(np.dot(self.coef, vector) + self.intercept)
        return float(1.0 / (1.0 + np.exp(-z)))

    def to_dict(self) -> dict:
        return {"coef": [float(x) for x in self.coef], "intercept": self.intercept, "n": self.n,
                "positives": self.positives}

    @classmethod
    def from_dict(cls, data: dict) -> AdultHead:
        return cls(np.asarray(data["coef"], dtype=np.float32), float(data["intercept"]),
                   int(data["n"]), int(data["positives"]))


def fit_adult_head(vectors: np.ndarray, labels: np.ndarray, *, rows: np.ndarray | None = None,
                   seed: int = 0) -> AdultHead | None:
    """A logistic regression on labelled vectors; None without both classes among the labels.

    ``rows``: the rows of ``vectors`` that ``labels`` label (None: every row, in order); only the
    rows fitted on (at most ``MAX_FIT_ROWS``, sampled) are read, so ``vectors`` may be a
    memory-mapped file of any size."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, dtype=np.int64)
    if len(np.unique(labels)) < 2:
        return None
    rows = np.arange(len(labels)) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(labels) > MAX_FIT_ROWS:
        sample = np.random.default_rng(seed).choice(len(labels), MAX_FIT_ROWS, replace=False)
        rows, labels = rows[sample], labels[sample]
    vectors = np.asarray(vectors[rows], dtype=np.float32)
    model = LogisticRegression(C=1.0, max_iter=2000).fit(vectors, labels)
    return AdultHead(model.coef_[0].astype(np.float32), float(model.intercept_[0]), len(labels),
                     int(labels.sum()))


def vote_categories(scores: np.ndarray, categories: list[str | None], scale: float,
                    top: int) -> list[tuple[str, float]]:
    """Similarity-weighted vote of neighbours for their categories, best first, shares of one."""
    totals: dict[str, float] = {}
    if len(scores) == 0:
        return []
    weights = np.exp(scale * (np.asarray(scores, dtype=np.float64) - float(np.max(scores))))
    for weight, category in zip(weights, categories):
        if category:
            totals[category] = totals.get(category, 0.0) + float(weight)
    norm = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:top]
    return [(category, value / norm) for category, value in ranked]
