"""The model commands: ``demo``, ``train``, ``export``, ``merge``."""

from __future__ import annotations

import argparse

from eclip.cli.options import Commands, Library, progress, recipe, threads


def cmd_demo(args: argparse.Namespace) -> int:
    from eclip.demo import run_demo

    threads(args)
    result = run_demo(args.out, listings=args.listings, seed=args.seed, seeds=args.seeds,
                      overrides=args.overrides, hide_catalog_ids=args.hide_catalog_ids,
                      jobs=args.jobs, progress=progress(args))
    print(f"\ndemo finished in {result.seconds:.0f} s: {result.out_dir / 'report.md'}")
    return 0


def add_demo(commands: Commands) -> None:
    demo = "eclip.demo:run_demo"
    p = commands.add("demo", cmd_demo,
                     "generate the demo catalog, train baseline/clip/eclip, report",
                     "End to end on the generated demo catalog, on the CPU: baseline, CLIP and "
                     "e-CLIP models trained and compared on held-out catalogs.",
                     ["eclip demo --out demo_out",
                      "eclip demo --out small --listings 600 train.epochs=2"],
                     parents=(commands.quiet, commands.threads, commands.overrides))
    p.add_argument("--out", default=Library(demo, "out_dir"),
                   help="output folder (default: %(default)s)")
    p.add_argument("--listings", type=int, default=Library(demo, "listings"),
                   help="demo catalog size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=Library(demo, "seed"),
                   help="(default: %(default)s)")
    p.add_argument("--seeds", type=int, default=Library(demo, "seeds"), metavar="N",
                   help="train clip and eclip N times (train.seed, +1, ...) from the same "
                        "baseline; the report gives each row's mean ± std across the seeds "
                        "(default: %(default)s)")
    p.add_argument("--jobs", type=int, default=Library(demo, "jobs"), metavar="N",
                   help="train the runs side by side in N processes, the torch threads (--threads) "
                        "shared among them (default: one per thread, at most one per run; "
                        "1: one after the other)")
    p.add_argument("--hide-catalog-ids", action="store_true",
                   help="train as a marketplace without catalog ids would: the ids are hidden "
                        "from training (kept for scoring), clip trains without them, eclip_mined "
                        "on catalogs mined from the baseline (data.catalog_source=mined), eclip on "
                        "the true ids for reference")


def cmd_train(args: argparse.Namespace) -> int:
    from eclip.train.run import run_training

    # the flags as train-section overrides, on top of the recipe and KEY=VALUE arguments
    args.overrides = list(args.overrides) + ([] if progress(args) else ["train.progress=false"])
    if args.threads is not None:
        args.overrides.append(f"train.threads={args.threads}")
    result = run_training(recipe(args), resume=args.resume)
    if result.rank == 0:  # under torchrun every rank returns here
        print(f"model: {result.model_dir}")
    return 0


def add_train(commands: Commands) -> None:
    p = commands.add(
        "train", cmd_train, "train a dual encoder from a recipe",
        "Train from a YAML recipe; SECTION.KEY=VALUE arguments override it. The run folder gets "
        "checkpoints, metrics, bad_rows.json, the model before training (init/, the baseline) "
        "and the trained model/. train.epochs=0 takes no step: model/ is then the initial model.",
        ["eclip train --config demo --catalog my.csv --image-root imgs "
         "data.column_map.title=item_name train.epochs=3",
         "eclip train --catalog my.csv --output-dir runs/base train.epochs=0 "
         "data.column_map.title=item_name",
         "eclip train --init-from my_clip --catalog my.csv --output-dir runs/shop "
         "data.column_map.title=item_name",
         "torchrun --nproc_per_node 2 -m eclip train --config demo_ddp data.shards=shards"],
        parents=(commands.catalog, commands.quiet, commands.threads, commands.overrides))
    p.add_argument("--output-dir", metavar="DIR", help="run folder (= train.output_dir)")
    p.add_argument("--init-from", metavar="DIR",
                   help="start from a transformers CLIPModel, SiglipModel or "
                        "VisionTextDualEncoderModel directory, or an open_clip ViT CLIP folder "
                        "(= model.init_from)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")


def cmd_export(args: argparse.Namespace) -> int:
    from eclip.model import load_model
    from eclip.model.export import export_model

    out = export_model(load_model(args.model), args.out, format=args.format)
    print(f"wrote {out} ({args.format})")
    return 0


def add_export(commands: Commands) -> None:
    p = commands.add(
        "export", cmd_export,
        "write a model as a transformers, sentence-transformers or open_clip directory, or ONNX "
        "graphs",
        "Hand a model back in a format other tools load without eclip: a model started from a "
        "CLIP (SigLIP) checkpoint becomes a CLIPModel (SiglipModel) directory with its "
        "processor, one with transformers towers a VisionTextDualEncoderModel; a "
        "CLIP-architecture model also an open_clip folder (open_clip_config.json). The export is "
        "checked against eclip's vectors before anything is written; one that cannot reproduce "
        "them is refused, with the reason.",
        ["eclip export --model runs/shop/model --format transformers --out shop_clip",
         "eclip export --model runs/shop/model --format sentence-transformers --out shop_st",
         "eclip export --model runs/shop/model --format onnx --out shop_onnx",
         "eclip export --model runs/shop/model --format open_clip --out shop_open_clip"],
        parents=(commands.quiet,))
    p.add_argument("--model", required=True, metavar="DIR", help="model directory")
    p.add_argument("--format", choices=Library("eclip.model.export:FORMATS"), metavar="FORMAT",
                   default=Library("eclip.model.export:export_model", "format"),
                   help="one of %(choices)s (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")


def cmd_merge(args: argparse.Namespace) -> int:
    from eclip.model.merge import merge_models

    merged = merge_models(args.init, args.model, args.alpha)
    print(f"wrote {merged.save_pretrained(args.out)} "
          f"((1 - {args.alpha}) * {args.init} + {args.alpha} * {args.model})")
    return 0


def add_merge(commands: Commands) -> None:
    p = commands.add(
        "merge", cmd_merge,
        "interpolate two models' weights (WiSE-FT): (1 - alpha) * init + alpha * model",
        "Weight-space ensembling of a fine-tuned model with the model it started from (WiSE-FT): "
        "theta = (1 - alpha) * theta_init + alpha * theta_model. alpha 0 is the start, 1 the "
        "fine-tuned model; in between keeps more of the start's zero-shot strength.",
        ["eclip merge --init my_clip --model runs/shop/model --alpha 0.5 --out shop_wise",
         "eclip merge --init runs/shop/init --model runs/shop/model --alpha 0.7 --out shop_wise"],
        parents=(commands.quiet,))
    p.add_argument("--init", required=True, metavar="DIR",
                   help="the model training started from (an eclip model directory or the "
                        "transformers checkpoint)")
    p.add_argument("--model", required=True, metavar="DIR", help="the fine-tuned model")
    p.add_argument("--alpha", type=float, required=True,
                   help="weight of the fine-tuned model, in [0, 1]")
    p.add_argument("--out", required=True, metavar="DIR", help="output model directory")
