"""Torch's thread count on shared cores: embedding listings with 1 thread, with every core (the
old default), and with eclip's default (``eclip.config.use_threads()``: the cores less those
other processes keep busy), with and without an artificial co-runner (busy-loop processes).

One process loads the model once; each trial sets the threads, then embeds the first
``--listings`` listings of the catalog with ``encode/listings.py`` ``embed_listings`` (what
``eclip embed`` runs: the photo loader with its decode workers, the image tower, the text tower).
Per repeat, each co-runner setting in turn (the busy loops started before and stopped after its
trials, the order reversed on odd repeats), and in each the variants alternate (reversed on odd
repeats). Listings/s per trial; medians with min-max.

    PYTHONPATH=src python benchmarks/thread_default.py --model MODEL_DIR \\
        --catalog demo_out/catalog/listings.jsonl --listings 200 --repeats 3 --co-runners 0 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from eclip.catalog.readers import read_catalog
from eclip.config import available_threads, default_threads, use_threads
from eclip.encode.listings import embed_listings
from eclip.model import DualEncoder

BUSY_LOOP = "while True:\n    pass\n"


def start_co_runners(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--listings", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--co-runners", type=int, nargs="+", default=[0, 1],
                        help="busy-loop processes beside the trials, one setting after the other")
    parser.add_argument("--settle-s", type=float, default=2.0,
                        help="seconds between starting the co-runners and the first trial")
    args = parser.parse_args()

    listings = read_catalog(args.catalog).listings[:args.listings]
    model = DualEncoder.from_pretrained(args.model).eval()
    variants = {"1 thread": lambda: use_threads(1),
                f"all cores ({default_threads()}, the old default)": lambda: use_threads(
                    default_threads()),
                "eclip default (available_threads)": lambda: use_threads(None)}
    os.environ.pop("ECLIP_THREADS", None)
    embed_listings(model, listings[:8], progress=False)  # warm-up: imports, first allocations
    print(f"{len(listings)} listings, {sum(len(x.images) for x in listings)} photos; "
          f"{len(os.sched_getaffinity(0))} cores; torch {torch.__version__}; "
          f"load average {os.getloadavg()}", flush=True)
    rates: dict[tuple[int, str], list[float]] = {}
    chosen: dict[int, list[int]] = {}
    for repeat in range(args.repeats):
        settings = args.co_runners if repeat % 2 == 0 else args.co_runners[::-1]
        for co in settings:
            co_runners = start_co_runners(co)
            try:
                time.sleep(args.settle_s)
                names = list(variants) if repeat % 2 == 0 else list(variants)[::-1]
                for name in names:
                    threads = variants[name]()
                    if name.startswith("eclip"):
                        chosen.setdefault(co, []).append(threads)
                    started = time.perf_counter()
                    embed_listings(model, listings, progress=False)
                    seconds = time.perf_counter() - started
                    rates.setdefault((co, name), []).append(len(listings) / seconds)
                    print(f"repeat {repeat}, {co} co-runner(s), {name}: {threads} thread(s), "
                          f"{seconds:.1f} s, {len(listings) / seconds:.1f} listings/s, load "
                          f"{os.getloadavg()[0]:.1f}", flush=True)
            finally:
                stop(co_runners)
    print()
    print("| co-runners | threads | listings/s: median (min-max) | runs |")
    print("|---|---|---|---|")
    for (co, name), values in rates.items():
        label = name if not name.startswith("eclip") else f"{name}: chose {chosen[co]}"
        print(f"| {co} | {label} | {statistics.median(values):.1f} "
              f"({min(values):.1f}-{max(values):.1f}) | {len(values)} |")
    print(f"\nload average at the end {os.getloadavg()}; available_threads now "
          f"{available_threads()}")


if __name__ == "__main__":
    main()
