"""``eclip embed --engine ray``: the listings in blocks over a pool of Ray actors, each holding the
model once, each block embedded by :func:`eclip.encode.listings.embed_listings` (the local engine's
function) and written by :func:`eclip.encode.listings.write_embeddings` as one Parquet part.

The output folder::

    part-000000.parquet   block 0: the listings 0 .. block_size-1 of the catalog, in order
    part-000001.parquet
    ...
    manifest.json         the parts in order and their rows, written last: the commit point
    bad_rows.json         the catalog's report (written by the caller, as for the local engine)

A part is written atomically under its block's name, so a block that is retried (its actor died)
replaces its own part and no listing is written twice; the driver checks that every block came back
once and that the rows add up before it writes the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

from eclip.atomic import clean_stale_temps
from eclip.catalog.schema import Listing
from eclip.encode.identity import MANIFEST_KEY, model_sha256
from eclip.encode.listings import (EMBEDDINGS_MANIFEST, check_embed_dtype, write_embeddings,
                                   write_embeddings_manifest)
from eclip.engines.ray_session import (actor_pool, crash_plan, gpus_per_worker, job_errors,
                                       maybe_crash, pool_size, ray_session)
from eclip.errors import ConfigError, EclipError

PART_PATTERN = "part-*.parquet"


def part_name(block: int) -> str:
    return f"part-{block:06d}.parquet"


class OnDevice:
    """``model`` on ``device`` behind the interface ``embed_listings`` uses: the towers' and the
    projections' inputs moved to the device, their outputs back to the CPU; everything else is the
    model's own."""

    def __init__(self, model, device: str):
        import torch

        self._device = torch.device(device)
        self._model = model.to(self._device)

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def image_features(self, pixel_values):
        return self._model.image_features(pixel_values.to(self._device)).cpu()

    def text_features(self, input_ids, attention_mask):
        return self._model.text_features(input_ids.to(self._device),
                                         attention_mask.to(self._device)).cpu()

    def project_image(self, features, normalize: bool = True):
        return self._model.project_image(features.to(self._device), normalize).cpu()

    def project_text(self, features, normalize: bool = True):
        return self._model.project_text(features.to(self._device), normalize).cpu()


class EmbedBlocks:
    """One actor of the pool: the model, loaded once (onto the actor's GPU where Ray gave it one);
    a call embeds and writes one block."""

    def __init__(self, model_dir: str, out_dir: str, batch_size: int, threads: int,
                 crash: tuple[str, int] | None = None, model_sha256: str | None = None,
                 dtype: str = "float32", fused: bool = True):
        import torch

        from eclip.config import use_threads
        from eclip.model import load_model

        use_threads(threads)
        self.model = load_model(model_dir)
        if torch.cuda.is_available():  # Ray shows an actor only the GPU it reserved for it
            self.model = OnDevice(self.model, "cuda")
        self.out, self.batch_size, self.crash = Path(out_dir), batch_size, crash
        self.model_sha256 = model_sha256
        self.dtype, self.fused = dtype, fused

    def __call__(self, batch: dict) -> dict:
        from eclip.encode.listings import embed_listings

        out: dict[str, list] = {"block": [], "rows": [], "fusion_weight": [], "error": []}
        for block, payload in zip(batch["block"], batch["listings"]):
            block = int(block)
            maybe_crash(self.crash, block)
            listings = [Listing.from_dict(row) for row in json.loads(payload)]
            weight, error = 0.0, ""
            try:
                emb = embed_listings(self.model, listings, batch_size=self.batch_size,
                                     progress=False)
                write_embeddings(emb, self.out / part_name(block), listings,
                                 model_sha256=self.model_sha256, dtype=self.dtype,
                                 fused=self.fused)
                weight = emb.fusion_weight
            except EclipError as exc:  # the driver says it, as one line
                error = str(exc)
            for key, value in (("block", block), ("rows", len(listings)),
                               ("fusion_weight", weight), ("error", error)):
                out[key].append(value)
        return out


