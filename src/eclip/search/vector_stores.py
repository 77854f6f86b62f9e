"""The vector store a generation uses, opened for writing (``writer_for``) or reading
(``open_store``): FAISS files in the generation (``faiss_store.py``) or a Milvus collection
(``milvus.py``, imported only when used: pymilvus is an optional dependency)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from eclip.search.faiss_store import FaissStore, FaissWriter
from eclip.search.filters import Selection
from eclip.search.generation import IndexInfo, consistent
from eclip.search.store_types import StoreSpec, StoreWriter, VectorStore, Where


def writer_for(spec: StoreSpec, root: Path) -> StoreWriter:
    """The write side of the store ``spec`` names, for the index folder ``root``."""
    if spec.kind == "milvus":
        from eclip.search.milvus import MilvusWriter

        return MilvusWriter(spec, root)
    return FaissWriter()


def open_store(root: Path, generation: Path, info: IndexInfo, vids: np.ndarray,
               vectors: dict[str, np.ndarray],
               allowed: Callable[[Where], Selection | None]) -> VectorStore:
    """The read side of the generation's store (its ``info.json`` says which), checked against the
    generation: a store that holds another number of vectors is a SearchIndexError.

    ``vids`` / ``vectors``: the generation's ids and memory-mapped vectors; ``allowed``: the
    listings a filter keeps (``filters.Selection``, cached per generation; the FAISS store filters
    with them)."""
    if info.store:
        from eclip.search.milvus import MilvusStore

        store = MilvusStore(info.store, root, info.vectors)
        count = store.count()
        consistent(generation / "info.json", count == info.listings,
                   f"its Milvus collection {info.store['collection']} holds {count} vectors, "
                   f"info.json {info.listings}")
        return store
    return FaissStore.open(generation, info, vids, vectors, allowed)
