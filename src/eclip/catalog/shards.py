"""Prepared shards: a catalog written once as WebDataset-layout tar files, for streaming at scale.

A shard directory::

    index.json          the commit point: shard names, sample counts and splits, the composer
                        config, the image size, the source catalog, what was skipped and why
    shard-000000.tar    samples; each is a run of tar members that share one key:
                            000000042.json    the listing's fields, plus "text" (composed with the
                                              composer config, without dropout) and "index"
                            000000042.0.jpg   every usable image of the listing, pre-resized so
                            000000042.1.jpg   that the shorter side is ``image_size`` (smaller
                                              images are not enlarged), RGB JPEG
    shard-000001.tar
    ...

Keys are the sample's global index (0 .. N-1, dense, zero-padded to nine digits), so they never
contain the dots that WebDataset splits names on; ``product_id`` is in the JSON. Any WebDataset
reader can open the shards; :mod:`eclip.train.stream` streams them for training.

Order: each shard holds listings of one split only. Within a split, listings of one catalog are
written next to each other (so that a streaming loader can keep them together in a batch) and
catalogs follow a fixed hash order, which mixes categories even when the catalog file is sorted.

Writes are atomic: every shard is written to a hidden temporary file and renamed when complete, a
failure deletes the temporary file, and ``index.json`` is removed at the start and written last.
A directory without ``index.json`` is unfinished; readers trust only the shards the index names.

Images are decoded with :func:`~eclip.catalog.images.load_image`; an image that fails is dropped
from its listing and reported, and a listing left without images is skipped and reported (counted
in ``index.json``), never a crash.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from eclip.atomic import atomic_open, clean_stale_temps
from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.images import load_image, to_rgb
from eclip.catalog.manifest import read_manifest
from eclip.catalog.readers import CatalogRead
from eclip.catalog.schema import Listing
from eclip.errors import ConfigError, EclipError, ImageError

__all__ = ["INDEX_NAME", "Encoded", "Encoder", "ShardInfo", "ShardIndex", "ShardSample",
           "encode_listing", "prepare_shards", "read_shard",
           "decode_jpeg", "listing_from_record"]

INDEX_NAME = "index.json"
FORMAT = "eclip-shards"
VERSION = 1
JPEG_QUALITY = 90
_KEY_DIGITS = 9


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the index lists it; ``first_index`` is the global index of its first sample."""

    name: str
    samples: int
    split: str | None
    first_index: int


@dataclass
class ShardSample:
    """A sample as stored: its JSON record and the encoded bytes of its images, in order."""

    index: int
    record: dict[str, Any]
    images: list[bytes]


def _shard_info(entry: dict[str, Any]) -> ShardInfo:
    return ShardInfo(entry["name"], int(entry["samples"]), entry["split"],
                     int(entry["first_index"]))


@dataclass
class ShardIndex:
    """``index.json`` of a shard directory."""

    root: Path
    shards: list[ShardInfo]
    image_size: int
    composer: dict[str, Any]
    data: dict[str, Any]

    @classmethod
    def load(cls, shard_dir: str | os.PathLike[str]) -> "ShardIndex":
        manifest = read_manifest(shard_dir, INDEX_NAME, format=FORMAT, version=VERSION,
                                 what="shard index", command="eclip prepare", parts_key="shards",
                                 outside="outside the shard folder", part=_shard_info)
        data = manifest.data
        try:
            return cls(Path(shard_dir), manifest.parts, int(data["image_size"]),
                       dict(data["composer"]), data)
        except (ValueError, KeyError, TypeError) as exc:
            raise EclipError(f"{manifest.path} is not a valid shard index ({exc}); "
                             "run `eclip prepare` again") from None

    @property
    def splits(self) -> dict[str | None, int]:
        """Samples per split."""
        counts: Counter[str | None] = Counter()
        for shard in self.shards:
            counts[shard.split] += shard.samples
        return dict(counts)

    def select(self, split: str | None) -> list[ShardInfo]:
        """The shards of ``split`` (all shards for None), in index order."""
        if split is None:
            return list(self.shards)
        chosen = [s for s in self.shards if s.split == split]
        if not chosen:
            known = ", ".join(repr(s) for s in self.splits) or "none"
            raise ConfigError(f"{self.root} has no shards of split {split!r}; "
                              f"splits there: {known}")
        return chosen

    def records(self, split: str | None = None) -> Iterator[dict[str, Any]]:
        """The JSON records of ``split`` (all for None) in index order; no image data is read
        (e.g. to train a tokenizer on the texts, or to list the validation listings)."""
        for shard in self.select(split):
            for sample in read_shard(self.root / shard.name, images=False):
                yield sample.record


