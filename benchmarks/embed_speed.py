"""``eclip embed`` of a catalog, old tree against new tree, side by side: listings/s.

Each trial runs ``python -m eclip embed --model MODEL --catalog CATALOG --out TMP --quiet`` in a
fresh process with ``PYTHONPATH`` set to ``--old`` or ``--new`` (a ``src`` folder); the trials
alternate old / new, ``--repeats`` times. Listings/s = listings / the process's wall time (model
load, catalog read and the Parquet write included: what a user waits for). ``--threads`` passes
through (default: each tree's own default).

    python benchmarks/embed_speed.py --old /work/main/src --new src \\
        --model demo_out/models/baseline --catalog demo_out/catalog/listings.jsonl --repeats 3

More trees: ``--tree NAME=SRC`` (repeatable) adds them to the rotation (e.g. the tree before the
photo loader); the order of the trees is reversed on every other repeat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def trial(src: str, args) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "eclip", "embed", "--model", args.model, "--catalog",
                   args.catalog, "--out", os.path.join(tmp, "emb.parquet"), "--quiet"]
        if args.threads:
            command += ["--threads", str(args.threads)]
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", default="src")
    parser.add_argument("--model", required=True)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=SRC",
                        help="another tree to time beside old and new")
    args = parser.parse_args()
    trees = {"old": args.old, "new": args.new}
    trees.update(dict(item.split("=", 1) for item in args.tree))
    with open(args.catalog, encoding="utf-8") as handle:
        listings = sum(1 for line in handle if line.strip())
    print(f"{listings} listings; load average {os.getloadavg()}", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in trees}
    for r in range(args.repeats):
        for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
            seconds = trial(trees[name], args)
            rates[name].append(listings / seconds)
            print(f"repeat {r}: {name} {seconds:.1f} s, {listings / seconds:.1f} listings/s, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    for name, values in rates.items():
        print(f"{name}: median {statistics.median(values):.1f} listings/s "
              f"(min {min(values):.1f}, max {max(values):.1f})")
    for name in rates:
        if name != "new":
            print(f"new / {name} (medians): "
                  f"{statistics.median(rates['new']) / statistics.median(rates[name]):.2f}x")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
