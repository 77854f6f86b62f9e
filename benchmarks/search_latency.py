"""Query latency of the search index at 100k and 1M synthetic vectors: our layer vs raw FAISS.

    python benchmarks/search_latency.py                      # 100k and 1M, 256-d
    python benchmarks/search_latency.py --sizes 100000 --queries 500

For each size an index is written with ``eclip.search.write_index`` (exact, then IVF) from clustered
unit vectors and synthetic listings (metadata in SQLite, no photos), opened with ``SearchIndex`` and
queried one query at a time (k=10) with near-duplicate queries (cosine 0.85 to an indexed vector).

* ``raw FAISS``: the FAISS index our layer holds, searched directly (ids only);
* ``eclip``: ``SearchIndex.search``: the same search plus id mapping, the metadata of the k results
  from SQLite and result objects, i.e. what an API request costs beyond encoding the query;
* ``eclip, category``: with a category filter holding 1/20 of the listings.

Latencies are of single queries in one thread, with FAISS's OpenMP pool at one thread as in the
service (``create_app``: requests run in parallel, each search on one core); throughput is queries
per second of that loop.
Query encoding by the model is not included (the load test, search_load.py, covers it).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from eclip.catalog.schema import Listing
from eclip.search import SearchIndex, VectorSettings, write_index
from eclip.search.vectors import exact_top_scores, near_duplicate_queries, recall_against
from eclip.encode import Embeddings
from eclip.train.recipe import Recipe
from eclip.train.run import build_model

K = 10
CATEGORIES = 20
BUILD_THREADS = faiss.omp_get_max_threads()


def clustered_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in groups of about 20 around random centres (a product and its look-alikes).

    The 10th nearest neighbour of a query lies at cosine ~0.5, as in the demo's image vectors
    (0.55; text 0.67): a harder case for IVF than well separated clusters.
    """
    rng = np.random.default_rng(seed)
    clusters = max(1, n // 20)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        x = centres[rng.integers(0, clusters, stop - start)]
        x += 0.8 * rng.standard_normal(x.shape).astype(np.float32)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def synthetic_listings(n: int) -> list[Listing]:
    return [Listing(product_id=f"s{i:08d}", title=f"synthetic listing {i}", images=[],
                    catalog_id=f"c{i // 3:08d}",
                    category=f"Category {i % CATEGORIES} > Leaf {i % (CATEGORIES * 10)}")
            for i in range(n)]


def tiny_model(directory: Path, dim: int) -> Path:
    """A small model directory: write_index copies one into every index (it is not used here)."""
    torch.manual_seed(0)
    config = {"text_tower": "scratch", "scratch_hidden": 32, "scratch_layers": 1,
              "scratch_heads": 2, "scratch_vocab_size": 200, "max_length": 16,
              "image_tower": "vit", "vit_preset": "tiny", "image_size": 32, "embed_dim": dim,
              "pretrained": False}
    model = build_model(Recipe(model=config), synthetic_listings(200))
    return model.save_pretrained(directory / "model")


def timed(fns: list, queries: np.ndarray) -> list[np.ndarray]:
    """Seconds per call of each ``fn(query)``; the functions take turns on every query, so that a
    busy moment of the machine falls on all of them alike."""
    for q in queries[:5]:
        for fn in fns:
            fn(q)
    out = [np.empty(len(queries)) for _ in fns]
    for i, q in enumerate(queries):
        for j in np.roll(np.arange(len(fns)), i):
            start = time.perf_counter()
            fns[j](q)
            out[j][i] = time.perf_counter() - start
    return out


def row(name: str, seconds: np.ndarray) -> str:
    p50, p99 = np.percentile(seconds, 50) * 1e3, np.percentile(seconds, 99) * 1e3
    return f"| {name} | {p50:.3f} | {p99:.3f} | {len(seconds) / seconds.sum():,.0f} |"


def bench_size(n: int, dim: int, work: Path, model_dir: Path, n_queries: int,
               exact_queries: int) -> None:
    vectors = clustered_vectors(n, dim)
    listings = synthetic_listings(n)
    ids = [x.product_id for x in listings]
    queries = near_duplicate_queries(vectors, n_queries, seed=1)
    truth = exact_top_scores(vectors, queries, K)
    for kind in ("exact", "ivf"):
        out = work / f"{kind}-{n}"
        start = time.perf_counter()
        info = write_index(out, model_dir, listings,
                           Embeddings(ids, vectors, vectors, vectors),
                           settings=VectorSettings(kind=kind), progress=False)
        build_s = time.perf_counter() - start
        faiss.omp_set_num_threads(1)
        index = SearchIndex.open(out)
        held = index.indexes["product"]
        raw = held.index
        nq = exact_queries if kind == "exact" else n_queries
        qs = queries[:nq]
        if kind == "ivf":
            faiss.extract_index_ivf(raw).nprobe = held.stats.nprobe
        raw_t, ours_t, cat_t = timed([lambda q, raw=raw: raw.search(q[None], K),
                                      lambda q, index=index: index.search(q, K),
                                      lambda q, index=index: index.search(q, K, category="Category 3")],
                                     qs)
        scores = np.stack([[h.score for h in index.search(q, K)] for q in qs])
        found = np.ones_like(scores, dtype=np.int64)
        recall = recall_against(truth[:nq], scores, found)
        stats = info.vectors["product"]
        label = "exact" if kind == "exact" else f"IVF nlist={stats.nlist} nprobe={stats.nprobe}"
        overhead = (np.percentile(ours_t, 50) - np.percentile(raw_t, 50)) * 1e3
        print(f"\n**{n:,} vectors, {label}** (written in {build_s:.0f} s; recall@10 vs exact on "
              f"these queries: {recall:.3f}; {nq} queries; overhead of our layer at p50: "
              f"{overhead:.3f} ms)\n\n"
              "| search | p50 ms | p99 ms | queries/s (1 thread) |\n|---|---|---|---|\n"
              + "\n".join([row("raw FAISS", raw_t), row("eclip SearchIndex.search", ours_t),
                           row(f"eclip, category filter (1/{CATEGORIES} of listings)", cat_t)]),
              flush=True)
        index.close()
        del index, raw, held
        shutil.rmtree(out)
        faiss.omp_set_num_threads(BUILD_THREADS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000, help="queries per measurement")
    parser.add_argument("--exact-queries", type=int, default=300,
                        help="queries for exact search (slow at 1M)")
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()
    print(f"# search latency: {platform.node()}, {os.cpu_count()} CPUs, faiss {faiss.__version__}"
          f" ({BUILD_THREADS} OpenMP threads to build, 1 to search), "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        model_dir = tiny_model(work, args.dim)
        for n in args.sizes:
            bench_size(n, args.dim, work, model_dir, args.queries, args.exact_queries)


if __name__ == "__main__":
    main()
