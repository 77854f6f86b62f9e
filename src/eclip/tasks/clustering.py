"""Task 4, product clustering: group listings into catalogs without labels.

Each listing is linked to its ``k`` nearest neighbours (FAISS, inner product of unit vectors) when
their similarity reaches a threshold; the clusters are the connected components of that graph
(union-find through scipy's sparse graph routines). Memory is O(N k): no N x N matrix is built, so
a million listings fit. Up to ``EXACT_LIMIT`` listings the search is exact (a flat index); above it
an IVF index (about 4 sqrt(N) lists, 16 probed) keeps it fast. The threshold is the one with the best
B-cubed F1 on the val split.
Metrics on test: ARI, NMI, pairwise and B-cubed precision/recall/F1.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from eclip.tasks.bootstrap import bcubed_items
from eclip.tasks.context import Job, Outcome, TaskContext
from eclip.tasks.metrics import bcubed_per_item, bcubed_prf, clustering_metrics

TASK = "clustering"
HEADLINE = "bcubed_f1"
EXACT_LIMIT = 200_000
THRESHOLD_CANDIDATES = 60
CHUNK = 2048


def knn(x, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(neighbours [N, k], similarities [N, k])`` of every row among the others (self excluded).

    Dense rows go through FAISS; a scipy sparse matrix (the TF-IDF reference) through chunked sparse
    products. Missing neighbours (fewer than k + 1 rows) are -1 with similarity -inf.
    """
    n = x.shape[0]
    k = min(k, max(n - 1, 0))
    if sp.issparse(x):
        return _sparse_knn(x, k)
    import faiss

    data = np.ascontiguousarray(x, dtype=np.float32)
    if n <= EXACT_LIMIT:
        index = faiss.IndexFlatIP(data.shape[1])
    else:
        lists = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(data.shape[1]), data.shape[1], lists,
                                   faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, size=min(n, 64 * lists), replace=False)
        index.train(data[np.sort(sample)])
        index.nprobe = 16
    index.add(data)
    sims, ids = index.search(data, k + 1)
    return _drop_self(ids, sims, k)


def _drop_self(ids: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id (or, if it is absent, its last neighbour) from k + 1 results."""
    own = ids == np.arange(len(ids))[:, None]
    own[~own.any(axis=1), -1] = True
    keep = ~own
    ids = ids[keep].reshape(len(ids), k)
    sims = sims[keep].reshape(len(sims), k)
    sims[ids < 0] = -np.inf
    return ids, sims


def _sparse_knn(x: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    ids = np.empty((n, k + 1), dtype=np.int64)
    sims = np.empty((n, k + 1), dtype=np.float32)
    for start in range(0, n, CHUNK):
        block = (x[start:start + CHUNK] @ x.T).toarray()
        rows = np.arange(len(block))
        block[rows, start + rows] = np.inf  # self first
        top = np.argpartition(-block, k, axis=1)[:, :k + 1]
        order = np.argsort(-np.take_along_axis(block, top, axis=1), axis=1, kind="stable")
        ids[start:start + CHUNK] = np.take_along_axis(top, order, axis=1)
        sims[start:start + CHUNK] = np.take_along_axis(block, ids[start:start + CHUNK], axis=1)
    return _drop_self(ids, sims, k)


def components(ids: np.ndarray, sims: np.ndarray, threshold: float) -> np.ndarray:
    """Cluster labels: connected components of the edges ``i -> ids[i, j]`` with
    ``sims[i, j] >= threshold``."""
    n = len(ids)
    keep = (sims >= threshold) & (ids >= 0)
    rows = np.repeat(np.arange(n), keep.sum(axis=1))
    graph = sp.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, ids[keep])), shape=(n, n))
    return connected_components(graph, directed=True, connection="weak")[1]


def choose_threshold(ids: np.ndarray, sims: np.ndarray, truth: list[str]) -> float:
    """The similarity threshold (among quantiles of the neighbour similarities) with the best
    B-cubed F1 against ``truth``."""
    finite = sims[np.isfinite(sims)]
    if len(finite) == 0:
        return np.inf
    candidates = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, THRESHOLD_CANDIDATES)))
    scores = [bcubed_prf(truth, components(ids, sims, t))["bcubed_f1"] for t in candidates]
    return float(candidates[int(np.argmax(scores))])


def cluster(x, k: int, threshold: float) -> np.ndarray:
    ids, sims = knn(x, k)
    return components(ids, sims, threshold)


def run_clustering(ctx: TaskContext) -> None:
    groups = np.array(ctx.groups, dtype=object)
    val, test = ctx.rows("val"), ctx.rows("test")

    truth_val = list(groups[val])

    def fit_val(x) -> tuple[float, float]:
        """(threshold, val B-cubed F1) of the val split."""
        ids, sims = knn(x[val], ctx.config.knn_k)
        threshold = choose_threshold(ids, sims, truth_val)
        return threshold, bcubed_prf(truth_val, components(ids, sims, threshold))["bcubed_f1"]

    def evaluate(job: Job) -> Outcome:
        views, modality = job
        x = views.task[modality]
        threshold, _ = fit_val(x)
        predicted = cluster(x[test], ctx.config.knn_k, threshold)
        metrics = clustering_metrics(list(groups[test]), predicted)
        metrics["clusters"] = float(len(np.unique(predicted)))
        ctx.keep(TASK, job, "bcubed_f1",
                 bcubed_items(groups[test], *bcubed_per_item(list(groups[test]), predicted)))
        return [("", [metrics])], (test, predicted)

    examples = ctx.figures.setdefault("clusters", {})
    for (model, modality), (rows, predicted) in ctx.run(TASK, evaluate).items():
        examples[(model, modality)] = (rows, predicted)
    ctx.report.meta["clustering_test_catalogs"] = int(len(set(groups[test])))
