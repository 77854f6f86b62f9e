"""Vector search over unit vectors by inner product: a FAISS index of any kind, ids of our choosing.

A :class:`VectorIndex` wraps one FAISS index whose ids are the listings' stable integer ids
(``vid``). Its kind (``VectorSettings.kind``, ``eclip index --kind``):

* ``exact`` (also ``flat``): ``IndexIDMap2(IndexFlatIP)``, a full scan;
* ``ivf``: ``IndexIVFFlat`` (spherical k-means lists of float32 vectors);
* ``hnsw``, ``ivf_fp16``, ``ivf_sq8``, ``ivf_sq4``, ``ivf_pq`` (OPQ + IVF-PQ): the compressed
  kinds of ``compressed.py``, with optional exact re-ranking (``rerank``: ``rerank * k``
  candidates re-scored from the generation's float vectors, memory-mapped);
* ``auto``: without ``max_memory``, exact up to ``exact_max`` vectors and IVF above; with it, the
  most exact kinds whose three indexes fit together, chosen per space
  (``compressed.choose_kinds``).

Every approximate kind tunes its search parameter at build time (``nprobe``, or ``efSearch`` for
HNSW) until recall@10 against exact search reaches ``target_recall`` on sampled queries; that
recall is reported. Indexes add and remove vectors by id (HNSW adds only), so an index is updated
without retraining; it is retrained when the collection has grown or shrunk far from the size it
was trained at, or when ``auto`` would now choose another kind.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

from eclip.errors import ConfigError
from eclip.search.compressed import (APPROXIMATE_KINDS, DEFAULT_RERANK, LABELS, bytes_per_vector,
                                     choose_kinds, new_index, search_params, train_two_level,
                                     training_size)

KINDS = ("auto", "flat", "exact") + APPROXIMATE_KINDS + ("diskann",)  # "flat" is "exact";
# diskann: the Milvus store on a server only (milvus.py)
RECALL_K = 10
ADD_BLOCK = 65_536  # vectors added (or scanned exactly) at a time


@dataclass
class VectorSettings:
    """How vectors are indexed (see the module docstring for the kinds)."""

    kind: str = "auto"
    exact_max: int = 200_000
    target_recall: float = 0.95
    recall_queries: int = 500
    nlist: int | None = None  # IVF lists; None: a power of two near 2 * sqrt(n)
    hnsw_quantizer_from: int = 8192  # an HNSW coarse quantizer from this many lists on
    retrain_factor: float = 4.0  # retrain IVF when the size moves this far from the trained size
    seed: int = 0
    max_memory: int | None = None  # bytes for the three indexes (auto picks a kind that fits)
    rerank: int | None = None  # exact re-ranking of rerank * k candidates; None: the kind's default
    pq_m: int | None = None  # ivf_pq sub-quantizers; None: dim // 8
    pq_bits: int = 8
    hnsw_m: int = 32
    # how the generation keeps its vectors on disk (``{space}.npy``, the source of re-ranking,
    # small filters, rebuilds and updates): float32 or float16 (half the disk; re-ranking and
    # scans then score the rounded vectors), and whether the fused "both" vectors are stored or
    # computed from the image and text ones when read (a third less to store)
    vector_dtype: str = "float32"
    store_fused: bool = True
    # k-means of an IVF kind: vectors sampled per list and iterations (FAISS's own defaults are
    # 256 and 25; fewer train faster, the recall is measured and tuned after)
    train_per_list: int = 64
    train_iterations: int = 10
    # two-level k-means (compressed.train_two_level) from this many lists on: sqrt(nlist) coarse
    # clusters split into the lists, instead of comparing every sampled vector with every list
    two_level_from: int = 4096

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"index kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.vector_dtype not in ("float32", "float16"):
            raise ConfigError(f"vector_dtype must be float32 or float16, got "
                              f"{self.vector_dtype!r}")
        if self.train_per_list < 1 or self.train_iterations < 1:
            raise ConfigError("train_per_list and train_iterations must be >= 1")
        if not 0.0 < self.target_recall <= 1.0:
            raise ConfigError(f"target_recall must be in (0, 1], got {self.target_recall}")
        if self.exact_max < 0 or self.recall_queries < 1:
            raise ConfigError("exact_max must be >= 0 and recall_queries >= 1")
        if self.nlist is not None and self.nlist < 1:
            raise ConfigError(f"nlist must be >= 1, got {self.nlist}")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ConfigError(f"max_memory must be a positive number of bytes, got "
                              f"{self.max_memory}")
        if self.rerank is not None and self.rerank < 0:
            raise ConfigError(f"rerank must be >= 0, got {self.rerank}")

    def resolve_kinds(self, n: int, dims: Sequence[int]) -> tuple[str, ...]:
        """The kind of each index of a generation of ``n`` vectors, one per space of ``dims``
        dimensions: ``kind`` itself, or for ``auto`` under ``max_memory`` a kind per space
        (``compressed.choose_kinds``: the largest compressed first until they fit together)."""
        if self.kind == "auto" and self.max_memory is not None:
            return choose_kinds(n, dims, self.max_memory, exact_max=self.exact_max,
                                pq_m=self.pq_m)
        return tuple(self.resolve_kind(n, d) for d in dims)

    def resolve_kind(self, n: int, dim: int = 0) -> str:
        """The kind of one index of ``n`` vectors of ``dim`` dimensions on its own (under
        ``max_memory`` alone)."""
        if self.kind not in ("auto", "flat"):
            return self.kind
        if self.kind == "flat":
            return "exact"
        if self.max_memory is None:
            return "exact" if n <= self.exact_max else "ivf"
        return self.resolve_kinds(n, [dim])[0]

    def rerank_for(self, kind: str) -> int:
        return self.rerank if self.rerank is not None else DEFAULT_RERANK.get(kind, 0)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IndexStats:
    """What a built index is: kind, size, its parameters and the measured recall."""

    kind: str
    count: int
    nlist: int | None = None
    nprobe: int | None = None
    quantizer: str | None = None
    trained_on: int | None = None
    recall_at_10: float | None = None
    recall_queries: int | None = None
    ef_search: int | None = None  # hnsw
    rerank: int | None = None  # candidates re-scored exactly: rerank * k (0 / None: none)
    bytes_per_vector: int | None = None  # the index's memory per vector (compressed.py)
    # the build's steps (train, add, tune), wall-clock, and their CPU time (cpu); not part of
    # what the index is
    seconds: dict[str, float] | None = field(default=None, compare=False)

    @property
    def param(self) -> int | None:
        """The tuned search parameter: efSearch (hnsw) or nprobe."""
        return self.ef_search if self.kind in ("hnsw", "diskann") else self.nprobe

    def describe(self) -> str:
        if self.kind == "exact":
            return f"exact search over {self.count} vectors"
        if self.kind in ("hnsw", "diskann"):
            params = f"{'efSearch' if self.kind == 'hnsw' else 'search_list'}={self.ef_search}"
        else:
            params = f"nlist={self.nlist}, {self.quantizer} quantizer, nprobe={self.nprobe}"
        if self.rerank:
            params += f", {self.rerank} x k re-ranked exactly"
        if self.bytes_per_vector and self.kind != "ivf":
            params += f", {self.bytes_per_vector} bytes a vector"
        return (f"{LABELS.get(self.kind, self.kind)} over {self.count} vectors ({params}): "
                f"recall@{RECALL_K} vs exact = {self.recall_at_10:.3f} on {self.recall_queries} "
                f"queries")


def default_nlist(n: int) -> int:
    """A power of two near ``2 * sqrt(n)``, with at least 64 vectors per list on average."""
    target = 2.0 * np.sqrt(max(n, 1))
    nlist = 2 ** int(round(np.log2(max(target, 1.0))))
    while nlist > 1 and n / nlist < 64:
        nlist //= 2
    return max(nlist, 1)


def as_float32(rows: np.ndarray) -> np.ndarray:
    """``rows`` (an array, or rows read from a memory-mapped vector file) as float32. Rows of
    half precision that are a copy (as rows picked by index are) are widened by torch, whose
    conversion is vectorised: numpy's takes about 8x as long on the hundred rows a search
    re-scores (36 against 4 us). Every float16 value is a float32 value: the same numbers."""
    rows = np.asarray(rows)
    if rows.dtype == np.float16 and rows.flags.writeable and rows.flags.c_contiguous:
        import torch

        return torch.from_numpy(rows).float().numpy()
    return np.asarray(rows, dtype=np.float32)


def read_rows(vectors, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (positions) of ``vectors`` as float32: of an array (memory-mapped) by
    ``take``, about 2.5x faster than indexing by an array on rows scattered over a map; of
    ``generation.FusedRows``, the fused rows computed from them."""
    if isinstance(vectors, np.ndarray):
        return as_float32(vectors.take(rows, axis=0))
    return as_float32(vectors[rows])


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(vectors), -1)


