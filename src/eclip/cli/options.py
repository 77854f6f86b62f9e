"""What every command's parser is made of: library defaults read late, the shared options (declared
once, as argparse parent parsers), the help layout, and the few translations from flags to the
library's arguments (progress bars, threads, recipe overrides)."""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable


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


class Parser(argparse.ArgumentParser):
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


class Formatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal; text with line breaks (examples) kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def examples(*commands: str) -> str:
    """An epilog: each command on lines of at most 88 characters, continued with a backslash."""
    lines = [" \\\n".join(textwrap.wrap(c, 86, initial_indent="  ", subsequent_indent="      ",
                                        break_long_words=False, break_on_hyphens=False))
             for c in commands]
    return "examples:\n" + "\n".join(lines)


class Commands:
    """The subcommands being declared, with the shared option groups a command may take as
    parents: ``catalog`` (the catalog and its recipe), ``quiet``, ``threads``, ``overrides``."""

    def __init__(self, sub: argparse._SubParsersAction):
        self.sub = sub
        self.catalog, self.quiet, self.threads, self.overrides = _shared_parsers()

    def add(self, name: str, func: Callable[[argparse.Namespace], int], help: str,
            description: str, example_lines: list[str], parents: tuple = ()) -> argparse.ArgumentParser:
        p = self.sub.add_parser(name, help=help, description=description,
                                epilog=examples(*example_lines), formatter_class=Formatter,
                                parents=list(parents))
        p.set_defaults(func=func)
        return p


def _shared_parsers() -> tuple[Parser, Parser, Parser, Parser]:
    """The options several commands share, each declared once (argparse parent parsers)."""
    catalog = Parser(add_help=False)
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
    quiet = Parser(add_help=False)
    quiet.add_argument("--quiet", action="store_true",
                       help="no progress bars (they are off anyway where stderr is not a terminal)")
    threads = Parser(add_help=False)
    threads.add_argument("--threads", type=int, metavar="N",
                         help="torch threads (default: $ECLIP_THREADS, else the CPU cores this "
                              "process may use, at most 32, less those other processes keep busy)")
    overrides = Parser(add_help=False)
    overrides.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE",
                           help="recipe overrides, e.g. data.column_map.title=item_name "
                                "train.epochs=3")
    return catalog, quiet, threads, overrides


def engine_options(p: argparse.ArgumentParser, engine: str, work: str, note: str = "") -> None:
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


def progress(args: argparse.Namespace) -> bool:
    """Progress bars: on where stderr is a terminal, unless ``--quiet`` (a log file or a pipe gets
    none). The one place a command decides it."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def threads(args: argparse.Namespace) -> int:
    """torch threads for this command (``--threads``, else ``eclip.config.use_threads``' default)."""
    from eclip.config import use_threads

    return use_threads(getattr(args, "threads", None))


def data_overrides(args: argparse.Namespace) -> list[str]:
    """Command-line flags as recipe overrides (flags win over KEY=VALUE arguments)."""
    overrides = list(args.overrides)
    for flag, key in (("catalog", "data.catalog"), ("image_root", "data.image_root"),
                      ("output_dir", "train.output_dir"), ("init_from", "model.init_from")):
        if getattr(args, flag, None):
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.strict:
        overrides.append("data.strict=true")
    return overrides


def recipe_path(value: str) -> Path:
    """``--config``: a recipe file, or the name of one that ships with eclip (e.g. ``demo``)."""
    from eclip.config import find_recipe

    return find_recipe(value)


def recipe(args: argparse.Namespace):
    """The training recipe of ``--config`` (or the defaults) with the flags and overrides on top."""
    from eclip.train.recipe import load_recipe

    return load_recipe(recipe_path(args.config) if args.config else None, data_overrides(args))
