"""The ``eclip`` command: parse arguments, call the library, print. No logic of its own.

Options that several commands share (the catalog and how to read it, recipe overrides, ``--quiet``,
``--threads``) are declared once, in parent parsers; every command takes ``--quiet``, and progress
bars are drawn only where stderr is a terminal (:func:`_progress`). Defaults are the library's own (a function's keyword default
or a dataclass field's), read when a command is parsed or its help printed, so that ``eclip
--help`` imports nothing heavy.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

from eclip import __version__
from eclip.errors import EclipError

EPILOG = """examples:
  eclip demo --out demo_out
  eclip make-demo-catalog --out data/demo --listings 500 --seed 1
  eclip train --config configs/demo.yaml --catalog my.csv --image-root imgs \\
      data.column_map.title=item_name train.epochs=3
  eclip train --init-from my_clip --catalog my.csv --output-dir runs/shop \\
      data.column_map.title=item_name
  eclip embed --model runs/eclip/model --catalog my.csv --image-root imgs \\
      --out embeddings.parquet data.column_map.title=item_name
  eclip eval --models init=my_clip eclip=runs/shop/model \\
      --catalog my.csv --out eval_out data.column_map.title=item_name
  eclip export --model runs/shop/model --format transformers --out shop_clip
  eclip merge --init my_clip --model runs/shop/model --alpha 0.5 --out shop_wise
  eclip prepare --catalog my.csv --image-root imgs --out shards --shard-size 1000 \\
      data.column_map.title=item_name
  eclip index --model runs/shop/model --catalog my.csv --out shop_index
  eclip serve --index shop_index

