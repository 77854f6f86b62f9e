"""An index generation on disk: its format, the ``CURRENT`` pointer, ``info.json`` and its files.

Layout::

    INDEX_DIR/
      CURRENT              {"format": "eclip-search-index", "version": 1, "generation": "g000003"}
      g000003/             one complete generation, never modified once written
        model/             the model directory (hard links to the previous generation's files)
        listings.sqlite    metadata (metadata.py), keyed by vid
        vids.npy           int64 vids, ascending; row i of every vector file belongs to vids[i]
        image.npy text.npy product.npy   unit vectors (the source for rebuilds): float32, or
                           float16 (``VectorSettings.vector_dtype``); product.npy (the fused
                           vectors) is absent when ``store_fused`` is off: it is computed from
                           image.npy and text.npy when rows are read (:class:`FusedRows`)
        image.faiss text.faiss product.faiss   FAISS indexes with ids = vids (faiss_store.py);
                           with the Milvus store (milvus.py) a collection per generation instead
        heads.json         adult heads (heads.py)
        info.json          counts, index kinds, measured recall, model fingerprint, settings,
                           and for Milvus the store: {kind, uri, alias, collection}
      images/ab/<sha1>.jpg thumbnails shared by generations (thumbnails.py)
      milvus.db            the Milvus Lite file, with ``--store milvus`` and no ``--uri``
      .lock                held by the one writer at a time (transaction.py)

This module reads and writes that layout; the write transaction is ``transaction.py``, the reader
``reader.py``.
"""

from __future__ import annotations

import hashlib
import json
import mmap as mmap_module
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from eclip.catalog.config import DEFAULT_MAX_PIXELS
from eclip.atomic import atomic_open
from eclip.encode import FUSION_WEIGHT
from eclip.errors import SearchIndexError
from eclip.search.spaces import SPACES
from eclip.search.store_types import StoreSpec, store_spec_of
from eclip.search.vectors import IndexStats, VectorSettings, as_float32, read_rows

FORMAT = "eclip-search-index"
VERSION = 1
POINTER = "CURRENT"
GENERATION_NAME = re.compile(r"^g(\d{6})$")


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
    store: dict | None = None  # the vector store (store_types.py); None: FAISS files
    model_sha256: str | None = None  # encode.identity.model_sha256 of model/ (None: older index)
    thumbnails: bool = True  # False: some listings were written without photos (--no-thumbnails)
    max_pixels: int = DEFAULT_MAX_PIXELS  # data.max_pixels: photos (thumbnails, uploads) decoded
    # the write's steps, wall-clock (not part of what the generation is)
    seconds: dict[str, float] = field(default_factory=dict, compare=False)
    # the same steps' CPU time, every thread of the process (FAISS's too): what a loaded machine
    # does not inflate
    cpu_seconds: dict[str, float] = field(default_factory=dict, compare=False)

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
        lines += [f"  {m} vectors: {self.vectors[m].describe()}" for m in SPACES]
        if self.store:
            lines.append(f"  vectors in Milvus ({self.store.get('uri') or 'milvus.db in the index'}"
                         f"): collection {self.store['collection']}, alias {self.store['alias']}")
        if self.not_found:
            shown = ", ".join(self.not_found[:5]) + (" ..." if len(self.not_found) > 5 else "")
            lines.append(f"  {len(self.not_found)} product id(s) to delete were not in the index: "
                         f"{shown}")
        if self.image_problems:
            lines.append(f"  {self.image_problems} photo(s) could not be stored and were left out")
        if self.seconds:
            lines.append("  seconds: " + ", ".join(f"{step} {s:.1f}"
                                                   for step, s in self.seconds.items()))
        return "\n".join(lines)


def read_info(generation: Path) -> IndexInfo:
    """A generation's ``info.json``; a SearchIndexError naming it when it cannot be read."""
    with reading(generation / "info.json"):
        return IndexInfo.from_dict(json.loads((generation / "info.json").read_text("utf-8")))


# ------------------------------------------------------------------------------------ pointer
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
    if not GENERATION_NAME.match(name) or not (root / name).is_dir():
        raise SearchIndexError(f"{pointer} names generation {name!r}, which is missing")
    return root / name


def is_index(path: str | Path) -> bool:
    return (Path(path) / POINTER).is_file()


def index_store(index_dir: str | Path) -> StoreSpec:
    """The vector store of the generation in service (updates and deletes keep it)."""
    generation = current_generation(index_dir)
    with reading(generation / "info.json"):
        entry = json.loads((generation / "info.json").read_text("utf-8")).get("store")
    return store_spec_of(entry)


def write_pointer(root: Path, generation: str) -> None:
    with atomic_open(root / POINTER, "w") as handle:
        json.dump({"format": FORMAT, "version": VERSION, "generation": generation}, handle)
    fsync_dir(root)


