"""Recall@10 of one space of a built (or building) index generation at a few nprobe values.

    PYTHONPATH=src python benchmarks/index_recall_check.py --generation INDEX/g000001 \\
        --space image --nprobe 4 16 64

The generation's ``SPACE.faiss`` (an IVF kind) searched with ``search.compressed.search_params``
(what the served index runs), on one FAISS thread, against exact search over the generation's
stored vectors, with the build's own measure (``search.vectors``: near-duplicate queries,
``exact_top_scores``, ``recall_by_ids``, so a result tied with the 10th exact score counts). A
generation still being written (``INDEX/.tmp-*``) can be read as soon as the space's ``.faiss``
file is there.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss

from eclip.search.compressed import search_params
from eclip.search.generation import StoredVectors
from eclip.search.vectors import exact_top_scores, near_duplicate_queries, recall_by_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generation", type=Path, required=True, help="a generation folder")
    parser.add_argument("--space", default="image", choices=("image", "text", "product"))
    parser.add_argument("--kind", default="ivf_sq8", help="the space's index kind (IVF kinds)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    started = time.perf_counter()
    index = faiss.read_index(str(args.generation / f"{args.space}.faiss"))
    stored = StoredVectors.load(args.generation, mmap=True)
    vectors = stored.arrays[args.space]
    queries = near_duplicate_queries(vectors, args.queries, args.seed)
    truth = exact_top_scores(vectors, queries, 10)
    print(f"{len(stored.vids):,} vectors; exact search of {len(queries)} queries "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    faiss.omp_set_num_threads(1)
    for nprobe in args.nprobe:
        params, _alive = search_params(args.kind, nprobe, None)
        _, found = index.search(queries, 10, params=params)
        recall = recall_by_ids(truth, found, queries, vectors, stored.vids)
        print(f"nprobe {nprobe}: recall@10 {recall:.3f}", flush=True)


if __name__ == "__main__":
    main()
