"""Column-map presets for public e-commerce retrieval sets, and their conversion to an eclip catalog.

Marqo's GoogleShopping and AmazonProducts evaluation sets (Hugging Face ``Marqo/google-shopping-
general-eval``, ``Marqo/amazon-products-eval`` and their ``-100k`` samples) have one row per
(query, item) pair: ``item_ID``, ``query``, ``title``, ``image`` (a file path, or the image itself:
bytes, or the ``{"bytes", "path"}`` struct that a ``datasets`` Image column becomes in Parquet) and
``position`` (the item's rank for the query). An item listed under several queries repeats on
several rows, which a catalog (one row per listing, unique product ids) does not allow, so
:func:`prepare_benchmark` converts such a file, in one streaming pass, into

- ``catalog.jsonl``: one listing per item (``item_ID`` -> product_id, ``title`` -> title,
  ``image`` -> images; the first row of an item wins), all in the ``test`` split;
- ``images/``: images given as bytes, written once per item (images given as paths stay where they
  are, relative to the image root);
- ``queries.json``: ``{query: {item_ID: relevance}}``, every item listed for a query relevant
  (relevance 1; ``position`` is kept in ``positions.json`` for graded use).

``eclip eval ... eval.preset=gs-marqo`` does this under ``OUT/benchmark`` and evaluates the result:
its ``query->image`` and ``text->image`` (title) retrieval tasks (``eclip.tasks.ir``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from eclip.atomic import atomic_open, write_json_atomic
from eclip.catalog.cells import cell_identifier, cell_text
from eclip.catalog.formats import iter_rows
from eclip.catalog.schema import FIELDS
from eclip.errors import CatalogError, ConfigError

MARQO_COLUMNS = {"product_id": "item_ID", "title": "title", "images": "image", "query": "query",
                 "position": "position"}
EXTRA_FIELDS = ("query", "position")  # preset columns that are not listing fields


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    columns: dict[str, str] = field(default_factory=dict)  # standard field (+ query, position) -> column


PRESETS = {
    "gs-marqo": Preset("gs-marqo", "Marqo's GoogleShopping evaluation set "
                       "(Marqo/google-shopping-general-eval, -100k)", dict(MARQO_COLUMNS)),
    "amazon-marqo": Preset("amazon-marqo", "Marqo's AmazonProducts evaluation set "
                           "(Marqo/amazon-products-eval, -100k)", dict(MARQO_COLUMNS)),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; known: {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass
class PreparedBenchmark:
    catalog: Path  # catalog.jsonl
    image_root: Path  # what its image paths are relative to
    queries: Path | None  # queries.json, None when the file has no query column
    dataset: str  # "<preset>:<file stem>", the name in clip_benchmark.jsonl
    rows: int = 0  # rows read
    items: int = 0  # listings written
    n_queries: int = 0
    skipped: int = 0  # rows without an item id

    def summary(self) -> str:
        return (f"{self.dataset}: {self.rows} rows -> {self.items} items, {self.n_queries} queries"
                + (f" ({self.skipped} rows without an item id skipped)" if self.skipped else ""))


def prepare_benchmark(path: str | os.PathLike[str], preset: str | Preset,
                      out_dir: str | os.PathLike[str], *,
                      image_root: str | os.PathLike[str] | None = None,
                      column_map: dict[str, str] | None = None,
                      log: Callable[[str], None] = print) -> PreparedBenchmark:
    """Convert a file in a preset's layout (Parquet, CSV, TSV, JSONL, JSON) into ``out_dir``:
    ``catalog.jsonl``, ``images/`` and ``queries.json`` (see the module). ``column_map`` (standard
    field, ``query`` or ``position`` -> column) overrides the preset's columns; other standard
    fields it names (category, brand, ...) are carried over to the listings."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    columns = _columns(preset, column_map)
    source = Path(path)
    name = os.fspath(path)
    if not source.is_file():
        raise CatalogError("file not found", file=name)
    out = Path(out_dir)
    src_root = Path(image_root) if image_root is not None else source.parent
    result = PreparedBenchmark(out / "catalog.jsonl", src_root, None,
                               f"{preset.name}:{source.stem}")
    queries: dict[str, dict[str, int]] = {}
    positions: dict[str, dict[str, float]] = {}
    seen: set[str] = set()
    mode: str | None = None  # "bytes" or "path": where every image of the file comes from
    with atomic_open(result.catalog, "w") as handle:
        for row, record in iter_rows(source, set(columns.values())):
            result.rows += 1
            item = cell_identifier(record.get(columns["product_id"]), file=name, row=row,
                                   field=columns["product_id"])
            if item is None:
                result.skipped += 1
                continue
            query = (cell_text(record.get(columns["query"]), file=name, row=row,
                               field=columns["query"]) if "query" in columns else None)
            if query is not None:
                queries.setdefault(query, {})[item] = 1
                position = record.get(columns.get("position", ""))
                if isinstance(position, (int, float)) and not isinstance(position, bool):
                    positions.setdefault(query, {})[item] = float(position)
            if item in seen:
                continue
            seen.add(item)
            image, kind = _image(record.get(columns["images"]), file=name, row=row,
                                 field=columns["images"])
            if kind is not None:
                if mode is not None and kind != mode:
                    raise CatalogError("images are given both as files and as bytes; give one kind",
                                       file=name, row=row, field="images")
                mode = kind
            if kind == "bytes":
                image = _store_image(out, item, image)
            title = cell_text(record.get(columns["title"]), file=name, row=row,
                              field=columns["title"])
            listing = {"product_id": item, "title": title,
                       "images": [image] if image else [], "split": "test"}
            for key, column in columns.items():
                if key in FIELDS and key not in listing and key != "split":
                    value = record.get(column)
                    if value is not None:
                        listing[key] = value
            handle.write(json.dumps(listing, ensure_ascii=False, default=str) + "\n")
            result.items += 1
    if result.rows == 0:
        raise CatalogError("the file has no rows", file=name)
    if mode == "bytes":
        result.image_root = out
    if "query" in columns and queries:
        result.queries = write_json_atomic(out / "queries.json", queries, indent=None)
        if positions:
            write_json_atomic(out / "positions.json", positions, indent=None)
        result.n_queries = len(queries)
    log(result.summary())
    return result


