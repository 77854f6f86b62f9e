"""``eclip prepare --engine ray``: the images of the listings decoded, resized and JPEG-encoded on a
pool of Ray actors, block by block, with the shard module's own per-listing function; the driver
writes the shards and ``index.json`` in the local engine's order, so the output is byte for byte
what ``eclip prepare`` writes locally (and ``train/stream.py`` reads it unchanged).

The expensive part (every image decoded and re-encoded) is spread over the cluster; what comes back
is the stored JPEG bytes, which the driver appends to tar files: the shard folder needs to be
writable by the driver only. Blocks may come back in any order: the driver keeps the early ones
until the next block in order arrives.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eclip.atomic import atomic_open, clean_stale_temps
from eclip.catalog import shards as _shards
from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.readers import CatalogRead
from eclip.catalog.schema import Listing
from eclip.engines.ray_session import (actor_pool, crash_plan, job_errors, maybe_crash,
                                       pool_size, ray_session)
from eclip.errors import ConfigError, EclipError


class EncodeBlocks:
    """One actor of the pool: a call encodes the images of one block of listings."""

    def __init__(self, image_size: int, jpeg_quality: int, image_root: str | None,
                 crash: tuple[str, int] | None = None):
        self.image_size, self.quality, self.root, self.crash = (image_size, jpeg_quality,
                                                                image_root, crash)

    def __call__(self, batch: dict) -> dict:
        blocks, payloads, errors = [], [], []
        for block, rows in zip(batch["block"], batch["listings"]):
            block = int(block)
            maybe_crash(self.crash, block)
            encoded, error = [], ""
            try:
                for row in json.loads(rows):
                    issues: list[dict[str, Any]] = []
                    images = _shards._encode_images(Listing.from_dict(row), self.image_size,
                                                    self.quality, issues, self.root)
                    encoded.append((images, issues))
            except EclipError as exc:  # the driver says it, as one line
                error = str(exc)
            blocks.append(block)
            payloads.append(pickle.dumps(encoded, protocol=pickle.HIGHEST_PROTOCOL))
            errors.append(error)
        return {"block": blocks, "encoded": payloads, "error": errors}


def prepare_with_ray(source: CatalogRead, out_dir: str | Path, *, shard_size: int = 1000,
                     image_size: int = 256, composer_config: ComposerConfig | None = None,
                     jpeg_quality: int = _shards.JPEG_QUALITY, block_size: int = 256,
                     workers: int | None = None, address: str | None = None,
                     progress: bool = True) -> Path:
    """What :func:`eclip.catalog.shards.prepare_shards` writes, with the images encoded on Ray
    (``workers`` actors, default one per CPU of the cluster; ``address``: a running cluster, else
    a local Ray). Returns the path of ``index.json``."""
    for name, value, low in (("shard_size", shard_size, 1), ("image_size", image_size, 1),
                             ("jpeg_quality", jpeg_quality, 1), ("block_size", block_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if jpeg_quality > 100:
        raise ConfigError(f"jpeg_quality must be at most 100, got {jpeg_quality}")
    listings = _shards._prepared_order(list(source.listings))
    composer = TextComposer(composer_config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)
    (out / _shards.INDEX_NAME).unlink(missing_ok=True)  # unfinished from now on
    for stale in out.glob("shard-*.tar"):
        stale.unlink()

    starts = list(range(0, len(listings), block_size))
    blocks = [{"block": k, "listings": json.dumps([x.to_dict() for x in
                                                   listings[start:start + block_size]],
                                                  ensure_ascii=False)}
              for k, start in enumerate(starts)]
    shards: list[_shards.ShardInfo] = []
    issues: list[dict[str, Any]] = []
    writer: _shards._ShardWriter | None = None
    written = 0
    bar = tqdm(total=len(listings), disable=not progress, desc=f"writing shards to {out}",
               unit="listing")
    try:
        if blocks:
            with ray_session(address, progress=progress) as ray, job_errors("eclip prepare"):
                size = min(pool_size(ray, workers, 1), len(blocks))
                results = ray.data.from_items(blocks, override_num_blocks=len(blocks)).map_batches(
                    EncodeBlocks, batch_size=1, compute=actor_pool(ray, size), num_cpus=1,
                    fn_constructor_kwargs={"image_size": image_size,
                                           "jpeg_quality": jpeg_quality,
                                           "image_root": source.image_root,
                                           "crash": crash_plan()})
                early: dict[int, list] = {}
                following = 0
                for row in results.iter_rows():
                    if row["error"]:
                        raise EclipError(row["error"])
                    early[int(row["block"])] = pickle.loads(row["encoded"])
                    while following in early:
                        start = starts[following]
                        for offset, (images, found) in enumerate(early.pop(following)):
                            listing = listings[start + offset]
                            issues.extend(found)
                            bar.update(1)
                            if not images:
                                continue
                            if (writer is None or writer.samples == shard_size
                                    or writer.split != listing.split):
                                if writer is not None:
                                    shards.append(writer.commit())
                                writer = _shards._ShardWriter(
                                    out, f"shard-{len(shards):06d}.tar", listing.split, written)
                            writer.add(_shards._record(listing, composer, written, len(images)),
                                       images)
                            written += 1
                        following += 1
                if following != len(blocks):
                    raise EclipError(f"the Ray job returned {following} of {len(blocks)} "
                                      f"blocks in order; nothing was committed in {out}")
        if writer is not None:
            shards.append(writer.commit())
            writer = None
    finally:
        bar.close()
        if writer is not None:
            writer.abort()
    clean_stale_temps(out)

    actions = Counter(issue["action"] for issue in issues)
    index = {
        "format": _shards.FORMAT, "version": _shards.VERSION, "source": source.path,
        "samples": written, "image_size": image_size, "jpeg_quality": jpeg_quality,
        "composer": composer.config.to_dict(),
        "shards": [{"name": s.name, "samples": s.samples, "split": s.split,
                    "first_index": s.first_index} for s in shards],
        "skipped": {
            "catalog_rows": source.skipped_rows,
            "catalog_images": source.dropped_images,
            "undecodable_images": actions["dropped_image"],
            "listings_without_images": actions["skipped_listing"],
        },
        "catalog_issue_counts": source.counts(),
        "issues": issues,
    }
    index_path = out / _shards.INDEX_NAME
    with atomic_open(index_path, "w") as file:
        file.write(json.dumps(index, ensure_ascii=False, indent=1) + "\n")
    return index_path
