"""A folder written as parts and a manifest naming them, the manifest last (the commit point): the
one reader of such manifests. ``eclip prepare``'s ``index.json`` (tar shards,
:mod:`eclip.catalog.shards`) and ``eclip embed --engine ray``'s ``manifest.json`` (Parquet parts,
:mod:`eclip.encode.listings`) are both read here.

A manifest is a JSON object with ``format``, ``version`` and a list of parts, each naming a file of
the folder. Every problem is one :class:`~eclip.errors.EclipError` that names the manifest and the
command to run again: the manifest missing (the command did not finish there), not JSON, of another
format or version, a part that is not a plain file name, or that resolves (links followed) outside
the folder; the caller's ``part`` function turns each entry into its own record, and a
``ValueError`` / ``KeyError`` / ``TypeError`` it raises is reported the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from eclip.catalog.paths import PathOutsideRoot, contained
from eclip.errors import EclipError

T = TypeVar("T")
_INVALID = (ValueError, KeyError, TypeError, AttributeError, RecursionError)


@dataclass
class Manifest(Generic[T]):
    path: Path  # the manifest file
    data: dict[str, Any]
    parts: list[T]  # in the manifest's order, each from the caller's ``part``
    files: list[Path]  # each part's file, checked to lie in the folder


def read_manifest(folder: str | Path, name: str, *, format: str, what: str, command: str,
                  parts_key: str = "parts", version: int | None = None,
                  part: Callable[[dict[str, Any]], T] = dict,
                  outside: str = "outside the folder") -> Manifest[T]:
    """``folder/name`` read and checked (see the module docstring); ``what`` names the manifest in
    errors (``shard index``), ``command`` the command that writes it (``eclip prepare``),
    ``outside`` the rule a part that resolves elsewhere breaks."""
    folder = Path(folder)
    path = folder / name
    if not path.is_file():
        raise EclipError(f"{folder} has no {name}: it is not a {what}'s folder, or `{command}` did "
                         "not finish there; run it again")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != format:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"format is {found!r}, expected {format!r}")
        if version is not None and data.get("version") != version:
            raise ValueError(f"version {data.get('version')!r}; this eclip reads {version}")
        entries = data[parts_key]
        parts = [part(entry) for entry in entries]
        files = [_part_file(folder, entry["name"], outside) for entry in entries]
    except (PathOutsideRoot, *_INVALID) as exc:
        raise EclipError(f"{path} is not a valid {what} ({exc}); run `{command}` again") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EclipError(f"{path} cannot be read ({exc}); run `{command}` again") from None
    return Manifest(path, data, parts, files)


def _part_file(folder: Path, name: Any, outside: str) -> Path:
    """A part's file: a plain file name of ``folder``, inside it once links are followed."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"part {name!r} is not a file of {folder}")
    path = folder / name
    contained(path, folder, outside=outside)
    return path
