"""Linear probes on frozen vectors: logistic regression, its C chosen on val, several seeds.

A seed draws a share of the training *catalogs* (all listings of a catalog stay together), so the
spread over seeds says how much a result depends on the training sample. The C grid is walked with
warm starts, and the later seeds start from seed 0's solution.

Run many probes inside ``threadpool_limits(1, "blas")`` (the suite does): these problems are small,
and on a small shared machine BLAS threads fight each other and make lbfgs many times slower.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

DEFAULT_C_GRID = (1.0, 10.0, 100.0)

# (truth labels, scores [n, classes], classes) -> higher is better
Selector = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def accuracy_selector(truth: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> float:
    return float((classes[scores.argmax(axis=1)] == truth).mean())


def catalog_subsample(groups: Sequence[Hashable], rows: np.ndarray, fraction: float,
                      seed: int) -> np.ndarray:
    """The rows whose catalog is among a seeded ``fraction`` of the catalogs of ``rows``."""
    if fraction >= 1.0:
        return np.asarray(rows)
    names = sorted({str(groups[i]) for i in rows})
    keep_n = max(1, int(round(fraction * len(names))))
    rng = np.random.default_rng([seed, 7919])
    kept = {names[i] for i in rng.choice(len(names), size=keep_n, replace=False)}
    return np.asarray([i for i in rows if str(groups[i]) in kept], dtype=np.int64)


def fit_logreg(x, y: np.ndarray, C: float, *, class_weight: str | None = None,
               model: LogisticRegression | None = None) -> LogisticRegression:
    """L2 logistic regression (multinomial for several classes); ``model`` warm-starts the fit."""
    if model is None:
        model = LogisticRegression(C=C, max_iter=200, class_weight=class_weight, warm_start=True)
    model.set_params(C=C)
    return model.fit(x, y)


def scores_over(model: LogisticRegression, x, classes: np.ndarray) -> np.ndarray:
    """Class probabilities in the column order of ``classes`` (0 for classes the model never saw)."""
    proba = model.predict_proba(x)
    out = np.zeros((proba.shape[0], len(classes)), dtype=np.float64)
    column = {c: i for i, c in enumerate(classes)}
    for j, c in enumerate(model.classes_):
        out[:, column[c]] = proba[:, j]
    return out


@dataclass
class ProbeRun:
    """What a probe gave on val and test, one score matrix per seed, over ``classes``."""

    C: float
    classes: np.ndarray
    val_scores: list[np.ndarray]
    test_scores: list[np.ndarray]
    capped: int = 0  # fits that stopped at max_iter before converging


def run_probe(x, labels: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray,
              groups: Sequence[Hashable], *, seeds: int = 3, fraction: float = 0.8,
              c_grid: Sequence[float] = DEFAULT_C_GRID, select: Selector = accuracy_selector,
              class_weight: str | None = None) -> ProbeRun:
    """Fit on train (a catalog subsample per seed), choose C on val with seed 0, report on test.

    ``x`` holds every listing's vector (dense or sparse), ``labels`` every listing's label; only the
    rows in ``train`` / ``val`` / ``test`` are read.
    """
    classes = np.unique(labels[train])
    val_scores, test_scores = [], []
    best_c, best_model, capped = None, None, 0
    for seed in range(seeds):
        rows = catalog_subsample(groups, train, fraction, seed)
        if len(np.unique(labels[rows])) < 2:  # a thin sample lost a class: use all of train
            rows = train
        if best_c is None:  # seed 0 walks the grid (warm-started) and keeps the best C
            model, best_score = None, -np.inf
            for c in sorted(c_grid):
                model = fit_logreg(x[rows], labels[rows], c, class_weight=class_weight,
                                   model=model)
                capped += int(model.n_iter_.max() >= model.max_iter)
                score = select(labels[val], scores_over(model, x[val], classes), classes)
                if score > best_score:
                    best_score, best_c, best_model = score, c, copy.deepcopy(model)
            model = best_model
        else:
            same = np.array_equal(np.unique(labels[rows]), best_model.classes_)
            model = fit_logreg(x[rows], labels[rows], best_c, class_weight=class_weight,
                               model=copy.deepcopy(best_model) if same else None)
            capped += int(model.n_iter_.max() >= model.max_iter)
        val_scores.append(scores_over(model, x[val], classes))
        test_scores.append(scores_over(model, x[test], classes))
    return ProbeRun(float(best_c), classes, val_scores, test_scores, capped)
