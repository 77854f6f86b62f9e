"""The write transaction: a base generation plus changes becomes a new generation, atomically.

Every write (a build, an update, a delete) holds the index's lock, assembles a new generation in a
temporary folder (the model, photos, metadata, vectors, adult heads, the vector store, info.json),
syncs it to disk, renames it into place and then replaces ``CURRENT`` atomically: a crash at any
point leaves the previous generation in service. Updates re-embed only the listings they touch;
the other vectors, their metadata and a trained IVF index are carried over. The previous generation
is kept for readers that still have it open; older ones and unreferenced photos are removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from eclip.atomic import clean_stale_temps
from eclip.catalog.config import DEFAULT_MAX_PIXELS
from eclip.catalog.schema import Listing
from eclip.encode import FUSION_WEIGHT, Embeddings
from eclip.encode.identity import model_sha256
from eclip.errors import SearchIndexError
from eclip.search.generation import (GENERATION_NAME, IndexInfo, StoredVectors, current_generation,
                                     fsync_tree, is_index, link_tree, model_sha1, next_generation,
                                     open_vectors, read_info, write_pointer)
from eclip.search.heads import fit_adult_head
from eclip.search.metadata import MetadataStore
from eclip.search.spaces import API_NAME, SPACES
from eclip.search.store_types import Scalars, StoreSpec, StoreWriter, WriteJob, store_spec_of
from eclip.search.thumbnails import ThumbnailStore
from eclip.search.vector_stores import writer_for
from eclip.search.vectors import VectorSettings

# what a first write that failed (or was killed) leaves: the lock, temporaries, photos, a generation
# renamed into place before the pointer was written
_LEFTOVER = re.compile(r"^(\.lock|\.tmp-.*|\.CURRENT\.tmp-.*|images|g\d{6}|milvus\.db)$")


@dataclass
class Change:
    """What one write does to its base generation: add or replace ``listings`` (with their
    ``embeddings``; None when there are none), remove the product ids in ``delete``."""

    model_dir: Path
    listings: list[Listing]
    embeddings: Embeddings | VectorSource | None  # row / position i: listings[i]
    delete: list[str]
    settings: VectorSettings
    thumbnail_size: int
    store: StoreSpec | None = None  # None: the base generation's store, else FAISS
    thumbnails: bool = True  # False: the listings are stored without photos
    max_pixels: int | None = None  # data.max_pixels for photos; None: the base's, else default


@dataclass
class _Rows:
    """The metadata's side of a write: the vids removed and (re)assigned, and the adult labels."""

    deleted: np.ndarray
    not_found: list[str]
    updated: int
    new_vids: np.ndarray
    count: int
    label_vids: np.ndarray
    labels: np.ndarray


@dataclass
class _Layout:
    """The vectors' side: the new generation's sorted vids, those removed or replaced."""

    vids: np.ndarray
    dropped: np.ndarray
    dim: int