def _columns(preset: Preset, column_map: dict[str, str] | None) -> dict[str, str]:
    """The preset's columns, with the user's ``column_map`` on top (checked)."""
    columns = dict(preset.columns)
    for key, column in (column_map or {}).items():
        if key not in FIELDS and key not in EXTRA_FIELDS:
            raise ConfigError(f"column_map has '{key}': not a standard field, query or position")
        columns[key] = column
    return columns


def _store_image(out: Path, item: str, data: bytes) -> str:
    """Image bytes of listing ``item`` written under ``out/images/``; their path from ``out``."""
    rel = f"images/{hashlib.blake2b(item.encode(), digest_size=10).hexdigest()}{_extension(data)}"
    (out / "images").mkdir(parents=True, exist_ok=True)
    with atomic_open(out / rel, "wb", fsync=False) as handle:
        handle.write(data)
    return rel


def _image(value: Any, **where: Any) -> tuple[Any, str | None]:
    """``(bytes or a path, "bytes" / "path")``, or ``(None, None)`` when there is no image;
    ``where`` (file, row, field) names the cell in an error."""
    if isinstance(value, dict):  # a datasets Image column in Parquet: {"bytes", "path"}
        if value.get("bytes"):
            return bytes(value["bytes"]), "bytes"
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return (bytes(value), "bytes") if len(value) else (None, None)
    text = cell_text(value, **where)
    return (text, "path") if text else (None, None)


def _extension(data: bytes) -> str:
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:3] == b"GIF":
        return ".gif"
    return ".img"
