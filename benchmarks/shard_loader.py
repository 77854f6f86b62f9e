"""Throughput of the streaming shard loader: samples/s with 0, 1 and 2 DataLoader workers.

    .venv/bin/python benchmarks/shard_loader.py --out /tmp/bench_shards [--listings 2000] \\
        [--source-size 800] [--image-size 256] [--input-size 224] [--batch-size 64] \\
        [--workers 0 1 2] [--repeats 3]

Generates a demo catalog (``--source-size`` px images), prepares shards (``--image-size`` px,
shorter side) and reads one whole epoch per run through ``ShardStream.loader``: tar reading, JPEG
decoding, a training crop resized to ``--input-size``, normalisation and text composition with
field dropout; tokenization is left out (it belongs to the model). For reference the map-style
``ListingDataset`` reads the same listings from the catalog's image files. Each time includes
starting the workers; "first batch" is the wait before the first batch arrives. The load average
is printed because the figures are only comparable on a quiet machine. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.demo import make_demo_catalog
from eclip.catalog.images import ImageTransform
from eclip.catalog.readers import read_catalog
from eclip.catalog.shards import prepare_shards
from eclip.train.data import ListingDataset
from eclip.train.stream import ShardStream

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
COMPOSER = ComposerConfig(field_dropout={"brand": 0.3, "attributes": 0.3})


def timed_epoch(loader) -> tuple[float, float, int]:
    """Seconds for the whole epoch, seconds to the first batch, samples read."""
    started = time.perf_counter()
    first, samples = None, 0
    for batch in loader:
        if first is None:
            first = time.perf_counter() - started
        samples += len(batch["index"])
    return time.perf_counter() - started, first or 0.0, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench_shards")
    parser.add_argument("--listings", type=int, default=2000)
    parser.add_argument("--source-size", type=int, default=800, help="demo catalog image size")
    parser.add_argument("--image-size", type=int, default=256, help="stored shorter side")
    parser.add_argument("--input-size", type=int, default=224, help="model input size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--shuffle-buffer", type=int, default=500)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)  # loading is per-process work; keep the main process to one thread

    catalog = out / "catalog" / "listings.jsonl"
    if not catalog.is_file():
        make_demo_catalog(catalog.parent, n_listings=args.listings, seed=0,
                          image_size=args.source_size, progress=False)
    read = read_catalog(catalog, check_images=False)
    started = time.perf_counter()
    prepare_shards(read, out / "shards", shard_size=args.shard_size, image_size=args.image_size,
                   composer_config=COMPOSER, progress=False)
    prepare_s = time.perf_counter() - started
    transform = ImageTransform(args.input_size, MEAN, STD, train=True)

    rows = []
    for workers in args.workers:
        runs = []
        for _ in range(args.repeats):
            stream = ShardStream(out / "shards", transform=transform,
                                 composer=TextComposer(COMPOSER),
                                 shuffle_buffer=args.shuffle_buffer)
            runs.append(timed_epoch(stream.loader(args.batch_size, num_workers=workers)))
        rows.append(("ShardStream (shards)", workers, runs))
    dataset = ListingDataset(read.listings, TextComposer(COMPOSER), transform)
    runs = [timed_epoch(DataLoader(dataset, batch_size=args.batch_size, shuffle=True))
            for _ in range(args.repeats)]
    rows.append(("ListingDataset (catalog files)", 0, runs))

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{len(read.listings)} listings, source {args.source_size} px, stored "
          f"{args.image_size} px, input {args.input_size} px (train crop), batch "
          f"{args.batch_size}; prepare: {len(read.listings) / prepare_s:.0f} listings/s")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__}, load average {load}\n")
    print("| loader | workers | samples/s (best) | samples/s (median) | first batch (s) |")
    print("|---|---|---|---|---|")
    for name, workers, runs in rows:
        rates = [samples / seconds for seconds, _, samples in runs]
        first = statistics.median(f for _, f, _ in runs)
        print(f"| {name} | {workers} | {max(rates):.0f} | {statistics.median(rates):.0f} | "
              f"{first:.2f} |")


if __name__ == "__main__":
    main()
