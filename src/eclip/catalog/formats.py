"""Tabular files as rows: JSONL / NDJSON, JSON (a list of objects), CSV, TSV and Parquet, chosen by
extension. Each row comes with its place (the 1-based row and the line where it starts, see
:mod:`eclip.catalog.readers`); a row that cannot be read (malformed JSON, not UTF-8 text, a wrong
number of CSV cells) comes as a :class:`~eclip.catalog.cells.BadValue` in its place, so that the
catalog reader reports it and reads on, while :func:`iter_rows` (for files that are not catalogs:
:mod:`eclip.catalog.presets`) raises it as a :class:`~eclip.errors.CatalogError` naming the file,
row and line. A file that cannot be read at all (no header, not Parquet) is a ``CatalogError``.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from eclip.catalog.cells import TOO_DEEP, BadValue
from eclip.errors import CatalogError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
           ".parquet": "parquet"}
# csv's default limit on one cell (131,072 characters) is raised while a file is read, so that a
# long description is a row like any other; a cell beyond this is a broken file (an unclosed quote)
CSV_FIELD_LIMIT = 64 * 1024 * 1024


# Records: (row number, line where the row starts or None, dict of column -> value, or a BadValue
# for a row that could not be read)

Record = tuple[int, "int | None", "dict[str, Any] | BadValue"]


def open_records(file: Path, name: str, kind: str,
                  columns: dict[str, str]) -> tuple[Iterable[Record], int | None, set[str]]:
    """The rows of the file, their number where known up front, and the file's column names."""
    if kind in ("jsonl", "json"):
        records = _jsonl_records(file) if kind == "jsonl" else _json_records(file, name)
        seen: set[str] = set()
        for _, _, record in records:
            if isinstance(record, dict):
                seen.update(record)
        return records, len(records), seen
    if kind == "parquet":
        return _parquet_records(file, name, set(columns.values()))
    return _csv_records(file, name, "\t" if kind == "tsv" else ",")


def _jsonl_records(file: Path) -> list[Record]:
    records: list[Record] = []
    with open(file, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if line_no == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                records.append((line_no, line_no, BadValue(None, f"not UTF-8 text: {exc.reason} "
                                                                f"at byte {exc.start}")))
                continue
            except json.JSONDecodeError as exc:
                records.append((line_no, line_no, BadValue(None, f"malformed JSON: {exc.msg} at "
                                                                f"column {exc.colno}")))
                continue
            except RecursionError:
                records.append((line_no, line_no, BadValue(None, TOO_DEEP)))
                continue
            records.append((line_no, line_no, _as_object(value)))
    return records


def _json_records(file: Path, name: str) -> list[Record]:
    try:
        value = json.loads(file.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise CatalogError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=name) from None
    except json.JSONDecodeError as exc:
        raise CatalogError(f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                           file=name) from None
    except RecursionError:
        raise CatalogError(TOO_DEEP, file=name) from None
    if not isinstance(value, list):
        raise CatalogError(f"a .json catalog must be a list of objects, got "
                           f"{type(value).__name__}; use .jsonl for one object per line", file=name)
    return [(i, None, _as_object(item)) for i, item in enumerate(value, start=1)]


def _as_object(value: Any) -> dict[str, Any] | BadValue:
    if isinstance(value, dict):
        return value
    return BadValue(None, f"not a JSON object: got {type(value).__name__}")


def _csv_records(file: Path, name: str, delimiter: str) -> tuple[Iterator[Record], None, set[str]]:
    try:
        with open(file, encoding="utf-8-sig", newline="") as handle:
            header = [cell.strip() for cell in next(csv.reader(handle, delimiter=delimiter), [])]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CatalogError(f"cannot read the header: {exc}", file=name) from None
    if not any(header):
        raise CatalogError("no header line: the first line must name the columns", file=name)
    duplicates = sorted(c for c, n in Counter(header).items() if n > 1)
    if duplicates:
        raise CatalogError(f"duplicate column name(s) {duplicates} in the header", file=name)
    return _csv_rows(file, name, delimiter, header), None, set(header)


def _csv_rows(file: Path, name: str, delimiter: str, header: list[str]) -> Iterator[Record]:
    row = end = 0
    limit = csv.field_size_limit()
    with open(file, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            csv.field_size_limit(max(limit, CSV_FIELD_LIMIT))
            next(reader)  # the header
            end = reader.line_num  # lines read so far: a row starts on the line after
            for cells in reader:
                line, end = end + 1, reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                row += 1
                if len(cells) != len(header):
                    yield row, line, BadValue(None, f"wrong number of cells: {len(cells)} cells, "
                                                   f"the header has {len(header)}")
                else:
                    yield row, line, dict(zip(header, cells))
        except UnicodeDecodeError as exc:
            raise CatalogError(f"not UTF-8 text ({exc.reason}); save the file as UTF-8",
                               file=name, row=row + 1) from None
        except csv.Error as exc:
            raise CatalogError(f"malformed CSV: {exc}", file=name, row=row + 1,
                               line=end + 1) from None
        finally:
            csv.field_size_limit(limit)


def _parquet_records(file: Path, name: str,
                     wanted: set[str]) -> tuple[Iterator[Record], int, set[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(file)
    except (pa.ArrowException, OSError) as exc:
        raise CatalogError(f"not a readable Parquet file: {exc}", file=name) from None
    names = metadata.schema.to_arrow_schema().names
    selected = [c for c in names if c in wanted]

    def rows() -> Iterator[Record]:
        row = 0
        try:
            with pq.ParquetFile(file) as parquet:
                for batch in parquet.iter_batches(batch_size=8192, columns=selected):
                    for record in batch.to_pylist(maps_as_pydicts="lossy"):
                        row += 1
                        yield row, None, record
        except (pa.ArrowException, OSError) as exc:
            raise CatalogError(f"cannot read Parquet data: {exc}", file=name, row=row + 1) from None

    return rows(), metadata.num_rows, set(names)


def iter_rows(path: str | os.PathLike[str], wanted: Iterable[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row, record)`` for every row of a tabular file in any of :data:`FORMATS` (Parquet reads
    only the ``wanted`` columns), with the hardened readers used for catalogs; a row that cannot be
    read (malformed JSON, not UTF-8, a wrong number of CSV cells) is a :class:`CatalogError` naming
    the file, row and line. For files that are not catalogs (``eclip.catalog.presets``)."""
    file = Path(path)
    name = os.fspath(path)
    kind = FORMATS.get(file.suffix.lower())
    if kind is None:
        raise CatalogError(f"unknown format '{file.suffix}'; use one of {', '.join(FORMATS)}",
                           file=name)
    records, _, _ = open_records(file, name, kind, {c: c for c in wanted})
    for row, line, record in records:
        if isinstance(record, BadValue):
            raise CatalogError(record.reason, file=name, row=row, line=line)
        yield row, record

