"""Vector search over unit vectors by inner product: FAISS, exact or IVF, with ids of our choosing.

A :class:`VectorIndex` wraps one FAISS index whose ids are the listings' stable integer ids
(``vid``). Two kinds:

* ``exact``: ``IndexIDMap2(IndexFlatIP)``, a full scan; the default up to ``exact_max`` vectors.
* ``ivf``: ``IndexIVFFlat`` (inner product, spherical k-means). Its coarse quantizer is flat, or
  an HNSW graph from ``hnsw_quantizer_from`` lists on, where scanning the centroids would cost
  more than scanning the lists. ``nprobe`` is tuned at build time until recall@10 against exact
  search reaches ``target_recall`` on sampled queries; that recall is reported.

Both kinds add and remove vectors by id, so an index is updated without retraining; an IVF index is
retrained only when the collection has grown or shrunk far from the size it was trained at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import faiss
import numpy as np

from eclip.errors import ConfigError

KINDS = ("auto", "exact", "ivf")
RECALL_K = 10


@dataclass
class VectorSettings:
    """How vectors are indexed. ``auto`` is exact up to ``exact_max`` vectors and IVF above."""

    kind: str = "auto"
    exact_max: int = 200_000
    target_recall: float = 0.95
    recall_queries: int = 500
    nlist: int | None = None  # IVF lists; None: a power of two near 2 * sqrt(n)
    hnsw_quantizer_from: int = 8192  # an HNSW coarse quantizer from this many lists on
    retrain_factor: float = 4.0  # retrain IVF when the size moves this far from the trained size
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"index kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ConfigError(f"target_recall must be in (0, 1], got {self.target_recall}")
        if self.exact_max < 0 or self.recall_queries < 1:
            raise ConfigError("exact_max must be >= 0 and recall_queries >= 1")
        if self.nlist is not None and self.nlist < 1:
            raise ConfigError(f"nlist must be >= 1, got {self.nlist}")

    def resolve_kind(self, n: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "exact" if n <= self.exact_max else "ivf"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IndexStats:
    """What a built index is: kind, size, IVF parameters and the measured recall (IVF only)."""

    kind: str
    count: int
    nlist: int | None = None
    nprobe: int | None = None
    quantizer: str | None = None
    trained_on: int | None = None
    recall_at_10: float | None = None
    recall_queries: int | None = None

    def describe(self) -> str:
        if self.kind == "exact":
            return f"exact search over {self.count} vectors"
        return (f"IVF over {self.count} vectors (nlist={self.nlist}, {self.quantizer} quantizer, "
                f"nprobe={self.nprobe}): recall@{RECALL_K} vs exact = {self.recall_at_10:.3f} "
                f"on {self.recall_queries} queries")


def default_nlist(n: int) -> int:
    """A power of two near ``2 * sqrt(n)``, with at least 64 vectors per list on average."""
    target = 2.0 * np.sqrt(max(n, 1))
    nlist = 2 ** int(round(np.log2(max(target, 1.0))))
    while nlist > 1 and n / nlist < 64:
        nlist //= 2
    return max(nlist, 1)


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(vectors), -1)


def _as_ids(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64)


class VectorIndex:
    """One FAISS index over unit vectors with int64 ids; thread-safe for concurrent searches."""

    def __init__(self, index: faiss.Index, stats: IndexStats):
        self.index = index
        self.stats = stats

    @property
    def kind(self) -> str:
        return self.stats.kind

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    # ------------------------------------------------------------------------------ building
    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, settings: VectorSettings) -> VectorIndex:
        """Index ``vectors`` (unit rows) under ``ids``; an IVF index is trained and tuned here."""
        vectors, ids = _as_matrix(vectors), _as_ids(ids)
        kind = settings.resolve_kind(len(vectors))
        dim = vectors.shape[1]
        if kind == "exact":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            index.add_with_ids(vectors, ids)
            return cls(index, IndexStats("exact", len(vectors)))
        if len(vectors) == 0:
            raise ConfigError("an IVF index needs vectors to train on; use kind 'exact' or 'auto'")
        nlist = min(settings.nlist or default_nlist(len(vectors)), len(vectors))
        if nlist >= settings.hnsw_quantizer_from:
            quantizer, name = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT), "hnsw"
        else:
            quantizer, name = faiss.IndexFlatIP(dim), "flat"
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.cp.seed = settings.seed
        index.cp.max_points_per_centroid = 64
        rng = np.random.default_rng(settings.seed)
        sample = min(len(vectors), 64 * nlist)
        rows = np.sort(rng.choice(len(vectors), sample, replace=False))
        index.train(vectors[rows])  # (faiss's wrapper keeps ``quantizer`` alive with ``index``)
        index.add_with_ids(vectors, ids)
        result = cls(index, IndexStats("ivf", len(vectors), nlist=nlist, quantizer=name,
                                       trained_on=len(vectors)))
        result.tune(vectors, ids, settings)
        return result

    def needs_retraining(self, n: int, settings: VectorSettings) -> bool:
        """An IVF index trained far from ``n`` vectors (or a change of kind) calls for a rebuild."""
        if self.kind != settings.resolve_kind(n):
            return True
        if self.kind == "exact" or not self.stats.trained_on:
            return False
        ratio = n / self.stats.trained_on
        return ratio > settings.retrain_factor or ratio < 1.0 / settings.retrain_factor

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(_as_matrix(vectors), _as_ids(ids))
        self.stats.count = self.count

    def remove(self, ids: np.ndarray) -> int:
        if not len(ids):
            return 0
        removed = int(self.index.remove_ids(faiss.IDSelectorBatch(_as_ids(ids))))
        self.stats.count = self.count
        return removed

    def tune(self, vectors: np.ndarray, ids: np.ndarray, settings: VectorSettings) -> None:
        """IVF: the smallest power-of-two ``nprobe`` whose recall@10 reaches the target."""
        if self.kind != "ivf" or self.count == 0:
            return
        queries = near_duplicate_queries(vectors, settings.recall_queries, settings.seed)
        truth = exact_top_scores(vectors, queries, RECALL_K)
        nlist = self.stats.nlist or 1
        nprobe, recall = 1, 0.0
        while True:
            scores, found = self.search(queries, RECALL_K, nprobe=nprobe)
            recall = recall_against(truth, scores, found)
            if recall >= settings.target_recall or nprobe >= nlist:
                break
            nprobe = min(nprobe * 2, nlist)
        self.stats.nprobe, self.stats.recall_at_10 = nprobe, recall
        self.stats.recall_queries = len(queries)

    # ------------------------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each [n, k]; missing results have id -1. ``allowed`` restricts ids."""
        queries = _as_matrix(queries)
        k = max(1, min(k, max(self.count, 1)))
        selector = faiss.IDSelectorBatch(_as_ids(allowed)) if allowed is not None else None
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=nprobe or self.stats.nprobe or 1)
            if selector is not None:
                params.sel = selector
        else:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        scores, found = self.index.search(queries, k, params=params)
        return scores, found

    # ------------------------------------------------------------------------------ storage
    def save(self, path: str) -> None:
        faiss.write_index(self.index, path)

    @classmethod
    def load(cls, path: str, stats: IndexStats) -> VectorIndex:
        return cls(faiss.read_index(path), stats)


