"""Filtered vector search and the metadata fetch, in process, two source trees side by side.

    nice -n 10 python benchmarks/index_filters.py --index /tmp/scale_500k/index_before \
        --tree before=/tmp/scale_before/src --tree after=src --rounds 3

One index (built by ``benchmarks/index_scale.py``; both trees read its format) is opened by a
fresh process per tree and round, the trees alternating (the order reversed every other round),
each process timing, one query at a time with one FAISS thread (as ``eclip serve`` answers a
request):

- raw FAISS: ``product.faiss`` searched for 10 neighbours, no filter (the floor);
- ``SearchIndex.search`` of the "both" space: no filter, a top-level category (about a tenth of
  the listings), ``adult=False``, and both filters together;
- ``MetadataStore.fetch`` of 10 vids, what a search adds to FAISS's answer;
- the category filter with queries of every category (most far from the category's listings,
  where an IVF kind's probed lists hold few of them);
- the first query with a category never asked before (what computing a filter costs once).

Each path runs ``--requests`` queries, or as many as 15 s allow (at least 30) where one query is
slow; the counts are in the JSON.

The query vectors are listings' own fused vectors, the same in every process (for the category
filter, listings of that category: a buyer filtering by a category asks for things of it). p50 /
p99 per process; the table gives, per tree, the median p50 over rounds with its min-max spread
and the median p99. Results go to ``--out`` (JSON) and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PATHS = ("raw FAISS, no filter", "SearchIndex.search, no filter", "SearchIndex.search, category",
         "SearchIndex.search, adult=False", "SearchIndex.search, category + adult=False",
         "MetadataStore.fetch of 10 vids",
         "SearchIndex.search, category, queries of every category")


def child(index_dir: Path, requests: int, seed: int, only: str | None = None) -> dict:
    import faiss

    from eclip.search import SearchIndex
    from eclip.search.compressed import search_params

    faiss.omp_set_num_threads(1)
    index = SearchIndex.open(index_dir)
    rng = np.random.default_rng(seed)
    vids = np.asarray(index.vids)
    picked = np.sort(rng.choice(len(vids), requests, replace=False))
    queries = np.asarray(index.vectors["product"][picked], np.float32)
    listings = index.store.fetch(vids[picked].tolist())
    tops = sorted({x.category.split(" > ")[0] for x in listings.values() if x.category})
    top = tops[0]
    # a buyer filtering by a category asks for things of it: those queries are its listings'
    in_top = index.store.category_vids(top)
    chosen = np.sort(rng.choice(in_top, requests, replace=False))
    top_queries = np.asarray(index.vectors["product"][np.searchsorted(vids, chosen)], np.float32)
    raw = faiss.read_index(str(index.generation_dir / "product.faiss"))
    stats = index.info.vectors["product"]
    params, _keep = search_params(stats.kind, stats.param or 1, None)
    fetch_sets = [rng.choice(vids, 10, replace=False).tolist() for _ in range(requests)]

    started = time.perf_counter()
    index.search(queries[0], 10, category=tops[1])
    first_filter_ms = (time.perf_counter() - started) * 1000

    calls = {
        PATHS[0]: lambda i: raw.search(queries[i:i + 1], 10, params=params),
        PATHS[1]: lambda i: index.search(queries[i], 10),
        PATHS[2]: lambda i: index.search(top_queries[i], 10, category=top),
        PATHS[3]: lambda i: index.search(queries[i], 10, adult=False),
        PATHS[4]: lambda i: index.search(top_queries[i], 10, category=top, adult=False),
        PATHS[5]: lambda i: index.store.fetch(fetch_sets[i]),
        PATHS[6]: lambda i: index.search(queries[i], 10, category=top),
    }
    calls = {name: call for name, call in calls.items() if not only or only in name}
    out = {"first_new_category_ms": first_filter_ms, "category": top,
           "category_share": float(len(in_top) / len(vids))}
    for name, call in calls.items():
        hits = [len(call(i)) for i in range(min(20, requests))]  # warm: pages, the filters
        if name.startswith("SearchIndex"):
            out[f"{name}: hits"] = float(np.mean(hits))
        times: list[float] = []
        for i in range(requests):  # at most 15 s a path, at least 30 queries
            if len(times) >= 30 and sum(times) > 15:
                break
            began = time.perf_counter()
            call(i)
            times.append(time.perf_counter() - began)
        out[f"{name}: queries"] = len(times)
        ms = np.asarray(times) * 1000
        out[name] = [float(np.percentile(ms, 50)), float(np.percentile(ms, 99))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--tree", action="append", required=True,
                        help="NAME=SRC: a source tree (its src/ folder) to import eclip from")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", default=None, help="only the paths whose name holds this")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.index, args.requests, args.seed, args.only)))
        return
    trees = [t.split("=", 1) for t in args.tree]
    runs: dict[str, list[dict]] = {name: [] for name, _ in trees}
    loads = []
    for number in range(args.rounds):
        for name, src in (trees if number % 2 == 0 else trees[::-1]):
            env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
            loads.append(os.getloadavg()[0])
            done = subprocess.run([sys.executable, __file__, "--child", "--index",
                                   str(args.index), "--requests", str(args.requests),
                                   "--seed", str(args.seed), "--tree", args.tree[0]]
                                  + (["--only", args.only] if args.only else []),
                                  env=env, check=True, capture_output=True, text=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {number + 1}, {name}: done (load {loads[-1]:.1f})", flush=True)
    lines = ["| path | " + " | ".join(f"{name}: p50 ms (spread) / p99 ms" for name, _ in trees)
             + " |", "|---|" + "---|" * len(trees)]
    for path in [p for p in PATHS if p in runs[trees[0][0]][0]]:
        cells = []
        for name, _ in trees:
            p50 = [r[path][0] for r in runs[name]]
            p99 = [r[path][1] for r in runs[name]]
            cells.append(f"{np.median(p50):.3f} ({min(p50):.3f}–{max(p50):.3f}) / "
                         f"{np.median(p99):.2f}")
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    firsts = " | ".join(f"{name}: {np.median([r['first_new_category_ms'] for r in runs[name]]):.1f}"
                        for name, _ in trees)
    lines.append(f"\nfirst query with a new category, ms (median): {firsts}")
    for name, _ in trees:
        hits = {p.split(", ", 1)[1]: runs[name][0][f"{p}: hits"] for p in PATHS
                if f"{p}: hits" in runs[name][0]}
        lines.append(f"{name}: mean hits returned per query (of 10): " +
                     ", ".join(f"{p} {h:.1f}" for p, h in hits.items()))
    first = runs[trees[0][0]][0]
    lines.append(f"category: {first['category']} ({first['category_share']:.1%} of the listings); "
                 f"load average {min(loads):.1f}–{max(loads):.1f}")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "loads": loads,
                                        "runs": runs, "table": lines}, indent=2))


if __name__ == "__main__":
    main()
