"""``eclip prepare --engine ray``: the images of the listings decoded, resized and JPEG-encoded on a
pool of Ray actors, block by block, with the shard module's own per-listing function; the driver
writes the shards and ``index.json`` in the local engine's order, so the output is byte for byte
what ``eclip prepare`` writes locally (and ``train/stream.py`` reads it unchanged): the Ray part is
only an ``encoder`` for :func:`eclip.catalog.shards.prepare_shards`, which writes the shards.

The expensive part (every image decoded and re-encoded) is spread over the cluster; what comes back
is the stored JPEG bytes, which the driver appends to tar files: the shard folder needs to be
writable by the driver only. Blocks may come back in any order: the driver keeps the early ones
until the next block in order arrives.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

from eclip.catalog.compose import ComposerConfig
from eclip.catalog.readers import CatalogRead
from eclip.catalog.schema import Listing
from eclip.catalog.shards import (JPEG_QUALITY, Encoded, Encoder, encode_listing,
                                  prepare_shards)
from eclip.engines.ray_session import (actor_pool, crash_plan, job_errors, maybe_crash,
                                       pool_size, ray_session)
from eclip.errors import ConfigError, EclipError


class EncodeBlocks:
    """One actor of the pool: a call encodes the images of one block of listings with the shard
    module's own per-listing step (:func:`eclip.catalog.shards.encode_listing`)."""

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
                encoded = [encode_listing(Listing.from_dict(row), self.image_size, self.quality,
                                          self.root) for row in json.loads(rows)]
            except EclipError as exc:  # the driver says it, as one line
                error = str(exc)
            blocks.append(block)
            payloads.append(pickle.dumps(encoded, protocol=pickle.HIGHEST_PROTOCOL))
            errors.append(error)
        return {"block": blocks, "encoded": payloads, "error": errors}


def ray_encoder(*, image_size: int, jpeg_quality: int, image_root: str | None,
                block_size: int = 256, workers: int | None = None, address: str | None = None,
                progress: bool = True) -> Encoder:
    """An ``encoder`` for :func:`eclip.catalog.shards.prepare_shards`: the listings cut into blocks
    of ``block_size``, encoded on ``workers`` Ray actors (default one per CPU of the cluster;
    ``address``: a running cluster, else a local Ray), handed back in the order given."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size must be a positive integer, got {block_size!r}")

    def encode(listings: list[Listing]) -> Iterator[Encoded]:
        starts = list(range(0, len(listings), block_size))
        if not starts:
            return
        blocks = [{"block": k, "listings": json.dumps([x.to_dict() for x in
                                                       listings[start:start + block_size]],
                                                      ensure_ascii=False)}
                  for k, start in enumerate(starts)]
        with ray_session(address, progress=progress) as ray, job_errors("eclip prepare"):
            size = min(pool_size(ray, workers, 1), len(blocks))
            results = ray.data.from_items(blocks, override_num_blocks=len(blocks)).map_batches(
                EncodeBlocks, batch_size=1, compute=actor_pool(ray, size), num_cpus=1,
                fn_constructor_kwargs={"image_size": image_size, "jpeg_quality": jpeg_quality,
                                       "image_root": image_root, "crash": crash_plan()})
            early: dict[int, list] = {}
            following = 0
            for row in results.iter_rows():
                if row["error"]:
                    raise EclipError(row["error"])
                early[int(row["block"])] = pickle.loads(row["encoded"])
                while following in early:  # blocks come back in any order: keep the early ones
                    yield from early.pop(following)
                    following += 1
            if following != len(blocks):
                raise EclipError(f"the Ray job returned {following} of {len(blocks)} blocks "
                                 f"in order")

    return encode


def prepare_with_ray(source: CatalogRead, out_dir: str | Path, *, shard_size: int = 1000,
                     image_size: int = 256, composer_config: ComposerConfig | None = None,
                     jpeg_quality: int = JPEG_QUALITY, block_size: int = 256,
                     workers: int | None = None, address: str | None = None,
                     progress: bool = True) -> Path:
    """What :func:`eclip.catalog.shards.prepare_shards` writes, with the images encoded on Ray
    (see :func:`ray_encoder`). Returns the path of ``index.json``."""
    encoder = ray_encoder(image_size=image_size, jpeg_quality=jpeg_quality,
                          image_root=source.image_root, block_size=block_size, workers=workers,
                          address=address, progress=progress)
    return prepare_shards(source, out_dir, shard_size=shard_size, image_size=image_size,
                          composer_config=composer_config, jpeg_quality=jpeg_quality,
                          progress=progress, encoder=encoder)