def next_generation(root: Path) -> str:
    numbers = [int(m.group(1)) for e in root.iterdir() if (m := GENERATION_NAME.match(e.name))]
    return f"g{max(numbers, default=0) + 1:06d}"


# ------------------------------------------------------------------------------------- files
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(path)


def link_tree(source: Path, target: Path) -> None:
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


def model_sha1(model_dir: Path) -> str:
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise SearchIndexError(f"{model_dir} is not an eclip model directory "
                               f"(no model.safetensors)")
    return file_sha1(weights)


class FusedRows:
    """The fused ("both") vectors of a generation that does not store them: rows read are
    ``eclip.encode.fuse(image rows, text rows, weight)``, float32, computed from the two stored
    spaces (memory-mapped, float32 or float16). Indexed like an array of shape ``[n, d_image +
    d_text]`` (an int, a slice, an array of rows); ``np.asarray`` of it computes every row."""

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, image: np.ndarray, text: np.ndarray, weight: float):
        if len(image) != len(text):
            raise ValueError(f"{len(image)} image rows, {len(text)} text rows")
        self.image, self.text, self.weight = image, text, float(weight)
        self.shape = (len(image), int(image.shape[1]) + int(text.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        """``fuse(image[key], text[key], weight)``, the same numbers, written straight into one
        array: the fused rows are read by every pass of a build over the fused space."""
        if isinstance(key, np.ndarray) and key.dtype.kind in "iu":
            image, text = read_rows(self.image, key), read_rows(self.text, key)
        else:
            image, text = as_float32(self.image[key]), as_float32(self.text[key])
        out = np.empty(image.shape[:-1] + (image.shape[-1] + text.shape[-1],), np.float32)
        split = image.shape[-1]
        # as fuse: the float64 product of each float32 value, rounded once to float32
        np.multiply(image, np.sqrt(self.weight), out=out[..., :split], casting="unsafe",
                    dtype=np.float64)
        np.multiply(text, np.sqrt(1.0 - self.weight), out=out[..., split:], casting="unsafe",
                    dtype=np.float64)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)


VECTOR_DTYPES = ("float32", "float16")


def advise_random(array: np.ndarray) -> None:
    """Tell the kernel that a memory-mapped array is read a few scattered rows at a time (a
    search re-ranking its candidates): a page fault then reads that page, not the 128 KiB around
    it, which at 10 M listings filled the served process with gigabytes of rows it never used."""
    mapped = getattr(array, "_mmap", None)  # numpy.memmap's own mmap object
    if mapped is not None and hasattr(mmap_module, "MADV_RANDOM"):
        mapped.madvise(mmap_module.MADV_RANDOM)


def open_vectors(folder: Path, spaces=SPACES, *, mmap: bool = True,
                 fusion_weight: float | None = None, random_access: bool = False
                 ) -> dict[str, np.ndarray | FusedRows]:
    """A generation's (or a generation being written's) vectors per space: ``{space}.npy``
    (float32 or float16), the fused space computed from the two others (:class:`FusedRows`,
    with ``fusion_weight``; None: the one ``info.json`` records) when its file is absent.
    ``random_access``: memory-mapped files are advised to be read by scattered rows
    (:func:`advise_random`), as a served index reads them."""
    mode = "r" if mmap else None

    def read(name: str) -> np.ndarray:
        with reading(folder / name):
            array = np.load(folder / name, mmap_mode=mode)
        if mmap and random_access:
            advise_random(array)
        return array

    arrays = {}
    for m in spaces:
        if m == "product" and not (folder / "product.npy").exists():
            weight = read_info(folder).fusion_weight if fusion_weight is None else fusion_weight
            arrays[m] = FusedRows(read("image.npy"), read("text.npy"), weight)
        else:
            arrays[m] = read(f"{m}.npy")
    return arrays


@dataclass
class StoredVectors:
    """A generation's ids (``vids.npy``) and its vectors per space (``{space}.npy``, or the fused
    space computed on read: :func:`open_vectors`)."""

    vids: np.ndarray
    arrays: dict[str, np.ndarray | FusedRows]

    @classmethod
    def load(cls, generation: Path, mmap: bool = False, random_access: bool = False
             ) -> StoredVectors:
        """The ids and vectors of a generation (``random_access``: see :func:`open_vectors`); a
        file that cannot be read is a SearchIndexError naming it."""
        with reading(generation / "vids.npy"):
            vids = np.load(generation / "vids.npy", mmap_mode="r" if mmap else None)
        return cls(vids, open_vectors(generation, mmap=mmap, random_access=random_access))


def consistent(path: Path, ok: bool, detail: str) -> None:
    """A SearchIndexError naming ``path`` unless ``ok`` (a file disagrees with ``info.json``)."""
    if not ok:
        raise SearchIndexError(f"{path} does not match its generation ({detail}): the index is "
                               f"damaged; rebuild it with `eclip index`")


@contextmanager
def reading(path: Path) -> Iterator[None]:
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
