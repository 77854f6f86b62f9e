"""The search index: listings, their vectors, the model and the photos, in one folder.

Layout::

    INDEX_DIR/
      CURRENT              {"format": "eclip-search-index", "version": 1, "generation": "g000003"}
      g000003/             one complete generation, never modified once written
        model/             the model directory (hard links to the previous generation's files)
        listings.sqlite    metadata (store.py), keyed by vid
        vids.npy           int64 vids, ascending; row i of every vector file belongs to vids[i]
        image.npy text.npy product.npy   float32 unit vectors (the source for rebuilds)
        image.faiss text.faiss product.faiss   FAISS indexes with ids = vids (vectors.py); with
                           the Milvus store (milvus.py) a collection per generation instead
        heads.json         adult heads (heads.py)
        info.json          counts, index kinds, measured recall, model fingerprint, settings,
                           and for Milvus the store: {kind, uri, alias, collection}
      images/ab/<sha1>.jpg thumbnails shared by generations (thumbnails.py)
      milvus.db            the Milvus Lite file, with ``--store milvus`` and no ``--uri``
      .lock                held by the one writer at a time

Every write (a build, an update, a delete) assembles a new generation in a temporary folder, syncs
it to disk, renames it into place and then replaces ``CURRENT`` atomically: a crash at any point
leaves the previous generation in service. Updates re-embed only the listings they touch; the other
vectors, their metadata and a trained IVF index are carried over. The previous generation is kept
for readers that still have it open; older ones and unreferenced photos are removed.

Where the vectors are searched is a store (``stores.py``): FAISS files in the generation (the
default), or a Milvus collection per generation whose alias moves when the generation is in service.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from eclip.atomic import atomic_open, clean_stale_temps
from eclip.catalog.schema import Listing
from eclip.errors import EclipError, SearchIndexError
from eclip.search.heads import AdultHead, fit_adult_head, vote_categories
from eclip.search.store import MetadataStore, StoredListing
from eclip.search.thumbnails import ThumbnailStore
from eclip.search.stores import (FaissStore, Scalars, StoreSpec, StoreWriter, VectorStore, Where,
                                 WriteJob, store_spec_of, writer_for)
from eclip.search.vectors import IndexStats, VectorIndex, VectorSettings
from eclip.encode import (FUSION_WEIGHT, Embeddings, embed_listings, eval_transform, fuse,
                          fuse_query, model_composer)
from eclip.encode.identity import model_sha256
from eclip.encode.text import query_listing

FORMAT = "eclip-search-index"
VERSION = 1
POINTER = "CURRENT"
MODALITIES = ("image", "text", "product")
AGAINST = {"image": "image", "text": "text", "both": "product"}  # API names -> stored modality
_GENERATION = re.compile(r"^g(\d{6})$")
# what a first write that failed (or was killed) leaves: the lock, temporaries, photos, a generation
# renamed into place before the pointer was written
_LEFTOVER = re.compile(r"^(\.lock|\.tmp-.*|\.CURRENT\.tmp-.*|images|g\d{6}|milvus\.db)$")


logger = logging.getLogger("eclip.search")


# --------------------------------------------------------------------------------------- info
@dataclass
class IndexInfo:
    """What a generation holds; written to ``info.json`` and returned by every write."""

    generation: str
    listings: int
    dim: int
    vectors: dict[str, IndexStats]
    model_sha1: str
    settings: VectorSettings
    thumbnail_size: int
    created: str
    added: int = 0
    updated: int = 0
    deleted: int = 0
    not_found: list[str] = field(default_factory=list)
    image_problems: int = 0
    fusion_weight: float = FUSION_WEIGHT  # "both" = eclip.encode.fuse(image, text, fusion_weight)
    store: dict | None = None  # the vector store (stores.py); None: FAISS files in the generation
    model_sha256: str | None = None  # encode.identity.model_sha256 of model/ (None: older index)
    thumbnails: bool = True  # False: some listings were written without photos (--no-thumbnails)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["vectors"] = {m: asdict(s) for m, s in self.vectors.items()}
        data["settings"] = self.settings.to_dict()
        if data["store"] is None:  # the FAISS layout, unchanged
            del data["store"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> IndexInfo:
        data = dict(data)
        data["vectors"] = {m: IndexStats(**s) for m, s in data["vectors"].items()}
        data["settings"] = VectorSettings(**data["settings"])
        return cls(**data)

    def summary(self) -> str:
        lines = [f"index generation {self.generation}: {self.listings} listings, {self.dim}-d "
                 f"vectors (added {self.added}, updated {self.updated}, deleted {self.deleted})"]
        lines += [f"  {m} vectors: {self.vectors[m].describe()}" for m in MODALITIES]
        if self.store:
            lines.append(f"  vectors in Milvus ({self.store.get('uri') or 'milvus.db in the index'}"
                         f"): collection {self.store['collection']}, alias {self.store['alias']}")
        if self.not_found:
            shown = ", ".join(self.not_found[:5]) + (" ..." if len(self.not_found) > 5 else "")
            lines.append(f"  {len(self.not_found)} product id(s) to delete were not in the index: "
                         f"{shown}")
        if self.image_problems:
            lines.append(f"  {self.image_problems} photo(s) could not be stored and were left out")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ layout
def current_generation(index_dir: str | Path) -> Path:
    """The folder of the generation in service; SearchIndexError if ``index_dir`` is no index."""
    root = Path(index_dir)
    pointer = root / POINTER
    try:
        data = json.loads(pointer.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SearchIndexError(
            f"{root} is not an eclip search index ({POINTER} is missing); build one with: "
            f"eclip index --model DIR --catalog FILE --out {root}") from None
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{pointer} cannot be read: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SearchIndexError(f"{pointer} does not describe an eclip search index")
    if data.get("version") != VERSION:
        raise SearchIndexError(f"{root} has index format version {data.get('version')}; this "
                               f"eclip reads version {VERSION}: rebuild the index")
    name = str(data.get("generation", ""))
    if not _GENERATION.match(name) or not (root / name).is_dir():
        raise SearchIndexError(f"{pointer} names generation {name!r}, which is missing")
    return root / name


def is_index(path: str | Path) -> bool:
    return (Path(path) / POINTER).is_file()


def index_store(index_dir: str | Path) -> StoreSpec:
    """The vector store of the generation in service (updates and deletes keep it)."""
    generation = current_generation(index_dir)
    with _reading(generation / "info.json"):
        entry = json.loads((generation / "info.json").read_text("utf-8")).get("store")
    return store_spec_of(entry)


def _write_pointer(root: Path, generation: str) -> None:
    with atomic_open(root / POINTER, "w") as handle:
        json.dump({"format": FORMAT, "version": VERSION, "generation": generation}, handle)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (or copy, across file systems) every file of ``source`` into ``target``."""
    for file in sorted(source.rglob("*")):
        dest = target / file.relative_to(source)
        if file.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(file, dest)
        except OSError:
            shutil.copy2(file, dest)


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_sha1(model_dir: Path) -> str:
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise SearchIndexError(f"{model_dir} is not an eclip model directory "
                               f"(no model.safetensors)")
    return file_sha1(weights)