def _as_ids(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64)


class VectorIndex:
    """One FAISS index over unit vectors with int64 ids; thread-safe for concurrent searches.

    A kind that re-ranks needs the float vectors: ``attach(vectors, ids)`` (rows in ascending id
    order, memory-mapped is fine); without them it answers with its approximate scores."""

    def __init__(self, index: faiss.Index, stats: IndexStats, keep: list | None = None):
        self.index = index
        self.stats = stats
        self._keep = keep or []  # Python objects the FAISS index points to
        self._exact: tuple[np.ndarray, np.ndarray] | None = None
        self._plain_params: dict[int, tuple] = {}  # unfiltered search parameters, by nprobe

    @property
    def kind(self) -> str:
        return self.stats.kind

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def attach(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """The float vectors (and their sorted ids) that exact re-ranking reads."""
        self._exact = (vectors, np.asarray(ids, dtype=np.int64))

    # ------------------------------------------------------------------------------ building
    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, settings: VectorSettings, *,
              kind: str | None = None) -> VectorIndex:
        """Index ``vectors`` (unit rows) under ``ids``; an approximate kind is trained and tuned.
        ``kind``: as resolved for this space of the generation (None: ``settings`` for this index
        alone)."""
        ids = _as_ids(ids)
        n, dim = len(vectors), (vectors.shape[1] if np.ndim(vectors) == 2 else 0)
        kind = kind or settings.resolve_kind(n, dim)
        if kind == "exact":
            vectors = _as_matrix(vectors)
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            index.add_with_ids(vectors, ids)
            return cls(index, IndexStats("exact", n))
        if kind == "diskann":
            raise ConfigError("--kind diskann is a Milvus index: use it with --store milvus and a "
                              "Milvus server that offers it (--uri http://HOST:19530)")
        if n == 0:
            raise ConfigError(f"a {kind} index needs vectors to train on; use kind 'exact' or "
                              f"'auto'")
        nlist = None if kind == "hnsw" else min(settings.nlist or default_nlist(n), n)
        index, quantizer, keep = new_index(
            kind, dim, nlist or 0, hnsw_quantizer_from=settings.hnsw_quantizer_from,
            pq_m=settings.pq_m, pq_bits=settings.pq_bits, hnsw_m=settings.hnsw_m,
            seed=settings.seed, per_list=settings.train_per_list,
            iterations=settings.train_iterations)
        seconds = {}
        began, cpu = time.perf_counter(), time.process_time()
        if nlist is not None:
            rng = np.random.default_rng(settings.seed)
            sample = training_size(kind, n, nlist, settings.pq_bits, settings.train_per_list)
            picked = _as_matrix(vectors[np.sort(rng.choice(n, sample, replace=False))])
            if nlist >= settings.two_level_from:
                train_two_level(index, picked, nlist, iterations=settings.train_iterations,
                                seed=settings.seed)
            else:
                index.train(picked)
            seconds["train"] = time.perf_counter() - began
            began = time.perf_counter()
        for start in range(0, n, ADD_BLOCK):  # a memory-mapped array is read a block at a time
            index.add_with_ids(_as_matrix(vectors[start:start + ADD_BLOCK]),
                               ids[start:start + ADD_BLOCK])
        seconds["add"] = time.perf_counter() - began
        stats = IndexStats(kind, n, nlist=nlist, quantizer=quantizer, trained_on=n,
                           rerank=settings.rerank_for(kind),
                           bytes_per_vector=bytes_per_vector(kind, dim, pq_m=settings.pq_m,
                                                             hnsw_m=settings.hnsw_m))
        result = cls(index, stats, keep)
        began = time.perf_counter()
        result.tune(vectors, ids, settings)
        seconds["tune"] = time.perf_counter() - began
        seconds["cpu"] = time.process_time() - cpu  # the three steps, every thread
        stats.seconds = {step: round(s, 3) for step, s in seconds.items()}
        return result

    def needs_retraining(self, n: int, settings: VectorSettings, *, removing: bool = False,
                         kind: str | None = None) -> bool:
        """A change of kind (``kind``: the generation's; None: ``settings`` for this space), an
        index trained far from ``n`` vectors, or a removal from HNSW (which cannot remove) calls
        for a rebuild."""
        if self.kind != (kind or settings.resolve_kind(n, int(self.index.d))):
            return True
        if self.kind == "hnsw":
            return removing
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
        """The smallest power-of-two ``nprobe`` (from 1) or ``efSearch`` (from 16) whose
        recall@10, counted by the exact scores of the ids found, reaches the target."""
        if self.kind == "exact" or self.count == 0:
            return
        self.attach(vectors, ids)
        queries = near_duplicate_queries(vectors, settings.recall_queries, settings.seed)
        truth = exact_top_scores(vectors, queries, RECALL_K)
        param, top = (16, 4096) if self.kind == "hnsw" else (1, self.stats.nlist or 1)
        while True:
            _, found = self.search(queries, RECALL_K, nprobe=param)
            recall = recall_by_ids(truth, found, queries, vectors, ids)
            if recall >= settings.target_recall or param >= top:
                break
            param = min(param * 2, top)
        if self.kind == "hnsw":
            self.stats.ef_search = param
        else:
            self.stats.nprobe = param
        self.stats.recall_at_10, self.stats.recall_queries = recall, len(queries)

    # ------------------------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               selector: faiss.IDSelector | None = None, nprobe: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each [n, k]; missing results have id -1. ``allowed`` (ids) or
        ``selector`` (a FAISS id selector, e.g. a cached ``filters.Selection``'s) restricts ids;
        ``nprobe``: the search parameter (efSearch for hnsw) instead of the tuned one."""
        queries = _as_matrix(queries)
        k = max(1, min(k, max(self.count, 1)))
        exact = self._exact if self.stats.rerank else None
        fetch = max(k, min(k * self.stats.rerank, self.count)) if exact is not None else k
        if allowed is not None:
            selector = faiss.IDSelectorBatch(_as_ids(allowed))
        param = nprobe or self.stats.param or 1
        if selector is None:  # made once per search parameter: FAISS only reads them
            params = self._plain_params.get(param)
            if params is None:
                params = self._plain_params.setdefault(param, search_params(self.kind, param,
                                                                            None))
            params = params[0]
        else:
            params, _alive = search_params(self.kind, param, selector)
        scores, found = self.index.search(queries, fetch, params=params)
        if exact is None:
            return scores, found
        return rerank(found, queries, *exact, k)

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
    rows = rng.choice(len(vectors), min(n, len(vectors)), replace=False)
    order = np.argsort(rows)  # rows read in ascending order (a memory-mapped array), kept as drawn
    base = np.empty((len(rows), vectors.shape[1]), np.float32)
    base[order] = _as_matrix(vectors[rows[order]])
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise -= (noise * base).sum(1, keepdims=True) * base  # orthogonal to the row
    noise /= np.linalg.norm(noise, axis=1, keepdims=True) + 1e-12
    sine = np.sqrt(max(0.0, 1.0 - cosine ** 2))
    return np.ascontiguousarray(cosine * base + sine * noise, dtype=np.float32)


def exact_top_scores(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Each query's top ``k`` inner products by exhaustive search ([n, k], best first)."""
    queries, k = _as_matrix(queries), min(k, len(vectors))
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for start in range(0, len(vectors), ADD_BLOCK):  # a block at a time, merged
        block = _as_matrix(vectors[start:start + ADD_BLOCK])
        scores, _ = faiss.knn(queries, block, min(k, len(block)),
                              metric=faiss.METRIC_INNER_PRODUCT)
        best = -np.sort(-np.concatenate([best, scores], axis=1), axis=1)[:, :k]
    return best


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


def exact_scores_of(found: np.ndarray, queries: np.ndarray, vectors: np.ndarray,
                    ids: np.ndarray) -> np.ndarray:
    """Exact inner products of each query with its found ids (``-inf`` for missing ones, -1);
    ``vectors`` rows in ascending ``ids`` order (only the rows found are read)."""
    if len(ids) == 0:
        return np.full(found.shape, -np.inf, dtype=np.float32)
    rows = np.minimum(np.searchsorted(ids, np.maximum(found, 0)), len(ids) - 1)
    valid = (found >= 0) & (ids[rows] == found)
    queries = _as_matrix(queries)
    if len(rows) == 1:  # one query (a served search): its rows, read once each
        scores = (read_rows(vectors, rows[0]) @ queries[0])[None]
    else:  # each row read once, however many queries found it
        unique = np.unique(rows)
        picked = read_rows(vectors, unique)
        scores = np.einsum("qkd,qd->qk", picked[np.searchsorted(unique, rows)], queries)
    return np.where(valid, scores, -np.inf).astype(np.float32)


def rerank(found: np.ndarray, queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` [n, k]: the candidate ids ``found`` of each query re-scored exactly
    (``exact_scores_of``) and the ``k`` best kept, best first (ties in the candidates' order)."""
    rescored = exact_scores_of(found, queries, vectors, ids)
    order = np.argsort(-rescored, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(rescored, order, 1), np.take_along_axis(found, order, 1)


def recall_by_ids(truth: np.ndarray, found: np.ndarray, queries: np.ndarray,
                  vectors: np.ndarray, ids: np.ndarray, tolerance: float = 1e-5) -> float:
    """recall@k of ``found`` ids: a result counts when its exact score reaches the k-th exact
    score (``truth``, best first), so ties count and approximate scores do not."""
    if truth.size == 0:
        return 1.0
    k = truth.shape[1]
    exact = exact_scores_of(found[:, :k], queries, vectors, ids)
    return float((exact >= truth[:, -1:] - tolerance).sum()) / truth.size
