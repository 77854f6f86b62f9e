"""The ``eclip`` command: parse arguments, call the library, print. No logic of its own."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eclip import __version__
from eclip.errors import EclipError

EPILOG = """examples:
  eclip demo --out demo_out
  eclip make-demo-catalog --out data/demo --listings 500 --seed 1
  eclip train --config configs/demo.yaml --catalog my.csv --image-root imgs \\
      data.column_map.title=item_name train.epochs=3
  eclip embed --model runs/eclip/model --catalog my.csv --image-root imgs \\
      --out embeddings.parquet data.column_map.title=item_name
  eclip eval --models eclip=demo_out/models/eclip baseline=demo_out/models/baseline \\
      --catalog my.csv --out eval_out data.column_map.title=item_name
  eclip prepare --catalog my.csv --image-root imgs --out shards --shard-size 1000 \\
      data.column_map.title=item_name
"""


def _recipe_path(value: str) -> Path:
    """A recipe file, or the name of one that ships with eclip (e.g. ``demo``)."""
    path = Path(value)
    if path.is_file():
        return path
    from eclip.demo import bundled_recipe

    bundled = bundled_recipe(value)
    if bundled.is_file():
        return bundled
    raise EclipError(f"recipe {value} not found (neither a file nor a bundled recipe name)")


def cmd_make_demo_catalog(args: argparse.Namespace) -> int:
    from eclip.catalog.demo import make_demo_catalog

    path = make_demo_catalog(args.out, n_listings=args.listings, seed=args.seed,
                             image_size=args.image_size, progress=not args.quiet)
    print(f"wrote {path}")
    return 0


def _data_overrides(args: argparse.Namespace) -> list[str]:
    """Command-line flags as recipe overrides (flags win over KEY=VALUE arguments)."""
    overrides = list(args.overrides)
    for flag, key in (("catalog", "data.catalog"), ("image_root", "data.image_root"),
                      ("output_dir", "train.output_dir")):
        if getattr(args, flag, None):
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.strict:
        overrides.append("data.strict=true")
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from eclip.train.recipe import load_recipe
    from eclip.train.run import run_training

    recipe = load_recipe(_recipe_path(args.config) if args.config else None, _data_overrides(args))
    result = run_training(recipe, resume=args.resume)
    if result.rank == 0:  # under torchrun every rank returns here
        print(f"model: {result.model_dir}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from eclip.catalog.load import load_catalog
    from eclip.encode import embed_listings, write_embeddings
    from eclip.model import DualEncoder
    from eclip.train.recipe import load_recipe

    recipe = load_recipe(_recipe_path(args.config) if args.config else None, _data_overrides(args))
    model = DualEncoder.from_pretrained(args.model)
    out = Path(args.out)
    read = load_catalog(recipe.data, report_dir=out.parent)
    emb = embed_listings(model, read.listings, batch_size=args.batch_size)
    write_embeddings(emb, out, read.listings)
    print(f"wrote {len(emb.product_ids)} embeddings to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from eclip.tasks.suite import load_eval_recipe, parse_model_specs, run_eval

    # KEY=VALUE overrides written right after --models land in it: move them back.
    is_override = [m.partition("=")[0].startswith(("data.", "eval.")) for m in args.models]
    args.overrides = ([m for m, o in zip(args.models, is_override) if o] + list(args.overrides))
    specs = [m for m, o in zip(args.models, is_override) if not o]
    recipe = load_eval_recipe(_recipe_path(args.config or "eval"), _data_overrides(args))
    result = run_eval(parse_model_specs(specs), recipe, args.out, progress=not args.quiet)
    print(result.report.summary_markdown())
    out = Path(args.out)
    written = [out / "report.md", out / "report.json"]
    if recipe.eval.plots:
        written.append(out / "report.html")
    print(f"eval finished in {result.seconds['total']:.0f} s: " + ", ".join(map(str, written)))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from eclip.catalog.compose import ComposerConfig
    from eclip.catalog.load import load_catalog
    from eclip.catalog.load import BAD_ROWS_FILE
    from eclip.catalog.shards import ShardIndex, prepare_shards
    from eclip.catalog.splits import split_listings
    from eclip.train.recipe import load_recipe

    recipe = load_recipe(_recipe_path(args.config) if args.config else None, _data_overrides(args))
    data = recipe.data
    out = Path(args.out)
    # Images are not checked while reading: preparing decodes every one of them anyway.
    read = load_catalog(data, check_images=False, progress=not args.quiet)
    if not any(x.split for x in read.listings):
        splits = split_listings(read.listings, data)
        read = replace(read, listings=[replace(x, split=data.train_split) for x in splits.train]
                       + [replace(x, split=data.val_split) for x in splits.val])
        print(f"no split column: {len(splits.val)} listings held out by catalog as "
              f"'{data.val_split}' (data.val_fraction={data.val_fraction})")
    index_path = prepare_shards(read, out, shard_size=args.shard_size, image_size=args.image_size,
                                composer_config=ComposerConfig.from_dict(data.text),
                                progress=not args.quiet)
    if read.issues:
        read.write_report(out / BAD_ROWS_FILE)
        print(f"bad-row report: {out / BAD_ROWS_FILE}")
    index = ShardIndex.load(out)
    skipped = index.data["skipped"]
    splits_text = ", ".join(f"{n} {name or 'without split'}" for name, n in index.splits.items())
    print(f"wrote {index.data['samples']} samples ({splits_text}) in {len(index.shards)} shards; "
          f"{skipped['undecodable_images']} undecodable images dropped, "
          f"{skipped['listings_without_images']} listings without a usable image skipped "
          f"(details: {index_path})")
    return 0


def _product_ids(value: str) -> list[str]:
    """``p1,p2,p3`` or ``@FILE`` (one product id per line; blank lines and # comments skipped)."""
    if value.startswith("@"):
        try:
            lines = Path(value[1:]).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise EclipError(f"cannot read product ids from {value[1:]}: {exc}") from None
        ids = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    else:
        ids = [part.strip() for part in value.split(",") if part.strip()]
    if not ids:
        raise EclipError(f"--delete {value!r} names no product id")
    return ids


def cmd_index(args: argparse.Namespace) -> int:
    from eclip.catalog.load import BAD_ROWS_FILE, load_catalog
    from eclip.search import VectorSettings, build_index, delete_from_index, update_index
    from eclip.train.recipe import load_recipe

    if args.delete:
        if args.catalog or args.update:
            raise EclipError("--delete removes listings by id: give it without --catalog/--update")
        info = delete_from_index(args.out, _product_ids(args.delete))
        print(info.summary())
        return 0
    if not args.catalog:
        raise EclipError("--catalog FILE is required (or --delete IDS to remove listings)")
    if not args.update and not args.model:
        raise EclipError("--model DIR is required to build an index (--update uses the index's "
                         "own model)")
    recipe = load_recipe(_recipe_path(args.config) if args.config else None, _data_overrides(args))
    out = Path(args.out)
    read = load_catalog(recipe.data, progress=not args.quiet)
    if args.update:
        info = update_index(out, read.listings, model_dir=args.model, batch_size=args.batch_size,
                            progress=not args.quiet)
    else:
        settings = VectorSettings(kind=args.kind, exact_max=args.exact_max,
                                  target_recall=args.target_recall)
        info = build_index(args.model, read.listings, out, settings=settings,
                           thumbnail_size=args.thumbnail_size, batch_size=args.batch_size,
                           progress=not args.quiet)
    print(info.summary())
    if read.issues:  # beside the generations, after the index is written
        read.write_report(out / BAD_ROWS_FILE)
        print(f"bad-row report: {out / BAD_ROWS_FILE}")
    print(f"serve it with: eclip serve --index {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from eclip.search.api import create_app

    app = create_app(args.index, max_upload_bytes=args.max_upload_mb * 1024 * 1024,
                     threads_per_request=args.threads_per_request)
    print(f"serving {args.index} on http://{args.host}:{args.port} (API schema: /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from eclip.demo import run_demo

    result = run_demo(args.out, listings=args.listings, seed=args.seed, overrides=args.overrides,
                      progress=not args.quiet)
    print(f"\ndemo finished in {result.seconds:.0f} s: {result.out_dir / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eclip", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Catalog-aware vision-language pretraining for e-commerce listings (e-CLIP).")
    parser.add_argument("--version", action="version", version=f"eclip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="generate the demo catalog, train baseline/clip/eclip, report",
                       description="End to end on the generated demo catalog, on the CPU.")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--listings", type=int, default=3000, help="demo catalog size (default: 3000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe overrides for the demo recipe, e.g. train.epochs=3")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("make-demo-catalog", help="write the simulated marketplace catalog",
                       description="Write listings.jsonl and images/ of a simulated marketplace.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--listings", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_make_demo_catalog)

    p = sub.add_parser("train", help="train a dual encoder from a recipe",
                       description="Train from a YAML recipe; KEY=VALUE arguments override it.")
    p.add_argument("--config", help="recipe file, or a bundled recipe name such as 'demo'")
    p.add_argument("--catalog", help="catalog file (JSONL, CSV, TSV or Parquet)")
    p.add_argument("--image-root", help="folder that image paths are relative to")
    p.add_argument("--output-dir", help="run folder (checkpoints, metrics, model)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("embed", help="embed a catalog with a trained model into Parquet",
                       description="Image, text and fused vectors for every listing.")
    p.add_argument("--model", required=True, help="model directory (config.json, model.safetensors)")
    p.add_argument("--catalog", required=True)
    p.add_argument("--image-root")
    p.add_argument("--config", help="recipe whose data section (column_map, ...) reads the catalog")
    p.add_argument("--out", required=True, help="output .parquet file")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--strict", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="e.g. data.column_map.title=item_name")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser(
        "eval", help="the five e-commerce tasks for several models, against baselines",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Embed a catalog once per model and run category classification, attribute "
                    "extraction, product matching, product clustering and adult recognition "
                    "(image / text / both) on its test split; write report.json, report.md and "
                    "report.html. Tasks whose labels the catalog lacks are skipped and named.",
        epilog="example:\n"
               "  eclip eval --models eclip=demo_out/models/eclip clip=demo_out/models/clip \\\n"
               "      baseline=demo_out/models/baseline --catalog my.csv --image-root imgs \\\n"
               "      --out eval_out data.column_map.title=item_name eval.seeds=5")
    p.add_argument("--models", nargs="+", required=True, metavar="NAME=MODEL_DIR",
                   help="models to compare; those named in eval.tower_features (default: "
                        "baseline) are read as their towers' features")
    p.add_argument("--catalog", required=True, help="catalog file (JSONL, CSV, TSV or Parquet)")
    p.add_argument("--image-root", help="folder that image paths are relative to")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--config", help="eval recipe (default: the bundled 'eval'); a training recipe "
                                    "also works, for its data section")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="data/eval overrides, e.g. data.column_map.title=item_name eval.seeds=5")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("prepare", help="write a catalog as tar shards for streaming training",
                       description="Validate a catalog and write WebDataset-layout tar shards "
                                   "(pre-resized JPEGs, composed text, catalog ids) and "
                                   "index.json.")
    p.add_argument("--catalog", required=True, help="catalog file (JSONL, CSV, TSV or Parquet)")
    p.add_argument("--out", required=True, help="shard folder")
    p.add_argument("--shard-size", type=int, default=1000,
                   help="listings per shard (default: 1000)")
    p.add_argument("--image-root", help="folder that image paths are relative to")
    p.add_argument("--image-size", type=int, default=256,
                   help="shorter side of the stored images in pixels; smaller ones are kept "
                        "(default: 256)")
    p.add_argument("--config", help="recipe whose data section (column_map, text, splits) applies")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="data overrides, e.g. data.column_map.title=item_name")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "index", help="build or update a search index of a catalog",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Embed listings and store vectors (FAISS), metadata (SQLite), thumbnails and "
                    "the model in INDEX_DIR; every write is a new generation swapped in "
                    "atomically.",
        epilog="examples:\n"
               "  eclip index --model demo_out/models/eclip --catalog demo_out/catalog/listings.jsonl"
               " --out shop_index\n"
               "  eclip index --update --catalog new_or_changed.jsonl --out shop_index\n"
               "  eclip index --delete p000001,p000007 --out shop_index\n"
               "  eclip index --delete @sold_out.txt --out shop_index")
    p.add_argument("--out", required=True, metavar="INDEX_DIR", help="index folder")
    p.add_argument("--model", help="model directory (required to build; with --update it must be "
                                   "the index's model)")
    p.add_argument("--catalog", help="catalog file (JSONL, CSV, TSV or Parquet)")
    p.add_argument("--image-root", help="folder that image paths are relative to")
    p.add_argument("--config", help="recipe whose data section (column_map, ...) reads the catalog")
    p.add_argument("--update", action="store_true",
                   help="add the catalog's listings to the index, replacing those with the same "
                        "product_id (only they are embedded)")
    p.add_argument("--delete", metavar="IDS",
                   help="remove listings: comma-separated product ids, or @FILE with one per line")
    p.add_argument("--kind", choices=("auto", "exact", "ivf"), default="auto",
                   help="vector index: exact search, IVF, or auto (exact up to --exact-max "
                        "listings, IVF above; default)")
    p.add_argument("--exact-max", type=int, default=200_000,
                   help="largest index searched exactly with --kind auto (default: 200000)")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="IVF: recall@10 against exact search that nprobe is tuned to reach "
                        "(default: 0.95)")
    p.add_argument("--thumbnail-size", type=int, default=256,
                   help="longest side of the photos stored in the index (default: 256)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--strict", action="store_true", help="stop at the first bad row")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="data overrides, e.g. data.column_map.title=item_name")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("serve", help="serve a search index: JSON API and web page",
                       description="Search by text or photo, similar listings, classification; "
                                   "the web page is at /, the API schema at /docs.")
    p.add_argument("--index", required=True, metavar="INDEX_DIR", help="index folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=int, default=8,
                   help="largest photo accepted, in MiB (default: 8)")
    p.add_argument("--threads-per-request", type=int, default=1,
                   help="torch and FAISS threads per query; requests run in parallel "
                        "(default: 1)")
    p.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EclipError as exc:
        print(f"eclip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
