"""Random against hard-negative batches (``data.batching``) on the demo catalog, several seeds.

    .venv/bin/python benchmarks/hard_batches.py --out /tmp/hard_bench [--seeds 3] [--listings 3000]
        [--variant NAME="train.targets=catalog data.batching=hard ..."] [--only NAME ...]
        [--compare eclip_hard:eclip ...] [--no-eval]

``eclip demo``'s recipe and catalog (``configs/demo.yaml``, the generated catalog of ``--listings``
listings, demo seed 0), its baseline towers built once, and its locked image tower's cached
features. Every variant trains ``--seeds`` times (``train.seed`` = the recipe's seed, +1, ...) from
that same baseline, as ``eclip demo --seeds N`` trains clip and eclip; the evaluation is the demo's
suite (``eclip.tasks.suite``: five tasks x image / text / both on held-out catalogs, the seeds
folded, paired catalog-bootstrap verdicts). The verdict table compares every variant with clip (and
baseline), plus the pairs of ``--compare``.

Variants (``--variant NAME="override ..."`` adds one or replaces one of the same name; every
variant is ``section.key=value`` overrides on top of the demo recipe):

- ``clip``: identity targets, random batches (the reference);
- ``eclip``: catalog-aware targets, random batches;
- ``eclip_hard``: catalog-aware targets, hard batches;
- ``clip_hard``: identity targets, hard batches.

``--keep-ids NAME=0.3`` trains variant NAME with the catalog ids of 70 % of the training catalogs
removed (``eclip.mining.hide_catalog_ids``), e.g. ``--variant eclip_gm30="train.targets=catalog
data.catalog_source=given+mined" --keep-ids eclip_gm30=0.3``: the NAVER-like case.

``--mine-with NAME=MINER`` trains variant NAME on the training listings' catalogs as mined by the
trained model ``OUT/models/MINER/seedS`` of the same seed (``data.catalog_source=mined``'s mining,
done before training; the report in ``OUT/runs/NAME/seedS/mining.json``), e.g. the second round of
``data.mining.rounds=2`` without training its first round again where MINER is that first round:
``--variant eclip_mined_r2="train.targets=catalog" --mine-with eclip_mined_r2=eclip_mined``.

A model already in ``OUT/models/NAME/seedS`` is reused, so variants can be added to a finished run
(e.g. ``--variant eclip_hard_mined="train.targets=catalog data.batching=hard
data.catalog_source=mined"`` after merging catalog mining) and the suite run again.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import time
from pathlib import Path

import torch

from eclip.catalog.config import DataConfig
from eclip.catalog.load import load_catalog
from eclip.catalog.splits import split_listings
from eclip.demo import bundled_recipe, locked_image_cache, prepare_demo_catalog
from eclip.model import load_model
from eclip.tasks.context import EvalConfig
from eclip.tasks.suite import run_suite
from eclip.train.recipe import load_recipe
from eclip.train.run import build_model
from eclip.train.trainer import train

HARD = "data.batching=hard data.hard_neighbours=8 data.hard_refresh_epochs=1"
VARIANTS = {
    "clip": "train.targets=clip",
    "eclip": "train.targets=catalog",
    "eclip_hard": f"train.targets=catalog {HARD}",
    "clip_hard": f"train.targets=clip {HARD}",
}


def parse_variants(extra: list[str]) -> dict[str, list[str]]:
    variants = {name: shlex.split(spec) for name, spec in VARIANTS.items()}
    for item in extra:
        name, _, spec = item.partition("=")
        if not name or not spec:
            raise SystemExit(f"--variant wants NAME=\"overrides\", got {item!r}")
        variants[name] = shlex.split(spec)
    return variants


def plan_seconds(recipe, model, listings, image_cache, repeats: int = 3) -> dict[str, list[float]]:
    """Seconds to compute the start model's neighbourhoods (vectors of every training listing,
    centroids, FAISS kNN) and to plan one epoch, hard and random, alternating; and how alike a
    batch's negatives are: the share of pairs of different catalogs in one batch that have the same
    category path (``same_category_*``), per order."""
    from eclip.catalog.config import DataConfig
    from eclip.train.data import group_index
    from eclip.train.neighbours import batch_order
    from eclip.train.sampler import CatalogBatchSampler

    groups = group_index(listings)
    categories = [x.category for x in listings]

    def same_category(batches) -> float:
        same = pairs = 0
        for batch in batches:
            for i, a in enumerate(batch):
                for b in batch[i + 1:]:
                    if groups[a] != groups[b]:
                        pairs += 1
                        same += categories[a] == categories[b]
        return round(same / max(pairs, 1), 4)

    out: dict[str, list[float]] = {"neighbourhoods_s": [], "plan_hard_s": [], "plan_random_s": []}
    orders = {}
    for _ in range(repeats):
        started = time.perf_counter()
        orders["hard"] = batch_order(DataConfig(batching="hard", hard_neighbours=8), model,
                                     listings, groups, image_cache=image_cache)
        out["neighbourhoods_s"].append(round(time.perf_counter() - started, 3))
        for key, kind in (("plan_hard_s", orders["hard"]), ("plan_random_s", None)):
            sampler = CatalogBatchSampler(groups, recipe.train.batch_size, recipe.train.per_group,
                                          drop_last=True, order=kind)
            started = time.perf_counter()
            sampler.batches(0)
            out[key].append(round(time.perf_counter() - started, 4))
    for name, data in (("hard_no_category", DataConfig(batching="hard", hard_by_category=False)),
                       ("hard_image", DataConfig(batching="hard", hard_vectors="image"))):
        orders[name] = batch_order(data, model, listings, groups, image_cache=image_cache)
    orders["random"] = None
    for name, kind in orders.items():
        sampler = CatalogBatchSampler(groups, recipe.train.batch_size, recipe.train.per_group,
                                      drop_last=True, order=kind)
        out[f"same_category_{name}"] = [same_category(sampler.batches(0))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/hard_bench")
    parser.add_argument("--listings", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[],
                        help='NAME="section.key=value ..." (adds or replaces a variant)')
    parser.add_argument("--only", nargs="*", default=None, help="train and evaluate only these")
    parser.add_argument("--compare", nargs="*", default=["eclip_hard:eclip", "clip_hard:clip"],
                        help="extra MODEL:REFERENCE pairs for the verdict table")
    parser.add_argument("--keep-ids", action="append", default=[],
                        help="NAME=FRACTION: variant NAME trains on the training listings with the "
                             "catalog ids of all but FRACTION of the catalogs removed "
                             "(eclip.mining.hide_catalog_ids; scoring keeps the true ids)")
    parser.add_argument("--mine-with", action="append", default=[],
                        help="NAME=MINER: variant NAME trains on the catalogs that the trained "
                             "model OUT/models/MINER/seedS mines from the training listings")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    parser.add_argument("--plan-only", action="store_true",
                        help="only time the neighbourhoods and plans, and how alike batches are")
    args = parser.parse_args()

    out = Path(args.out)
    variants = parse_variants(args.variant)
    names = args.only if args.only else list(variants)
    if "clip" not in names:
        names = ["clip"] + names  # the reference every verdict is against
    recipe = load_recipe(bundled_recipe("demo"))
    recipe.train.progress = False
    torch.manual_seed(0)
    catalog_file = out / "catalog" / "listings.jsonl"
    if catalog_file.is_file():  # a finished run's catalog (never rewritten under its readers)
        read = load_catalog(DataConfig(catalog=str(catalog_file)), progress=False, log=print)
        splits = split_listings(read.listings, recipe.data)
        recipe.data.catalog = str(catalog_file)
    else:
        read, splits = prepare_demo_catalog(out, recipe, listings=args.listings, seed=0,
                                            progress=False, log=print)
    base_dir = out / "models" / "baseline"
    if (base_dir / "config.json").is_file():
        baseline = load_model(base_dir)
    else:
        baseline = build_model(recipe, splits.train)
        baseline.save_pretrained(base_dir)
    image_cache = locked_image_cache(recipe, baseline, read.listings, progress=False)

    timings: dict[str, list[float]] = {}
    if args.plan_only:
        print(f"plan: {plan_seconds(recipe, baseline, splits.train, image_cache)}", flush=True)
        return
    keep_ids = {}
    for item in args.keep_ids:
        name, _, fraction = item.partition("=")
        keep_ids[name] = float(fraction)
    mine_with = dict(item.partition("=")[::2] for item in args.mine_with)
    seeds = [recipe.train.seed + k for k in range(args.seeds)]
    trained: dict = {"baseline": baseline}
    for name in names:
        runs = []
        for seed in seeds:
            model_dir = out / "models" / name / f"seed{seed}"
            if (model_dir / "config.json").is_file():
                runs.append(load_model(model_dir))
                continue
            run = load_recipe(bundled_recipe("demo"), variants[name])
            run.data.catalog = recipe.data.catalog
            run.train.progress = False
            run.train.seed = seed
            run.train.output_dir = str(out / "runs" / name / f"seed{seed}")
            run.train.model_dir = str(model_dir)
            print(f"training {name} seed {seed}: {' '.join(variants[name])}", flush=True)
            started = time.perf_counter()
            train_listings = splits.train
            if name in keep_ids:  # the NAVER-like case: most training listings without an id
                from eclip.mining import hide_catalog_ids

                train_listings = hide_catalog_ids(splits.train, keep_ids[name])
            if name in mine_with:  # catalogs mined by a trained model (a later mining round)
                from eclip.mining import mine_catalogs

                mined = mine_catalogs(load_model(out / "models" / mine_with[name] / f"seed{seed}"),
                                      train_listings, run.data.mining, source="mined",
                                      image_cache=image_cache, log=print)
                Path(run.train.output_dir).mkdir(parents=True, exist_ok=True)
                (Path(run.train.output_dir) / "mining.json").write_text(
                    json.dumps(mined.report, indent=1) + "\n")
                train_listings = mined.listings
            result = train(run, copy.deepcopy(baseline), train_listings, splits.val,
                           image_cache=image_cache, log=lambda s: None)
            timings.setdefault(name, []).append(round(time.perf_counter() - started, 1))
            print(f"  {timings[name][-1]} s", flush=True)
            runs.append(result.model)
        trained[name] = runs if len(runs) > 1 else runs[0]
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    if args.no_eval:
        return

    pairs = [[m, r] for m in names if m != "clip" for r in ("baseline", "clip")]
    pairs += [pair.split(":") for pair in args.compare
              if all(side in trained for side in pair.split(":"))]
    report = run_suite(
        trained, read.listings, config=EvalConfig(compare=pairs),
        image_caches=[image_cache] if image_cache is not None else None, out_dir=out / "eval",
        title=f"random vs hard batches ({len(seeds)} training seeds)", progress=False,
        log=print, meta={"variants": {n: variants[n] for n in names}, "train_seeds": seeds,
                         "keep_ids": keep_ids, "mine_with": mine_with},
        notes=[f"{n}: {' '.join(variants[n])}" for n in names]).report
    print("\n".join(report.verdict_table()))


if __name__ == "__main__":
    main()
