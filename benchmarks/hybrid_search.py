"""Vector, lexical and hybrid text search compared on a demo output: R@10 and nDCG@10 (ranx).

Query sets over an index of the whole demo catalog:

* **held-out titles**: every test-split listing whose catalog has another listing; the query is its
  title, the relevant listings are the other listings of its catalog (the listing itself is taken
  out of the answer, as ``eclip.search.evaluate`` does); **val titles**, the same for the val split,
  are the set on which fusion settings are to be chosen;
* **category names**: one query per leaf category name ("Drink", "Food Asian"); the relevant
  listings are those of every category with that leaf name.

Each query's vector list and lexical lists (one per FTS5 tokeniser: ``bigram``, ``unicode61``,
``trigram``) are computed once, ``DEPTH`` deep; the fusion variants are then reciprocal-rank fusions
of those lists (``eclip.search.hybrid.rrf``), and the default variant is checked to be exactly what
``eclip.search.hybrid.search_text`` answers. Intervals: paired bootstrap over catalogs (titles) or
categories (``eclip.tasks.bootstrap``) of hybrid minus the better single mode.

    .venv/bin/python benchmarks/hybrid_search.py --model /tmp/demo_shared/models/eclip \\
        --catalog /tmp/demo_shared/catalog/listings.jsonl --work /tmp/hybrid_bench
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from eclip.catalog.readers import read_catalog
from eclip.search import SearchIndex, build_index
from eclip.search import hybrid, lexical
from eclip.search.index import is_index
from eclip.search.metadata import MetadataStore
from eclip.tasks.bootstrap import mean_items, paired_bootstrap
from eclip.tasks.ir import ir_scores

DEPTH = 200
METRICS = {"R@10": "recall@10", "nDCG@10": "ndcg@10"}


def query_sets(listings) -> dict[str, list[dict]]:
    members = defaultdict(list)
    for x in listings:
        if x.catalog_id:
            members[x.catalog_id].append(x.product_id)
    def titles(split):
        return [{"id": x.product_id, "text": x.title, "group": x.catalog_id, "skip": x.product_id,
                 "relevant": [p for p in members[x.catalog_id] if p != x.product_id]}
                for x in listings if x.split == split and x.catalog_id
                and len(members[x.catalog_id]) > 1]

    by_leaf = defaultdict(list)
    for x in listings:
        if x.leaf_category:
            by_leaf[x.leaf_category].append(x.product_id)
    categories = [{"id": f"cat:{leaf}", "text": leaf, "group": leaf, "skip": None,
                   "relevant": pids} for leaf, pids in sorted(by_leaf.items())]
    return {"val titles (for choosing)": titles("val"), "held-out titles": titles("test"),
            "category names": categories}


def lexical_store(index: SearchIndex, tokenizer: str, work: Path) -> MetadataStore:
    """A store holding the index's rows under the same vids, with ``tokenizer``'s FTS5 table."""
    if index.store.lexical_tokenizer == tokenizer:
        return index.store
    path = work / f"lexical-{tokenizer}.sqlite"
    path.unlink(missing_ok=True)
    store = MetadataStore.create(path, lexical_tokenizer=tokenizer)
    rows = index.store.fetch(index.vids)
    rows = [rows[int(v)] for v in index.vids]
    store.upsert(np.asarray([r.vid for r in rows]), rows, [list(r.images) for r in rows])
    store.commit()
    return store


def rankings(index, stores, queries, against: str) -> dict[str, dict[str, list[int]]]:
    """Per query id: the vector list and one lexical list per tokeniser (vids, best first)."""
    lists = {}
    for q in queries:
        entry = {"vector": [h.listing.vid for h in
                            index.search_text(q["text"], DEPTH, against=against)]}
        for name, store in stores.items():
            entry[name] = [v for v, _ in store.lexical_search(q["text"], DEPTH)]
        lists[q["id"]] = entry
    return lists


def variants(tokenizers) -> dict[str, dict]:
    """Name -> how its ranking is made from the cached lists."""
    out = {"vector": {"kind": "vector"}}
    for t in tokenizers:
        out[f"lexical ({t})"] = {"kind": "lexical", "tokenizer": t}
    default = hybrid.Fusion()
    for t in tokenizers:
        out[f"hybrid ({t}, {_describe(default)}) default"] = {"kind": "hybrid", "tokenizer": t,
                                                              "fusion": default}
    t = lexical.DEFAULT_TOKENIZER
    plain = hybrid.Fusion(weights=(1.0, 1.0))
    for fusion in (plain, hybrid.Fusion(weights=(2.0, 1.0)), hybrid.Fusion(weights=(1.0, 3.0)),
                   dataclasses.replace(plain, rrf_k=10), dataclasses.replace(plain, rrf_k=200),
                   dataclasses.replace(plain, depth=20), dataclasses.replace(plain, depth=200),
                   hybrid.Fusion(depth=20), hybrid.Fusion(depth=200), hybrid.Fusion(rrf_k=10)):
        out[f"hybrid ({t}, {_describe(fusion)})"] = {"kind": "hybrid", "tokenizer": t,
                                                     "fusion": fusion}
    return out


def _describe(fusion: hybrid.Fusion) -> str:
    return (f"RRF k={fusion.rrf_k:g}, depth {fusion.depth}, "
            f"w vector:lexical {fusion.weights[0]:g}:{fusion.weights[1]:g}")


def ranked(spec: dict, lists: dict[str, list[int]], k: int) -> list[int]:
    if spec["kind"] == "vector":
        return lists["vector"][:k]
    if spec["kind"] == "lexical":
        return lists[spec["tokenizer"]][:k]
    fusion = spec["fusion"]
    depth = max(k, fusion.depth)
    fused = hybrid.rrf([lists["vector"][:depth], lists[spec["tokenizer"]][:depth]],
                       k=fusion.rrf_k, weights=fusion.weights)
    return [v for v, _ in fused[:k]]


def latency(index, queries: list[dict], rounds: int, against: str, k: int) -> None:
    """Milliseconds per query of each mode through ``hybrid.search_text``, the modes alternating
    query by query (in a rotating order) so that a change of load hits them alike; the median and
    90th percentile of each round, and their spread over the rounds."""
    per_round = {m: [] for m in hybrid.MODES}
    for r in range(rounds):
        times = {m: [] for m in hybrid.MODES}
        for i, q in enumerate(queries):
            modes = hybrid.MODES[(i + r) % 3:] + hybrid.MODES[:(i + r) % 3]
            for mode in modes:
                start = time.perf_counter()
                hybrid.search_text(index, q["text"], k, mode=mode, against=against)
                times[mode].append((time.perf_counter() - start) * 1000)
        for m in hybrid.MODES:
            per_round[m].append((float(np.median(times[m])), float(np.percentile(times[m], 90))))
    print(f"\n| mode | median ms per query, per round | p90 ms per round | "
          f"({len(queries)} queries x {rounds} rounds) |\n|---|---|---|---|")
    for m in hybrid.MODES:
        med = ", ".join(f"{a:.1f}" for a, _ in per_round[m])
        p90 = ", ".join(f"{b:.1f}" for _, b in per_round[m])
        print(f"| {m} | {med} | {p90} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--catalog", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path, help="index and stores go here")
    parser.add_argument("--against", default="text", choices=("text", "image", "both"))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--latency", type=int, metavar="ROUNDS", default=0,
                        help="only time the three modes on the held-out titles, ROUNDS times")
    args = parser.parse_args()
    k = args.k

    listings = read_catalog(args.catalog).listings
    args.work.mkdir(parents=True, exist_ok=True)
    index_dir = args.work / "index"
    if not is_index(index_dir):
        build_index(args.model, listings, index_dir, progress=False)
    index = SearchIndex.open(index_dir)
    if args.latency:
        print(f"load average at the start: {os.getloadavg()}")
        latency(index, query_sets(listings)["held-out titles"], args.latency, args.against, k)
        print(f"load average at the end: {os.getloadavg()}")
        return
    stores = {t: lexical_store(index, t, args.work) for t in lexical.TOKENIZERS}
    pid_of = {vid: item.product_id for vid, item in index.store.fetch(index.vids).items()}
    specs = variants(lexical.TOKENIZERS)
    sets = query_sets(listings)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "k": k,
               "load_start": os.getloadavg(), "cpus": os.cpu_count(),
               "against": args.against, "listings": len(listings), "sets": {}}
    for set_name, queries in sets.items():
        start = time.perf_counter()
        lists = rankings(index, stores, queries, args.against)
        seconds = time.perf_counter() - start
        # the library's own hybrid answer equals the cached fusion (default settings)
        for q in random.Random(0).sample(queries, min(25, len(queries))):
            served = [h.listing.vid for h in hybrid.search_text(index, q["text"], k + 1,
                                                                 against=args.against)]
            spec = {"kind": "hybrid", "tokenizer": index.store.lexical_tokenizer,
                    "fusion": hybrid.Fusion()}
            assert served == ranked(spec, lists[q["id"]], k + 1), q["text"]
        qrels = {q["id"]: {p: 1 for p in q["relevant"]} for q in queries}
        per_query = {}
        for name, spec in specs.items():
            run = {}
            for q in queries:
                pids = [pid_of[v] for v in ranked(spec, lists[q["id"]], k + 1)]
                pids = [p for p in pids if p != q["skip"]][:k]
                run[q["id"]] = {p: float(k - i) for i, p in enumerate(pids)}
            scores = ir_scores(qrels, run, list(METRICS.values()))
            per_query[name] = {m: np.asarray([scores[r].get(q["id"], 0.0) for q in queries])
                               for m, r in METRICS.items()}
        groups = [q["group"] for q in queries]
        rows = {}
        best_single = {}
        for m in METRICS:
            singles = {n: per_query[n][m].mean() for n in per_query
                       if not n.startswith("hybrid")}
            best_single[m] = max(singles, key=singles.get)
        for name in specs:
            row = {m: float(per_query[name][m].mean()) for m in METRICS}
            if name.startswith("hybrid"):
                for m in METRICS:
                    ci = paired_bootstrap(mean_items(groups, per_query[name][m]),
                                          mean_items(groups, per_query[best_single[m]][m]),
                                          resamples=args.resamples)
                    row[f"{m} vs best single"] = [ci.delta, ci.low, ci.high, ci.verdict]
            rows[name] = row
        results["sets"][set_name] = {"queries": len(queries), "best_single": best_single,
                                     "rows": rows, "lists_seconds": seconds}
        print(f"\n### {set_name}: {len(queries)} queries (lists in {seconds:.1f} s)\n")
        print("| mode | R@10 | nDCG@10 | R@10: hybrid - best single [95% CI] | "
              "nDCG@10: hybrid - best single [95% CI] |\n|---|---|---|---|---|")
        for name, row in rows.items():
            cells = []
            for m in METRICS:
                if f"{m} vs best single" in row:
                    d, lo, hi, verdict = row[f"{m} vs best single"]
                    cells.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] {verdict}")
                else:
                    cells.append("best single" if best_single[m] == name else "")
            print(f"| {name} | {row['R@10']:.3f} | {row['nDCG@10']:.3f} | {cells[0]} | "
                  f"{cells[1]} |")
    results["load_end"] = os.getloadavg()
    print(f"\nload average (1, 5, 15 min): start {results['load_start']}, "
          f"end {results['load_end']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
