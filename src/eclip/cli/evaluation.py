"""The ``eval`` command."""

from __future__ import annotations

import argparse

from eclip.cli.options import Commands, data_overrides, progress, recipe_path, threads


def cmd_eval(args: argparse.Namespace) -> int:
    from eclip.tasks.suite import load_eval_recipe, parse_model_specs, run_eval

    models, overrides = parse_model_specs(args.models)  # overrides may follow the models
    args.overrides = overrides + args.overrides
    if args.subject:
        args.overrides.append(f"eval.subject={args.subject}")
    recipe = load_eval_recipe(recipe_path(args.config or "eval"), data_overrides(args))
    threads(args)
    result = run_eval(models, recipe, args.out, progress=progress(args))
    print(result.report.summary_markdown())
    print(result.summary())
    return 0


def add_eval(commands: Commands) -> None:
    p = commands.add(
        "eval", cmd_eval, "the five e-commerce tasks for several models, against baselines",
        "Embed a catalog once per model and run category classification, attribute extraction, "
        "product matching, product clustering and adult recognition (image / text / both) on its "
        "test split; write report.json, report.md and report.html. Tasks whose labels the "
        "catalog lacks are skipped and named. A model is an eclip model directory or a "
        "transformers CLIPModel / SiglipModel / VisionTextDualEncoderModel checkpoint directory "
        "(the model you started from, as a baseline).",
        ["eclip eval --models eclip=demo_out/models/eclip clip=demo_out/models/clip "
         "baseline=demo_out/models/baseline --catalog my.csv --image-root imgs --out eval_out "
         "data.column_map.title=item_name eval.seeds=5",
         "eclip eval --models init=my_clip eclip=runs/shop/model --catalog my.csv --out eval_out"],
        parents=(commands.catalog, commands.quiet, commands.threads, commands.overrides))
    p.add_argument("--models", nargs="+", required=True, metavar="NAME=MODEL_DIR",
                   help="models to compare; those named in eval.tower_features (default: "
                        "baseline) are read as their towers' features. NAME=DIR1,DIR2,...: one "
                        "model per training seed, reported as mean ± std across the seeds. "
                        "Recipe overrides (data.* / eval.*) may follow them")
    p.add_argument("--subject", metavar="NAME",
                   help="the model compared with every other one, whatever their names "
                        "(eval.subject; default: the model named eclip, else the last one given)")
    p.add_argument("--out", required=True, help="report folder")
