"""Retrieval scoring of a demo-sized evaluation, old (ranx, numba-compiled on first use in each
process) against new (eclip.tasks.ir's numpy metrics), side by side.

Each trial is a fresh Python process (what every ``eclip demo`` / ``eclip eval`` pays) that imports
``eclip.tasks.ir`` from ``--old`` or ``--new`` (a ``src`` folder), ranks random vectors of
``--listings`` test listings in catalogs of 4 for the listing tasks (text->image, image->image,
text->text) and a category task, for ``--models`` models, and scores them with that tree's
``rank_and_score`` (depth 1000); its wall time includes the imports. The ranx process gets an empty
``NUMBA_CACHE_DIR`` (a fresh clone: nothing compiled yet). The trials alternate old / new,
``--repeats`` times; the per-query metrics of both are checked equal at the end.

    python benchmarks/ir_metrics_speed.py --old /work/main/src --new src --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from eclip.catalog.schema import Listing
from eclip.tasks import ir
n, models = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
gallery = [Listing(product_id=f"p{i}", title=f"t{i}", images=[f"i{i}.png"], catalog_id=f"c{i // 4}",
                   category=f"cat{i % 12}") for i in range(n)]
tasks = ir.listing_tasks(gallery) + [ir.category_task(gallery)]
ids = [x.product_id for x in gallery]
out = {}
for m in range(models):
    docs = rng.normal(size=(n, 64)).astype(np.float32)
    for task in tasks:
        q = rng.normal(size=(len(task.query_ids), 64)).astype(np.float32)
        res = ir.rank_and_score(task, q, docs, ids, depth=1000)
        out[f"{m}/{task.name}"] = {k: v.tolist() for k, v in res.per_query.items()}
print(json.dumps({"seconds": time.perf_counter() - t0, "per_query": out}))
"""


def trial(src: str, listings: int, models: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    with tempfile.TemporaryDirectory() as cache:
        env["NUMBA_CACHE_DIR"] = cache
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CHILD, str(listings), str(models)], env=env,
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall"] = wall
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="src folder of the ranx-scored tree")
    parser.add_argument("--new", default="src", help="src folder of the numpy-scored tree")
    parser.add_argument("--listings", type=int, default=600)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()}")
    walls: dict[str, list[float]] = {"old": [], "new": []}
    last = {}
    for r in range(args.repeats):
        for name, src in (("old", args.old), ("new", args.new)):
            result = trial(src, args.listings, args.models)
            walls[name].append(result["wall"])
            last[name] = result["per_query"]
            print(f"repeat {r}: {name} {result['wall']:.1f} s (process wall, imports included)",
                  flush=True)
    worst = max(abs(a - b) for key in last["old"] for metric in last["old"][key]
                for a, b in zip(last["old"][key][metric], last["new"][key][metric]))
    for name, values in walls.items():
        print(f"{name}: median {statistics.median(values):.1f} s, min {min(values):.1f}, "
              f"max {max(values):.1f}")
    print(f"largest per-query difference old vs new: {worst:.2e}")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