# ------------------------------------------------------------------------------------ writer
@dataclass
class _Vectors:
    vids: np.ndarray
    arrays: dict[str, np.ndarray]

    @classmethod
    def load(cls, generation: Path, mmap: bool = False) -> _Vectors:
        """The ids and vectors of a generation; a file that cannot be read is a SearchIndexError
        naming it."""
        mode = "r" if mmap else None

        def read(name: str) -> np.ndarray:
            with _reading(generation / name):
                return np.load(generation / name, mmap_mode=mode)

        return cls(read("vids.npy"), {m: read(f"{m}.npy") for m in MODALITIES})


class _Writer:
    """Holds the index's lock; ``commit`` turns a base generation plus changes into a new one."""

    def __init__(self, index_dir: str | Path, progress: bool):
        self.root = Path(index_dir)
        self.progress = progress
        self._lock_file = None

    def __enter__(self) -> _Writer:
        if self.root.exists() and not self.root.is_dir():
            raise SearchIndexError(f"{self.root} exists and is not a folder")
        if self.root.is_dir() and not is_index(self.root) and any(
                not _LEFTOVER.match(e.name) for e in self.root.iterdir()):
            raise SearchIndexError(f"{self.root} holds other files; choose an empty or new "
                                   f"folder for the index")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SearchIndexError(f"another eclip process is writing to {self.root}; try "
                                   f"again when it has finished") from None
        # with the lock held no other writer is at work: every temporary here was left by a
        # writer that was killed (a generation being assembled, the pointer, photos)
        clean_stale_temps(self.root, locked=True)
        images = self.root / "images"
        if images.is_dir():
            for sub in images.iterdir():
                clean_stale_temps(sub, locked=True)
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()

    def base(self) -> Path | None:
        return current_generation(self.root) if is_index(self.root) else None

    def commit(self, base: Path | None, model_dir: Path, listings: list[Listing],
               emb: Embeddings | None, delete: list[str], settings: VectorSettings,
               thumbnail_size: int, store: StoreSpec | None = None,
               thumbnails: bool = True) -> IndexInfo:
        """``store``: where the vectors go (None: the base generation's store, else FAISS);
        ``thumbnails=False``: the listings are stored without photos."""
        _check_unique([x.product_id for x in listings])
        if store is None:
            store = store_spec_of(_read_info(base).store) if base is not None else StoreSpec()
        vector_store = writer_for(store, self.root)
        previous = self._in_service()
        tmp = self.root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        info = None
        try:
            info = self._assemble(tmp, base, model_dir, listings, emb, delete, settings,
                                  thumbnail_size, vector_store, thumbnails)
            _fsync_tree(tmp)
            target = self.root / info.generation
            tmp.rename(target)
            _write_pointer(self.root, info.generation)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if info is not None:
                vector_store.discard(info.store)
            raise
        # the generation is in service: clients that follow the store's own switch (a Milvus
        # alias) see it now, complete
        vector_store.publish(info.store)
        self._collect_garbage([info.generation] + ([previous.name] if previous else []),
                              vector_store)
        return info

    def _in_service(self) -> Path | None:
        """The generation readers may have open (kept one write longer), if any can be read."""
        try:
            return self.base()
        except SearchIndexError:
            return None

    def _assemble(self, tmp: Path, base: Path | None, model_dir: Path, listings: list[Listing],
                  emb: Embeddings | None, delete: list[str], settings: VectorSettings,
                  thumbnail_size: int, vector_store: StoreWriter,
                  thumbnails: bool = True) -> IndexInfo:
        _link_tree(model_dir, tmp / "model")
        thumbs = ThumbnailStore(self.root / "images", thumbnail_size)
        names, problems = [], 0
        for listing in tqdm(listings, desc="storing photos", disable=not self.progress,
                            unit="listing"):
            if not thumbnails:
                names.append([])
                continue
            stored, failed = thumbs.put_all(listing.images)
            names.append(stored)
            problems += len(failed)

        store = (MetadataStore.copy(base / "listings.sqlite", tmp / "listings.sqlite") if base
                 else MetadataStore.create(tmp / "listings.sqlite"))
        try:
            found = store.vids_of(delete)
            not_found = [pid for pid in delete if pid not in found]
            deleted = np.asarray(sorted(found.values()), dtype=np.int64)
            store.delete(deleted)
            existing = store.vids_of([x.product_id for x in listings])
            new_vids = store.assign_vids([x.product_id for x in listings])
            store.upsert(new_vids, listings, names)
            store.commit()
            count = store.count()
            label_vids, labels = store.adult_labels()
        finally:
            store.close()

        old = _Vectors.load(base, mmap=True) if base else None
        fresh = {m: (emb.modality(_API_NAME[m]) if emb is not None else np.zeros((0, 0)))
                 for m in MODALITIES}
        dims = {m: fresh[m].shape[1] if listings else (old.arrays[m].shape[1]
                                                       if old is not None else 0)
                for m in MODALITIES}
        for m in MODALITIES:
            if old is not None and listings and old.arrays[m].shape[1] != dims[m]:
                raise SearchIndexError(f"the new {m} vectors have {dims[m]} dimensions, the index "
                                       f"{old.arrays[m].shape[1]}: rebuild the index")
        dropped = np.concatenate([deleted, new_vids])
        keep = ~np.isin(old.vids, dropped) if old is not None else np.zeros(0, bool)
        vids = np.concatenate([old.vids[keep] if old is not None else np.zeros(0, np.int64),
                               new_vids])
        order = np.argsort(vids, kind="stable")
        vids = vids[order]
        np.save(tmp / "vids.npy", vids)
        generation = _next_generation(self.root)
        heads: dict[str, dict | None] = {}
        label_rows = np.searchsorted(vids, label_vids)
        for m in MODALITIES:
            parts = [np.asarray(old.arrays[m][keep]) if old is not None else None,
                     np.asarray(fresh[m], dtype=np.float32).reshape(len(listings), dims[m])]
            vectors = np.concatenate([p for p in parts if p is not None]).astype(np.float32)
            vectors = np.ascontiguousarray(vectors[order]) if len(vectors) else \
                np.zeros((0, dims[m]), np.float32)
            np.save(tmp / f"{m}.npy", vectors)
            head = fit_adult_head(vectors[label_rows], labels, seed=settings.seed)
            heads[m] = head.to_dict() if head is not None else None
            del vectors
        (tmp / "heads.json").write_text(json.dumps({"adult": heads}), encoding="utf-8")
        stats, store_entry = vector_store.write(WriteJob(
            root=self.root, tmp=tmp, generation=generation, base=base,
            base_info=_read_info(base).to_dict() if base is not None else None, vids=vids,
            dropped=dropped, new_vids=new_vids,
            fresh={m: np.asarray(fresh[m], dtype=np.float32).reshape(len(listings), dims[m])
                   for m in MODALITIES},
            settings=settings, scalars=lambda: _scalars(tmp / "listings.sqlite", vids),
            progress=self.progress))
        added = len(listings) - len(existing)
        info = IndexInfo(generation=generation, listings=count, dim=dims["image"], vectors=stats,
                         model_sha1=_model_sha1(tmp / "model"), settings=settings,
                         thumbnail_size=thumbnail_size,
                         created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         added=added, updated=len(existing), deleted=len(deleted),
                         not_found=not_found, image_problems=problems,
                         fusion_weight=_fusion_weight(emb, base), store=store_entry,
                         model_sha256=model_sha256(tmp / "model"),
                         thumbnails=thumbnails and (base is None or _read_info(base).thumbnails))
        (tmp / "info.json").write_text(json.dumps(info.to_dict(), indent=2) + "\n",
                                       encoding="utf-8")
        return info

    def _collect_garbage(self, keep: list[str], vector_store: StoreWriter) -> None:
        """Drop generations other than ``keep`` (with their store's data: a Milvus collection),
        leftovers of failed writes, and unused photos."""
        for entry in self.root.iterdir():
            stale_gen = _GENERATION.match(entry.name) and entry.name not in keep
            if entry.is_dir() and (stale_gen or entry.name.startswith(".tmp-")):
                if stale_gen:
                    _discard_store_of(self.root, entry)
                shutil.rmtree(entry, ignore_errors=True)
        vector_store.collect([_read_info(self.root / gen).store for gen in keep])
        names: set[str] = set()
        for gen in keep:
            store = MetadataStore(self.root / gen / "listings.sqlite")
            names |= store.image_names()
            store.close()
        ThumbnailStore(self.root / "images").prune(names)


