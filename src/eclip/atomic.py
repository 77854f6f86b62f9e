"""Files that appear whole or not at all: write to a temporary sibling, then rename into place.

A reader (another process, a resumed run, the search service) never sees half a file, and a crash
leaves the previous version in place. The rename is atomic on POSIX file systems when the temporary
file is in the same directory, which is why it is a sibling and not in /tmp.

A temporary sibling is named ``.NAME.tmp-PID-RANDOM`` (PID: the writer's process id), so that a
writer killed before its rename (SIGKILL, power loss) leaves a file the next run can recognise as
stale and remove: :func:`clean_stale_temps`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# When this process started (close enough: when eclip.atomic was first imported); a temporary file
# without a writer's pid counts as stale only when it is older than that.
PROCESS_START = time.time()
# ``.NAME.tmp-PID-RANDOM`` (atomic_path, DualEncoder.save_pretrained), ``.NAME.old-PID-RANDOM`` (a
# replaced directory on its way out), ``.tmp-PID-RANDOM`` (a search index's generation being
# assembled); the forms without a pid are those written before the pid was part of the name
_TEMP = re.compile(r"^\.(?P<name>.*?)\.?(?P<kind>tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]{8,32}$")


def temp_sibling(path: str | os.PathLike[str], kind: str = "tmp") -> Path:
    """A fresh hidden sibling of ``path`` for this process to write (``.NAME.tmp-PID-RANDOM``)."""
    target = Path(path)
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user: alive
        return True
    except (OSError, OverflowError):
        return False
    return True


def clean_stale_temps(folder: str | os.PathLike[str], names: tuple[str, ...] | None = None, *,
                      locked: bool = False) -> list[Path]:
    """Remove the temporary siblings in ``folder`` that a killed writer left behind; returns them.

    A temporary file or folder (see :func:`temp_sibling`) is stale when its writer is gone: the pid
    in its name is not a running process of this machine (and it is older than this process), or,
    for a name without a pid, it is older than this process. ``locked``: the caller holds the
    folder's writer lock (a search index), so every temporary there is stale. ``names``: only the
    temporaries of these file names (e.g. ``("last.pt",)``); None: all of them. A ``.NAME.old-*``
    folder whose ``NAME`` is gone (a kill between the two renames of a replacement) is renamed back
    instead, so the previous version is not lost.
    """
    root = Path(folder)
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or (names is not None and match["name"] not in names):
            continue
        try:
            mtime = entry.lstat().st_mtime
        except FileNotFoundError:
            continue
        if not locked:
            pid = match["pid"]
            if pid is not None and _alive(int(pid)):
                continue  # a writer at work (or a pid reused since: kept, the safe side)
            if mtime >= PROCESS_START:
                continue  # written since this process started: possibly a writer at work
        target = root / match["name"] if match["name"] else None
        try:
            if match["kind"] == "old" and target is not None and not target.exists():
                entry.rename(target)  # the previous version, whose replacement never arrived
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue  # another cleaner was first
        removed.append(entry)
    return removed


def clean_stale_temps_below(folder: str | os.PathLike[str]) -> list[Path]:
    """:func:`clean_stale_temps` in ``folder`` and every folder below it (an eval's output, whose
    tasks write files in subfolders); symlinked folders are not followed. Returns what it removed."""
    removed: list[Path] = []
    for here, dirs, _ in os.walk(folder):
        removed.extend(clean_stale_temps(here))
        dirs[:] = [d for d in dirs if not _TEMP.match(d)]  # a temporary folder is not walked into
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; on a clean exit it replaces ``path``, on an
    exception it is removed. Parent folders are created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
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