eclip COMMAND --help describes a command and its options.
"""


class Library:
    """A value the library defines: ``Library("pkg.mod:func", "param")`` is the default of ``func``'s
    keyword ``param`` (or of a dataclass's field); ``Library("pkg.mod:NAME")`` is ``NAME`` itself.
    Read only when the command that uses it is parsed or its help shown."""

    def __init__(self, target: str, param: str | None = None,
                 convert: Callable[[Any], Any] | None = None):
        self.target, self.param, self.convert = target, param, convert

    def value(self) -> Any:
        module, _, name = self.target.partition(":")
        value = getattr(importlib.import_module(module), name)
        if self.param is not None:
            value = inspect.signature(value).parameters[self.param].default
        return self.convert(value) if self.convert else value


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose ``Library`` defaults and choices are read when first needed."""

    def _read_library_values(self) -> None:
        for action in self._actions:
            if isinstance(action.default, Library):
                action.default = action.default.value()
            if isinstance(action.choices, Library):
                action.choices = action.choices.value()

    def parse_known_args(self, args=None, namespace=None):
        self._read_library_values()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._read_library_values()
        return super().format_usage()

    def format_help(self) -> str:
        self._read_library_values()
        return super().format_help()


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


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars: on where stderr is a terminal, unless ``--quiet`` (a log file or a pipe gets
    none). The one place a command decides it."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _threads(args: argparse.Namespace) -> int:
    """torch threads for this command (``--threads``, else the CPU cores the process may use)."""
    from eclip.config import use_threads

    return use_threads(getattr(args, "threads", None))


def cmd_make_demo_catalog(args: argparse.Namespace) -> int:
    from eclip.catalog.demo import make_demo_catalog

    path = make_demo_catalog(args.out, n_listings=args.listings, seed=args.seed,
                             image_size=args.image_size, progress=_progress(args))
    print(f"wrote {path}")
    return 0


def _data_overrides(args: argparse.Namespace) -> list[str]:
    """Command-line flags as recipe overrides (flags win over KEY=VALUE arguments)."""
    overrides = list(args.overrides)
    for flag, key in (("catalog", "data.catalog"), ("image_root", "data.image_root"),
                      ("output_dir", "train.output_dir"), ("init_from", "model.init_from")):
        if getattr(args, flag, None):
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.strict:
        overrides.append("data.strict=true")
    return overrides


def _recipe(args: argparse.Namespace):
    """The training recipe of ``--config`` (or the defaults) with the flags and overrides on top."""
    from eclip.train.recipe import load_recipe

    return load_recipe(_recipe_path(args.config) if args.config else None, _data_overrides(args))


def cmd_train(args: argparse.Namespace) -> int:
    from eclip.train.run import run_training

    # the flags as train-section overrides, on top of the recipe and KEY=VALUE arguments
    args.overrides = list(args.overrides) + (["train.progress=false"] if not _progress(args)
                                             else [])
    if args.threads is not None:
        args.overrides.append(f"train.threads={args.threads}")
    recipe = _recipe(args)
    result = run_training(recipe, resume=args.resume)
    if result.rank == 0:  # under torchrun every rank returns here
        print(f"model: {result.model_dir}")
    return 0


def _on_ray(args: argparse.Namespace) -> bool:
    """Whether ``--engine ray`` was chosen (``--ray-address`` alone is a mistake, said so)."""
    if args.ray_address and args.engine != "ray":
        raise EclipError("--ray-address joins a Ray cluster: give it with --engine ray")
    if args.engine == "ray":  # before the catalog is read: a missing extra, a wrong address
        from eclip.engines.ray_session import check_reachable, require_ray

        require_ray()
        if args.ray_address:
            check_reachable(args.ray_address)
    return args.engine == "ray"


def _engine_options(p: argparse.ArgumentParser, engine: str, work: str, note: str = "") -> None:
    """``--engine``, ``--ray-address`` and ``--block-size`` of a batch command (embed, prepare);
    ``engine`` is its Ray engine function (where the block size's default is read)."""
    group = p.add_argument_group("engine")
    group.add_argument("--engine", default=Library("eclip.engines:DEFAULT_ENGINE"),
                       choices=Library("eclip.engines:ENGINES"),
                       help=f"local: this process; ray: {work} on a pool of Ray actors, one per "
                            f"CPU{note} (pip install 'eclip[ray]') (default: %(default)s)")
    group.add_argument("--ray-address", metavar="ADDRESS",
                       help="a running Ray cluster: its head's HOST:PORT (e.g. head:6379), or "
                            "auto on a node of the cluster (ray job submit); without it --engine "
                            "ray starts a local Ray on this machine's cores")
    group.add_argument("--block-size", type=int, metavar="N",
                       default=Library(engine, "block_size"),
                       help="--engine ray: listings per block, the unit an actor takes (and "
                            "retries when it dies) (default: %(default)s)")


def cmd_embed(args: argparse.Namespace) -> int:
    from eclip.catalog.load import load_catalog
    from eclip.encode import embed_listings, write_embeddings
    from eclip.encode.identity import model_sha256
    from eclip.model import DualEncoder

    on_ray = _on_ray(args)
    recipe = _recipe(args)
    out = Path(args.out)
    if on_ray:  # a folder of Parquet parts, bad_rows.json inside it
        from eclip.engines.embed import embed_with_ray

        read = load_catalog(recipe.data, report_dir=out, progress=_progress(args))
        manifest = embed_with_ray(args.model, read.listings, out, batch_size=args.batch_size,
                                  block_size=args.block_size, threads_per_worker=args.threads or 1,
                                  address=args.ray_address, progress=_progress(args))
        print(f"wrote {len(read.listings)} embeddings to {out} (parts listed in {manifest.name})")
        return 0
    _threads(args)
    model = DualEncoder.from_pretrained(args.model)
    read = load_catalog(recipe.data, report_dir=out.parent, progress=_progress(args))
    emb = embed_listings(model, read.listings, batch_size=args.batch_size,
                         progress=_progress(args))
    write_embeddings(emb, out, read.listings, model_sha256=model_sha256(args.model))
    print(f"wrote {len(emb.product_ids)} embeddings to {out}")
    return 0


def cmd_mine_catalogs(args: argparse.Namespace) -> int:
    from eclip.mining import mine_catalog_file

    _threads(args)
    recipe = _recipe(args)
    source = args.source or ("given+mined" if recipe.data.catalog_source == "given+mined"
                             else "mined")
    mine_catalog_file(args.model, recipe.data, args.out, source=source, progress=_progress(args))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from eclip.tasks.suite import load_eval_recipe, parse_model_specs, run_eval

    models, overrides = parse_model_specs(args.models)  # overrides may follow the models
    args.overrides = overrides + args.overrides
    if args.subject:
        args.overrides.append(f"eval.subject={args.subject}")
    recipe = load_eval_recipe(_recipe_path(args.config or "eval"), _data_overrides(args))
    _threads(args)
    result = run_eval(models, recipe, args.out, progress=_progress(args))
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
    from eclip.catalog.shards import ShardIndex, prepare_shards
    from eclip.catalog.splits import assign_splits

    on_ray = _on_ray(args)
    recipe = _recipe(args)
    data = recipe.data
    out = Path(args.out)
    # Images are not checked while reading: preparing decodes every one of them anyway.
    read = load_catalog(data, report_dir=out, check_images=False, progress=_progress(args))
    listings, message = assign_splits(read.listings, data)
    if message:
        print(message)
    write = prepare_shards
    engine: dict = {}
    if on_ray:  # the same shards, the images encoded on Ray
        from eclip.engines.prepare import prepare_with_ray as write

        engine = {"address": args.ray_address, "block_size": args.block_size}
    index_path = write(replace(read, listings=listings), out, shard_size=args.shard_size,
                       image_size=args.image_size,
                       composer_config=ComposerConfig.from_dict(data.text),
                       progress=_progress(args), **engine)
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
    from eclip.search.catalog_index import index_catalog
    from eclip.search.compressed import parse_bytes
    from eclip.search.vectors import VectorSettings

    settings = VectorSettings(kind=args.kind, exact_max=args.exact_max,
                              target_recall=args.target_recall,
                              max_memory=parse_bytes(args.max_memory) if args.max_memory else None)
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


def cmd_export(args: argparse.Namespace) -> int:
    from eclip.model import DualEncoder
    from eclip.model.export import export_model

    out = export_model(DualEncoder.from_pretrained(args.model), args.out, format=args.format)
    print(f"wrote {out} ({args.format})")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from eclip.model.merge import merge_models

    merged = merge_models(args.init, args.model, args.alpha)
    print(f"wrote {merged.save_pretrained(args.out)} "
          f"((1 - {args.alpha}) * {args.init} + {args.alpha} * {args.model})")
    return 0


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


def cmd_demo(args: argparse.Namespace) -> int:
    from eclip.demo import run_demo

    _threads(args)
    result = run_demo(args.out, listings=args.listings, seed=args.seed, seeds=args.seeds,
                      overrides=args.overrides, hide_catalog_ids=args.hide_catalog_ids,
                      progress=_progress(args))
    print(f"\ndemo finished in {result.seconds:.0f} s: {result.out_dir / 'report.md'}")
    return 0


def _shared_parsers() -> dict[str, argparse.ArgumentParser]:
    """The options several commands share, each declared once (argparse parent parsers)."""
    catalog = _Parser(add_help=False)
    group = catalog.add_argument_group("catalog and recipe")
    group.add_argument("--catalog", metavar="FILE",
                       help="catalog file (JSONL, JSON, CSV, TSV or Parquet); default: the "
                            "recipe's data.catalog")
    group.add_argument("--image-root", metavar="DIR",
                       help="folder that image paths are relative to (default: the catalog's)")
    group.add_argument("--config", metavar="RECIPE",
                       help="recipe file, or the name of a bundled one (demo, single_gpu, eval, "
                            "...); its data section (column_map, text, splits) reads the catalog")
    group.add_argument("--strict", action="store_true",
                       help="stop at the first bad row instead of skipping it and reporting it "
                            "in bad_rows.json")
    quiet = _Parser(add_help=False)
    quiet.add_argument("--quiet", action="store_true",
                       help="no progress bars (they are off anyway where stderr is not a terminal)")
    threads = _Parser(add_help=False)
    threads.add_argument("--threads", type=int, metavar="N",
                         help="torch threads (default: the CPU cores this process may use, at "
                              "most 32; lower it when other jobs share the machine)")
    overrides = _Parser(add_help=False)
    overrides.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE",
                           help="recipe overrides, e.g. data.column_map.title=item_name "
                                "train.epochs=3")
    return {"catalog": catalog, "quiet": quiet, "threads": threads, "overrides": overrides}