class IndexWriter:
    """Holds the index's lock; ``commit`` turns a base generation plus a change into a new one."""

    def __init__(self, index_dir: str | Path, progress: bool):
        self.root = Path(index_dir)
        self.progress = progress
        self._lock_file = None

    def __enter__(self) -> IndexWriter:
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

    def commit(self, base: Path | None, change: Change) -> IndexInfo:
        """The new generation, in service when this returns."""
        check_unique([x.product_id for x in change.listings])
        base_info = read_info(base) if base is not None else None
        store = change.store or (store_spec_of(base_info.store) if base_info else StoreSpec())
        vector_store = writer_for(store, self.root)
        previous = self._in_service()
        tmp = self.root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        info = None
        try:
            info = self._assemble(tmp, base, base_info, change, vector_store)
            fsync_tree(tmp)
            tmp.rename(self.root / info.generation)
            write_pointer(self.root, info.generation)
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

    # ------------------------------------------------------------------------- the steps
    def _assemble(self, tmp: Path, base: Path | None, base_info: IndexInfo | None,
                  change: Change, vector_store: StoreWriter) -> IndexInfo:
        max_pixels = change.max_pixels or (base_info.max_pixels if base_info else
                                           DEFAULT_MAX_PIXELS)
        seconds: dict[str, float] = {}
        cpu: dict[str, float] = {}
        began, began_cpu = time.perf_counter(), time.process_time()

        def step(name: str) -> None:  # each step's wall-clock and CPU time, into info.json
            nonlocal began, began_cpu
            seconds[name] = round(time.perf_counter() - began, 3)
            cpu[name] = round(time.process_time() - began_cpu, 3)
            began, began_cpu = time.perf_counter(), time.process_time()

        link_tree(change.model_dir, tmp / "model")
        names, problems = self._store_photos(change, max_pixels)
        step("photos")
        rows = _write_metadata(tmp, base, change, names)
        step("metadata")
        fusion_weight = _fusion_weight(change.embeddings, base_info)
        layout = _write_vectors(tmp, base, change, rows, fusion_weight, step)
        generation = next_generation(self.root)
        stats, store_entry = vector_store.write(WriteJob(
            root=self.root, tmp=tmp, generation=generation, base=base,
            base_info=base_info.to_dict() if base_info is not None else None, vids=layout.vids,
            dropped=layout.dropped, new_vids=rows.new_vids,
            settings=change.settings, scalars=lambda: _scalars(tmp / "listings.sqlite",
                                                               layout.vids),
            vectors_of=lambda space: open_vectors(tmp, (space,),
                                                  fusion_weight=fusion_weight)[space],
            progress=self.progress))
        step("vector_store")
        info = IndexInfo(
            generation=generation, listings=rows.count, dim=layout.dim, vectors=stats,
            model_sha1=model_sha1(tmp / "model"), settings=change.settings,
            thumbnail_size=change.thumbnail_size,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            added=len(change.listings) - rows.updated, updated=rows.updated,
            deleted=len(rows.deleted), not_found=rows.not_found, image_problems=problems,
            fusion_weight=fusion_weight, store=store_entry,
            model_sha256=model_sha256(tmp / "model"),
            thumbnails=change.thumbnails and (base_info is None or base_info.thumbnails),
            max_pixels=max_pixels, seconds=seconds, cpu_seconds=cpu)
        (tmp / "info.json").write_text(json.dumps(info.to_dict(), indent=2) + "\n",
                                       encoding="utf-8")
        return info

    def _store_photos(self, change: Change, max_pixels: int) -> tuple[list[list[str]], int]:
        """Each listing's stored thumbnail names (none with ``thumbnails=False``) and how many
        photos could not be stored."""
        if not change.thumbnails:
            return [[] for _ in change.listings], 0
        thumbs = ThumbnailStore(self.root / "images", change.thumbnail_size, max_pixels=max_pixels)
        names, problems = [], 0
        for listing in tqdm(change.listings, desc="storing photos", disable=not self.progress,
                            unit="listing"):
            stored, failed = thumbs.put_all(listing.images)
            names.append(stored)
            problems += len(failed)
        return names, problems

    def _collect_garbage(self, keep: list[str], vector_store: StoreWriter) -> None:
        """Drop generations other than ``keep`` (with their store's data: a Milvus collection),
        leftovers of failed writes, and unused photos."""
        for entry in self.root.iterdir():
            stale_gen = GENERATION_NAME.match(entry.name) and entry.name not in keep
            if entry.is_dir() and (stale_gen or entry.name.startswith(".tmp-")):
                if stale_gen:
                    _discard_store_of(self.root, entry)
                shutil.rmtree(entry, ignore_errors=True)
        vector_store.collect([read_info(self.root / gen).store for gen in keep])
        names: set[str] = set()
        for gen in keep:
            store = MetadataStore(self.root / gen / "listings.sqlite")
            names |= store.image_names()
            store.close()
        ThumbnailStore(self.root / "images").prune(names)