_API_NAME = {"image": "image", "text": "text", "product": "both"}


def _read_info(generation: Path) -> IndexInfo:
    return IndexInfo.from_dict(json.loads((generation / "info.json").read_text("utf-8")))


def _discard_store_of(root: Path, generation: Path) -> None:
    """The store's data of a generation being removed (a Milvus collection); FAISS files go with
    the folder. A generation whose info.json cannot be read has nothing recorded to drop."""
    try:
        entry = _read_info(generation).store
    except (OSError, ValueError, KeyError, TypeError):
        return
    if entry:
        writer_for(store_spec_of(entry), root).discard(entry)


def _scalars(metadata: Path, vids: np.ndarray) -> Scalars:
    """The filterable fields of the listings ``vids`` (in that order) from a generation's
    metadata: category, catalog id, adult flag (1, 0, -1 unknown)."""
    store = MetadataStore(metadata)
    try:
        found = store.fetch(vids.tolist())
    finally:
        store.close()
    rows = [found[int(v)] for v in vids]
    return Scalars(categories=[x.category for x in rows], catalog_ids=[x.catalog_id for x in rows],
                   adult=np.asarray([-1 if x.adult is None else int(x.adult) for x in rows],
                                    dtype=np.int8))


def _next_generation(root: Path) -> str:
    numbers = [int(m.group(1)) for e in root.iterdir() if (m := _GENERATION.match(e.name))]
    return f"g{max(numbers, default=0) + 1:06d}"


