"""How many candidates a compressed code must re-rank: recall@10 against exact search by the depth
of the exact re-ranking, for the codes of a built generation's space.

    PYTHONPATH=src python benchmarks/quantizer_recall.py --generation INDEX/g000001 \\
        --space product --nprobe 32 128 --fetch 100 300 1000 --flat sq4 pq64 pq128

Two measures, on the build's own near-duplicate queries (``search.vectors``):

* the generation's ``SPACE.faiss`` (an IVF kind, e.g. OPQ+IVF-PQ) searched at each ``--nprobe``
  for ``--fetch`` candidates, which are re-scored exactly from the stored vectors and cut to 10;
* each ``--flat`` code over every stored vector with no inverted lists, trained on a sample: a
  scalar quantizer (``sq4``, ``sq8``: 4 or 8 bits a dimension) or a product quantizer of M
  sub-quantizers of 8 bits (``pqM``: M bytes a vector): what the code alone loses, before any
  list is left unprobed.

Exact scores come from the generation's stored vectors (the fused ones computed on read where
they are not stored). The answer is a table of recall@10 by code, nprobe and candidates.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np

from eclip.search.compressed import search_params
from eclip.search.generation import StoredVectors
from eclip.search.vectors import (exact_top_scores, near_duplicate_queries, recall_by_ids,
                                  rerank)

SCALAR = {"sq4": faiss.ScalarQuantizer.QT_4bit, "sq8": faiss.ScalarQuantizer.QT_8bit}


def flat_code(name: str, dim: int) -> faiss.Index:
    """``sq4`` / ``sq8``, or ``pqM``: a flat (list-less) index of that code, inner product."""
    if name in SCALAR:
        return faiss.IndexScalarQuantizer(dim, SCALAR[name], faiss.METRIC_INNER_PRODUCT)
    if not name.startswith("pq") or not name[2:].isdigit() or dim % int(name[2:]):
        raise SystemExit(f"--flat {name}: sq4, sq8 or pqM with M dividing {dim}")
    index = faiss.IndexPQ(dim, int(name[2:]), 8, faiss.METRIC_INNER_PRODUCT)
    index.do_polysemous_training = False
    return index


def reranked_recall(found: np.ndarray, queries, truth, vectors, vids, fetch: int) -> float:
    """recall@10 of the first ``fetch`` candidates of ``found`` (ids) re-scored exactly, as a
    served search re-ranks them (``search.vectors.rerank``)."""
    _, top = rerank(found[:, :fetch], queries, vectors, vids, 10)
    return recall_by_ids(truth, top, queries, vectors, vids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generation", type=Path, required=True)
    parser.add_argument("--space", default="product", choices=("image", "text", "product"))
    parser.add_argument("--kind", default="ivf_pq", help="the space's index kind (IVF kinds)")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[32, 128])
    parser.add_argument("--fetch", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--flat", nargs="*", default=["sq4"], help="sq4, sq8, pqM")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--train", type=int, default=200_000, help="vectors a flat code trains on")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    stored = StoredVectors.load(args.generation, mmap=True)
    vectors, vids = stored.arrays[args.space], np.asarray(stored.vids)
    began = time.perf_counter()
    queries = near_duplicate_queries(vectors, args.queries, args.seed)
    truth = exact_top_scores(vectors, queries, 10)
    print(f"{len(vids):,} vectors, {args.queries} queries; exact search "
          f"{time.perf_counter() - began:.0f} s")
    rows = []
    if args.nprobe:
        index = faiss.read_index(str(args.generation / f"{args.space}.faiss"))
        for nprobe in args.nprobe:
            params, _alive = search_params(args.kind, nprobe, None)
            _, found = index.search(queries, max(args.fetch), params=params)
            rows += [(f"{args.space}.faiss ({args.kind})", nprobe, fetch,
                      reranked_recall(found, queries, truth, vectors, vids, fetch))
                     for fetch in args.fetch]
        del index
    rng = np.random.default_rng(args.seed)
    for name in args.flat:
        code = flat_code(name, vectors.shape[1])
        sample = np.sort(rng.choice(len(vids), min(args.train, len(vids)), replace=False))
        code.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        for start in range(0, len(vids), 500_000):
            code.add(np.ascontiguousarray(vectors[start:start + 500_000], dtype=np.float32))
        _, found = code.search(queries, max(args.fetch))
        found = vids[found]
        rows += [(f"{name}, no lists", "all", fetch,
                  reranked_recall(found, queries, truth, vectors, vids, fetch))
                 for fetch in sorted(set(args.fetch) | {10, 30})]
        del code
    print("| code | nprobe | candidates re-ranked | recall@10 |\n|---|---|---|---|")
    for code, nprobe, fetch, recall in rows:
        print(f"| {code} | {nprobe} | {fetch} | {recall:.3f} |")


if __name__ == "__main__":
    main()
