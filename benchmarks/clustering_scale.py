"""How product clustering (``eclip.tasks.clustering``) scales: time and peak memory of the kNN graph
and its connected components on synthetic catalogs, up to a million listings.

    .venv/bin/python benchmarks/clustering_scale.py --sizes 100000 1000000 --dim 256

Listings are unit vectors around one centre per catalog (2-8 listings each); the threshold is
chosen on a separate 20k-listing sample, as the suite does on val. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from eclip.tasks import clustering
from eclip.tasks.metrics import clustering_metrics


def synthetic(n: int, dim: int, seed: int, noise: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 9, size=n // 2)
    groups = np.repeat(np.arange(len(sizes)), sizes)[:n]
    centres = rng.standard_normal((int(groups.max()) + 1, dim), dtype=np.float32)
    x = centres[groups] + noise * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    x_val, g_val = synthetic(20_000, args.dim, seed=1)
    ids, sims = clustering.knn(x_val, args.k)
    threshold = clustering.choose_threshold(ids, sims, [str(g) for g in g_val])
    print(f"threshold chosen on 20,000 val listings: {threshold:.3f}\n")
    print("| listings | index | kNN graph (s) | components (s) | peak RSS (GiB) | B-cubed F1 | ARI |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        x, groups = synthetic(n, args.dim, seed=2)
        start = time.perf_counter()
        ids, sims = clustering.knn(x, args.k)
        graph_s = time.perf_counter() - start
        start = time.perf_counter()
        labels = clustering.components(ids, sims, threshold)
        components_s = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        metrics = clustering_metrics(groups, labels)
        index = "flat (exact)" if n <= clustering.EXACT_LIMIT else "IVF"
        print(f"| {n:,} | {index} | {graph_s:.1f} | {components_s:.2f} | {peak:.2f} | "
              f"{metrics['bcubed_f1']:.3f} | {metrics['ARI']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
