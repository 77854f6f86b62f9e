"""The ``eclip`` command: parse arguments, call the library, print. No logic of its own.

Each command is a library function first (``eclip.engines.jobs.embed_catalog``,
``prepare_catalog``, ``eclip.tasks.suite.run_eval``, ``eclip.train.run.run_training``, ...); a
command module here declares the command's parser (``add_NAME``) and a ``cmd_NAME`` that turns the
parsed flags into that function's arguments and prints its summary:

- :mod:`eclip.cli.options`: the shared options (the catalog and how to read it, recipe overrides,
  ``--quiet``, ``--threads``), declared once in parent parsers, and the help layout; progress bars
  are drawn only where stderr is a terminal (``options.progress``);
- :mod:`eclip.cli.models`: ``demo``, ``train``, ``export``, ``merge``;
- :mod:`eclip.cli.data`: ``make-demo-catalog``, ``embed``, ``mine-catalogs``, ``prepare``;
- :mod:`eclip.cli.evaluation`: ``eval``;
- :mod:`eclip.cli.search`: ``index``, ``serve``.

Defaults are the library's own (a function's keyword default or a dataclass field's), read when a
command is parsed or its help printed, so that ``eclip --help`` imports nothing heavy.
"""

from __future__ import annotations

import argparse
import sys

from eclip import __version__
from eclip.cli import data, evaluation, models, search
from eclip.cli.options import Commands, Formatter, Parser
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

# in the order ``eclip --help`` lists them
COMMANDS = (models.add_demo, data.add_make_demo_catalog, models.add_train, data.add_embed,
            data.add_mine_catalogs, evaluation.add_eval, data.add_prepare, search.add_index,
            search.add_serve, models.add_export, models.add_merge)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="eclip", epilog=EPILOG, formatter_class=Formatter,
        description="Catalog-aware vision-language pretraining for e-commerce listings (e-CLIP).")
    parser.add_argument("--version", action="version", version=f"eclip {__version__}")
    commands = Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for add in COMMANDS:
        add(commands)
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
