"""Listings per second of the batch engines: ``local`` against ``ray``, for embed and prepare.

    .venv/bin/python benchmarks/engine_throughput.py --out /tmp/bench_engines [--listings 10000] \\
        [--repeats 2] [--jobs embed prepare] [--source-size 96] [--image-size 64]

Generates a demo catalog once (kept in ``--out`` for the next run; ``--source-size`` px photos)
and a tiny model (the tests' scratch BERT + tiny ViT, 32 px input, a 2000-piece vocabulary: the
demo's EfficientNet would make the towers, not the engine, the measurement). Starts one local Ray
on the cores this process may use (its start-up is timed and printed on its own), then runs each
job with every engine variant, ``--repeats`` times, the order reversed every other time:

* embed: ``encode.listings.embed_listings`` + ``write_embeddings`` in this process, with torch on
  every core (the CLI's default) and on one thread (``--local-threads``), against
  ``engines.embed.embed_with_ray`` (one actor per core, one torch thread each, blocks of
  ``--block-size`` listings, a Parquet part each);
* prepare: ``catalog.shards.prepare_shards`` against ``engines.prepare.prepare_with_ray``
  (``--image-size`` px shorter side, shards of 1000).

A run is timed from the listings in memory to the files written (the catalog is read once, before;
that time is printed too); the Ray runs include starting their actor pool. After the runs the
script checks that the engines agree (vectors to 1e-6, shards byte for byte). The load average is
printed before and after: the machine may be shared. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from eclip.catalog.demo import make_demo_catalog
from eclip.catalog.readers import read_catalog
from eclip.catalog.shards import prepare_shards
from eclip.config import use_threads
from eclip.encode.listings import embed_listings, read_embeddings, write_embeddings
from eclip.engines.embed import embed_with_ray
from eclip.engines.prepare import prepare_with_ray
from eclip.engines.ray_session import local_cpus, require_ray

TINY_MODEL = {
    "text_tower": "scratch", "scratch_hidden": 32, "scratch_layers": 1, "scratch_heads": 2,
    "scratch_vocab_size": 2000, "max_length": 24,
    "image_tower": "vit", "vit_preset": "tiny", "image_size": 32,
    "embed_dim": 16, "pretrained": False,
}


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_engines"))
    parser.add_argument("--listings", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--jobs", nargs="+", choices=("embed", "prepare"),
                        default=["embed", "prepare"])
    parser.add_argument("--source-size", type=int, default=96)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=500)
    parser.add_argument("--local-threads", type=int, nargs="+", default=None,
                        help="torch threads of the local embed runs, one variant each "
                             "(default: the cores, and 1)")
    args = parser.parse_args()

    cores = local_cpus()
    print(f"machine: {platform.node()}, {cores} cores, torch {torch.__version__}, "
          f"python {sys.version.split()[0]}; load average before: {load()}")
    folder = args.out / f"catalog_{args.listings}_{args.source_size}"
    catalog = folder / "listings.jsonl"
    if not catalog.is_file():
        started = time.perf_counter()
        make_demo_catalog(folder, n_listings=args.listings, seed=11,
                          image_size=args.source_size, progress=False)
        print(f"demo catalog: {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    read = read_catalog(catalog)
    print(f"catalog read and images checked (both engines, in the driver): "
          f"{time.perf_counter() - started:.1f} s for {len(read.listings)} listings")
    unchecked = read_catalog(catalog, check_images=False)  # what prepare reads

    from eclip.train.recipe import Recipe
    from eclip.train.run import build_model

    torch.manual_seed(0)
    model_dir = args.out / "tiny_model"
    build_model(Recipe(model=dict(TINY_MODEL)), read.listings[:2000]).save_pretrained(model_dir)
    from eclip.model import load_model

    model = load_model(model_dir)

    ray = require_ray()
    started = time.perf_counter()
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    print(f"local Ray start-up ({cores} CPUs): {time.perf_counter() - started:.1f} s")

    runs = args.out / "runs"

    def local_embed(threads: int):
        def run() -> None:
            use_threads(threads)
            emb = embed_listings(model, read.listings, progress=False)
            write_embeddings(emb, runs / "local_embed.parquet", read.listings)
            use_threads(cores)
        return run

    def ray_embed() -> None:
        embed_with_ray(model_dir, read.listings, runs / "ray_embed", block_size=args.block_size,
                       progress=False)

    def local_prepare() -> None:
        prepare_shards(unchecked, runs / "local_shards", image_size=args.image_size,
                       progress=False)

    def ray_prepare() -> None:
        prepare_with_ray(unchecked, runs / "ray_shards", image_size=args.image_size,
                         block_size=args.block_size, progress=False)

    local_threads = args.local_threads or sorted({cores, 1}, reverse=True)
    jobs = {"embed": [(f"local, {n} torch thread{'s' if n > 1 else ''}", local_embed(n))
                      for n in local_threads] + [("ray", ray_embed)],
            "prepare": [("local", local_prepare), ("ray", ray_prepare)]}
    shutil.rmtree(runs, ignore_errors=True)
    seconds: dict[tuple[str, str], list[float]] = {}
    for job in args.jobs:
        for repeat in range(args.repeats):
            variants = jobs[job]
            for engine, run in (variants if repeat % 2 == 0 else variants[::-1]):
                started = time.perf_counter()
                run()
                took = time.perf_counter() - started
                seconds.setdefault((job, engine), []).append(took)
                print(f"  {job} {engine} run {repeat + 1}: {took:.1f} s "
                      f"({len(read.listings) / took:.0f} listings/s), load {load()}", flush=True)

    if "embed" in args.jobs:
        local, _ = read_embeddings(runs / "local_embed.parquet")
        parts, _ = read_embeddings(runs / "ray_embed")
        assert parts.product_ids == local.product_ids
        gap = float(np.abs(parts.product - local.product).max())
        assert gap <= 1e-6, gap
        print(f"embed: same product ids in order, largest vector difference {gap:.1e}")
    if "prepare" in args.jobs:
        local_dir, ray_dir = runs / "local_shards", runs / "ray_shards"
        names = sorted(p.name for p in local_dir.iterdir())
        assert names == sorted(p.name for p in ray_dir.iterdir())
        assert all(filecmp.cmp(local_dir / n, ray_dir / n, shallow=False) for n in names)
        print(f"prepare: {len(names)} files byte for byte equal")
    ray.shutdown()

    print(f"\nload average after: {load()}\n")
    print("| job | engine | runs | listings/s (median) | min | max |")
    print("|---|---|---|---|---|---|")
    n = len(read.listings)
    for (job, engine), times in seconds.items():
        rates = [n / t for t in times]
        print(f"| {job} | {engine} | {len(times)} | {statistics.median(rates):.0f} | "
              f"{min(rates):.0f} | {max(rates):.0f} |")


if __name__ == "__main__":
    main()
