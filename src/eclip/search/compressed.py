"""Compressed FAISS kinds for indexes that do not fit memory as float32, with exact re-ranking.

Not wired into ``eclip index`` yet (issue 20, part 2: ``vectors.VectorIndex`` and the stores will
take these kinds); this module holds the pieces: the kinds, what each costs per vector, the choice
under a memory budget, building, searching with optional exact re-ranking from the float vectors
(a memory-mapped ``.npy`` serves), and recall@10 measured against exact search by ids.

Kinds (inner product over unit vectors, ids of our choosing):

* ``hnsw``: ``IndexHNSWFlat`` (float32 vectors plus the graph; ``efSearch`` tuned), no compression,
  the fastest at a given recall; no removal of ids (an update rebuilds it);
* ``fp16`` / ``sq8``: ``IVF`` lists of scalar-quantised vectors (2 or 1 byte a dimension);
* ``ivfpq``: ``OPQ`` rotation + ``IVF`` + product quantisation (``pq_m`` bytes a vector).

The IVF kinds tune ``nprobe``, HNSW ``efSearch``, until recall@10 reaches the target. Compressed
scores are approximate, so recall counts a result by its exact score (from the float vectors), and
``rerank`` (a factor: ``rerank * k`` candidates re-scored exactly) restores exact scores and order.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from eclip.errors import ConfigError
from eclip.search.vectors import RECALL_K, default_nlist, exact_top_scores, near_duplicate_queries

COMPRESSED_KINDS = ("hnsw", "fp16", "sq8", "ivfpq")
ID_BYTES = 8  # an int64 id per vector in the IVF lists / the id map


@dataclass
class CompressedSettings:
    kind: str = "sq8"
    nlist: int | None = None  # IVF lists; None: vectors.default_nlist
    pq_m: int | None = None  # ivfpq: sub-quantizers; None: dim // 8
    pq_bits: int = 8  # ivfpq: bits per sub-quantizer code (8: pq_m bytes a vector)
    hnsw_m: int = 32
    rerank: int = 0  # 0: no re-ranking; r: the best r * k candidates re-scored exactly
    target_recall: float = 0.95
    recall_queries: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in COMPRESSED_KINDS:
            raise ConfigError(f"compressed kind must be one of {', '.join(COMPRESSED_KINDS)}, "
                              f"got {self.kind!r}")
        if self.rerank < 0:
            raise ConfigError(f"rerank must be >= 0, got {self.rerank}")


def bytes_per_vector(kind: str, dim: int, *, pq_m: int | None = None, hnsw_m: int = 32) -> int:
    """Memory one vector costs in an index of ``kind`` (``exact``: float32 and its id)."""
    if kind in ("exact", "ivf"):
        return 4 * dim + ID_BYTES
    if kind == "hnsw":  # the vector, 2M level-0 links of 4 bytes, the id map
        return 4 * dim + 2 * hnsw_m * 4 + ID_BYTES
    if kind == "fp16":
        return 2 * dim + ID_BYTES
    if kind == "sq8":
        return dim + ID_BYTES
    if kind == "ivfpq":
        return (pq_m or max(dim // 8, 1)) + ID_BYTES
    raise ConfigError(f"unknown index kind {kind!r}")


def choose_kind(n: int, dim: int, max_memory: int, *, spaces: int = 3) -> str:
    """The most exact kind whose ``spaces`` indexes of ``n`` vectors fit ``max_memory`` bytes:
    ``exact``, then ``hnsw``, ``fp16``, ``sq8``, ``ivfpq``; ConfigError if none does."""
    for kind in ("exact", "hnsw", "fp16", "sq8", "ivfpq"):
        if spaces * n * bytes_per_vector(kind, dim) <= max_memory:
            return kind
    need = spaces * n * bytes_per_vector("ivfpq", dim)
    raise ConfigError(f"{n} vectors in {spaces} spaces need at least {need / 2**30:.1f} GiB "
                      f"even as ivfpq; --max-memory is {max_memory / 2**30:.1f} GiB")


class CompressedIndex:
    """One compressed FAISS index over unit vectors with int64 ids, optionally re-ranked exactly
    from ``vectors`` (rows in ascending id order, ``ids`` sorted: a generation's layout)."""

    def __init__(self, index: faiss.Index, settings: CompressedSettings, nlist: int | None):
        self.index, self.settings, self.nlist = index, settings, nlist
        self.param: int | None = None  # nprobe (IVF kinds) or efSearch (hnsw)
        self.recall_at_10: float | None = None

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray,
              settings: CompressedSettings) -> CompressedIndex:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        n, dim = vectors.shape
        if n == 0:
            raise ConfigError(f"a {settings.kind} index needs vectors to build on")
        metric = faiss.METRIC_INNER_PRODUCT
        if settings.kind == "hnsw":
            index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(dim, settings.hnsw_m, metric))
            index.add_with_ids(vectors, ids)
            return cls(index, settings, None)
        nlist = min(settings.nlist or default_nlist(n), n)
        pq_m = settings.pq_m or max(dim // 8, 1)
        if settings.kind == "ivfpq" and dim % pq_m:
            raise ConfigError(f"pq_m={pq_m} must divide the dimension {dim}")
        spec = {"fp16": f"IVF{nlist},SQfp16", "sq8": f"IVF{nlist},SQ8",
                "ivfpq": f"OPQ{pq_m},IVF{nlist},PQ{pq_m}x{settings.pq_bits}"}[settings.kind]
        index = faiss.index_factory(dim, spec, metric)
        if settings.kind == "ivfpq":  # fewer OPQ rounds than FAISS's 50: most of the gain, 1/5
            opq = faiss.downcast_VectorTransform(index.chain.at(0))
            opq.niter, opq.niter_pq_0 = 10, 10
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = settings.seed
        rng = np.random.default_rng(settings.seed)
        sample = min(n, max(64 * nlist, 40 * 2 ** settings.pq_bits if settings.kind == "ivfpq"
                                else 0))
        index.train(vectors[np.sort(rng.choice(n, sample, replace=False))])
        index.add_with_ids(vectors, ids)
        return cls(index, settings, nlist)

    def _set(self, param: int) -> None:
        if self.settings.kind == "hnsw":
            faiss.downcast_index(self.index.index).hnsw.efSearch = param
        else:
            faiss.extract_index_ivf(self.index).nprobe = param
        self.param = param

    def search(self, queries: np.ndarray, k: int, *, vectors: np.ndarray | None = None,
               ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` [n, k], missing results id -1; with ``settings.rerank`` and the float
        ``vectors`` / sorted ``ids``, the best ``rerank * k`` candidates re-scored exactly."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        rerank = self.settings.rerank and vectors is not None
        fetch = min(k * self.settings.rerank, int(self.index.ntotal)) if rerank else k
        scores, found = self.index.search(queries, max(fetch, k))
        if not rerank:
            return scores[:, :k], found[:, :k]
        exact = exact_scores_of(found, queries, vectors, ids)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, 1), np.take_along_axis(found, order, 1)

    def tune(self, vectors: np.ndarray, ids: np.ndarray) -> float:
        """The smallest power-of-two nprobe (or efSearch from 16) reaching the target recall@10
        on near-duplicate queries; returns and keeps the recall."""
        s = self.settings
        queries = near_duplicate_queries(vectors, s.recall_queries, s.seed)
        truth = exact_top_scores(vectors, queries, RECALL_K)
        param, top = (16, 4096) if s.kind == "hnsw" else (1, self.nlist or 1)
        while True:
            self._set(param)
            _, found = self.search(queries, RECALL_K, vectors=vectors, ids=ids)
            recall = recall_by_ids(truth, found, queries, vectors, ids)
            if recall >= s.target_recall or param >= top:
                break
            param = min(param * 2, top)
        self.recall_at_10 = recall
        return recall


def exact_scores_of(found: np.ndarray, queries: np.ndarray, vectors: np.ndarray,
                    ids: np.ndarray) -> np.ndarray:
    """Exact inner products of each query with its found ids (``-inf`` for missing, -1)."""
    rows = np.searchsorted(ids, np.maximum(found, 0))
    rows = np.minimum(rows, len(ids) - 1)
    valid = (found >= 0) & (ids[rows] == found)
    picked = np.asarray(vectors[np.unique(rows)], dtype=np.float32)  # reads only these rows
    local = np.searchsorted(np.unique(rows), rows)
    scores = np.einsum("qkd,qd->qk", picked[local], queries)
    return np.where(valid, scores, -np.inf).astype(np.float32)


def recall_by_ids(truth: np.ndarray, found: np.ndarray, queries: np.ndarray,
                  vectors: np.ndarray, ids: np.ndarray, tolerance: float = 1e-5) -> float:
    """recall@k of ``found`` ids: a result counts when its exact score reaches the k-th exact
    score (``truth``, best first), so ties count and approximate scores do not."""
    if truth.size == 0:
        return 1.0
    k = truth.shape[1]
    exact = exact_scores_of(found[:, :k], queries, vectors, ids)
    return float((exact >= truth[:, -1:] - tolerance).sum()) / truth.size