def _check_unique(product_ids: list[str]) -> None:
    seen: set[str] = set()
    for pid in product_ids:
        if pid in seen:
            raise SearchIndexError(f"product_id {pid!r} appears twice among the listings to "
                                   f"index")
        seen.add(pid)


def _load_model(model_dir: Path):
    from eclip.model import load_model

    model = load_model(model_dir)
    model.eval()
    return model


def _fusion_weight(emb: Embeddings | None, base: Path | None) -> float:
    """The weight the generation's fused vectors were made with: the new embeddings' (the model's
    own, ``encode.model_fusion_weight``), else the base generation's."""
    if emb is not None:
        return emb.fusion_weight
    if base is not None:
        return float(json.loads((base / "info.json").read_text("utf-8")).get("fusion_weight",
                                                                              FUSION_WEIGHT))
    return FUSION_WEIGHT


def build_index(model_dir: str | Path, listings: list[Listing], index_dir: str | Path, *,
                settings: VectorSettings | None = None, thumbnail_size: int = 256,
                batch_size: int = 64, progress: bool = True,
                store: StoreSpec | None = None, thumbnails: bool = True) -> IndexInfo:
    """Embed ``listings`` with the model in ``model_dir`` and write a new index to ``index_dir``.

    An existing index there is replaced by a new generation (atomically, like every write).
    ``store``: where the vectors are searched (``stores.StoreSpec``; default FAISS files).
    """
    if not listings:
        raise SearchIndexError("no listings to index")
    model_dir = Path(model_dir)
    model = _load_model(model_dir)
    emb = embed_listings(model, listings, batch_size=batch_size, progress=progress,
                         desc="embedding listings")
    return write_index(index_dir, model_dir, listings, emb, settings=settings,
                       thumbnail_size=thumbnail_size, progress=progress, store=store,
                       thumbnails=thumbnails)


