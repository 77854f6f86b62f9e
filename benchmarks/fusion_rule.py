"""Which rule should make a listing's "both" vector? Side by side on the demo's held-out catalogs.

    .venv/bin/python benchmarks/fusion_rule.py --demo demo_out [--resamples 1000]

Reads the trained models of a finished ``eclip demo`` (``models/clip``, ``models/eclip``) and the
catalog's test split, embeds the test listings once per model (image; title, as the evaluation's
text modality), and scores two fusion rules on the same vectors:

- ``concat``: ``[sqrt(w) image; sqrt(1 - w) text]``, w = 0.5 (``eclip.encode.fuse``);
- ``sum``: ``(image + text) / |image + text|`` (what ``DualEncoder.encode_product`` used to be).

Metrics: matching cosine ROC-AUC on the evaluation's test pairs (one positive per multi-listing
catalog, a hard and a random negative), same-catalog retrieval among test listings (R@1, R@10, MRR)
and title -> both retrieval (a title query against every test listing's fused vector; for concat the
query is ``fuse_query``). Each difference concat - sum comes with a 95 % interval from a bootstrap
over catalogs (queries and pairs of one catalog resampled together). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from eclip.catalog.readers import read_catalog
from eclip.catalog.splits import eval_splits
from eclip.encode import embed_listings, fuse, fuse_query, title_composer, unit_rows
from eclip.model import load_model
from eclip.tasks.matching import make_pairs
from eclip.tasks.metrics import roc_auc
from eclip.tasks.views import clean_titles


def sum_rule(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    return unit_rows(image + text)


def per_query_retrieval(scores: np.ndarray, codes: np.ndarray,
                        query_codes: np.ndarray) -> dict[str, np.ndarray]:
    """Per query (row of ``scores``): hit within 1 / 10, reciprocal rank of the first item of its
    catalog."""
    order = np.argsort(-scores, axis=1, kind="stable")
    relevant = codes[order] == query_codes[:, None]
    first = relevant.argmax(axis=1)
    return {"R@1": (first < 1).astype(float), "R@10": (first < 10).astype(float),
            "MRR": 1.0 / (first + 1)}


def bootstrap(values_a: np.ndarray, values_b: np.ndarray, owners: np.ndarray, *,
              resamples: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean difference a - b and its 95 % interval, resampling owners (catalogs) with replacement."""
    rng = np.random.default_rng(seed)
    unique, inverse = np.unique(owners, return_inverse=True)
    diff = values_a - values_b
    sums = np.bincount(inverse, weights=diff, minlength=len(unique))
    counts = np.bincount(inverse, minlength=len(unique))
    draws = []
    for _ in range(resamples):
        pick = rng.integers(len(unique), size=len(unique))
        draws.append(sums[pick].sum() / max(counts[pick].sum(), 1))
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def auc_bootstrap(labels, scores_a, scores_b, owners, *, resamples: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    unique, inverse = np.unique(owners, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    draws = []
    for _ in range(resamples):
        rows = np.concatenate([members[g] for g in rng.integers(len(unique), size=len(unique))])
        if labels[rows].all() or not labels[rows].any():
            continue
        draws.append(roc_auc(labels[rows], scores_a[rows]) - roc_auc(labels[rows], scores_b[rows]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return roc_auc(labels, scores_a) - roc_auc(labels, scores_b), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("demo_out"))
    parser.add_argument("--models", nargs="+", default=["clip", "eclip"])
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()

    listings = read_catalog(args.demo / "catalog" / "listings.jsonl").listings
    splits = eval_splits(listings)
    test_rows = splits.index("test")
    test = [listings[i] for i in test_rows]
    groups = np.array([x.group_id for x in test], dtype=object)
    codes = np.unique(groups.astype(str), return_inverse=True)[1]
    categories = np.array([x.category or "" for x in test], dtype=object)
    titles = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True,
                             dtype=np.float32).fit_transform(clean_titles(test)).tocsr()
    pairs = make_pairs(np.arange(len(test)), groups, categories, titles, hard=1, random=1, seed=0)
    pair_owner = codes[pairs.a]
    shared = np.flatnonzero(np.bincount(codes)[codes] > 1)  # queries with a catalog mate

    print(f"{len(test)} test listings, {len(pairs)} pairs ({int(pairs.label.sum())} positive), "
          f"{len(shared)} same-catalog queries; 95 % intervals: {args.resamples} catalog bootstrap "
          "resamples\n")
    print("| model | metric | concat | sum | concat − sum [95 % CI] |\n|---|---|---|---|---|")
    for name in args.models:
        model = load_model(args.demo / "models" / name)
        emb = embed_listings(model, test, title_composer(model), progress=False)
        both = {"concat": fuse(emb.image, emb.text), "sum": sum_rule(emb.image, emb.text)}
        queries = {"concat": fuse_query(emb.text), "sum": emb.text}
        pair_scores = {rule: np.einsum("ij,ij->i", x[pairs.a], x[pairs.b]) for rule, x in both.items()}
        delta, low, high = auc_bootstrap(pairs.label, pair_scores["concat"], pair_scores["sum"],
                                         pair_owner, resamples=args.resamples)
        print(f"| {name} | matching ROC-AUC | {roc_auc(pairs.label, pair_scores['concat']):.4f} | "
              f"{roc_auc(pairs.label, pair_scores['sum']):.4f} | {delta:+.4f} [{low:+.4f}, {high:+.4f}] |")
        same, cross = {}, {}
        for rule, x in both.items():
            scores = (x @ x.T)[shared]
            scores[np.arange(len(shared)), shared] = -np.inf  # a listing is not its own mate
            same[rule] = per_query_retrieval(scores, codes, codes[shared])
            cross[rule] = per_query_retrieval(queries[rule] @ x.T, codes, codes)
        for task, results, owners in (("same-catalog", same, codes[shared]),
                                      ("title → both", cross, codes)):
            for metric in ("R@1", "R@10", "MRR"):
                a, b = results["concat"][metric], results["sum"][metric]
                delta, low, high = bootstrap(a, b, owners, resamples=args.resamples)
                print(f"| {name} | {task} {metric} | {a.mean():.4f} | {b.mean():.4f} | "
                      f"{delta:+.4f} [{low:+.4f}, {high:+.4f}] |")


if __name__ == "__main__":
    main()