def _write_metadata(tmp: Path, base: Path | None, change: Change,
                    names: list[list[str]]) -> _Rows:
    """The new generation's ``listings.sqlite``: the base's rows, less the deleted ones, with the
    change's listings added or replaced (a replaced listing keeps its vid)."""
    store = (MetadataStore.copy(base / "listings.sqlite", tmp / "listings.sqlite", bulk=True)
             if base else MetadataStore.create(tmp / "listings.sqlite", bulk=True))
    try:
        found = store.vids_of(change.delete)
        deleted = np.asarray(sorted(found.values()), dtype=np.int64)
        store.delete(deleted)
        product_ids = [x.product_id for x in change.listings]
        updated = len(store.vids_of(product_ids))
        new_vids = store.assign_vids(product_ids)
        store.upsert(new_vids, change.listings, names)
        store.commit()
        label_vids, labels = store.adult_labels()
        return _Rows(deleted, [pid for pid in change.delete if pid not in found], updated,
                     new_vids, store.count(), label_vids, labels)
    finally:
        store.close()


def _write_vectors(tmp: Path, base: Path | None, change: Change, rows: _Rows,
                   fusion_weight: float, step=lambda name: None) -> _Layout:
    """``vids.npy`` and ``{space}.npy`` (the base's vectors that stay and the new ones, by vid)
    and ``heads.json`` (an adult head per space, fitted on the listings labelled). The files hold
    ``settings.vector_dtype`` rows; without ``settings.store_fused`` there is no
    ``product.npy`` (the fused vectors are computed from the two others when read). ``step``
    is called with each step's name when it ends.

    The vector files are written a block at a time, from the base's memory-mapped files and the
    change's :class:`VectorSource` (stored vectors are streamed part by part), so that memory holds
    a block, not the generation's vectors."""
    old = StoredVectors.load(base, mmap=True) if base else None
    n = len(change.listings)
    source = vector_source(change.embeddings) if n else None
    dims = {m: (source.dims[m] if source is not None else
                old.arrays[m].shape[1] if old is not None else 0) for m in SPACES}
    for m in SPACES:
        if old is not None and n and old.arrays[m].shape[1] != dims[m]:
            raise SearchIndexError(f"the new {m} vectors have {dims[m]} dimensions, the index "
                                   f"{old.arrays[m].shape[1]}: rebuild the index")
    dropped = np.concatenate([rows.deleted, rows.new_vids])
    keep = ~np.isin(old.vids, dropped) if old is not None else np.zeros(0, bool)
    kept_vids = old.vids[keep] if old is not None else np.zeros(0, np.int64)
    vids = np.sort(np.concatenate([kept_vids, rows.new_vids]))  # vids are unique
    np.save(tmp / "vids.npy", vids)
    settings = change.settings
    stored = [m for m in SPACES if m != "product" or settings.store_fused]
    files = {m: _VectorFile(tmp / f"{m}.npy", len(vids), dims[m], settings.vector_dtype)
             for m in stored}
    try:
        if old is not None and len(kept_vids):  # the base's vectors that stay, a block at a time
            source_rows, target = np.flatnonzero(keep), np.searchsorted(vids, kept_vids)
            for start in range(0, len(source_rows), WRITE_BLOCK):
                block = slice(start, start + WRITE_BLOCK)
                for m in stored:
                    files[m].put(target[block], old.arrays[m][source_rows[block]])
        if source is not None:  # the change's vectors, as its source yields them
            target, written = np.searchsorted(vids, rows.new_vids), np.zeros(n, bool)
            for positions, block in source.blocks():
                for m in stored:
                    files[m].put(target[positions], block[m])
                written[positions] = True
            if not written.all():
                missing = change.listings[int(np.argmin(written))].product_id
                raise SearchIndexError(f"no vector was given for listing {missing!r}")
    finally:
        for file in files.values():
            file.close()
    step("vectors")
    heads: dict[str, dict | None] = {}
    label_rows = np.searchsorted(vids, rows.label_vids)
    written = open_vectors(tmp, fusion_weight=fusion_weight)
    for m in SPACES:
        vectors = written[m]
        head = fit_adult_head(vectors, rows.labels, rows=label_rows, seed=change.settings.seed)
        heads[m] = head.to_dict() if head is not None else None
        del vectors
    del written
    (tmp / "heads.json").write_text(json.dumps({"adult": heads}), encoding="utf-8")
    step("adult_heads")
    return _Layout(vids, dropped, dims["image"])


