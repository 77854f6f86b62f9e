"""Where a generation's vectors are searched: the vector store interface, shared by every store.

An index generation (``generation.py``) holds the listings' metadata (SQLite), their vectors as
``.npy`` files (the source of every rebuild) and, per vector space (``image``, ``text``,
``product``), an index that answers nearest-neighbour queries with filters. That last part is a store:

* ``faiss`` (the default, embedded, ``faiss_store.py``): ``image.faiss text.faiss product.faiss``
  in the generation folder (``vectors.py``); filters become an id selector computed from the
  metadata.
* ``milvus`` (``milvus.py``): one Milvus collection per generation, behind an alias; category,
  catalog and the adult flag are scalar fields, so filters run in the database. A local ``*.db``
  URI is Milvus Lite (a laptop, the tests), ``http://host:19530`` a cluster: the same client code.

A store has a write side (``StoreWriter``: fill the new generation's index from its vectors, then
publish it when the generation is in service, or discard it) and a read side (``VectorStore``:
search one space with a ``Where`` filter). ``StoreSpec`` says which store, and is recorded in the
generation's ``info.json`` (nothing is recorded for FAISS, whose on-disk layout is unchanged).
``vector_stores.py`` opens the store a spec names, for writing (``writer_for``) or reading
(``open_store``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from eclip.errors import ConfigError
from eclip.search.vectors import IndexStats, VectorSettings

STORE_KINDS = ("faiss", "milvus")
_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")


@dataclass(frozen=True)
class StoreSpec:
    """Which vector store a new index uses.

    ``uri`` (milvus only): a local file ending in ``.db`` is Milvus Lite, ``http(s)://host:port``
    a Milvus server or cluster; None puts a Milvus Lite file in the index folder (``milvus.db``).
    ``collection`` (milvus only): the alias readers follow; each generation fills the collection
    ``<collection>_gNNNNNN``. None: ``eclip_`` and a digest of the index folder's path.
    """

    kind: str = "faiss"
    uri: str | None = None
    collection: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in STORE_KINDS:
            raise ConfigError(f"store must be one of {', '.join(STORE_KINDS)}, got {self.kind!r}")
        if self.kind == "faiss" and (self.uri or self.collection):
            raise ConfigError("--uri and --collection are for --store milvus; the faiss store "
                              "lives in the index folder")
        if self.collection is not None and not _COLLECTION.match(self.collection):
            raise ConfigError(f"collection {self.collection!r} is not a Milvus name (letters, "
                              f"digits and underscores, not starting with a digit, at most 200)")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "uri": self.uri, "collection": self.collection}


@dataclass(frozen=True)
class Where:
    """Which listings a search may return: a category and those below it ("Food" holds
    "Food > Tea"), one catalog (``catalog_id``, the same product from several sellers), the adult
    flag (``False``: every listing not flagged adult, unknown included; ``True``: only flagged
    ones), never the vids in ``exclude``."""

    category: str | None = None
    catalog_id: str | None = None
    adult: bool | None = None
    exclude: frozenset[int] = field(default_factory=frozenset)

    @property
    def narrows(self) -> bool:
        """Whether it keeps only some listings (``exclude`` aside)."""
        return self.category is not None or self.catalog_id is not None or self.adult is not None


class VectorStore(Protocol):
    """The read side: one generation's vectors, searched per space."""

    kind: str

    def search(self, space: str, query: np.ndarray, k: int, where: Where
               ) -> tuple[np.ndarray, np.ndarray]:
        """``(vids, scores)`` of the ``k`` best listings of ``space`` that ``where`` keeps, best
        first (fewer when fewer are kept)."""
        ...

    def close(self) -> None: ...


@dataclass
class WriteJob:
    """What a write hands a store: the new generation's folder (its ``{space}.npy`` and
    ``vids.npy`` written, its ``listings.sqlite`` committed), what changed since ``base``, and the
    settings. ``scalars()`` are the filterable fields of every listing, in ``vids`` order."""

    root: Path
    tmp: Path
    generation: str
    base: Path | None
    base_info: dict | None  # the base generation's info.json
    vids: np.ndarray
    dropped: np.ndarray  # vids removed or replaced since the base
    new_vids: np.ndarray
    settings: VectorSettings
    scalars: Callable[[], Scalars]
    # the new generation's vectors of a space, memory-mapped (float32 or float16 rows; the fused
    # space computed on read when it is not stored): ``generation.open_vectors``
    vectors_of: Callable[[str], np.ndarray]
    progress: bool = False

    def vectors(self, space: str) -> np.ndarray:
        return self.vectors_of(space)

    def fresh(self, space: str) -> np.ndarray:
        """The new vectors of ``new_vids`` (in that order) in ``space``, read from the file."""
        return np.asarray(self.vectors(space)[np.searchsorted(self.vids, self.new_vids)])


@dataclass
class Scalars:
    """Filterable fields per listing, aligned with the generation's vids."""

    categories: list[str | None]
    catalog_ids: list[str | None]
    adult: np.ndarray  # int8: 1 adult, 0 not, -1 unknown


class StoreWriter(Protocol):
    """The write side: fill the new generation's index, then publish or discard it."""

    def write(self, job: WriteJob) -> tuple[dict[str, IndexStats], dict | None]:
        """Index the job's vectors; ``(stats per space, the store's entry for info.json)``."""
        ...

    def publish(self, entry: dict | None) -> None:
        """The generation is in service: readers that follow the store itself see it now."""
        ...

    def discard(self, entry: dict | None) -> None:
        """The write failed: drop what ``write`` made."""
        ...

    def collect(self, keep: list[dict | None]) -> None:
        """Drop the store's data of generations other than ``keep`` (their info.json entries)."""
        ...


def store_spec_of(entry: dict | None) -> StoreSpec:
    """The spec recorded in a generation's ``info.json`` (None: the FAISS store)."""
    if not entry:
        return StoreSpec()
    return StoreSpec(entry.get("kind", "faiss"), entry.get("uri"), entry.get("alias"))
