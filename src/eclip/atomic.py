"""Files that appear whole or not at all: write to a temporary sibling, then rename into place.

A reader (another process, a resumed run, the search service) never sees half a file, and a crash
leaves the previous version in place. The rename is atomic on POSIX file systems when the temporary
file is in the same directory, which is why it is a sibling and not in /tmp.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; on a clean exit it replaces ``path``, on an
    exception it is removed. Parent folders are created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, fsync: bool = True,
                encoding: str | None = None) -> Iterator[IO[Any]]:
    """Yields a file open for writing (``mode`` "wb" or "w"; text in UTF-8 unless ``encoding``) at
    a temporary sibling of ``path``; on a clean exit it is flushed, with ``fsync`` synced to disk
    (a crash just after the rename cannot leave an empty file), and renamed onto ``path``."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes a whole file: mode must be 'wb' or 'w', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """``path`` holds ``text`` (UTF-8), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> Path:
    """``path`` holds ``data`` as JSON (UTF-8, non-ASCII kept), written atomically."""
    return write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")
