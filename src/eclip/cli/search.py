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
    from eclip.search.catalog_index import index_catalog
    from eclip.search.compressed import parse_bytes
    from eclip.search.vectors import VectorSettings

    settings = VectorSettings(kind=args.kind, exact_max=args.exact_max,
                              target_recall=args.target_recall,
                              max_memory=parse_bytes(args.max_memory) if args.max_memory else None,
                              vector_dtype=args.vector_dtype, store_fused=args.fused_vectors)
    data = _recipe(args).data if args.catalog else None
    if data is not None:
        _threads(args)
    done = index_catalog(
        args.out, data=data, model=args.model, embeddings=args.embeddings, update=args.update,
        delete=_product_ids(args.delete) if args.delete else None, split=args.split,
        settings=settings, store=args.store, uri=args.uri, collection=args.collection,
        thumbnails=args.thumbnails, thumbnail_size=args.thumbnail_size,
        batch_size=args.batch_size, onnx=args.onnx, progress=_progress(args))
    print(done.summary)
    if done.onnx_dir is not None:
        print(f"ONNX query encoder: {done.onnx_dir}")
    if done.bad_rows is not None:
        print(f"bad-row report: {done.bad_rows}")
    if not args.delete:
        print(f"serve it with: eclip serve --index {args.out}")
    return 0


def _add_vector_options(p: argparse.ArgumentParser, settings: str) -> None:
    """``eclip index``'s vector index options: the kind, its memory and recall, the stored rows."""
    p.add_argument("--kind", choices=Library("eclip.search.vectors:KINDS"), metavar="KIND",
                   default=Library(settings, "kind"),
                   help="vector index, one of %(choices)s: exact (flat) search, IVF, HNSW, IVF of "
                        "fp16 / 8-bit / 4-bit vectors, OPQ+IVF-PQ (4-bit and PQ re-ranked "
                        "exactly), DiskANN (Milvus servers only), or auto: exact up to "
                        "--exact-max listings, IVF above, or with --max-memory the most exact "
                        "kind per space that fits (default: %(default)s)")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="memory for the three vector indexes (image, text, both), e.g. 12GiB: "
                        "--kind auto compresses the spaces in turn, the largest first, until the "
                        "three fit (default: no limit)")
    p.add_argument("--exact-max", type=int, default=Library(settings, "exact_max"),
                   help="largest index searched exactly with --kind auto (default: %(default)s)")
    p.add_argument("--target-recall", type=float, default=Library(settings, "target_recall"),
                   help="approximate kinds: recall@10 against exact search that nprobe (efSearch) "
                        "is tuned to reach "
                        "(default: %(default)s)")
    p.add_argument("--vector-dtype", choices=("float32", "float16"),
                   default=Library(settings, "vector_dtype"),
                   help="the vectors kept on disk beside the indexes (the source of re-ranking, "
                        "small filters, updates and rebuilds): float16 halves them "
                        "(default: %(default)s)")
    p.add_argument("--fused-vectors", action=argparse.BooleanOptionalAction,
                   default=Library(settings, "store_fused"),
                   help="store the fused (both) vectors; without, they are computed from the "
                        "image and text vectors when read: half the disk of the three "
                        "(default: %(default)s)")


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
    _add_vector_options(p, settings)
    group = p.add_argument_group("vector store")
    group.add_argument("--store", choices=Library("eclip.search.store_types:STORE_KINDS"),
                       metavar="STORE",
                       default=Library("eclip.search.store_types:StoreSpec", "kind"),
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
