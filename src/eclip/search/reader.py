"""Reading an index: one generation open for searching (``SearchIndex``), and the index in
service following the folder as writers add generations (``LiveIndex``, hot reload).

Opening a generation checks every file against its ``info.json`` (a damaged generation fails
there, with a SearchIndexError naming the file); its vector store is opened by
``vector_stores.open_store`` and searched through the ``VectorStore`` interface.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eclip.encode import fuse, fuse_query
from eclip.errors import EclipError
from eclip.search.encoder import QueryEncoder
from eclip.search.filters import FilterCache
from eclip.search.generation import (StoredVectors, consistent, current_generation, read_info,
                                     reading)
from eclip.search.heads import AdultHead, vote_categories
from eclip.search.metadata import MetadataStore, StoredListing
from eclip.search.onnx_query import query_encoder
from eclip.search.spaces import AGAINST, SPACES
from eclip.search.store_types import VectorStore, Where
from eclip.search.thumbnails import ThumbnailStore
from eclip.search.vector_stores import open_store
from eclip.search.vectors import read_rows

logger = logging.getLogger("eclip.search")

@dataclass
class Hit:
    listing: StoredListing
    score: float
    same_catalog: bool = False


@dataclass
class Classification:
    categories: list[tuple[str, float]]
    adult_probability: float | None
    modality: str  # "text", "image" or "both": what the prediction was made from


class SearchIndex:
    """One generation of an index, open for searching. Safe to share between threads."""

    def __init__(self, root: Path, generation: Path):
        self.root = root
        self.generation_dir = generation
        self.store: MetadataStore | None = None
        try:
            self._open(generation)
        except BaseException:
            if self.store is not None:
                self.store.close()
            raise
        self.thumbnails = ThumbnailStore(root / "images")
        # ONNX Runtime when the index holds the model's ONNX graphs (eclip index --onnx), else
        # PyTorch
        self._encoder = query_encoder(root, self.info.model_sha1,
                                      QueryEncoder(generation / "model"))

    def _open(self, generation: Path) -> None:
        """Every file of the generation opened and checked against ``info.json`` (counts, sizes),
        so that a damaged generation fails here, with a SearchIndexError naming the file, and not
        in every request that would touch it."""
        self.info = read_info(generation)
        listings = self.info.listings
        with reading(generation / "listings.sqlite"):
            if not (generation / "listings.sqlite").is_file():
                raise FileNotFoundError("missing")
            self.store = MetadataStore(generation / "listings.sqlite")
            stored_count = self.store.count()  # reads the schema and the table: garbage fails
        consistent(generation / "listings.sqlite", stored_count == listings,
                   f"it holds {stored_count} listings, info.json {listings}")
        stored = StoredVectors.load(generation, mmap=True, random_access=True)
        self.vids, self.vectors = np.asarray(stored.vids), stored.arrays
        consistent(generation / "vids.npy", self.vids.shape == (listings,),
                   f"{self.vids.shape[0] if self.vids.ndim else 0} ids, info.json {listings}")
        for m in SPACES:
            path = generation / f"{m}.npy"
            consistent(path, self.vectors[m].ndim == 2 and self.vectors[m].shape[0] == listings,
                       f"shape {self.vectors[m].shape}, info.json {listings} listings")
        # the listings each filter keeps, computed once for this generation (filters.py)
        self.filters = FilterCache(self._allowed, int(self.vids[-1]) + 1 if listings else 0)
        self.vector_store: VectorStore = open_store(self.root, generation, self.info, self.vids,
                                                    self.vectors, self.filters.get)
        with reading(generation / "heads.json"):
            heads = json.loads((generation / "heads.json").read_text("utf-8"))["adult"]
            self.adult_heads = {m: AdultHead.from_dict(h) if h else None
                                for m, h in heads.items()}

    @classmethod
    def open(cls, index_dir: str | Path, *, previous: SearchIndex | None = None) -> SearchIndex:
        """Open the generation in service; ``previous`` lends its model when it is the same one."""
        root = Path(index_dir)
        generation = current_generation(root)
        index = cls(root, generation)
        if previous is not None and previous.info.model_sha1 == index.info.model_sha1:
            index._encoder = previous._encoder
        return index

    @property
    def generation(self) -> str:
        return self.generation_dir.name

    def __len__(self) -> int:
        return self.info.listings

    def close(self) -> None:
        self.store.close()
        self.vector_store.close()

    # ------------------------------------------------------------------------------ encoding
    @property
    def model(self):
        return self._encoder.model

    @property
    def query_encoder(self) -> str:
        """``onnx`` or ``pytorch``: what encodes query texts and photos."""
        return self._encoder.backend

    def encode_text(self, query: str) -> np.ndarray:
        """A query as the model's text composer would render a listing with only this title."""
        return self._encoder.text(query)

    def encode_image(self, image) -> np.ndarray:
        """A decoded RGB PIL image (``eclip.catalog.images.load_image``) as a unit vector."""
        return self._encoder.image(image)

    # ------------------------------------------------------------------------------- search
    def search(self, vector: np.ndarray, k: int, *, against: str = "both",
               category: str | None = None, exclude: set[int] | frozenset[int] = frozenset(),
               catalog_id: str | None = None, adult: bool | None = None) -> list[Hit]:
        """The ``k`` listings nearest to ``vector`` among the ``against`` vectors ("image", "text"
        or "both"), optionally only in ``category`` (and below it), of one catalog, with or without
        the adult flag (``stores.Where``), never those in ``exclude``. The vector store applies the
        filters (FAISS: an id selector from the metadata; Milvus: a filter expression)."""
        if k <= 0:
            return []
        where = Where(category=category or None, catalog_id=catalog_id or None, adult=adult,
                      exclude=frozenset(int(v) for v in exclude))
        found, values = self.vector_store.search(AGAINST[against], vector, k, where)
        pairs = [(int(v), float(s)) for v, s in zip(found, values)][:k]
        listings = self.store.fetch(v for v, _ in pairs)
        return [Hit(listings[v], s) for v, s in pairs if v in listings]

    def _allowed(self, where: Where) -> np.ndarray | None:
        """The vids ``where`` keeps (ascending), from the metadata; None: every listing. Each
        filter is computed once per generation: ``self.filters`` caches the answers."""
        sets = []
        if where.category is not None:
            sets.append(self.store.category_vids(where.category))
        if where.catalog_id is not None:
            sets.append(np.asarray(self.store.catalog_members(where.catalog_id), dtype=np.int64))
        if where.adult is not None:
            vids, labels = self.store.adult_labels()
            adult = np.sort(vids[labels == 1])
            sets.append(adult if where.adult else np.setdiff1d(self.vids, adult))
        if not sets:
            return None
        allowed = np.unique(sets[0])
        for other in sets[1:]:
            allowed = np.intersect1d(allowed, other)
        return allowed.astype(np.int64)

    def search_text(self, query: str, k: int, *, against: str = "text",
                    category: str | None = None) -> list[Hit]:
        return self.search(self.lift(self.encode_text(query), against), k, against=against,
                           category=category)

    def search_image(self, image, k: int, *, against: str = "image",
                     category: str | None = None) -> list[Hit]:
        return self.search(self.lift(self.encode_image(image), against), k, against=against,
                           category=category)

    def lift(self, vector: np.ndarray, against: str) -> np.ndarray:
        """A joint-space query of one modality, as ``search`` takes it for ``against``: searching
        the fused vectors ("both") it becomes ``eclip.encode.fuse_query`` of itself, whose score
        is ``w * <q, image> + (1 - w) * <q, text>``."""
        return fuse_query(vector, self.info.fusion_weight) if against == "both" else vector

    def listing(self, product_id: str) -> StoredListing | None:
        return self.store.by_product_id(product_id)

    def vector(self, vid: int, modality: str = "product") -> np.ndarray:
        return np.asarray(self.vectors[modality][int(np.searchsorted(self.vids, vid))],
                          dtype=np.float32)

    def similar(self, product_id: str, k: int, *, adult: bool | None = None
                ) -> tuple[StoredListing, list[Hit]] | None:
        """Listings like ``product_id``: its catalog's other listings first (the same product from
        other sellers, nearest first), then the nearest other listings by fused vector. ``adult``
        filters both parts as in ``search`` (False: no listing flagged adult)."""
        item = self.listing(product_id)
        if item is None:
            return None
        query = self.vector(item.vid)
        everyone = [v for v in self.store.catalog_members(item.catalog_id) if v != item.vid] \
            if item.catalog_id else []
        members = everyone
        if adult is not None and everyone:
            flags = self.store.fetch(everyone)
            members = [v for v in everyone if v in flags and bool(flags[v].adult) == adult]
        same: list[Hit] = []
        if members:
            rows = np.searchsorted(self.vids, np.asarray(members, dtype=np.int64))
            scores = read_rows(self.vectors["product"], rows) @ query
            ranked = [members[i] for i in np.argsort(-scores, kind="stable")][:k]
            found = self.store.fetch(ranked)
            score_of = dict(zip(members, scores))
            same = [Hit(found[v], float(score_of[v]), True) for v in ranked if v in found]
        rest = self.search(query, k - len(same), exclude={item.vid, *everyone}, adult=adult) \
            if k > len(same) else []
        return item, same + rest

    def classify(self, title: str | None = None, image=None, *, top: int = 5,
                 neighbours: int = 20, exclude: str | None = None) -> Classification:
        """Top categories (neighbour vote) and the adult probability of a title and/or a photo.

        ``exclude``: the product id of an indexed listing left out of the vote (classifying a
        listing the index holds, whose own label would otherwise vote for itself)."""
        if not title and image is None:
            raise ValueError("classify needs a title, a photo or both")
        parts = []
        if title:
            parts.append(self.encode_text(title))
        if image is not None:
            parts.append(self.encode_image(image))
        if len(parts) == 2:  # the listing's own fused vector, as the index holds them
            vector, modality = fuse(parts[1], parts[0], self.info.fusion_weight), "both"
        else:
            vector, modality = parts[0], "text" if title else "image"
        left_out = self.listing(exclude) if exclude else None
        hits = self.search(vector, neighbours, against=modality,
                           exclude={left_out.vid} if left_out is not None else frozenset())
        scale = float(self.model.logit_scale().detach())
        categories = vote_categories(np.asarray([h.score for h in hits]),
                                     [h.listing.category for h in hits], scale, top)
        head = self.adult_heads.get(AGAINST[modality])
        return Classification(categories, head.probability(vector) if head else None, modality)

    def categories(self) -> list[tuple[str, int]]:
        return self.store.categories()

    def image_file(self, product_id: str, n: int = 0) -> Path | None:
        """The stored thumbnail of a listing's ``n``-th photo (a path inside the index)."""
        item = self.listing(product_id)
        if item is None or not 0 <= n < len(item.images):
            return None
        return self.thumbnails.path(item.images[n])