def embed_with_ray(model_dir: str | Path, listings: list[Listing], out_dir: str | Path, *,
                   batch_size: int = 128, block_size: int = 1000, workers: int | None = None,
                   threads_per_worker: int = 1, address: str | None = None,
                   dtype: str = "float32", fused: bool = True, progress: bool = True) -> Path:
    """Embed ``listings`` with the model in ``model_dir`` into ``out_dir`` (parts + manifest, see
    the module docstring) on a pool of ``workers`` actors (default: the cluster's CPUs divided by
    ``threads_per_worker``; where the cluster has GPUs, one actor per GPU, each holding one);
    ``address`` joins a running Ray cluster, else a local Ray is started. Returns the manifest's
    path. ``model_dir`` and the images must be readable by every worker
    (a shared file system on a cluster); the parts are written by the workers into ``out_dir``,
    their vectors stored as ``dtype``, without the fused ones when not ``fused``
    (``write_embeddings``)."""
    check_embed_dtype(dtype)
    for name, value in (("batch_size", batch_size), ("block_size", block_size),
                        ("threads_per_worker", threads_per_worker)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    model_dir, out = Path(model_dir).resolve(), Path(out_dir).resolve()
    if not model_dir.is_dir():
        raise EclipError(f"model directory {model_dir} not found")
    if out.exists() and not out.is_dir():
        raise EclipError(f"{out} is a file: the ray engine writes a folder of Parquet parts; "
                         "give --out a folder name")
    identity = model_sha256(model_dir)  # recorded in every part and the manifest
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)
    (out / EMBEDDINGS_MANIFEST).unlink(missing_ok=True)  # unfinished from now on
    for stale in out.glob(PART_PATTERN):
        stale.unlink()
    blocks = [{"block": k, "listings": json.dumps([x.to_dict() for x in
                                                   listings[start:start + block_size]],
                                                  ensure_ascii=False)}
              for k, start in enumerate(range(0, len(listings), block_size))]
    done: dict[int, int] = {}
    fusion_weight = None
    if blocks:
        with ray_session(address, progress=progress) as ray, job_errors("eclip embed"):
            size = min(pool_size(ray, workers, threads_per_worker, gpu=True), len(blocks))
            dataset = ray.data.from_items(blocks, override_num_blocks=len(blocks))
            results = dataset.map_batches(
                EmbedBlocks, batch_size=1, compute=actor_pool(ray, size),
                num_cpus=threads_per_worker, num_gpus=gpus_per_worker(ray),
                fn_constructor_kwargs={"model_dir": str(model_dir), "out_dir": str(out),
                                       "batch_size": batch_size, "threads": threads_per_worker,
                                       "crash": crash_plan(), "model_sha256": identity,
                                       "dtype": dtype, "fused": bool(fused)})
            for row in results.iter_rows():
                if row["error"]:
                    raise EclipError(row["error"])
                block, rows = int(row["block"]), int(row["rows"])
                if block in done:
                    raise EclipError(f"block {block} came back twice from the Ray workers")
                done[block] = rows
                fusion_weight = float(row["fusion_weight"])
    clean_stale_temps(out)  # the temporary part of a worker that died while writing
    expected = {k: len(json.loads(b["listings"])) for k, b in enumerate(blocks)}
    if done != expected:
        missing = sorted(set(expected) - set(done))
        raise EclipError(f"the Ray job returned {len(done)} of {len(expected)} blocks "
                         f"(missing: {missing[:10]}); nothing was committed in {out}")
    if fusion_weight is None:  # no listing: the weight the model would fuse with
        from eclip.encode.fusion import model_fusion_weight
        from eclip.model import load_model

        fusion_weight = model_fusion_weight(load_model(model_dir))
    return write_embeddings_manifest(out, [(part_name(k), done[k]) for k in sorted(done)],
                                     fusion_weight, model=str(model_dir), engine="ray",
                                     **{MANIFEST_KEY: identity})

