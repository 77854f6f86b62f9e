"""Read a marketplace catalog file into validated :class:`Listing` objects, and write one back.

Formats, chosen by extension: ``.jsonl`` / ``.ndjson`` (one JSON object per line), ``.json`` (a list
of objects), ``.csv``, ``.tsv`` (UTF-8, first line is the header) and ``.parquet``.

Each issue names its place twice. ``row`` is 1-based: for JSONL the line number (blank lines are
skipped and not counted as rows, but keep their line numbers), for JSON the position in the list,
for CSV/TSV and Parquet the data row (the CSV header and blank lines are not counted; a quoted cell
spanning several lines is one row). ``line`` is the 1-based line of the file where the row starts,
what an editor shows (CSV/TSV: the header is line 1; JSONL: the same as ``row``); JSON and Parquet
have no lines (``None``: use ``row``, for Parquet the 1-based row index). ``product_id`` is the
row's id where it has one.

Columns: the standard fields are read from the columns of the same name, or from those that
``column_map`` names (``data.column_map.title=item_name`` on the command line). Every missing
required column and every mapped column the file lacks is reported at once, with the file's columns;
an unused column that looks like a field the file does not give (``cat_path``, ``item_name``,
``img``, ``brand_name``, ...) is named in the summary with the mapping that would use it.

Bad rows are never dropped silently: each becomes an :class:`Issue` (``action="skipped_row"``), and
each unreadable image of an otherwise good listing one with ``action="dropped_image"``. With
``strict=True`` the first problem raises :class:`CatalogError` instead.

Missing values: ``None``, a float NaN, an empty or blank string, and the strings ``nan``, ``none``
and ``null`` (any case; what spreadsheet and pandas exports write for a missing cell) all count as
"not given".

Image paths must be local files; an ``http(s)://`` URL is dropped from its listing with an issue
(download the images first). Every image must lie inside the image root once links are followed
(:func:`eclip.catalog.paths.contained`): an absolute path elsewhere, ``../``, ``~/`` or a symlink
pointing outside is dropped with reason ``outside the image root`` and never opened, and so is a
path with a NUL byte (``bad path``); absolute paths inside the root are fine.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eclip.atomic import write_json_atomic, write_text_atomic
from eclip.catalog import cells
from eclip.catalog.cells import TOO_DEEP, BadValue
from eclip.catalog.config import DEFAULT_MAX_PIXELS
from eclip.catalog.formats import FORMATS, open_records
from eclip.catalog.images import check_image
from eclip.catalog.paths import PathOutsideRoot, path_problem, printable, resolved_root
from eclip.catalog.schema import FIELDS, Listing
from eclip.errors import CatalogError

REQUIRED = ("title", "images")
SKIPPED_ROW = "skipped_row"
DROPPED_IMAGE = "dropped_image"

_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
# Columns that usually hold a standard field (names compared in lower case with '-', '.' and spaces
# as '_'): a whole name in LOOKALIKE_NAMES, or a name with a word of LOOKALIKE_WORDS (tried in order)
LOOKALIKE_NAMES: dict[str, frozenset[str]] = {
    "product_id": frozenset({"id", "item_id", "item_no", "sku", "pid", "listing_id", "product_no",
                             "goods_id", "goods_no", "asin", "offer_id", "product_code"}),
    "title": frozenset({"name", "item_name", "product_name", "product_title", "item_title",
                        "goods_name", "listing_title", "listing_name", "title_text"}),
    "images": frozenset({"image", "img", "imgs", "image_path", "image_paths", "img_path",
                         "image_file", "image_files", "photo", "photos", "picture", "pictures",
                         "image_name", "filename", "file_name", "path"}),
    "catalog_id": frozenset({"catalog", "group", "group_id", "product_group", "cluster_id",
                             "catalog_no", "spu", "spu_id", "model_id", "master_id"}),
    "brand": frozenset({"maker", "manufacturer", "vendor"}),
    "category": frozenset({"cat", "cat_path", "category_path", "categories", "category_name",
                           "product_category", "product_type", "taxonomy", "cat_name"}),
    "attributes": frozenset({"attrs", "attribute", "specs", "properties", "options"}),
    "adult": frozenset({"nsfw", "is_adult", "adult_only", "age_restricted"}),
    "lang": frozenset({"language", "locale"}),
    "split": frozenset({"fold", "subset", "partition"}),
}
LOOKALIKE_WORDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("brand", frozenset({"brand"})),
    ("category", frozenset({"category", "categories", "cat"})),
    ("catalog_id", frozenset({"catalog"})),
    ("images", frozenset({"image", "images", "img", "photo", "photos", "picture"})),
    ("attributes", frozenset({"attribute", "attributes", "attrs"})),
    ("title", frozenset({"title"})),
    ("adult", frozenset({"adult", "nsfw"})),
)


@dataclass
class Issue:
    """One problem found in a catalog file.

    ``reason`` reads ``"kind"`` or ``"kind: detail"``; ``kind`` is what the summary counts.
    ``action`` is ``"skipped_row"`` (the row was not used) or ``"dropped_image"`` (one image was
    removed from a listing that was kept).
    """

    file: str
    row: int  # 1-based row (see the module's docstring)
    field: str | None
    reason: str
    action: str
    line: int | None = None  # 1-based line of the file where the row starts (None: JSON, Parquet)
    product_id: str | None = None  # the row's id, where it has one

    @property
    def where(self) -> str:
        """``line 12`` where the file has lines, else ``row 12``."""
        return f"line {self.line}" if self.line is not None else f"row {self.row}"

    @property
    def kind(self) -> str:
        return self.reason.split(": ", 1)[0]


@dataclass
class CatalogRead:
    """What ``read_catalog`` found: the good listings, every issue and the number of rows read."""

    path: str
    listings: list[Listing]
    issues: list[Issue]
    total_rows: int
    # the folder every image path lies in (resolved); None for reads that were not checked
    image_root: str | None = None
    # unused columns that look like a field the file does not give: column -> standard field
    lookalikes: dict[str, str] = field(default_factory=dict)

    @property
    def skipped_rows(self) -> int:
        return sum(1 for issue in self.issues if issue.action == SKIPPED_ROW)

    @property
    def dropped_images(self) -> int:
        return sum(1 for issue in self.issues if issue.action == DROPPED_IMAGE)

    def counts(self) -> dict[str, dict[str, int]]:
        """Issue counts by action, then by kind of reason, most frequent first."""
        by_action: dict[str, Counter[str]] = {SKIPPED_ROW: Counter(), DROPPED_IMAGE: Counter()}
        for issue in self.issues:
            by_action.setdefault(issue.action, Counter())[issue.kind] += 1
        return {action: dict(counter.most_common()) for action, counter in by_action.items()}

    def summary(self) -> str:
        def detail(counter: dict[str, int]) -> str:
            if not counter:
                return ""
            return " (" + ", ".join(f"{n} {kind}" for kind, n in counter.items()) + ")"

        counts = self.counts()
        text = (f"Read {self.total_rows} rows from {self.path}: kept {len(self.listings)} listings; "
                f"skipped {self.skipped_rows} rows{detail(counts[SKIPPED_ROW])}; "
                f"dropped {self.dropped_images} images{detail(counts[DROPPED_IMAGE])}.")
        if self.lookalikes:
            text += "\nwarning: " + unused_columns_note(self.lookalikes)
        return text

    def write_report(self, path: str | os.PathLike[str]) -> None:
        """Write the counts and every issue as JSON (UTF-8)."""
        report = {"catalog": self.path, "total_rows": self.total_rows,
                  "listings": len(self.listings), "skipped_rows": self.skipped_rows,
                  "dropped_images": self.dropped_images, "counts": self.counts(),
                  "unused_columns": {column: f"data.column_map.{standard}={column}"
                                     for column, standard in self.lookalikes.items()},
                  "issues": [asdict(issue) for issue in self.issues]}
        write_json_atomic(path, report)


def read_catalog(path: str | os.PathLike[str], *, image_root: str | os.PathLike[str] | None = None,
                 column_map: dict[str, str] | None = None, strict: bool = False,
                 check_images: bool = True, progress: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> CatalogRead:
    """Read and validate a catalog file.

    ``column_map`` maps standard field names (``title``, ``images``, ...) to the file's column
    names; fields not in it are looked up under their standard names. Relative image paths are
    resolved against ``image_root`` (default: the catalog file's directory). With ``check_images``
    every image is decoded once to make sure it can be used (``max_pixels``: see
    :func:`eclip.catalog.images.check_image`).
    """
    file = Path(path)
    name = os.fspath(path)
    kind = FORMATS.get(file.suffix.lower())
    if kind is None:
        raise CatalogError(f"unknown catalog format '{file.suffix}'; accepted extensions are "
                           f"{', '.join(FORMATS)}", file=name)
    if not file.is_file():
        raise CatalogError("file not found" if not file.exists() else "not a file", file=name)
    if file.stat().st_size == 0:
        raise CatalogError("the file is empty", file=name)
    columns = _check_column_map(column_map, name)
    root = Path(image_root) if image_root is not None else file.parent
    try:
        contained_in = str(resolved_root(root))
    except PathOutsideRoot as exc:
        raise CatalogError(f"image root: {exc}", file=name) from None
    parser = _RowParser(name, file.stem, os.path.abspath(root), contained_in, columns, check_images,
                        max_pixels)

    records, total, file_columns = open_records(file, name, kind, columns)
    lookalikes: dict[str, str] = {}
    if file_columns:  # a JSON file whose every row is malformed has none; its rows are reported
        lookalikes = _check_columns(columns, set(column_map or {}), file_columns, name)

    listings: list[Listing] = []
    issues: list[Issue] = []
    rows = 0
    with tqdm(records, total=total, disable=not progress, desc=f"reading {file.name}",
              unit="row") as bar:
        for row, line, record in bar:
            rows += 1
            found: list[Issue] = []
            try:
                listing = parser.parse(row, line, record, found)
            except BadValue as bad:
                listing = None
                found.append(Issue(name, row, bad.field, bad.reason, SKIPPED_ROW, line,
                                   parser.product_id_of(record)))
            except RecursionError:  # a value nested deeper than Python follows
                listing = None
                found.append(Issue(name, row, None, TOO_DEEP, SKIPPED_ROW, line))
            if strict and found:
                first = found[0]
                raise CatalogError(first.reason, file=name, row=first.row, field=first.field,
                                   line=first.line)
            issues.extend(found)
            if listing is not None:
                listings.append(listing)
    if rows == 0:
        raise CatalogError("the file has no rows", file=name)
    return CatalogRead(name, listings, issues, rows, image_root=contained_in,
                       lookalikes=lookalikes)


def write_listings(listings: Iterable[Listing], path: str | os.PathLike[str], *,
                   image_root: str | os.PathLike[str] | None = None,
                   extra: Sequence[dict[str, Any]] | None = None) -> None:
    """Write listings as JSONL (UTF-8, one ``Listing.to_dict()`` per line).

    With ``image_root`` the image paths are written relative to it, so that
    ``read_catalog(path, image_root=image_root)`` gives the same listings back. ``extra[i]``:
    more columns of row i (e.g. ``catalog_source``), which reading ignores.
    """
    root = os.path.abspath(image_root) if image_root is not None else None
    lines = []
    for i, listing in enumerate(listings):
        row = listing.to_dict()
        if extra is not None:
            row.update(extra[i])
        if root is not None:
            row["images"] = [Path(os.path.relpath(p, root)).as_posix() for p in listing.images]
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    write_text_atomic(path, "".join(lines))


def _check_column_map(column_map: dict[str, str] | None, name: str) -> dict[str, str]:
    """Standard field -> file column, for every standard field; every bad entry reported at once."""
    columns = {f: f for f in FIELDS}
    problems = []
    for standard, column in (column_map or {}).items():
        if standard not in columns:
            problems.append(f"data.column_map.{standard}={column}: '{standard}', which is not a "
                            f"standard field")
        elif not isinstance(column, str) or not column:
            problems.append(f"data.column_map.{standard} must be a column name, got {column!r}")
        else:
            columns[standard] = column
    if problems:
        raise CatalogError("; ".join(problems) + f" (the standard fields are {', '.join(FIELDS)})",
                           file=name)
    return columns


def looks_like(column: str) -> str | None:
    """The standard field a column's name suggests (``cat_path`` -> ``category``), or None."""
    key = re.sub(r"[\s.\-]+", "_", column.strip().lower())
    for standard, names in LOOKALIKE_NAMES.items():
        if key == standard or key in names:
            return standard
    words = set(key.split("_"))
    for standard, stems in LOOKALIKE_WORDS:
        if words & stems:
            return standard
    return None


def unused_columns_note(lookalikes: dict[str, str]) -> str:
    """One sentence naming unused columns that look like fields, with the mappings that use them."""
    pairs = ", ".join(f"'{column}' (data.column_map.{standard}={column})"
                      for column, standard in lookalikes.items())
    return f"unused column(s) that look like catalog fields the file does not give: {pairs}"


def _check_columns(columns: dict[str, str], mapped: set[str], file_columns: set[str],
                   name: str) -> dict[str, str]:
    """Every mapped column must exist, and so must the columns of the required fields: all problems
    are raised at once, in the form the user types. Returns the unused columns that look like a
    field the file does not give (column -> standard field)."""
    used = {column for column in columns.values() if column in file_columns}
    given = {standard for standard, column in columns.items() if column in file_columns}
    lookalikes = {}
    for column in sorted(file_columns - used):
        standard = looks_like(column)
        if standard is not None and standard not in given and standard not in lookalikes.values():
            lookalikes[column] = standard
    suggest = {standard: column for column, standard in lookalikes.items()}
    problems: list[tuple[str, str]] = []
    for standard, column in columns.items():
        if column in file_columns:
            continue
        hint = (f"data.column_map.{standard}={suggest[standard]}?" if standard in suggest
                else f"data.column_map.{standard}=COLUMN")
        if standard in mapped:
            problems.append((standard, f"data.column_map.{standard}={column}: the file has no "
                                       f"column '{column}' (set {hint})"))
        elif standard in REQUIRED:
            problems.append((standard, f"no '{standard}' column (set {hint})"))
    if problems:
        rest = {c: s for c, s in lookalikes.items() if s not in {p for p, _ in problems}}
        message = ("; ".join(text for _, text in problems)
                   + f". The file's columns: {', '.join(sorted(file_columns))}"
                   + (f"; {unused_columns_note(rest)}" if rest else ""))
        raise CatalogError(message, file=name,
                           field=problems[0][0] if len(problems) == 1 else None)
    return lookalikes


# ---------------------------------------------------------------------------------------------

class _RowParser:
    """Turns one record into a Listing, recording dropped images; raises BadValue for a bad row."""

    def __init__(self, file: str, stem: str, root: str, contained_in: str, columns: dict[str, str],
                 check: bool, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.file, self.stem, self.root, self.columns, self.check = file, stem, root, columns, check
        self.contained_in = contained_in  # the root resolved: every image must lie inside it
        self.max_pixels = max_pixels
        self.first_row_of: dict[str, str] = {}  # product id -> "row 3" / "row 3 (line 4)"
        self.image_reasons: dict[str, str | None] = {}

    def product_id_of(self, record: dict[str, Any] | BadValue) -> str | None:
        """The id a record gives, for the report of a row that could not be used (None: none)."""
        if not isinstance(record, dict):
            return None
        try:
            return cells.identifier(record.get(self.columns["product_id"]), "product_id")
        except BadValue:
            return None

    def parse(self, row: int, line: int | None, record: dict[str, Any] | BadValue,
              found: list[Issue]) -> Listing:
        if isinstance(record, BadValue):
            raise record

        def get(standard: str) -> Any:
            return record.get(self.columns[standard])

        title = cells.as_text(get("title"), "title")
        if title is None:
            raise BadValue("title", "missing title")
        images = self._image_paths(get("images"))
        product_id = cells.identifier(get("product_id"), "product_id") or f"{self.stem}:{row}"
        listing = Listing(
            product_id=product_id, title=title, images=images,
            catalog_id=cells.identifier(get("catalog_id"), "catalog_id"),
            brand=cells.as_text(get("brand"), "brand"), category=cells.category(get("category")),
            attributes=cells.attributes(get("attributes")), adult=cells.adult(get("adult")),
            lang=cells.as_text(get("lang"), "lang"), split=cells.as_text(get("split"), "split"),
        )
        if product_id in self.first_row_of:
            raise BadValue("product_id", f"duplicate product_id: '{product_id}' was first used at "
                                        f"{self.first_row_of[product_id]}")
        listing.images = self._usable_images(row, line, product_id, images, found)
        self.first_row_of[product_id] = f"row {row}" + (f" (line {line})" if line != row and
                                                         line is not None else "")
        return listing

    def _image_paths(self, value: Any) -> list[str]:
        parts = cells.image_list(value)
        if not parts:
            raise BadValue("images", "no image: at least one image path is required")
        paths: list[str] = []
        for part in parts:
            path = part if _URL.match(part) else os.path.normpath(
                os.path.join(self.root, os.path.expanduser(part)))
            if path not in paths:
                paths.append(path)
        return paths

    def _usable_images(self, row: int, line: int | None, product_id: str, paths: list[str],
                       found: list[Issue]) -> list[str]:
        good: list[str] = []
        for path in paths:
            if _URL.match(path):
                reason: str | None = "image URL: download the images and give local paths"
            else:
                if path not in self.image_reasons:
                    self.image_reasons[path] = self._image_reason(path)
                reason = self.image_reasons[path]
            if reason is None:
                good.append(path)
                continue
            kind, _, detail = reason.partition(": ")
            found.append(Issue(self.file, row, "images",
                               f"{kind}: {printable(path)}" + (f" ({detail})" if detail else ""),
                               DROPPED_IMAGE, line, product_id))
        if not good:
            raise BadValue("images", "no usable image: every image of the row was dropped")
        return good

    def _image_reason(self, path: str) -> str | None:
        """Why ``path`` cannot be used (``"kind: detail"``), or None. A path outside the image
        root (links followed) or with a NUL byte is refused before anything is opened, whether or
        not images are decoded here."""
        problem = path_problem(path, self.contained_in)
        if problem is not None:
            return f"{problem.kind}: {problem.detail}"
        return check_image(path, max_pixels=self.max_pixels) if self.check else None
