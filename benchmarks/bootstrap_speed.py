"""Time the paired catalog bootstrap of the evaluation suite on synthetic per-item outcomes.

    python benchmarks/bootstrap_speed.py --listings 561 20000 --resamples 1000

Mimics what ``eclip eval`` keeps for the default comparisons (eclip against baseline and clip):
3 models x 3 modalities x (category: probe accuracy over 3 seeds and zero-shot accuracy;
attribute: probe and zero-shot micro-F1 over ``keys`` (listing, key) items; matching: ROC-AUC of
3 pairs per listing; clustering: B-cubed F1; adult: PR-AUC and ROC-AUC over 3 seeds), with
``per_catalog`` listings per catalog. Prints a Markdown table: seconds for all comparisons and
per (model, modality, metric) outcome, and the time per resample and listing (flat = linear).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from eclip.tasks.bootstrap import (bcubed_items, interval, mean_items, micro_f1_items,
                                   pr_auc_items, roc_auc_items, statistics)


def synthetic_outcomes(n: int, *, per_catalog: float = 2.5, keys: int = 2, seeds: int = 3,
                       seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    groups = np.array([f"c{i}" for i in np.sort(rng.integers(int(n / per_catalog), size=n))])
    adult = rng.random(n) < 0.1
    pair_rows = rng.integers(n, size=(3 * n, 2))
    pair_groups = groups[pair_rows]
    pair_labels = pair_groups[:, 0] == pair_groups[:, 1]
    pair_labels[: n] = True  # one positive per listing
    out = {}
    for model in ("baseline", "clip", "eclip"):
        for modality in ("image", "text", "both"):
            key = lambda metric: ("task", modality, model, metric)  # noqa: E731
            out[key("probe_accuracy")] = mean_items(groups, rng.random((seeds, n)) < 0.7)
            out[key("zero_shot_accuracy")] = mean_items(groups, rng.random(n) < 0.4)
            attribute_groups = np.tile(groups, keys)
            for prefix, s in (("probe_", seeds), ("zero_shot_", 1)):
                correct = rng.random((s, keys * n)) < 0.6
                out[key(prefix + "micro_f1")] = micro_f1_items(attribute_groups, correct,
                                                               np.ones_like(correct))
            out[key("cosine_roc_auc")] = roc_auc_items(pair_groups, pair_labels,
                                                       pair_labels + rng.normal(size=3 * n))
            out[key("bcubed_f1")] = bcubed_items(groups, rng.random(n), rng.random(n))
            scores = adult + rng.normal(size=(seeds, n))
            out[key("pr_auc")] = pr_auc_items(groups, adult, scores)
            out[key("roc_auc")] = roc_auc_items(groups, adult, scores)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listings", type=int, nargs="+", default=[561, 20000])
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    print("| test listings | catalogs | outcomes | resamples | wall s | CPU s "
          "| ms per outcome (CPU) | ns per resample x listing (CPU) |\n"
          "|---|---|---|---|---|---|---|---|")
    for n in args.listings:
        items = synthetic_outcomes(n)
        started, cpu = time.perf_counter(), time.process_time()
        _, resampled, catalogs = statistics(items, resamples=args.resamples)
        for (task, modality, model, metric) in items:  # the two default pairs' intervals
            if model == "eclip":
                for reference in ("baseline", "clip"):
                    interval(resampled[(task, modality, model, metric)]
                             - resampled[(task, modality, reference, metric)])
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"| {n} | {len(catalogs)} | {len(items)} | {args.resamples} | {seconds:.2f} | "
              f"{cpu:.2f} | {1000 * cpu / len(items):.1f} | "
              f"{1e9 * cpu / (args.resamples * n):.0f} |")


if __name__ == "__main__":
    main()
