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
    print(f"model: {result.model_dir}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from eclip.model import DualEncoder
    from eclip.tasks.embed import embed_listings, write_embeddings
    from eclip.train.recipe import load_recipe
    from eclip.train.run import load_catalog

    recipe = load_recipe(_recipe_path(args.config) if args.config else None, _data_overrides(args))
    model = DualEncoder.from_pretrained(args.model)
    read = load_catalog(recipe)
    print(read.summary())
    out = Path(args.out)
    if read.issues:
        report = out.with_name(out.stem + ".bad_rows.json")
        read.write_report(report)
        print(f"bad-row report: {report}")
    emb = embed_listings(model, read.listings, batch_size=args.batch_size)
    write_embeddings(emb, out, read.listings)
    print(f"wrote {len(emb.product_ids)} embeddings to {out}")
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