def write_index(index_dir: str | Path, model_dir: str | Path, listings: list[Listing],
                embeddings: Embeddings, *, settings: VectorSettings | None = None,
                thumbnail_size: int = 256, progress: bool = True,
                store: StoreSpec | None = None, thumbnails: bool = True) -> IndexInfo:
    """A new index from listings and vectors already computed (``embed_listings``) with the model
    in ``model_dir``, which is copied into the index."""
    if embeddings.product_ids != [x.product_id for x in listings]:
        raise SearchIndexError("the embeddings do not belong to the listings (product ids differ)")
    with _Writer(index_dir, progress) as writer:
        return writer.commit(None, Path(model_dir), listings, embeddings, [],
                             settings or VectorSettings(), thumbnail_size, store or StoreSpec(),
                             thumbnails=thumbnails)


def update_index(index_dir: str | Path, listings: list[Listing], *,
                 model_dir: str | Path | None = None, batch_size: int = 64,
                 progress: bool = True) -> IndexInfo:
    """Add ``listings`` to the index, replacing those whose product_id it holds already.

    Only these listings are embedded, with the index's own model; ``model_dir``, when given, must be
    that same model.
    """
    with _Writer(index_dir, progress) as writer:
        base = writer.base()
        if base is None:
            raise SearchIndexError(f"{index_dir} is not an index yet; build it first "
                                   f"without --update")
        info = IndexInfo.from_dict(json.loads((base / "info.json").read_text("utf-8")))
        if model_dir is not None and _model_sha1(Path(model_dir)) != info.model_sha1:
            raise SearchIndexError(f"{model_dir} is not the model the index was built with; "
                                   f"vectors of two models cannot be mixed: rebuild the index "
                                   f"with this model")
        emb = None
        if listings:
            model = _load_model(base / "model")
            emb = embed_listings(model, listings, batch_size=batch_size, progress=progress,
                                 desc="embedding listings")
        return writer.commit(base, base / "model", listings, emb, [], info.settings,
                             info.thumbnail_size)


