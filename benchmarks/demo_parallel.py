"""The demo's two trainings one after the other on all the threads, or side by side, one process
and one thread each (``eclip.train.concurrent.train_runs`` with ``jobs=1`` / ``jobs=N``).

    .venv/bin/python benchmarks/demo_parallel.py --catalog demo_out/catalog/listings.jsonl \\
        --out /tmp/demo_parallel --epochs 2 --repeats 3

Builds the demo's baseline and the locked tower's feature cache once (the demo recipe, its seed),
then alternates the two ways of training clip and eclip, ``--repeats`` times, starting with the
other one each repeat; prints each trial's wall time, each run's own seconds and the load average
before and after, and a summary (median, min, max). ``--epochs`` shortens the runs (the demo has
10, 330 steps); the step time does not depend on it. The weights of the two ways are compared
too: the same seeds give the same runs, up to the float rounding of the thread counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from eclip.catalog.config import DataConfig
from eclip.catalog.load import load_catalog
from eclip.catalog.splits import split_listings
from eclip.config import bundled_recipe, use_threads
from eclip.demo import MODELS, locked_image_cache
from eclip.train.concurrent import Run, train_runs
from eclip.train.recipe import load_recipe
from eclip.train.run import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", required=True, help="a demo catalog's listings.jsonl")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop each run after this many steps (train.max_steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="threads to share (default 2)")
    args = parser.parse_args()

    use_threads(args.threads)
    out = Path(args.out)
    shorter = [f"train.epochs={args.epochs}", "train.progress=false", f"data.catalog={args.catalog}"]
    if args.max_steps is not None:
        shorter.append(f"train.max_steps={args.max_steps}")
    recipe = load_recipe(bundled_recipe("demo"), shorter)
    read = load_catalog(DataConfig(catalog=args.catalog), progress=False, log=lambda s: None)
    splits = split_listings(read.listings, recipe.data)
    start_file = out / "start.pt"  # the baseline and its feature cache, kept for the next run
    if start_file.is_file():
        start = torch.load(start_file, weights_only=False)
        baseline, cache = start["model"], start["cache"]
    else:
        torch.manual_seed(0)
        started = time.perf_counter()
        baseline = build_model(recipe, splits.train)
        cache = locked_image_cache(recipe, baseline, read.listings, progress=False)
        print(f"baseline and tower features: {time.perf_counter() - started:.1f} s", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"model": baseline, "cache": cache}, start_file)

    def runs(where: Path) -> list[Run]:
        made = []
        for name, targets in MODELS:
            run = load_recipe(bundled_recipe("demo"), [*shorter, f"train.targets={targets}"])
            run.train.output_dir = str(where / "runs" / name)
            run.train.model_dir = str(where / "models" / name)
            made.append(Run(name, run, splits.train))
        return made

    ways = {"one after the other": 1, "side by side": len(MODELS)}
    trials = []
    for repeat in range(args.repeats):
        order = list(ways) if repeat % 2 == 0 else list(reversed(ways))
        for way in order:
            load_before = os.getloadavg()[0]
            t0 = time.perf_counter()
            results = train_runs(runs(out / f"r{repeat}" / way.replace(" ", "_")), baseline,
                                 splits.val, image_cache=cache, jobs=ways[way],
                                 threads=args.threads, log=lambda s: None)
            wall = time.perf_counter() - t0
            trial = {"repeat": repeat, "way": way, "wall_s": round(wall, 1),
                     "runs_s": {r.name: r.seconds for r in results},
                     "steps": [r.steps for r in results],
                     "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                     "text_proj": {r.name: r.model.state_dict()["text_proj.weight"].clone()
                                   for r in results}}
            trials.append(trial)
            print(json.dumps({k: v for k, v in trial.items() if k != "text_proj"}), flush=True)

    first = {t["way"]: t["text_proj"] for t in trials if t["repeat"] == 0}
    diff = max(float((first[ways_a][n] - first[ways_b][n]).abs().max())
               for ways_a, ways_b in [tuple(ways)] for n in first[ways_a])
    same = all(torch.equal(t["text_proj"][n], first[t["way"]][n])
               for t in trials for n in t["text_proj"])
    print(f"largest |difference| of text_proj between the two ways: {diff:.3g}; "
          f"every repeat of a way the same weights: {same}")
    for way in ways:
        walls = [t["wall_s"] for t in trials if t["way"] == way]
        print(f"{way}: median {statistics.median(walls):.1f} s, min {min(walls):.1f}, "
              f"max {max(walls):.1f} ({len(walls)} trials)")


if __name__ == "__main__":
    main()
