"""What eclip adds to a FAISS search, in process: raw FAISS, the vector store, ``SearchIndex.search``.

    PYTHONPATH=src python benchmarks/search_overhead.py --index INDEX --space product --rounds 5

One FAISS thread (as ``eclip serve`` runs a request). For ``--queries`` stored rows of the space
(each query excluding its own listing, as ``GET /similar`` does), per call, alternating the paths
round by round:

* raw FAISS: the generation's ``SPACE.faiss`` with the served search parameters, 11 results (and,
  for a kind eclip re-ranks, the candidates it re-ranks);
* the vector store: ids and scores of the 10 best (``FaissStore.search``: the exclusion, a re-ranked
  kind's exact re-scoring from the memory-mapped rows);
* ``SearchIndex.search``: the same, plus the 10 listings' metadata from SQLite.

Prints the median microseconds per call of each path over the rounds, with their range. Give two
source trees on ``PYTHONPATH`` in turn, alternating, to compare them.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import faiss
import numpy as np

from eclip.search import SearchIndex
from eclip.search.compressed import search_params
from eclip.search.store_types import Where

AGAINST = {"product": "both", "image": "image", "text": "text"}


def search_paths(index: SearchIndex, space: str, raw: faiss.Index, params) -> dict:
    """The paths compared, each ``call(query, vid)`` for a query (a 1-d float32 vector) that
    excludes listing ``vid``: raw FAISS (``raw``, the space's own index file, searched with
    ``params``) for 11 results and, for a re-ranked kind, for the candidates eclip re-ranks; the
    vector store; ``SearchIndex.search``."""
    stats = index.info.vectors[space]
    paths = {"raw FAISS": lambda q, v: raw.search(q[None], 11, params=params)}
    if stats.rerank:
        fetch = 10 * stats.rerank + 1
        paths[f"raw FAISS, {fetch} candidates"] = \
            lambda q, v: raw.search(q[None], fetch, params=params)
    paths["vector store"] = lambda q, v: index.vector_store.search(
        space, q, 10, Where(exclude=frozenset({v})))
    paths["SearchIndex.search"] = lambda q, v: index.search(q, 10, against=AGAINST[space],
                                                            exclude={v})
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=True, help="an index folder")
    parser.add_argument("--space", default="product", choices=sorted(AGAINST))
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    faiss.omp_set_num_threads(1)
    index = SearchIndex.open(args.index)
    space = args.space
    stats = index.info.vectors[space]
    raw = faiss.read_index(str(index.generation_dir / f"{space}.faiss"))
    params, _alive = search_params(stats.kind, stats.param or 1, None)
    params = params if params is not None else faiss.SearchParameters()
    rows = random.Random(0).sample(range(len(index.vids)), args.queries)
    vids = [int(index.vids[r]) for r in rows]
    queries = [np.asarray(index.vectors[space][r], np.float32) for r in rows]

    paths = search_paths(index, space, raw, params)
    for call in paths.values():  # warm: the pages each query touches are mapped
        for q, v in zip(queries, vids):
            call(q, v)
    timings: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, call in paths.items():
            began = time.perf_counter()
            for q, v in zip(queries, vids):
                call(q, v)
            timings[name].append((time.perf_counter() - began) / len(queries) * 1e6)
    print(f"{stats.describe()}; {args.queries} queries x {args.rounds} rounds")
    result = {}
    for name, values in timings.items():
        result[name] = {"median_us": float(np.median(values)), "min_us": min(values),
                        "max_us": max(values)}
        print(f"{name:32s} {np.median(values):8.1f} us  ({min(values):.1f}-{max(values):.1f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
