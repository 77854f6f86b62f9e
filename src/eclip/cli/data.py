"""The catalog commands: ``make-demo-catalog``, ``prepare``, ``embed``, ``mine-catalogs``."""

from __future__ import annotations

import argparse

from eclip.cli.options import Commands, Library, engine_options, progress, recipe, threads


def cmd_make_demo_catalog(args: argparse.Namespace) -> int:
    from eclip.catalog.demo import make_demo_catalog

    path = make_demo_catalog(args.out, n_listings=args.listings, seed=args.seed,
                             image_size=args.image_size, progress=progress(args))
    print(f"wrote {path}")
    return 0


def add_make_demo_catalog(commands: Commands) -> None:
    make_demo = "eclip.catalog.demo:make_demo_catalog"
    p = commands.add("make-demo-catalog", cmd_make_demo_catalog,
                     "write the simulated marketplace catalog",
                     "Write listings.jsonl and images/ of a simulated marketplace.",
                     ["eclip make-demo-catalog --out data/demo --listings 500 --seed 1"],
                     parents=(commands.quiet,))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--listings", type=int, default=Library(make_demo, "n_listings"),
                   help="number of listings (default: %(default)s)")
    p.add_argument("--seed", type=int, default=Library(make_demo, "seed"),
                   help="(default: %(default)s)")
    p.add_argument("--image-size", type=int, default=Library(make_demo, "image_size"),
                   help="photo side in pixels (default: %(default)s)")


def cmd_embed(args: argparse.Namespace) -> int:
    from eclip.engines.jobs import embed_catalog

    result = embed_catalog(args.model, recipe(args).data, args.out, engine=args.engine,
                           batch_size=args.batch_size, block_size=args.block_size,
                           threads=args.threads, address=args.ray_address,
                           dtype=args.dtype, fused=args.fused, progress=progress(args))
    print(result.summary())
    return 0


def add_embed(commands: Commands) -> None:
    p = commands.add(
        "embed", cmd_embed, "embed a catalog with a trained model into Parquet",
        "Image, text and fused vectors for every listing, in a Parquet file; bad_rows.json beside "
        "it. With --engine ray: a folder of Parquet parts and manifest.json "
        "(eclip.encode.listings.read_embeddings reads either), bad_rows.json in it.",
        ["eclip embed --model runs/shop/model --catalog my.csv --image-root imgs "
         "--out embeddings.parquet data.column_map.title=item_name",
         "eclip embed --engine ray --model runs/shop/model --catalog my.csv "
         "--out embeddings_parts",
         "eclip embed --engine ray --ray-address head:6379 --model "
         "/shared/model --catalog /shared/my.csv --out /shared/embeddings_parts"],
        parents=(commands.catalog, commands.quiet, commands.threads, commands.overrides))
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model directory (eclip's, or a transformers CLIP / SigLIP checkpoint)")
    p.add_argument("--out", required=True,
                   help="output .parquet file (--engine ray: output folder)")
    p.add_argument("--batch-size", type=int,
                   default=Library("eclip.encode.listings:embed_listings", "batch_size"),
                   help="listings per forward pass (default: %(default)s)")
    p.add_argument("--dtype", choices=Library("eclip.encode.listings:EMBED_DTYPES"),
                   metavar="TYPE", default=Library("eclip.engines.jobs:embed_catalog", "dtype"),
                   help="the stored vectors' type, %(choices)s: float16 halves the files, and "
                        "eclip index --embeddings reads either (default: %(default)s)")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction,
                   default=Library("eclip.engines.jobs:embed_catalog", "fused"),
                   help="store the fused vectors too; without, they are computed from the image "
                        "and text ones when read, a third less to store (default: %(default)s)")
    engine_options(p, "eclip.engines.embed:embed_with_ray", "blocks of listings embedded, "
                   "one Parquet part each,", note=" (--threads N: N torch threads per actor, "
                                                  "one actor per N CPUs; default 1)")


def cmd_prepare(args: argparse.Namespace) -> int:
    from eclip.engines.jobs import prepare_catalog

    result = prepare_catalog(recipe(args).data, args.out, engine=args.engine,
                             shard_size=args.shard_size, image_size=args.image_size,
                             block_size=args.block_size, address=args.ray_address,
                             progress=progress(args))
    print(result.summary())
    return 0


def add_prepare(commands: Commands) -> None:
    shards = "eclip.catalog.shards:prepare_shards"
    p = commands.add(
        "prepare", cmd_prepare, "write a catalog as tar shards for streaming training",
        "Validate a catalog and write WebDataset-layout tar shards (pre-resized JPEGs, composed "
        "text, catalog ids), index.json and bad_rows.json. Without a split column, "
        "data.val_fraction of the catalogs are held out as val.",
        ["eclip prepare --catalog my.csv --image-root imgs --out shards "
         "--shard-size 1000 data.column_map.title=item_name",
         "eclip prepare --engine ray --catalog my.csv --out shards",
         "eclip train --config demo_ddp data.shards=shards"],
        parents=(commands.catalog, commands.quiet, commands.overrides))
    p.add_argument("--out", required=True, help="shard folder")
    p.add_argument("--shard-size", type=int, default=Library(shards, "shard_size"),
                   help="listings per shard (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=Library(shards, "image_size"),
                   help="shorter side of the stored images in pixels; smaller ones are kept "
                        "(default: %(default)s)")
    engine_options(p, "eclip.engines.prepare:prepare_with_ray",
                   "the images decoded and re-encoded")


def cmd_mine_catalogs(args: argparse.Namespace) -> int:
    from eclip.mining import mine_catalog_file

    threads(args)
    mine_catalog_file(args.model, recipe(args).data, args.out, source=args.source,
                      progress=progress(args))
    return 0


def add_mine_catalogs(commands: Commands) -> None:
    p = commands.add(
        "mine-catalogs", cmd_mine_catalogs,
        "group the listings that are the same product, for a catalog without catalog ids",
        "Mine catalogs from a model's image and text vectors: mutual nearest neighbours inside "
        "each category whose photo and title similarities both pass thresholds taken from the "
        "data (no labels needed), in groups of at most data.mining.max_group_size listings. "
        "Writes the catalog with catalog_id and catalog_source (given / mined) columns, and "
        "OUT.mining.json / OUT.mining.html. Training does this itself with "
        "data.catalog_source=mined (or given+mined).",
        ["eclip mine-catalogs --model runs/shop/init --catalog shop.csv --image-root imgs "
         "--out shop_mined.jsonl",
         "eclip mine-catalogs --source given+mined --model runs/shop/model --catalog "
         "shop.csv --out shop_mined.jsonl data.mining.target_precision=0.97"],
        parents=(commands.catalog, commands.quiet, commands.threads, commands.overrides))
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model directory: the one a run starts from (OUTPUT_DIR/init) or a "
                        "trained one (eclip's, or a transformers CLIP / SigLIP checkpoint)")
    p.add_argument("--out", required=True, help="output catalog (.jsonl)")
    p.add_argument("--source", choices=("mined", "given+mined"),
                   help="mined: ignore the file's catalog ids (and score the groups against "
                        "them); given+mined: keep them, mine the rest, calibrate the thresholds "
                        "on them (default: data.catalog_source if given+mined, else mined)")
