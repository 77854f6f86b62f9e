"""The search commands: ``index`` and ``serve`` (their logic is the search package's to take over:
``eclip.search`` owns what they do)."""

from __future__ import annotations

import argparse
from pathlib import Path

from eclip.cli.options import Commands, Library
from eclip.cli.options import progress as _progress
from eclip.cli.options import recipe as _recipe
from eclip.cli.options import threads as _threads
from eclip.errors import EclipError


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
    from eclip.catalog.splits import held_out_warning, only_splits
    from eclip.search import VectorSettings, build_index, delete_from_index, update_index
    from eclip.search.index import index_store
    from eclip.search.stores import StoreSpec

    if args.delete or args.update:  # a write to an index keeps its store
        if args.uri or args.collection:
            raise EclipError("--uri and --collection choose the store of a new index; --update "
                             "and --delete write to the index's own store")
        if args.store != StoreSpec.kind and args.store != index_store(args.out).kind:
            raise EclipError(f"{args.out} keeps its vectors in {index_store(args.out).kind}, not "
                             f"{args.store}: rebuild it (without --update) to change the store")
    if args.delete:
        if args.catalog or args.update or args.embeddings:
            raise EclipError("--delete removes listings by id: give it without "
                             "--catalog/--update/--embeddings")
        info = delete_from_index(args.out, _product_ids(args.delete))
        print(info.summary())
        return 0
    if not args.catalog:
        raise EclipError("--catalog FILE is required (or --delete IDS to remove listings)")
    if not args.update and not args.model:
        raise EclipError("--model DIR is required to build an index (--update uses the index's "
                         "own model); with --embeddings, the model that made the vectors")
    recipe = _recipe(args)
    _threads(args)
    out = Path(args.out)
    read = load_catalog(recipe.data, progress=_progress(args))
    listings = read.listings
    if args.split:
        listings = only_splits(listings, args.split)
        print(f"indexing the {len(listings)} listings of split {', '.join(args.split)} "
              f"(of {len(read.listings)})")
    warning = held_out_warning(listings)
    if warning:
        print(warning)
    if args.embeddings:  # stored vectors: no model runs
        from eclip.search.build import index_from_embeddings

        info = index_from_embeddings(
            out, args.embeddings, listings, model_dir=args.model, update=args.update,
            settings=VectorSettings(kind=args.kind, exact_max=args.exact_max,
                                    target_recall=args.target_recall),
            store=StoreSpec(args.store, args.uri, args.collection), thumbnails=args.thumbnails,
            thumbnail_size=args.thumbnail_size, progress=_progress(args))
    elif args.update:
        if not args.thumbnails:
            raise EclipError("--no-thumbnails applies to builds and to --embeddings writes")
        info = update_index(out, listings, model_dir=args.model, batch_size=args.batch_size,
                            progress=_progress(args))
    else:
        settings = VectorSettings(kind=args.kind, exact_max=args.exact_max,
                                  target_recall=args.target_recall)
        store = StoreSpec(args.store, args.uri, args.collection)
        info = build_index(args.model, listings, out, settings=settings,
                           thumbnail_size=args.thumbnail_size, batch_size=args.batch_size,
                           progress=_progress(args), store=store,
                           thumbnails=args.thumbnails)
    print(info.summary())
    if args.onnx:
        from eclip.search.onnx_query import write_index_onnx

        print(f"ONNX query encoder: {write_index_onnx(out)}")
    if read.issues:  # beside the generations, after the index is written
        read.write_report(out / BAD_ROWS_FILE)
        print(f"bad-row report: {out / BAD_ROWS_FILE}")
    print(f"serve it with: eclip serve --index {out}")
    return 0


