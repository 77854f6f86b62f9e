"""The batch jobs of ``eclip embed`` and ``eclip prepare`` as library functions, on either engine.

    >>> embed_catalog("runs/shop/model", data, "embeddings.parquet")          # doctest: +SKIP
    >>> prepare_catalog(data, "shards", engine="ray", block_size=128)        # doctest: +SKIP

Each reads the catalog through a recipe's ``data`` section (:func:`eclip.catalog.load.load_catalog`),
runs on ``engine`` (``local``: this process; ``ray``: a pool of Ray actors, :mod:`eclip.engines`),
and writes what the command writes; the command line only parses its flags and calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from eclip.catalog.config import DataConfig
from eclip.catalog.load import load_catalog
from eclip.engines import ENGINES
from eclip.errors import ConfigError


def check_engine(engine: str, address: str | None = None) -> bool:
    """Whether ``engine`` is Ray; checked before a catalog is read: an unknown engine, an address
    without Ray, Ray not installed or its cluster unreachable are one-line errors."""
    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    if address and engine != "ray":
        raise ConfigError("--ray-address joins a Ray cluster: give it with --engine ray")
    if engine == "ray":
        from eclip.engines.ray_session import check_reachable, require_ray

        require_ray()
        if address:
            check_reachable(address)
    return engine == "ray"


def _given(**options) -> dict:
    """The options that were given (None: the called function's own default)."""
    return {key: value for key, value in options.items() if value is not None}


@dataclass
class EmbedResult:
    out: Path
    count: int
    manifest: Path | None = None  # the Ray engine's folder of parts

    def summary(self) -> str:
        where = f" (parts listed in {self.manifest.name})" if self.manifest else ""
        return f"wrote {self.count} embeddings to {self.out}{where}"


def embed_catalog(model_dir: str | Path, data: DataConfig, out: str | Path, *,
                  engine: str = "local", batch_size: int | None = None,
                  block_size: int | None = None, threads: int | None = None,
                  address: str | None = None, dtype: str = "float32", fused: bool = True,
                  progress: bool = True, log: Callable[[str], None] = print) -> EmbedResult:
    """``eclip embed``: image, text and fused vectors of every listing of ``data.catalog``,
    stored as ``dtype`` (float32 or float16: half the disk); ``fused=False`` leaves the fused
    vectors out (they are the image and text ones, weighted: whoever reads the file computes
    them), a third of what is stored.

    Local: one Parquet file ``out`` (``bad_rows.json`` beside it), ``threads`` torch threads
    (default: the cores this process may use). Ray: a folder ``out`` of Parquet parts and
    ``manifest.json`` (``bad_rows.json`` inside), ``threads`` per actor (default 1), blocks of
    ``block_size`` listings, ``address`` a running cluster."""
    from eclip.encode.listings import check_embed_dtype

    check_embed_dtype(dtype)
    on_ray = check_engine(engine, address)
    out = Path(out)
    if on_ray:
        from eclip.engines.embed import embed_with_ray

        read = load_catalog(data, report_dir=out, progress=progress, log=log)
        manifest = embed_with_ray(model_dir, read.listings, out, threads_per_worker=threads or 1,
                                  address=address, progress=progress, dtype=dtype, fused=fused,
                                  **_given(batch_size=batch_size, block_size=block_size))
        return EmbedResult(out, len(read.listings), manifest)
    from eclip.config import use_threads
    from eclip.encode import embed_listings, write_embeddings
    from eclip.encode.identity import model_sha256
    from eclip.model import load_model

    use_threads(threads)
    model = load_model(model_dir)
    read = load_catalog(data, report_dir=out.parent, progress=progress, log=log)
    emb = embed_listings(model, read.listings, progress=progress, **_given(batch_size=batch_size))
    write_embeddings(emb, out, read.listings, model_sha256=model_sha256(model_dir), dtype=dtype,
                     fused=fused)
    return EmbedResult(out, len(emb.product_ids))


@dataclass
class PrepareResult:
    index_path: Path  # the shard folder's index.json
    index: object  # eclip.catalog.shards.ShardIndex

    def summary(self) -> str:
        data = self.index.data
        skipped = data["skipped"]
        splits = ", ".join(f"{n} {name or 'without split'}"
                           for name, n in self.index.splits.items())
        return (f"wrote {data['samples']} samples ({splits}) in {len(self.index.shards)} shards; "
                f"{skipped['undecodable_images']} undecodable images dropped, "
                f"{skipped['listings_without_images']} listings without a usable image skipped "
                f"(details: {self.index_path})")


def prepare_catalog(data: DataConfig, out: str | Path, *, engine: str = "local",
                    shard_size: int | None = None, image_size: int | None = None,
                    block_size: int | None = None, address: str | None = None,
                    progress: bool = True, log: Callable[[str], None] = print) -> PrepareResult:
    """``eclip prepare``: ``data.catalog`` validated, split by catalog (the split column, else
    ``data.val_fraction`` of the catalogs held out as val) and written as tar shards in ``out``
    with ``index.json`` and ``bad_rows.json``; on Ray the images are encoded by actors (the same
    bytes). Images are not checked while reading: preparing decodes every one of them anyway."""
    from eclip.catalog.compose import ComposerConfig
    from eclip.catalog.shards import ShardIndex, prepare_shards
    from eclip.catalog.splits import assign_splits

    on_ray = check_engine(engine, address)
    out = Path(out)
    read = load_catalog(data, report_dir=out, check_images=False, progress=progress, log=log)
    listings, message = assign_splits(read.listings, data)
    if message:
        log(message)
    write, options = prepare_shards, _given(shard_size=shard_size, image_size=image_size)
    if on_ray:  # the same shards, the images encoded on Ray
        from eclip.engines.prepare import prepare_with_ray as write

        options.update(address=address, **_given(block_size=block_size))
    index_path = write(replace(read, listings=listings), out,
                       composer_config=ComposerConfig.from_dict(data.text), progress=progress,
                       **options)
    return PrepareResult(index_path, ShardIndex.load(out))
