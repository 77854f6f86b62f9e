"""The listings a filter keeps, computed once per generation and cached: ids and a FAISS bitmap.

A search with a filter (``store_types.Where``: a category and below it, one catalog, the adult
flag) asks the FAISS store for the listings it keeps. Computing them from the metadata and handing
FAISS a fresh ``IDSelectorBatch`` on every query (a hash set of every id kept: 100 k ids for a
category holding a tenth of 1 M listings) cost more than the search itself. A generation never
changes once written, so :class:`FilterCache` computes each filter's :class:`Selection` once, on
first use: a bitmap over the generation's ids wrapped in a ``faiss.IDSelectorBitmap`` (one bit a
listing, a lookup per candidate; 1.25 MB at 10 M listings) and, for a small filter, whose vectors
are scanned directly, the sorted ids. The cache holds the most recently used selections within a
byte budget; a new generation (an update, a delete) is opened with a new cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import faiss
import numpy as np

from eclip.search.store_types import Where

CACHE_BYTES = 64 << 20  # selections kept per generation: bitmaps (1 bit a listing) and small ids
KEEP_VIDS = 65_536  # a selection of at most this many listings keeps their vids (8 B each)


class Selection:
    """The listings one filter keeps: a bitmap over the vids with a FAISS selector reading it, and
    their sorted vids (kept for a small selection, which is scanned directly; a large one, searched
    through the selector, recomputes them from the bitmap if asked: 8 bytes a listing kept would
    be most of its size)."""

    def __init__(self, vids: np.ndarray, id_bound: int):
        vids = np.asarray(vids, dtype=np.int64)
        bits = np.zeros(max(id_bound, 1), dtype=bool)
        bits[vids] = True
        self.count = len(vids)
        self.bitmap = np.packbits(bits, bitorder="little")  # bit v (little-endian): vid v kept
        # FAISS takes the bitmap's size in bytes: an id past it is not a member; the bitmap must
        # stay alive with the selector
        self.selector = faiss.IDSelectorBitmap(len(self.bitmap), faiss.swig_ptr(self.bitmap))
        self._vids = vids if self.count <= KEEP_VIDS else None

    def __len__(self) -> int:
        return self.count

    @property
    def vids(self) -> np.ndarray:
        if self._vids is not None:
            return self._vids
        return np.flatnonzero(np.unpackbits(self.bitmap, bitorder="little")).astype(np.int64)

    @property
    def nbytes(self) -> int:
        return int(self.bitmap.nbytes + (self._vids.nbytes if self._vids is not None else 0))


class FilterCache:
    """Per generation: ``where`` -> its :class:`Selection`, from ``vids_of(where)`` (the metadata's
    answer: the vids it keeps, ascending; None when it keeps every listing), least recently used
    first out past ``max_bytes``. Safe to share between threads."""

    def __init__(self, vids_of: Callable[[Where], np.ndarray | None], id_bound: int, *,
                 max_bytes: int = CACHE_BYTES):
        self._vids_of = vids_of
        self.id_bound = id_bound  # every vid of the generation is below it
        self.max_bytes = max_bytes
        self._cache: OrderedDict[tuple, Selection | None] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.computed = 0  # selections computed (a test reads it)

    def get(self, where: Where) -> Selection | None:
        """The listings ``where`` keeps (``exclude`` aside); None: every listing."""
        key = (where.category, where.catalog_id, where.adult)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        vids = self._vids_of(where)
        selection = Selection(vids, self.id_bound) if vids is not None else None
        size = selection.nbytes if selection is not None else 0
        with self._lock:
            self.computed += 1
            if key not in self._cache and size <= self.max_bytes:
                self._cache[key] = selection
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, dropped = self._cache.popitem(last=False)
                    self._bytes -= dropped.nbytes if dropped is not None else 0
        return selection
