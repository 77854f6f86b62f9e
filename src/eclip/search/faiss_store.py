"""The FAISS vector store (the default): a ``{space}.faiss`` file per space in the generation.

The write side builds each space's index from the generation's ``.npy`` vectors (an update loads
the base generation's index and applies the changes unless it must be retrained); the read side
answers a filtered search with the filter's cached bitmap selector (``filters.py``: computed from
the metadata once per generation), or, for a filter that keeps few listings, by scanning just
their memory-mapped vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from eclip.search.filters import Selection
from eclip.search.generation import IndexInfo, consistent, reading
from eclip.search.spaces import SPACES
from eclip.search.store_types import Where, WriteJob
from eclip.search.vectors import IndexStats, VectorIndex, read_rows

# A filter that keeps at most this many listings (and under a quarter of the index) is answered
# by scanning just their vectors; a larger one by the FAISS index with an id selector.
SUBSET_SCAN_MAX = 20_000
# A filtered IVF search that comes back short probes this many times more lists, and again.
WIDEN = 8


class FaissWriter:
    """A ``{space}.faiss`` file per space in the generation folder; an update loads the base
    generation's index and applies the changes unless it must be retrained."""

    def write(self, job: WriteJob) -> tuple[dict[str, IndexStats], dict | None]:
        stats = {}
        kinds = job.settings.resolve_kinds(len(job.vids),
                                           [job.vectors(s).shape[1] for s in SPACES])
        for space, kind in zip(SPACES, kinds):
            vectors = job.vectors(space)
            index = self._index(job, space, vectors, kind)
            index.save(str(job.tmp / f"{space}.faiss"))
            stats[space] = index.stats
            del index  # one space's index in memory at a time
        return stats, None

    @staticmethod
    def _index(job: WriteJob, space: str, vectors: np.ndarray, kind: str) -> VectorIndex:
        if job.base is not None and (job.base / f"{space}.faiss").is_file():
            stats = IndexStats(**job.base_info["vectors"][space])
            index = VectorIndex.load(str(job.base / f"{space}.faiss"), stats)
            if not index.needs_retraining(len(job.vids), job.settings, kind=kind,
                                          removing=len(job.dropped) > 0):
                index.remove(job.dropped)
                index.add(job.fresh(space), job.new_vids)
                index.tune(vectors, job.vids, job.settings)
                return index
        return VectorIndex.build(vectors, job.vids, job.settings, kind=kind)

    def publish(self, entry: dict | None) -> None:
        pass  # the folder's CURRENT pointer is the switch

    def discard(self, entry: dict | None) -> None:
        pass  # the files were in the generation's temporary folder

    def collect(self, keep: list[dict | None]) -> None:
        pass  # removed with the generation folders


class FaissStore:
    """The read side of the FAISS store. ``allowed(where)`` gives the listings a filter keeps (a
    cached ``filters.Selection``); a small set is scanned directly over the memory-mapped
    vectors, a larger one searched with its bitmap selector."""

    kind = "faiss"

    def __init__(self, indexes: dict[str, VectorIndex], vids: np.ndarray,
                 vectors: dict[str, np.ndarray],
                 allowed: Callable[[Where], Selection | None]):
        self.indexes = indexes
        self.vids = vids
        self.vectors = vectors
        self._allowed = allowed

    @classmethod
    def open(cls, generation: Path, info: IndexInfo, vids: np.ndarray,
             vectors: dict[str, np.ndarray],
             allowed: Callable[[Where], Selection | None]) -> FaissStore:
        """The generation's ``{space}.faiss`` files, each checked against its ``.npy`` vectors."""
        indexes = {}
        for space in SPACES:
            path = generation / f"{space}.faiss"
            with reading(path):
                indexes[space] = VectorIndex.load(str(path), info.vectors[space])
            indexes[space].attach(vectors[space], vids)  # exact re-ranking reads them
            found = indexes[space].count, indexes[space].index.d
            consistent(path, found == (info.listings, vectors[space].shape[1]),
                       f"{found[0]} vectors of {found[1]} dimensions, the generation "
                       f"{info.listings} of {vectors[space].shape[1]}")
        return cls(indexes, vids, vectors, allowed)

    def search(self, space: str, query: np.ndarray, k: int, where: Where
               ) -> tuple[np.ndarray, np.ndarray]:
        query = np.asarray(query, dtype=np.float32).reshape(1, -1)
        allowed = self._allowed(where) if where.narrows else None
        want = k + len(where.exclude)
        if allowed is not None and len(allowed) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if allowed is not None and len(allowed) <= min(SUBSET_SCAN_MAX, len(self.vids) // 4):
            kept = allowed.vids
            # float16 rows, or fused ones, as float32
            subset = read_rows(self.vectors[space], np.searchsorted(self.vids, kept))
            values, top = faiss.knn(query, subset, min(want, len(kept)),
                                    metric=faiss.METRIC_INNER_PRODUCT)
            values, found = values[0], kept[top[0]]
        else:
            values, found = self._search(self.indexes[space], query, want, allowed)
        keep = found >= 0
        if len(where.exclude) > 8:
            keep &= ~np.isin(found, np.fromiter(where.exclude, np.int64))
        else:  # a few (a /similar's own listing): np.isin costs more than the search around it
            for vid in where.exclude:
                keep &= found != vid
        return found[keep][:k].astype(np.int64), values[keep][:k]

    @staticmethod
    def _search(index: VectorIndex, query: np.ndarray, want: int, allowed: Selection | None
                ) -> tuple[np.ndarray, np.ndarray]:
        """One query through the FAISS index, with the filter's selector. An IVF kind probes the
        lists nearest the query whether it is filtered or not, so a filter whose listings lie
        elsewhere comes back short: then it probes ``WIDEN`` times as many lists, until it has
        ``want`` (or every listing the filter keeps) or every list was probed."""
        selector = allowed.selector if allowed is not None else None
        values, found = index.search(query, want, selector=selector)
        param, lists = index.stats.nprobe, index.stats.nlist
        if allowed is None or not index.kind.startswith("ivf") or not param or not lists:
            return values[0], found[0]
        enough = min(want, len(allowed))
        while (found[0] >= 0).sum() < enough and param < lists:
            param = min(param * WIDEN, lists)
            values, found = index.search(query, want, selector=selector, nprobe=param)
        return values[0], found[0]

    def close(self) -> None:
        pass
