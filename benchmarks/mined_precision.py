"""How right the mined catalogs are where some catalogs keep their ids (``given+mined``).

    .venv/bin/python benchmarks/mined_precision.py --out /tmp/hard_bench [--keep 0.0 0.3]
        [--model OUT/models/baseline ...]

The catalog, split and start model of a ``benchmarks/hard_batches.py`` run in ``--out`` (the demo
catalog, its baseline). For each fraction of ``--keep``, the training listings with the catalog ids
of all but that fraction of the catalogs removed (``eclip.mining.hide_catalog_ids``, as
``hard_batches.py --keep-ids`` trains on them), mined as a run with ``data.catalog_source=mined``
(fraction 0) or ``given+mined`` mines them before training, and the result scored against the true
ids, which mining never sees. ``--model`` names the models that mine (default: the baseline, the
start model of a run; a model trained on mined catalogs gives the second round of
``data.mining.rounds=2``):

- ``all pairs``: every pair of training listings that share a catalog id after mining (given or
  mined) against every true same-product pair;
- ``mined pairs``: only the pairs with at least one listing whose id was mined (the pairs mining
  made); their recall is over the true pairs that the kept ids do not already give.
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

from eclip.catalog.config import DataConfig, MiningConfig
from eclip.catalog.load import load_catalog
from eclip.catalog.splits import split_listings
from eclip.demo import bundled_recipe, locked_image_cache
from eclip.mining import hide_catalog_ids, mine_catalogs
from eclip.model import load_model
from eclip.train.recipe import load_recipe


def pairs_of(ids: list[str | None]) -> set[tuple[int, int]]:
    members: dict[str, list[int]] = {}
    for row, catalog_id in enumerate(ids):
        if catalog_id:
            members.setdefault(catalog_id, []).append(row)
    return {pair for rows in members.values() for pair in combinations(rows, 2)}


def score(predicted: set, truth: set) -> dict:
    right = len(predicted & truth)
    return {"precision": round(right / len(predicted), 4) if predicted else None,
            "recall": round(right / len(truth), 4) if truth else None,
            "predicted_pairs": len(predicted), "right_pairs": right, "true_pairs": len(truth)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/hard_bench")
    parser.add_argument("--keep", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--model", nargs="+", default=[None],
                        help="the models that mine, one after another (default: the baseline)")
    args = parser.parse_args()
    out = Path(args.out)
    recipe = load_recipe(bundled_recipe("demo"))
    read = load_catalog(DataConfig(catalog=str(out / "catalog" / "listings.jsonl")),
                        progress=False, log=print)
    train = split_listings(read.listings, recipe.data).train
    baseline = load_model(out / "models" / "baseline")
    # the locked image tower's cached features, as in training (every model here shares the
    # baseline's locked image tower)
    image_cache = locked_image_cache(recipe, baseline, read.listings, progress=False)
    truth_ids = [x.catalog_id for x in train]
    truth = pairs_of(truth_ids)
    rows = []
    for path, keep in [(m, k) for m in args.model for k in args.keep]:
        model = load_model(path) if path else baseline
        hidden = hide_catalog_ids(train, keep)
        source = "given+mined" if keep > 0 else "mined"
        result = mine_catalogs(model, hidden, MiningConfig(), source=source, truth=truth_ids,
                               image_cache=image_cache, log=lambda s: None)
        ids = [x.catalog_id for x in result.listings]
        given_pairs = pairs_of([x.catalog_id for x in hidden])
        predicted = pairs_of(ids)
        mined = {(a, b) for a, b in predicted
                 if result.sources[a] == "mined" or result.sources[b] == "mined"}
        row = {"model": path or "baseline", "keep": keep, "source": source,
               "thresholds": result.thresholds.to_dict(),
               "listings_with_mined_id": result.sources.count("mined"),
               "given_listings": result.sources.count("given"),
               "all_pairs": score(predicted, truth),
               "mined_pairs": score(mined, truth - given_pairs)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| model that mines | kept ids | source | thresholds (rule) | "
          "mined pairs: precision / recall | all pairs: precision / recall |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        t = r["thresholds"]
        print(f"| {r['model']} | {r['keep']:.0%} | {r['source']} | image {t['image']:.3f}, "
              f"text {t['text']:.3f} (quantiles {t['image_quantile']} / {t['text_quantile']}) | "
              f"{r['mined_pairs']['precision']} / {r['mined_pairs']['recall']} "
              f"({r['mined_pairs']['predicted_pairs']} pairs) | "
              f"{r['all_pairs']['precision']} / {r['all_pairs']['recall']} |")


if __name__ == "__main__":
    main()