def near_duplicate_queries(vectors: np.ndarray, n: int, seed: int,
                           cosine: float = 0.85) -> np.ndarray:
    """``n`` sampled rows moved off their place so that each keeps ``cosine`` with its source row.

    They stand for real queries (a title typed by a buyer, another photo of the product): close to
    an indexed vector but not on it, which is where an approximate index loses results.
    """
    rng = np.random.default_rng(seed)
    vectors = _as_matrix(vectors)
    rows = rng.choice(len(vectors), min(n, len(vectors)), replace=False)
    base = vectors[rows]
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise -= (noise * base).sum(1, keepdims=True) * base  # orthogonal to the row
    noise /= np.linalg.norm(noise, axis=1, keepdims=True) + 1e-12
    sine = np.sqrt(max(0.0, 1.0 - cosine ** 2))
    return np.ascontiguousarray(cosine * base + sine * noise, dtype=np.float32)


def exact_top_scores(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Each query's top ``k`` inner products by exhaustive search ([n, k], best first)."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(_as_matrix(vectors))
    scores, _ = flat.search(_as_matrix(queries), min(k, len(vectors)))
    return scores


def recall_against(truth: np.ndarray, scores: np.ndarray, found: np.ndarray,
                   tolerance: float = 1e-5) -> float:
    """recall@k of approximate results against exact top-k scores ``truth``.

    A result counts when its (exact, IVF-Flat) score reaches the k-th exact score: a vector tied
    with the k-th one is as right as the one exact search happened to list.
    """
    if truth.size == 0:
        return 1.0
    kth = truth[:, -1:] - tolerance
    hits = ((scores[:, :truth.shape[1]] >= kth) & (found[:, :truth.shape[1]] >= 0)).sum()
    return float(hits) / truth.size