def add_index(commands: Commands) -> None:
    settings, build = "eclip.search.vectors:VectorSettings", "eclip.search.index:build_index"
    p = commands.add(
        "index", cmd_index, "build or update a search index of a catalog",
        "Embed listings and store vectors (FAISS, or Milvus with --store milvus), metadata "
        "(SQLite), thumbnails and the model in INDEX_DIR; every write is a new generation "
        "swapped in atomically.",
        ["eclip index --model demo_out/models/eclip --catalog demo_out/catalog/listings.jsonl "
         "--out shop_index",
         "eclip index --update --catalog new_or_changed.jsonl --out shop_index",
         "eclip index --delete p000001,p000007 --out shop_index",
         "eclip index --embeddings embeddings_parts --model runs/shop/model --catalog my.csv "
         "--no-thumbnails --out shop_index",
         "eclip index --delete @sold_out.txt --out shop_index",
         "eclip index --model runs/shop/model --catalog my.csv --split train --out train_index",
         "eclip index --store milvus --model runs/shop/model --catalog my.csv --out shop_index",
         "eclip index --store milvus --uri http://milvus:19530 --model runs/shop/model "
         "--catalog my.csv --out shop_index"],
        parents=(commands.catalog, commands.quiet, commands.threads, commands.overrides))
    p.add_argument("--out", required=True, metavar="INDEX_DIR", help="index folder")
    p.add_argument("--model", metavar="DIR",
                   help="model directory (required to build; with --update it must be the "
                        "index's model)")
    p.add_argument("--update", action="store_true",
                   help="add the catalog's listings to the index, replacing those with the same "
                        "product_id (only they are embedded)")
    p.add_argument("--delete", metavar="IDS",
                   help="remove listings: comma-separated product ids, or @FILE with one per line")
    p.add_argument("--embeddings", metavar="PATH",
                   help="index the vectors `eclip embed` wrote (a .parquet file, or the folder "
                        "of parts of --engine ray) instead of embedding: no model runs; the "
                        "catalog supplies the metadata; vectors of another model than --model "
                        "(or, with --update, the index's) are refused")
    p.add_argument("--thumbnails", action=argparse.BooleanOptionalAction, default=True,
                   help="copy the listings' photos into the index as thumbnails; without them "
                        "the index serves results without pictures (default: %(default)s)")
    p.add_argument("--split", nargs="+", metavar="NAME",
                   help="index only the listings of these splits (the catalog's split column), "
                        "e.g. train: an index that holds the test listings answers for them")
    p.add_argument("--kind", choices=Library("eclip.search.vectors:KINDS"), metavar="KIND",
                   default=Library(settings, "kind"),
                   help="vector index, one of %(choices)s: exact search, IVF, or auto (exact up "
                        "to --exact-max listings, IVF above) (default: %(default)s)")
    p.add_argument("--exact-max", type=int, default=Library(settings, "exact_max"),
                   help="largest index searched exactly with --kind auto (default: %(default)s)")
    p.add_argument("--target-recall", type=float, default=Library(settings, "target_recall"),
                   help="IVF: recall@10 against exact search that nprobe is tuned to reach "
                        "(default: %(default)s)")
    group = p.add_argument_group("vector store")
    group.add_argument("--store", choices=Library("eclip.search.stores:STORE_KINDS"),
                       metavar="STORE", default=Library("eclip.search.stores:StoreSpec", "kind"),
                       help="where the vectors are searched, one of %(choices)s: FAISS files in "
                            "the index folder, or a Milvus collection per generation behind an "
                            "alias; --update/--delete keep the index's store "
                            "(default: %(default)s)")
    group.add_argument("--uri", metavar="URI",
                       help="milvus: a local FILE.db is Milvus Lite (one process at a time), "
                            "http://HOST:19530 a Milvus server or cluster (token: environment "
                            "variable ECLIP_MILVUS_TOKEN) (default: milvus.db in the index folder)")
    group.add_argument("--collection", metavar="NAME",
                       help="milvus: the alias readers follow; generations fill NAME_gNNNNNN "
                            "(default: eclip_ and a digest of the index folder's path)")
    p.add_argument("--thumbnail-size", type=int, default=Library(build, "thumbnail_size"),
                   help="longest side of the photos stored in the index (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=Library(build, "batch_size"),
                   help="listings per forward pass (default: %(default)s)")
    p.add_argument("--onnx", action="store_true",
                   help="also write the model's towers as ONNX graphs into the index: eclip serve "
                        "then encodes queries with ONNX Runtime (needs pip install 'eclip[onnx]')")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from eclip.search.api import create_app

    app = create_app(args.index, max_upload_bytes=args.max_upload_mb * 1024 * 1024,
                     threads_per_request=args.threads_per_request, onnx=args.onnx)
    print(f"query encoder: {app.state.query_encoder}")
    print(f"serving {args.index} on http://{args.host}:{args.port} (API schema: /docs)")
    # --quiet: no request log, unless a level was asked for
    log_level = args.log_level or ("warning" if args.quiet else "info")
    uvicorn.run(app, host=args.host, port=args.port, log_level=log_level,
                timeout_graceful_shutdown=5)
    return 0


def add_serve(commands: Commands) -> None:
    p = commands.add("serve", cmd_serve, "serve a search index: JSON API and web page",
                     "Search by text or photo, similar listings, classification; the web page is "
                     "at /, the API schema at /docs.",
                     ["eclip serve --index shop_index",
                      "eclip serve --index shop_index --host 0.0.0.0 --port 8080"],
                     parents=(commands.quiet,))
    p.add_argument("--index", required=True, metavar="INDEX_DIR", help="index folder")
    p.add_argument("--host", default=Library("uvicorn:Config", "host"),
                   help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=Library("uvicorn:Config", "port"),
                   help="(default: %(default)s)")
    p.add_argument("--max-upload-mb", type=int,
                   default=Library("eclip.search.api:create_app", "max_upload_bytes",
                                   lambda n: n // (1024 * 1024)),
                   help="largest photo accepted, in MiB (default: %(default)s)")
    p.add_argument("--threads-per-request", type=int, default=1,
                   help="torch and FAISS threads per query; requests run in parallel "
                        "(default: %(default)s)")
    p.add_argument("--onnx", action="store_true",
                   help="export the index's model to ONNX on start unless the index holds it; "
                        "queries are encoded by ONNX Runtime whenever the index holds it, by "
                        "PyTorch otherwise (needs pip install 'eclip[onnx]')")
    p.add_argument("--log-level", default=None,
                   choices=("critical", "error", "warning", "info", "debug"),
                   help="(default: info; warning with --quiet)")
