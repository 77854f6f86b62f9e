"""Time the evaluation suite's tasks (probes, zero-shot, matching, clustering, adult) as the test
split grows, on synthetic listings and vectors shaped like the demo's.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/suite_speed.py --test 561 2000 20000

Shaped like ``eclip demo``'s evaluation: 51 leaf categories under 8 top levels, four attribute keys
(color, material, pack, size) on part of the listings, ~7 % adult listings, 3.4 listings per
catalog; three models as the demo has them (``baseline`` read as tower features, ``clip`` and
``eclip`` with 256-d joint vectors and 1,280-d image / 256-d text tower features for the probes)
plus the TF-IDF title reference. Each listing's vectors are its catalog's centre plus noise, the
centres lean towards their category's and attributes' directions, so the probes and zero-shot have
something to find. Train and val stay the demo's size (2,123 / 316 listings; ``--scale-train``
grows them with the test split, 70 / 10 / 20 %), so the table shows what the test size costs. The
tasks run as ``eclip eval`` runs them (``tasks.suite``: BLAS on one thread, two job threads).
``--compare-retrieval`` times the matching task's same-catalog retrieval (``tasks.metrics.
same_group_retrieval``) against the full-sort version it replaced (kept here as
``retrieval_by_sorting``), alternating, on the same vectors; the two give the same numbers.

Prints a Markdown table: CPU seconds per task (all threads of the process; on a shared machine
the wall clock mostly measures the other jobs), the wall seconds of all tasks, and CPU
milliseconds per test listing (flat across sizes = linear).
"""

from __future__ import annotations

import argparse
import hashlib
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from eclip.catalog.schema import Listing
from eclip.encode import fuse
from eclip.tasks import adult, attribute, category, clustering, matching
from eclip.tasks.context import EvalConfig, TaskContext
from eclip.tasks.data import EvalSplits
from eclip.tasks.report import Report
from eclip.tasks.views import ModelViews, tfidf_views

TOPS, LEAVES = 8, 51
KEYS = {"color": 10, "material": 6, "pack": 4, "size": 5}  # key -> number of values
JOINT, IMAGE_FEATURES, TEXT_FEATURES = 256, 1280, 256
RUNNERS = (("category", category.run_category), ("attribute", attribute.run_attribute),
           ("matching", matching.run_matching), ("clustering", clustering.run_clustering),
           ("adult", adult.run_adult))
WORDS = [f"w{i}" for i in range(400)]