class _Formatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal; text with line breaks (examples) kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _examples(*commands: str) -> str:
    """An epilog: each command on lines of at most 88 characters, continued with a backslash."""
    lines = [" \\\n".join(textwrap.wrap(c, 86, initial_indent="  ", subsequent_indent="      ",
                                        break_long_words=False, break_on_hyphens=False))
             for c in commands]
    return "examples:\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="eclip", epilog=EPILOG, formatter_class=_Formatter,
        description="Catalog-aware vision-language pretraining for e-commerce listings (e-CLIP).")
    parser.add_argument("--version", action="version", version=f"eclip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = _shared_parsers()
    catalog, quiet, overrides = shared["catalog"], shared["quiet"], shared["overrides"]
    threads = shared["threads"]

    def command(name: str, func, help: str, description: str, examples: list[str],
                parents: tuple = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description, epilog=_examples(*examples),
                           formatter_class=_Formatter, parents=list(parents))
        p.set_defaults(func=func)
        return p

    p = command("demo", cmd_demo, "generate the demo catalog, train baseline/clip/eclip, report",
                "End to end on the generated demo catalog, on the CPU: baseline, CLIP and e-CLIP "
                "models trained and compared on held-out catalogs.",
                ["eclip demo --out demo_out", "eclip demo --out small --listings 600 train.epochs=2"],
                parents=(quiet, threads, overrides))
    p.add_argument("--out", default=Library("eclip.demo:run_demo", "out_dir"),
                   help="output folder (default: %(default)s)")
    p.add_argument("--listings", type=int, default=Library("eclip.demo:run_demo", "listings"),
                   help="demo catalog size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=Library("eclip.demo:run_demo", "seed"),
                   help="(default: %(default)s)")
    p.add_argument("--seeds", type=int, default=Library("eclip.demo:run_demo", "seeds"),
                   metavar="N",
                   help="train clip and eclip N times (train.seed, +1, ...) from the same "
                        "baseline; the report gives each row's mean ± std across the seeds "
                        "(default: %(default)s)")
    p.add_argument("--hide-catalog-ids", action="store_true",
                   help="train as a marketplace without catalog ids would: the ids are hidden "
                        "from training (kept for scoring), clip trains without them, eclip_mined "
                        "on catalogs mined from the baseline (data.catalog_source=mined), eclip on "
                        "the true ids for reference")

    make_demo = "eclip.catalog.demo:make_demo_catalog"
    p = command("make-demo-catalog", cmd_make_demo_catalog,
                "write the simulated marketplace catalog",
                "Write listings.jsonl and images/ of a simulated marketplace.",
                ["eclip make-demo-catalog --out data/demo --listings 500 --seed 1"],
                parents=(quiet,))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--listings", type=int, default=Library(make_demo, "n_listings"),
                   help="number of listings (default: %(default)s)")
    p.add_argument("--seed", type=int, default=Library(make_demo, "seed"),
                   help="(default: %(default)s)")
    p.add_argument("--image-size", type=int, default=Library(make_demo, "image_size"),
                   help="photo side in pixels (default: %(default)s)")

    p = command("train", cmd_train, "train a dual encoder from a recipe",
                "Train from a YAML recipe; SECTION.KEY=VALUE arguments override it. The run "
                "folder gets checkpoints, metrics, bad_rows.json, the model before training "
                "(init/, the baseline) and the trained model/. train.epochs=0 takes no step: "
                "model/ is then the initial model.",
                ["eclip train --config demo --catalog my.csv --image-root imgs "
                 "data.column_map.title=item_name train.epochs=3",
                 "eclip train --catalog my.csv --output-dir runs/base train.epochs=0 "
                 "data.column_map.title=item_name",
                 "eclip train --init-from my_clip --catalog my.csv --output-dir runs/shop "
                 "data.column_map.title=item_name",
                 "torchrun --nproc_per_node 2 -m eclip train --config demo_ddp "
                 "data.shards=shards"],
                parents=(catalog, quiet, threads, overrides))
    p.add_argument("--output-dir", metavar="DIR",
                   help="run folder (= train.output_dir)")
    p.add_argument("--init-from", metavar="DIR",
                   help="start from a transformers CLIPModel, SiglipModel or "
                        "VisionTextDualEncoderModel directory, or an open_clip ViT CLIP folder "
                        "(= model.init_from)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")

    p = command("embed", cmd_embed, "embed a catalog with a trained model into Parquet",
                "Image, text and fused vectors for every listing, in a Parquet file; "
                "bad_rows.json beside it. With --engine ray: a folder of Parquet parts and "
                "manifest.json (eclip.encode.listings.read_embeddings reads either), bad_rows.json in it.",
                ["eclip embed --model runs/shop/model --catalog my.csv --image-root imgs "
                 "--out embeddings.parquet data.column_map.title=item_name",
                 "eclip embed --engine ray --model runs/shop/model --catalog my.csv "
                 "--out embeddings_parts",
                 "eclip embed --engine ray --ray-address head:6379 --model "
                 "/shared/model --catalog /shared/my.csv --out /shared/embeddings_parts"],
                parents=(catalog, quiet, threads, overrides))
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model directory (eclip's, or a transformers CLIP / SigLIP checkpoint)")
    p.add_argument("--out", required=True,
                   help="output .parquet file (--engine ray: output folder)")
    p.add_argument("--batch-size", type=int,
                   default=Library("eclip.encode.listings:embed_listings", "batch_size"),
                   help="listings per forward pass (default: %(default)s)")
    _engine_options(p, "eclip.engines.embed:embed_with_ray", "blocks of listings embedded, "
                    "one Parquet part each,", note=" (--threads N: N torch threads per actor, "
                                                   "one actor per N CPUs; default 1)")

    p = command("mine-catalogs", cmd_mine_catalogs,
                "group the listings that are the same product, for a catalog without catalog ids",
                "Mine catalogs from a model's image and text vectors: mutual nearest neighbours "
                "inside each category whose photo and title similarities both pass thresholds "
                "taken from the data (no labels needed), in groups of at most "
                "data.mining.max_group_size listings. Writes the catalog with catalog_id and "
                "catalog_source (given / mined) columns, and OUT.mining.json / OUT.mining.html. "
                "Training does this itself with data.catalog_source=mined (or given+mined).",
                ["eclip mine-catalogs --model runs/shop/init --catalog shop.csv --image-root imgs "
                 "--out shop_mined.jsonl",
                 "eclip mine-catalogs --source given+mined --model runs/shop/model --catalog "
                 "shop.csv --out shop_mined.jsonl data.mining.target_precision=0.97"],
                parents=(catalog, quiet, threads, overrides))
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model directory: the one a run starts from (OUTPUT_DIR/init) or a "
                        "trained one (eclip's, or a transformers CLIP / SigLIP checkpoint)")
    p.add_argument("--out", required=True, help="output catalog (.jsonl)")
    p.add_argument("--source", choices=("mined", "given+mined"),
                   help="mined: ignore the file's catalog ids (and score the groups against "
                        "them); given+mined: keep them, mine the rest, calibrate the thresholds "
                        "on them (default: data.catalog_source if given+mined, else mined)")

    p = command(
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
        parents=(catalog, quiet, threads, overrides))
    p.add_argument("--models", nargs="+", required=True, metavar="NAME=MODEL_DIR",
                   help="models to compare; those named in eval.tower_features (default: "
                        "baseline) are read as their towers' features. NAME=DIR1,DIR2,...: one "
                        "model per training seed, reported as mean ± std across the seeds. "
                        "Recipe overrides (data.* / eval.*) may follow them")
    p.add_argument("--subject", metavar="NAME",
                   help="the model compared with every other one, whatever their names "
                        "(eval.subject; default: the model named eclip, else the last one given)")
    p.add_argument("--out", required=True, help="report folder")

    shards = "eclip.catalog.shards:prepare_shards"
    p = command("prepare", cmd_prepare, "write a catalog as tar shards for streaming training",
                "Validate a catalog and write WebDataset-layout tar shards (pre-resized JPEGs, "
                "composed text, catalog ids), index.json and bad_rows.json. Without a split "
                "column, data.val_fraction of the catalogs are held out as val.",
                ["eclip prepare --catalog my.csv --image-root imgs --out shards "
                 "--shard-size 1000 data.column_map.title=item_name",
                 "eclip prepare --engine ray --catalog my.csv --out shards",
                 "eclip train --config demo_ddp data.shards=shards"],
                parents=(catalog, quiet, overrides))
    p.add_argument("--out", required=True, help="shard folder")
    p.add_argument("--shard-size", type=int, default=Library(shards, "shard_size"),
                   help="listings per shard (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=Library(shards, "image_size"),
                   help="shorter side of the stored images in pixels; smaller ones are kept "
                        "(default: %(default)s)")
    _engine_options(p, "eclip.engines.prepare:prepare_with_ray",
                    "the images decoded and re-encoded")

    settings, build = "eclip.search.vectors:VectorSettings", "eclip.search.index:build_index"
    p = command(
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
        parents=(catalog, quiet, threads, overrides))
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
                   help="vector index, one of %(choices)s: exact (flat) search, IVF, HNSW, IVF of "
                        "fp16 / 8-bit vectors, OPQ+IVF-PQ (re-ranked exactly), DiskANN (Milvus "
                        "servers only), or auto: exact up to --exact-max listings, IVF above, or "
                        "with --max-memory the most exact kind that fits (default: %(default)s)")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="memory for the three vector indexes (image, text, both), e.g. 12GiB: "
                        "--kind auto picks a compressed kind that fits (default: no limit)")
    p.add_argument("--exact-max", type=int, default=Library(settings, "exact_max"),
                   help="largest index searched exactly with --kind auto (default: %(default)s)")
    p.add_argument("--target-recall", type=float, default=Library(settings, "target_recall"),
                   help="approximate kinds: recall@10 against exact search that nprobe (efSearch) "
                        "is tuned to reach "
                        "(default: %(default)s)")
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

    p = command("serve", cmd_serve, "serve a search index: JSON API and web page",
                "Search by text or photo, similar listings, classification; the web page is at "
                "/, the API schema at /docs.",
                ["eclip serve --index shop_index",
                 "eclip serve --index shop_index --host 0.0.0.0 --port 8080"],
                parents=(quiet,))
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

    p = command("export", cmd_export,
                "write a model as a transformers, sentence-transformers or open_clip directory, or ONNX graphs",
                "Hand a model back in a format other tools load without eclip: a model started "
                "from a CLIP (SigLIP) checkpoint becomes a CLIPModel (SiglipModel) directory "
                "with its processor, one with transformers towers a VisionTextDualEncoderModel; "
                "a CLIP-architecture model also an open_clip folder (open_clip_config.json). "
                "The export is checked against eclip's vectors before anything is written; one "
                "that cannot reproduce them is refused, with the reason.",
                ["eclip export --model runs/shop/model --format transformers --out shop_clip",
                 "eclip export --model runs/shop/model --format sentence-transformers "
                 "--out shop_st",
                 "eclip export --model runs/shop/model --format onnx --out shop_onnx",
                 "eclip export --model runs/shop/model --format open_clip --out shop_open_clip"],
                parents=(quiet,))
    p.add_argument("--model", required=True, metavar="DIR", help="model directory")
    p.add_argument("--format", choices=Library("eclip.model.export:FORMATS"), metavar="FORMAT",
                   default=Library("eclip.model.export:export_model", "format"),
                   help="one of %(choices)s (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (new or empty)")

    p = command("merge", cmd_merge,
                "interpolate two models' weights (WiSE-FT): (1 - alpha) * init + alpha * model",
                "Weight-space ensembling of a fine-tuned model with the model it started from "
                "(WiSE-FT): theta = (1 - alpha) * theta_init + alpha * theta_model. alpha 0 is "
                "the start, 1 the fine-tuned model; in between keeps more of the start's "
                "zero-shot strength.",
                ["eclip merge --init my_clip --model runs/shop/model --alpha 0.5 --out shop_wise",
                 "eclip merge --init runs/shop/init --model runs/shop/model --alpha 0.7 "
                 "--out shop_wise"],
                parents=(quiet,))
    p.add_argument("--init", required=True, metavar="DIR",
                   help="the model training started from (an eclip model directory or the "
                        "transformers checkpoint)")
    p.add_argument("--model", required=True, metavar="DIR", help="the fine-tuned model")
    p.add_argument("--alpha", type=float, required=True,
                   help="weight of the fine-tuned model, in [0, 1]")
    p.add_argument("--out", required=True, metavar="DIR", help="output model directory")
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
