"""Which text tower should the demo use? Train e-CLIP on the demo catalog with each, same recipe.

    .venv/bin/python benchmarks/text_towers.py --out /tmp/bench_text [--epochs 10] [--listings 3000]

For each variant: training wall time, seconds per step, and held-out retrieval / zero-shot numbers
(the same evaluation as ``eclip demo``). Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.demo import bundled_recipe, locked_image_cache, prepare_demo_catalog
from eclip.encode import embed_listings, recall_at_k
from eclip.tasks.report import Report
from eclip.tasks.zeroshot import zero_shot_accuracy
from eclip.train.recipe import load_recipe
from eclip.train.run import build_model
from eclip.train.trainer import train

VARIANTS = {
    "scratch BERT 256x2 (catalog tokenizer)": ["model.text_tower=scratch", "model.scratch_layers=2",
                                               "train.tower_lr_scale=1.0"],
    "scratch BERT 256x4 (catalog tokenizer)": ["model.text_tower=scratch", "model.scratch_layers=4",
                                               "train.tower_lr_scale=1.0"],
    "all-MiniLM-L6-v2 (pretrained, fine-tuned)": ["model.text_tower=hf",
                                                  "model.text_model=bundled:all-MiniLM-L6-v2",
                                                  "train.tower_lr_scale=0.05"],
}


def evaluate(report: Report, name: str, model, test, composer: TextComposer, image_cache) -> None:
    """Retrieval both ways and image zero-shot category accuracy on the test listings."""
    emb = embed_listings(model, test, composer, image_cache=image_cache, progress=False)
    groups = [x.group_id for x in test]
    for modality, (query, gallery) in {"text": (emb.text, emb.image),
                                       "image": (emb.image, emb.text)}.items():
        for k, value in recall_at_k(query, gallery, groups, groups, (1, 10)).items():
            report.add("retrieval", modality, name, f"R@{k}", value)
    zero_shot = zero_shot_accuracy(model, emb.image, [x.category for x in test])
    report.add("category", "image", name, "zero_shot_accuracy", zero_shot["accuracy"])
    report.meta["zero_shot_chance"] = zero_shot["chance"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench_text_towers")
    parser.add_argument("--listings", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--only", nargs="*", help="substrings of variant names to run")
    args = parser.parse_args()
    out = Path(args.out)
    base = load_recipe(bundled_recipe("demo"), [f"train.epochs={args.epochs}", "train.progress=false"])
    read, splits = prepare_demo_catalog(out, base, listings=args.listings, seed=0, progress=False,
                                        log=print)
    report = Report(title="text towers")
    cache = None
    rows = []
    for name, overrides in VARIANTS.items():
        if args.only and not any(s in name for s in args.only):
            continue
        recipe = load_recipe(bundled_recipe("demo"), [f"train.epochs={args.epochs}",
                                                      "train.progress=false", *overrides])
        recipe.data.catalog = base.data.catalog
        recipe.train.output_dir = str(out / "runs" / name.split()[0])
        torch.manual_seed(0)
        model = build_model(recipe, splits.train)
        cache = cache or locked_image_cache(recipe, model, read.listings, progress=False)
        started = time.perf_counter()
        result = train(recipe, model, splits.train, splits.val, image_cache=cache, log=lambda s: None)
        seconds = time.perf_counter() - started
        composer = TextComposer(ComposerConfig.from_dict(recipe.data.text))
        evaluate(report, name, result.model, splits.test, composer, cache)
        rows.append((name, seconds, seconds / result.steps,
                     report.value("retrieval", "text", name, "R@10"),
                     report.value("retrieval", "image", name, "R@10"),
                     report.value("category", "image", name, "zero_shot_accuracy")))
        print(rows[-1], flush=True)
    print(f"\n{args.epochs} epochs, {len(splits.train)} training listings, "
          f"{len(splits.test)} test listings, torch threads {torch.get_num_threads()}\n")
    print("| text tower | train s | s/step | text→image R@10 | image→text R@10 | zero-shot acc |")
    print("|---|---|---|---|---|---|")
    for name, seconds, per_step, t2i, i2t, zs in rows:
        print(f"| {name} | {seconds:.0f} | {per_step:.2f} | {t2i:.3f} | {i2t:.3f} | {zs:.3f} |")


if __name__ == "__main__":
    main()