def _units(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_listings(sizes: dict[str, int], seed: int = 0) -> list[Listing]:
    """Catalogs of 1-6 listings (mean ~3.4) per split, with category, attributes, adult labels."""
    rng = np.random.default_rng(seed)
    leaves = [f"top{i % TOPS} > leaf{i}" for i in range(LEAVES)]
    out: list[Listing] = []
    for split, n in sizes.items():
        made = 0
        while made < n:
            size = min(int(rng.integers(1, 7)), n - made)
            catalog = f"{split}-{len(out)}"
            leaf = int(rng.integers(LEAVES))
            attrs = {k: f"{k}{rng.integers(v)}" for k, v in KEYS.items() if rng.random() < 0.6}
            is_adult = bool(rng.random() < 0.07)
            words = list(rng.choice(WORDS, size=4))
            for _ in range(size):
                title = " ".join(words[:3] + [str(v) for v in attrs.values() if rng.random() < .5])
                out.append(Listing(product_id=f"p{len(out)}", title=title, images=[],
                                   catalog_id=catalog, category=leaves[leaf],
                                   attributes=dict(attrs), adult=is_adult, split=split))
            made += size
    return out


def _direction(name: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def _signal(listings: list[Listing], dim: int, rng: np.random.Generator) -> np.ndarray:
    """Per listing: its catalog's centre (leaning on category, attribute and adult directions)
    plus listing noise."""
    centres: dict[str, np.ndarray] = {}
    rows = []
    for x in listings:
        if x.catalog_id not in centres:
            parts = [_direction(x.category, dim)] + [
                0.7 * _direction(f"{k}={v}", dim) for k, v in x.attributes.items()]
            parts.append((1.5 if x.adult else 0.0) * _direction("adult", dim))
            centres[x.catalog_id] = sum(parts) + 1.5 * rng.standard_normal(dim)
        rows.append(centres[x.catalog_id])
    x = np.stack(rows).astype(np.float32)
    return _units(x + 1.0 * rng.standard_normal(x.shape).astype(np.float32))


def synthetic_views(listings: list[Listing], seed: int = 0) -> list[ModelViews]:
    rng = np.random.default_rng(seed)

    def prompts(texts: list[str]) -> np.ndarray:  # a prompt names a class: its direction
        names = [t.split("|")[0].strip() for t in texts]
        keyed = [n.replace(" ", "=", 1) if n.split(" ")[0] in KEYS else n for n in names]
        return _units(np.stack([_direction(n, JOINT) for n in keyed]))

    views = []
    for name in ("baseline", "clip", "eclip"):
        image_f = _signal(listings, IMAGE_FEATURES, rng)
        text_f = _signal(listings, TEXT_FEATURES, rng)
        features = {"image": image_f, "text": text_f, "both": fuse(image_f, text_f)}
        if name == "baseline":
            views.append(ModelViews(name, "tower", features, features=features,
                                    fusion_weight=0.5))
            continue
        image, text = _signal(listings, JOINT, rng), _signal(listings, JOINT, rng)
        joint = {"image": image, "text": text, "both": fuse(image, text)}
        views.append(ModelViews(name, "joint", joint, joint, prompts, features=features,
                                fusion_weight=0.5))
    return views


def retrieval_by_sorting(vectors, groups, ks=(1, 10)) -> dict[str, float]:
    """The same-catalog retrieval as it was: every query's row sorted in full (N^2 log N)."""
    chunk = max(1, min(1024, 2 ** 23 // max(len(groups), 1)))
    codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    queries = np.flatnonzero(np.bincount(codes)[codes] > 1)
    hits, mrr, average_precision = {k: 0.0 for k in ks}, 0.0, 0.0
    for start in range(0, len(queries), chunk):
        rows = queries[start:start + chunk]
        sims = np.asarray(vectors[rows] @ vectors.T)
        sims[np.arange(len(rows)), rows] = -np.inf
        order = np.argsort(-sims, axis=1, kind="stable")[:, :-1]
        relevant = codes[order] == codes[rows][:, None]
        mrr += float((1.0 / (relevant.argmax(axis=1) + 1)).sum())
        for k in ks:
            hits[k] += float(relevant[:, :k].any(axis=1).sum())
        precision = np.cumsum(relevant, axis=1) / np.arange(1, relevant.shape[1] + 1)
        average_precision += float(((precision * relevant).sum(axis=1)
                                    / relevant.sum(axis=1)).sum())
    n = max(len(queries), 1)
    return {**{f"R@{k}": hits[k] / n for k in ks}, "MRR": mrr / n, "mAP": average_precision / n}


def compare_retrieval(sizes: list[int], repeats: int) -> None:
    from eclip.tasks.metrics import same_group_retrieval

    print("| test listings | full sort CPU s (min–max) | mate ranks CPU s (min–max) | speed-up "
          "| same numbers |\n|---|---|---|---|---|")
    for n in sizes:
        listings = synthetic_listings({"test": n})
        x = _signal(listings, JOINT, np.random.default_rng(0))
        groups = [x.catalog_id for x in listings]
        times: dict[str, list[float]] = {"sort": [], "ranks": []}
        results = {}
        for _ in range(repeats):
            for name, fn in (("sort", retrieval_by_sorting), ("ranks", same_group_retrieval)):
                started = time.process_time()
                results[name] = fn(x, groups)
                times[name].append(time.process_time() - started)
        same = all(np.isclose(results["sort"][k], results["ranks"][k], rtol=1e-12, atol=0)
                   for k in results["sort"])
        print(f"| {n} | {min(times['sort']):.2f}–{max(times['sort']):.2f} | "
              f"{min(times['ranks']):.2f}–{max(times['ranks']):.2f} | "
              f"{min(times['sort']) / min(times['ranks']):.1f}x | {same} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=int, nargs="+", default=[561, 2000, 20000])
    parser.add_argument("--scale-train", action="store_true",
                        help="train and val grow with the test split (70/10/20 %%)")
    parser.add_argument("--tasks", nargs="+", default=[name for name, _ in RUNNERS])
    parser.add_argument("--repeats", type=int, default=1, help="runs per size (min and max shown)")
    parser.add_argument("--compare-retrieval", action="store_true",
                        help="time same-catalog retrieval: full sort vs mate ranks")
    args = parser.parse_args()
    if args.compare_retrieval:
        with threadpool_limits(limits=1, user_api="blas"):
            compare_retrieval(args.test, args.repeats)
        return
    runners = [(name, run) for name, run in RUNNERS if name in args.tasks]
    print("| test listings | train / val | " + " | ".join(f"{n} CPU s" for n, _ in runners)
          + " | all CPU s | all wall s | CPU ms per test listing |\n|---|---|"
          + "---|" * (len(runners) + 3))
    for n in args.test:
        train, val = (7 * n // 2, n // 2) if args.scale_train else (2123, 316)
        listings = synthetic_listings({"train": train, "val": val, "test": n})
        split = np.array([x.split for x in listings], dtype=object)
        views = synthetic_views(listings)
        splits = EvalSplits(listings, split, "synthetic")
        views.append(tfidf_views(listings, splits.index("train")))
        times: dict[str, list[float]] = {name: [] for name, _ in runners}
        walls = []
        for _ in range(args.repeats):
            ctx = TaskContext(splits, views, EvalConfig(), Report(title="speed"),
                              log=lambda _: None)
            wall = time.perf_counter()
            with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                for name, run in runners:
                    started = time.process_time()
                    run(ctx)
                    times[name].append(time.process_time() - started)
            walls.append(time.perf_counter() - wall)
        shown = [f"{min(t):.1f}" + (f"–{max(t):.1f}" if len(t) > 1 else "")
                 for t in times.values()]
        total = min(sum(run) for run in zip(*times.values()))
        print(f"| {n} | {train} / {val} | " + " | ".join(shown)
              + f" | {total:.1f} | {min(walls):.1f} | {1000 * total / n:.2f} |", flush=True)


if __name__ == "__main__":
    main()