WRITE_BLOCK = 65_536  # rows of the base generation's vectors copied at a time


class VectorSource(Protocol):
    """The vectors of a change's listings, given a block at a time: ``blocks()`` yields
    ``(positions in Change.listings, {space: float32 rows})``; every position once."""

    fusion_weight: float
    dims: dict[str, int]  # per space

    def blocks(self) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]: ...


class InMemoryVectors:
    """:class:`Embeddings` computed in this process (row i is the change's listing i), one block."""

    def __init__(self, emb: Embeddings):
        self.emb = emb
        self.fusion_weight = emb.fusion_weight
        self.dims = {m: int(emb.modality(API_NAME[m]).shape[1]) for m in SPACES}

    def blocks(self) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        yield (np.arange(len(self.emb.product_ids)),
               {m: self.emb.modality(API_NAME[m]) for m in SPACES})


def vector_source(embeddings) -> VectorSource:
    """A change's vectors as a :class:`VectorSource` (in-memory :class:`Embeddings` wrapped)."""
    return InMemoryVectors(embeddings) if isinstance(embeddings, Embeddings) else embeddings


class _VectorFile:
    """A ``.npy`` file of ``rows`` vectors of ``dtype`` (float32 or float16), written at any rows
    in any order through the file (``os.pwrite`` of each run of consecutive rows): the process
    keeps no mapping of it, so what it wrote is page cache, not the writer's memory."""

    def __init__(self, path: Path, rows: int, dim: int, dtype: str = "float32"):
        self.dtype = np.dtype(dtype)
        with open(path, "wb") as handle:
            np.lib.format.write_array_header_1_0(
                handle, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                         "fortran_order": False, "shape": (rows, dim)})
            self.offset = handle.tell()
            handle.truncate(self.offset + rows * dim * self.dtype.itemsize)
        self.row_bytes = dim * self.dtype.itemsize
        self.fd = os.open(path, os.O_WRONLY)

    def put(self, rows: np.ndarray, values: np.ndarray) -> None:
        """``values[i]`` becomes row ``rows[i]``."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows) or not self.row_bytes:
            return
        values = np.asarray(values, dtype=self.dtype)
        if np.any(np.diff(rows) < 0):  # in row order (no copy of a block already in order)
            order = np.argsort(rows, kind="stable")
            rows, values = rows[order], values[order]
        values = np.ascontiguousarray(values)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1  # runs of consecutive rows
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            data = memoryview(values[start:stop]).cast("B")
            at = self.offset + int(rows[start]) * self.row_bytes
            while len(data):
                done = os.pwrite(self.fd, data, at)
                data, at = data[done:], at + done

    def close(self) -> None:
        os.close(self.fd)


def _discard_store_of(root: Path, generation: Path) -> None:
    """The store's data of a generation being removed (a Milvus collection); FAISS files go with
    the folder. A generation whose info.json cannot be read has nothing recorded to drop."""
    try:
        entry = read_info(generation).store
    except SearchIndexError:
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


def check_unique(product_ids: list[str]) -> None:
    seen: set[str] = set()
    for pid in product_ids:
        if pid in seen:
            raise SearchIndexError(f"product_id {pid!r} appears twice among the listings to "
                                   f"index")
        seen.add(pid)


def _fusion_weight(emb: Embeddings | VectorSource | None, base_info: IndexInfo | None) -> float:
    """The weight the generation's fused vectors were made with: the new embeddings' (the model's
    own, ``encode.model_fusion_weight``), else the base generation's."""
    if emb is not None:
        return emb.fusion_weight
    if base_info is not None:
        return base_info.fusion_weight
    return FUSION_WEIGHT