class LiveIndex:
    """The index in service, following the folder: a newer generation is opened when it appears.

    A newer generation that cannot be opened (damaged files, a pointer being rewritten) leaves the
    one in service serving; the problem is logged once (``eclip.search`` logger, WARNING) and that
    generation is not tried again until ``CURRENT`` names another one."""

    def __init__(self, index_dir: str | Path, *, check_every: float = 1.0):
        self.root = Path(index_dir)
        self.check_every = check_every
        self._index = SearchIndex.open(self.root)
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        self._problem: str | None = None  # the last one logged
        self._bad_generation: str | None = None

    def get(self) -> SearchIndex:
        now = time.monotonic()
        if now - self._checked >= self.check_every:
            with self._lock:
                if now - self._checked >= self.check_every:
                    self._checked = now
                    self._refresh()
        return self._index

    def _refresh(self) -> None:
        try:
            name = current_generation(self.root).name
        except (EclipError, OSError, ValueError) as exc:
            # a write in progress or a damaged pointer: keep serving the open generation
            self._report(f"{exc}; still serving generation {self._index.generation}")
            return
        if name in (self._index.generation, self._bad_generation):
            return
        try:
            self._index = SearchIndex.open(self.root, previous=self._index)
        except (EclipError, OSError, ValueError, RuntimeError, KeyError, TypeError,
                sqlite3.Error) as exc:
            self._bad_generation = name
            self._report(f"generation {name} cannot be opened: {exc}; still serving generation "
                         f"{self._index.generation}")
            return
        self._bad_generation = self._problem = None

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            logger.warning("%s: %s", self.root, problem)
