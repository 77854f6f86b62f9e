"""Task 3, product matching: are two listings the same product (the same catalog)?

Pairs are drawn inside one split: for every listing of a catalog with two or more listings one
positive (another listing of its catalog), and for every listing ``hard_negatives`` hard negatives
(a listing of another catalog in the same category whose title is among the three most similar by
TF-IDF character n-grams; since TF-IDF picks them, they are hardest for the TF-IDF reference) and
``random_negatives`` random ones.

Two deciders: the cosine similarity with the F1-best threshold of the val pairs, and a small pair
classifier (logistic regression on ``[a . b, a * b, |a - b|]``) trained on train pairs, one pair
sample per seed. Metrics on the test pairs: ROC-AUC, F1 at the val threshold and precision at 90 % recall.
Also retrieval of same-catalog listings inside the test split, in one modality (R@1, R@10, MRR, mAP).

``both`` is the fused vector of ``eclip.encode.fuse`` (``w * image cosine + (1 - w) * text cosine``,
the weight fixed), the vector that ``eclip embed`` and search serve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from eclip.encode.retrieval import same_group_retrieval
from eclip.tasks.bootstrap import roc_auc_items
from eclip.tasks.context import Job, Outcome, TaskContext
from eclip.tasks.metrics import (best_f1_threshold, confusion_at, f1_from_confusion,
                                 precision_at_recall, roc_auc)
from eclip.tasks.probes import fit_logreg
from eclip.tasks.views import clean_titles

TASK = "matching"
HEADLINE = "cosine_roc_auc"
HARD_POOL = 3  # a hard negative is drawn from this many most title-similar candidates
CHUNK = 2048


@dataclass
class Pairs:
    a: np.ndarray
    b: np.ndarray
    label: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.label)


def _similar_titles(titles: sp.csr_matrix, rows: np.ndarray, candidates: np.ndarray,
                    groups: np.ndarray, pool: int, rng: np.random.Generator) -> np.ndarray:
    """For each row, one of the ``pool`` candidates of another group with the most similar title
    (-1 when there is none); the similarity matrix is built ``CHUNK`` rows at a time."""
    out = np.full(len(rows), -1, dtype=np.int64)
    for start in range(0, len(rows), CHUNK):
        part = rows[start:start + CHUNK]
        sims = (titles[part] @ titles[candidates].T).toarray()
        sims[groups[part][:, None] == groups[candidates][None, :]] = -np.inf
        k = min(pool, len(candidates))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        for r in range(len(part)):
            ok = top[r][np.isfinite(sims[r, top[r]])]
            if len(ok):
                out[start + r] = candidates[ok[rng.integers(len(ok))]]
    return out


def make_pairs(rows: np.ndarray, groups: np.ndarray, categories: np.ndarray,
               titles: sp.csr_matrix, *, hard: int, random: int, seed: int) -> Pairs:
    """Positive, hard-negative and random-negative pairs among ``rows`` (deduplicated, sorted)."""
    rng = np.random.default_rng([seed, 104729])
    pairs: set[tuple[int, int, bool]] = set()
    by_group: dict[str, list[int]] = {}
    for i in rows:
        by_group.setdefault(groups[i], []).append(int(i))
    for members in by_group.values():
        for i in members if len(members) > 1 else ():
            j = members[rng.integers(len(members) - 1)]
            j = j if j != i else members[-1]
            pairs.add((min(i, j), max(i, j), True))
    by_category: dict[object, list[int]] = {}
    for i in rows:
        by_category.setdefault(categories[i], []).append(int(i))
    for members in by_category.values():
        members = np.asarray(members)
        for _ in range(hard):
            partner = _similar_titles(titles, members, members, groups, HARD_POOL, rng)
            pairs.update((min(i, j), max(i, j), False) for i, j in zip(members, partner) if j >= 0)
    for _ in range(random):
        partner = rows[rng.integers(len(rows), size=len(rows))]
        pairs.update((min(i, j), max(i, j), False) for i, j in zip(rows, partner)
                     if groups[i] != groups[j])
    ordered = sorted(pairs)
    return Pairs(np.array([p[0] for p in ordered], dtype=np.int64),
                 np.array([p[1] for p in ordered], dtype=np.int64),
                 np.array([p[2] for p in ordered], dtype=bool))


def cosine(x, pairs: Pairs) -> np.ndarray:
    if sp.issparse(x):
        return np.asarray(x[pairs.a].multiply(x[pairs.b]).sum(axis=1)).ravel()
    return np.einsum("ij,ij->i", x[pairs.a], x[pairs.b])


def pair_features(x, pairs: Pairs):
    """``[a . b, a * b, |a - b|]`` for every pair (sparse in, sparse out); the cosine itself comes
    first so that the classifier can always fall back on it."""
    a, b = x[pairs.a], x[pairs.b]
    if sp.issparse(x):
        product = a.multiply(b)
        return sp.hstack([product.sum(axis=1), product, abs(a - b)]).tocsr()
    product = a * b
    return np.hstack([product.sum(axis=1, keepdims=True), product, np.abs(a - b)])


def decision_metrics(test: Pairs, test_scores: np.ndarray, threshold: float) -> dict[str, float]:
    return {"roc_auc": roc_auc(test.label, test_scores),
            "f1": f1_from_confusion(confusion_at(test.label, test_scores, threshold)),
            "p@90r": precision_at_recall(test.label, test_scores, 0.9)}


def split_pairs(ctx: TaskContext) -> dict[str, list[Pairs]]:
    """The pairs of every split (train: one sample per seed), built once per context."""
    if "pairs" not in ctx.shared:
        listings = ctx.splits.listings
        cfg = ctx.config
        groups = np.array(ctx.groups, dtype=object)
        categories = np.array([x.category or "" for x in listings], dtype=object)
        titles = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True,
                                 dtype=np.float32).fit_transform(clean_titles(listings)).tocsr()

        def pairs_of(split: str, seed: int) -> Pairs:
            return make_pairs(ctx.rows(split), groups, categories, titles,
                              hard=cfg.hard_negatives, random=cfg.random_negatives, seed=seed)

        ctx.shared["pairs"] = {"val": [pairs_of("val", 0)], "test": [pairs_of("test", 0)],
                               "train": [pairs_of("train", seed) for seed in range(cfg.seeds)]}
    return ctx.shared["pairs"]


def run_matching(ctx: TaskContext) -> None:
    cfg = ctx.config
    groups = np.array(ctx.groups, dtype=object)
    pairs = split_pairs(ctx)
    val, test, train = pairs["val"][0], pairs["test"][0], pairs["train"]
    ctx.report.meta["matching_pairs"] = {"test": len(test), "test_positive": int(test.label.sum()),
                                         "val": len(val), "train": len(train[0])}
    test_rows = ctx.rows("test")
    pair_groups = np.stack([groups[test.a], groups[test.b]], axis=1)  # a pair's two catalogs

    def evaluate(job: Job) -> Outcome:
        views, modality = job
        x = views.task[modality]
        test_scores = cosine(x, test)
        ctx.keep(TASK, job, "cosine_roc_auc", roc_auc_items(pair_groups, test.label, test_scores))
        threshold = best_f1_threshold(val.label, cosine(x, val))
        return ([("cosine_", [decision_metrics(test, test_scores, threshold)]),
                 ("classifier_", _classifier(x, train, val, test, cfg.probe_c)),
                 ("retrieval_", [same_group_retrieval(x[test_rows], groups[test_rows])])],
                (test.label, test_scores))

    ctx.run(TASK, evaluate, figure="matching_scores")


def _classifier(x, train: list[Pairs], val: Pairs, test: Pairs,
                c_grid: list[float]) -> list[dict[str, float]]:
    """Per seed (train pair sample): C and threshold chosen on val pairs, metrics on test pairs."""
    val_x, test_x = pair_features(x, val), pair_features(x, test)
    per_seed, best_c = [], None
    for pairs in train:
        train_x = pair_features(x, pairs)
        candidates = [best_c] if best_c is not None else sorted(c_grid)
        best = (-np.inf, None, None)
        for c in candidates:
            model = fit_logreg(train_x, pairs.label, c)
            val_scores = model.decision_function(val_x)
            score = roc_auc(val.label, val_scores)
            if best[1] is None or score > best[0]:  # an undefined val AUC (one class) keeps the first C
                best = (score, c, (model, val_scores))
        _, best_c, (model, val_scores) = best
        threshold = best_f1_threshold(val.label, val_scores)
        per_seed.append(decision_metrics(test, model.decision_function(test_x), threshold))
    return per_seed