def delete_from_index(index_dir: str | Path, product_ids: list[str]) -> IndexInfo:
    """Remove listings by product_id; ids the index does not hold are reported in ``not_found``."""
    with _Writer(index_dir, progress=False) as writer:
        base = writer.base()
        if base is None:
            raise SearchIndexError(f"{index_dir} is not an index")
        info = IndexInfo.from_dict(json.loads((base / "info.json").read_text("utf-8")))
        return writer.commit(base, base / "model", [], None, list(dict.fromkeys(product_ids)),
                             info.settings, info.thumbnail_size)


# ------------------------------------------------------------------------------------ reader
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


class _Encoder:
    """The index's model, loaded on first use. Forward passes of concurrent queries run in
    parallel; tokenizing is one at a time (a fast tokenizer is not re-entrant). Generations built
    with the same model share one encoder.
    """

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self._model = None
        self._composer = None
        self._transform = None
        self._load_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()

    @property
    def model(self):
        with self._load_lock:
            if self._model is None:
                model = _load_model(self.model_dir)
                self._composer, self._transform = model_composer(model), eval_transform(model)
                self._model = model
            return self._model

    backend = "pytorch"

    def tokens(self, query: str) -> dict[str, torch.Tensor]:
        """A query as the model's text composer renders a listing with only this title, tokenized."""
        model = self.model
        text = self._composer.compose(query_listing(query))
        with self._tokenizer_lock:
            return model.tokenize([text])

    def pixels(self, image) -> torch.Tensor:
        """A photo as the model's eval transform gives it, [1, 3, H, W]."""
        self.model  # noqa: B018 - loads the transform
        return self._transform(image)[None]

    def text(self, query: str) -> np.ndarray:
        tokens = self.tokens(query)
        with torch.inference_mode():
            return self.model.encode_text(tokens["input_ids"], tokens["attention_mask"])[0].numpy()

    def image(self, image) -> np.ndarray:
        pixels = self.pixels(image)
        with torch.inference_mode():
            return self.model.encode_image(pixels)[0].numpy()


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
        from eclip.search.onnx_query import query_encoder

        # ONNX Runtime when the index holds the model's ONNX graphs (eclip index --onnx), else PyTorch
        self._encoder = query_encoder(root, self.info.model_sha1, _Encoder(generation / "model"))
        self._category_cache: dict[str, np.ndarray] = {}
        self._adult_vids: np.ndarray | None = None

    def _open(self, generation: Path) -> None:
        """Every file of the generation opened and checked against ``info.json`` (counts, sizes),
        so that a damaged generation fails here, with a SearchIndexError naming the file, and not
        in every request that would touch it."""
        with _reading(generation / "info.json"):
            self.info = IndexInfo.from_dict(json.loads(
                (generation / "info.json").read_text("utf-8")))
        listings = self.info.listings
        with _reading(generation / "listings.sqlite"):
            if not (generation / "listings.sqlite").is_file():
                raise FileNotFoundError("missing")
            self.store = MetadataStore(generation / "listings.sqlite")
            stored_count = self.store.count()  # reads the schema and the table: garbage fails
        _consistent(generation / "listings.sqlite", stored_count == listings,
                    f"it holds {stored_count} listings, info.json {listings}")
        stored = _Vectors.load(generation, mmap=True)
        self.vids, self.vectors = np.asarray(stored.vids), stored.arrays
        _consistent(generation / "vids.npy", self.vids.shape == (listings,),
                    f"{self.vids.shape[0] if self.vids.ndim else 0} ids, info.json {listings}")
        for m in MODALITIES:
            path = generation / f"{m}.npy"
            _consistent(path, self.vectors[m].ndim == 2 and self.vectors[m].shape[0] == listings,
                        f"shape {self.vectors[m].shape}, info.json {listings} listings")
        self.indexes: dict[str, VectorIndex] = {}  # the FAISS store's indexes
        self.vector_store: VectorStore
        if self.info.store:
            from eclip.search.milvus import MilvusStore

            self.vector_store = MilvusStore(self.info.store, self.root, self.info.vectors)
            count = self.vector_store.count()
            _consistent(generation / "info.json", count == listings,
                        f"its Milvus collection {self.info.store['collection']} holds {count} "
                        f"vectors, info.json {listings}")
        else:
            for m in MODALITIES:
                path = generation / f"{m}.faiss"
                with _reading(path):
                    self.indexes[m] = VectorIndex.load(str(path), self.info.vectors[m])
                found = self.indexes[m].count, self.indexes[m].index.d
                _consistent(path, found == (listings, self.vectors[m].shape[1]),
                            f"{found[0]} vectors of {found[1]} dimensions, the generation "
                            f"{listings} of {self.vectors[m].shape[1]}")
            self.vector_store = FaissStore(self.indexes, self.vids, self.vectors, self._allowed)
        with _reading(generation / "heads.json"):
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
        """The vids ``where`` keeps (ascending), from the metadata; None: every listing."""
        sets = []
        if where.category is not None:
            sets.append(self._category_vids(where.category))
        if where.catalog_id is not None:
            sets.append(np.asarray(self.store.catalog_members(where.catalog_id), dtype=np.int64))
        if where.adult is not None:
            if self._adult_vids is None:
                vids, labels = self.store.adult_labels()
                self._adult_vids = np.sort(vids[labels == 1])
            sets.append(self._adult_vids if where.adult
                        else np.setdiff1d(self.vids, self._adult_vids))
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

    def _category_vids(self, category: str) -> np.ndarray:
        cached = self._category_cache.get(category)
        if cached is None:
            cached = self.store.category_vids(category)
            if len(self._category_cache) >= 1024:
                self._category_cache.clear()
            self._category_cache[category] = cached
        return cached

    def listing(self, product_id: str) -> StoredListing | None:
        return self.store.by_product_id(product_id)

    def vector(self, vid: int, modality: str = "product") -> np.ndarray:
        return np.asarray(self.vectors[modality][int(np.searchsorted(self.vids, vid))])

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
            scores = np.asarray(self.vectors["product"][rows]) @ query
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


def _consistent(path: Path, ok: bool, detail: str) -> None:
    if not ok:
        raise SearchIndexError(f"{path} does not match its generation ({detail}): the index is "
                               f"damaged; rebuild it with `eclip index`")


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Whatever reading ``path`` raises (JSON, SQLite, NumPy, FAISS) as a SearchIndexError naming
    it: FAISS raises RuntimeError, SQLite sqlite3.DatabaseError, NumPy ValueError / OSError."""
    try:
        yield
    except SearchIndexError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, EOFError,
            RuntimeError, RecursionError, sqlite3.Error) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        if isinstance(exc, FileNotFoundError):
            reason = "missing"
        raise SearchIndexError(f"{path} cannot be read ({reason}): the index generation "
                               f"{path.parent.name} is damaged; rebuild it with `eclip index`"
                               ) from None

