"""The listings a filter keeps, computed once per generation and cached: ids and a FAISS bitmap.

A search with a filter (``store_types.Where``: a category and below it, one catalog, the adult
flag) asks the FAISS store for the listings it keeps. Computing them from the metadata and handing
FAISS a fresh ``IDSelectorBatch`` on every query (a hash set of every id kept: 100 k ids for a
category of a tenth of a million listings) cost more than the search itself. A generation never
changes once written, so :class:`FilterCache` computes each filter's :class:`Selection` once, on
first use: the sorted ids (for a small filter, whose vectors are scanned directly) and a bitmap
over the generation's ids wrapped in a ``faiss.IDSelectorBitmap`` (one bit a listing, a lookup
per candidate). The cache holds the most recently used selections within a byte budget; a new
generation (an update, a delete) is opened with a new cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from eclip.search.store_types import Where

CACHE_BYTES = 64 << 20  # selections kept per generation: ids (8 B each) and bitmaps (1 bit each)


@dataclass
class Selection:
    """The listings one filter keeps: their vids (ascending) and a FAISS selector over them."""

    vids: np.ndarray
    bitmap: np.ndarray  # uint8, bit v (little-endian within a byte): vid v is kept
    selector: faiss.IDSelector  # reads ``bitmap``, which must stay alive with it

    def __len__(self) -> int:
        return len(self.vids)

    @property
    def nbytes(self) -> int:
        return int(self.vids.nbytes + self.bitmap.nbytes)

    @classmethod
    def of(cls, vids: np.ndarray, id_bound: int) -> Selection:
        """The selection of ``vids``, all below ``id_bound``."""
        vids = np.asarray(vids, dtype=np.int64)
        bits = np.zeros(max(id_bound, 1), dtype=bool)
        bits[vids] = True
        bitmap = np.packbits(bits, bitorder="little")
        # FAISS takes the bitmap's size in bytes: an id past it is not a member
        return cls(vids, bitmap, faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)))


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
        selection = Selection.of(vids, self.id_bound) if vids is not None else None
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