# what the encoding step hands back for each listing, in the order it was given them: the listing's
# stored JPEG images and the issues found (dropped images, a skipped listing)
Encoded = tuple[list[bytes], list[dict[str, Any]]]
# an encoding step: the listings in prepared order -> one ``Encoded`` per listing, in that order
Encoder = Callable[[list[Listing]], Iterable[Encoded]]


def encode_listing(listing: Listing, image_size: int, jpeg_quality: int,
                   image_root: str | None = None) -> Encoded:
    """The images of one listing as stored in a shard, and what went wrong with them (the
    per-listing step of :func:`prepare_shards`, run locally or on an engine's workers)."""
    issues: list[dict[str, Any]] = []
    return _encode_images(listing, image_size, jpeg_quality, issues, image_root), issues


def _check_shard_options(shard_size: int, image_size: int, jpeg_quality: int) -> None:
    for name, value, low in (("shard_size", shard_size, 1), ("image_size", image_size, 1),
                             ("jpeg_quality", jpeg_quality, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if jpeg_quality > 100:
        raise ConfigError(f"jpeg_quality must be at most 100, got {jpeg_quality}")


def _clear_preparation(out: Path) -> None:
    """Remove an earlier preparation in ``out`` (its index first: the folder is unfinished from
    then on), and the temporaries of one that was killed; other files are left alone."""
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)
    (out / INDEX_NAME).unlink(missing_ok=True)
    for stale in out.glob("shard-*.tar"):
        stale.unlink()


def _write_shards(results: Iterable[Encoded], listings: list[Listing], out: Path, shard_size: int,
                  composer: TextComposer, progress: bool) -> tuple[list[ShardInfo], list[dict], int]:
    """Write the encoded listings into shards (a new shard at ``shard_size`` samples or a new
    split); the shards committed, the issues reported, the samples written. An encoder that
    returns more or fewer results than listings commits nothing."""
    shards: list[ShardInfo] = []
    issues: list[dict[str, Any]] = []
    writer: _ShardWriter | None = None
    written = seen = 0
    try:
        bar = tqdm(total=len(listings), disable=not progress, desc=f"writing shards to {out}",
                   unit="listing")
        with bar:
            for images, found in results:
                if seen == len(listings):
                    raise EclipError(f"the encoder returned more results than the {len(listings)} "
                                     f"listings it was given; nothing was committed in {out}")
                listing = listings[seen]
                seen += 1
                bar.update(1)
                issues.extend(found)
                if not images:
                    continue
                if (writer is None or writer.samples == shard_size
                        or writer.split != listing.split):
                    if writer is not None:
                        shards.append(writer.commit())
                    writer = _ShardWriter(out, f"shard-{len(shards):06d}.tar", listing.split,
                                          written)
                writer.add(_record(listing, composer, written, len(images)), images)
                written += 1
        if seen != len(listings):
            raise EclipError(f"the encoder returned {seen} results for {len(listings)} listings; "
                             f"nothing was committed in {out}")
        if writer is not None:
            shards.append(writer.commit())
            writer = None
    finally:
        if writer is not None:
            writer.abort()
        close = getattr(results, "close", None)
        if close is not None:  # a generator's own clean-up (e.g. an engine's session) runs now
            close()
    return shards, issues, written


def _index_record(read: CatalogRead | None, shards: list[ShardInfo], issues: list[dict],
                  written: int, image_size: int, jpeg_quality: int,
                  composer: TextComposer) -> dict[str, Any]:
    """What ``index.json`` holds: the format, the shards, and every skip counted and named."""
    actions = Counter(issue["action"] for issue in issues)
    return {
        "format": FORMAT, "version": VERSION,
        "source": read.path if read is not None else None,
        "samples": written, "image_size": image_size, "jpeg_quality": jpeg_quality,
        "composer": composer.config.to_dict(),
        "shards": [{"name": s.name, "samples": s.samples, "split": s.split,
                    "first_index": s.first_index} for s in shards],
        "skipped": {
            "catalog_rows": read.skipped_rows if read is not None else 0,
            "catalog_images": read.dropped_images if read is not None else 0,
            "undecodable_images": actions["dropped_image"],
            "listings_without_images": actions["skipped_listing"],
        },
        "catalog_issue_counts": read.counts() if read is not None else {},
        "issues": issues,
    }


def prepare_shards(source: CatalogRead | Sequence[Listing], out_dir: str | os.PathLike[str], *,
                   shard_size: int = 1000, image_size: int = 256,
                   composer_config: ComposerConfig | None = None, jpeg_quality: int = JPEG_QUALITY,
                   progress: bool = True, encoder: Encoder | None = None) -> Path:
    """Write ``source`` (a :class:`CatalogRead` or listings) as shards in ``out_dir``.

    Returns the path of ``index.json``. Shards hold at most ``shard_size`` samples (fewer where a
    split ends). An earlier preparation in ``out_dir`` (``index.json``, ``shard-*.tar``) is
    deleted first; other files there are left alone. ``encoder``: where the images are decoded and
    encoded (default: here, one listing after another with :func:`encode_listing`; the Ray engine
    passes one that runs the same function on a pool of workers). Whatever encodes them, this
    function writes the shards and ``index.json``, so every engine's output is the same bytes.
    """
    _check_shard_options(shard_size, image_size, jpeg_quality)
    read = source if isinstance(source, CatalogRead) else None
    listings = _prepared_order(list(read.listings if read is not None else source))
    image_root = read.image_root if read is not None else None  # images must stay inside it
    composer = TextComposer(composer_config)
    out = Path(out_dir)
    _clear_preparation(out)
    if encoder is None:
        results: Iterable[Encoded] = (encode_listing(x, image_size, jpeg_quality, image_root)
                                      for x in listings)
    else:
        results = encoder(listings)
    shards, issues, written = _write_shards(results, listings, out, shard_size, composer, progress)
    clean_stale_temps(out)
    index = _index_record(read, shards, issues, written, image_size, jpeg_quality, composer)
    index_path = out / INDEX_NAME
    with atomic_open(index_path, "w") as file:
        file.write(json.dumps(index, ensure_ascii=False, indent=1) + "\n")
    return index_path


def read_shard(path: str | os.PathLike[str], *, skip: int = 0, limit: int | None = None,
               images: bool = True) -> Iterator[ShardSample]:
    """The samples of one shard in file order, from sample ``skip`` on, at most ``limit`` of them
    (``images=False``: records only, ``ShardSample.images`` empty).

    Skipped samples cost a header read per member: their data is never read. The file is opened
    on the first ``next()`` and closed when the iterator ends or is closed.
    """
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            yield from _samples(tar, os.fspath(path), skip, limit, images)
    except FileNotFoundError:
        raise EclipError(f"shard {os.fspath(path)} is missing; run `eclip prepare` again") from None
    except OSError as exc:
        raise EclipError(f"shard {os.fspath(path)} cannot be read ({exc.strerror or exc}); "
                         "run `eclip prepare` again") from None
    except (tarfile.TarError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EclipError(f"shard {os.fspath(path)} is damaged ({exc}); "
                         "run `eclip prepare` again") from None


def _samples(tar: tarfile.TarFile, path: str, skip: int, limit: int | None, images_too: bool
             ) -> Iterator[ShardSample]:
    ordinal, key = -1, None
    record: dict[str, Any] | None = None
    images: list[tuple[int, bytes]] = []

    def finished() -> ShardSample:
        if record is None:
            raise EclipError(f"shard {path}: sample {key} has no .json member; "
                             "run `eclip prepare` again")
        return ShardSample(int(key), record, [data for _, data in sorted(images)])

    for info in tar:
        name, _, suffix = info.name.partition(".")
        if name != key:
            if key is not None and ordinal >= skip:
                yield finished()
            ordinal, key, record, images = ordinal + 1, name, None, []
            if limit is not None and ordinal >= skip + limit:
                return
        if ordinal < skip or not info.isfile():
            continue
        if suffix == "json":
            record = json.loads(_member_bytes(tar, info).decode("utf-8"))
        elif images_too and suffix.endswith(".jpg") and suffix[:-4].isdigit():
            images.append((int(suffix[:-4]), _member_bytes(tar, info)))
    if key is not None and ordinal >= skip:
        yield finished()


def _member_bytes(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    member = tar.extractfile(info)
    return member.read() if member is not None else b""


def decode_jpeg(data: bytes, *, min_side: int | None = None) -> Image.Image:
    """A stored image as RGB; with ``min_side`` the JPEG decoder may scale down by 2, 4 or 8 while
    keeping both sides at least ``min_side`` (much faster when the model's input is small)."""
    try:
        image = Image.open(io.BytesIO(data), formats=("JPEG",))
        if min_side is not None:
            image.draft("RGB", (min_side, min_side))
        image.load()
        return to_rgb(image)
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds; the caller names the shard
        raise ImageError(f"{type(exc).__name__}: {exc}") from None


def listing_from_record(record: dict[str, Any]) -> Listing:
    """The :class:`Listing` a sample's JSON record was written from (images: the source paths)."""
    return Listing.from_dict({**record, "images": list(record.get("source_images") or [])})


def _prepared_order(listings: list[Listing]) -> list[Listing]:
    """Split by split; within one, catalogs in a fixed hash order, a catalog's listings together
    (in file order)."""
    def key(listing: Listing) -> tuple[bool, str, bytes, str]:
        group = listing.group_id
        digest = hashlib.blake2b(group.encode("utf-8"), digest_size=8).digest()
        return listing.split is None, listing.split or "", digest, group

    return sorted(listings, key=key)


def _encode_images(listing: Listing, image_size: int, quality: int,
                   issues: list[dict[str, Any]], image_root: str | None = None) -> list[bytes]:
    """Every usable image of ``listing`` resized and JPEG-encoded; failures go to ``issues``
    (with ``image_root``, an image outside it is one, never opened)."""
    encoded = []
    for path in listing.images:
        try:
            image = load_image(path, root=image_root)
        except ImageError as exc:
            issues.append({"product_id": listing.product_id, "image": path, "reason": str(exc),
                           "action": "dropped_image"})
            continue
        encoded.append(_jpeg(_shrink(image, image_size), quality))
    if not encoded:
        issues.append({"product_id": listing.product_id, "image": None,
                       "reason": "no image of the listing could be decoded" if listing.images
                       else "the listing has no image", "action": "skipped_listing"})
    return encoded


def _shrink(image: Image.Image, image_size: int) -> Image.Image:
    """Shorter side down to ``image_size`` keeping the aspect ratio; smaller images are kept."""
    width, height = image.size
    short = min(width, height)
    if short <= image_size:
        return image
    scale = image_size / short
    size = (image_size, max(1, round(height * scale))) if width <= height else \
        (max(1, round(width * scale)), image_size)
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _record(listing: Listing, composer: TextComposer, index: int, images: int) -> dict[str, Any]:
    record = listing.to_dict()
    record["source_images"] = record.pop("images")
    record.update(index=index, text=composer.compose(listing),
                  image_files=[f"{i}.jpg" for i in range(images)])
    return record


class _ShardWriter:
    """One shard, written to a hidden temporary file and renamed into place by ``commit``
    (``atomic_open``, entered here and left by ``commit`` or ``abort``)."""

    def __init__(self, out: Path, name: str, split: str | None, first_index: int):
        self.path = out / name
        self.split, self.first_index, self.samples = split, first_index, 0
        self._atomic = atomic_open(self.path, "wb")
        self._file = self._atomic.__enter__()
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, record: dict[str, Any], images: list[bytes]) -> None:
        key = f"{record['index']:0{_KEY_DIGITS}d}"
        self._member(f"{key}.json", json.dumps(record, ensure_ascii=False).encode("utf-8"))
        for i, data in enumerate(images):
            self._member(f"{key}.{i}.jpg", data)
        self.samples += 1

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o444, 0  # mtime 0: reproducible bytes
        self._tar.addfile(info, io.BytesIO(data))

    def commit(self) -> ShardInfo:
        self._tar.close()  # writes the end-of-archive blocks; the file stays open
        self._atomic.__exit__(None, None, None)  # flush, fsync, close, rename into place
        return ShardInfo(self.path.name, self.samples, self.split, self.first_index)

    def abort(self) -> None:
        error = _Aborted()
        self._atomic.__exit__(type(error), error, None)  # close and remove the temporary file


class _Aborted(Exception):
    """A shard given up before its commit."""
