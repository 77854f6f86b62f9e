"""Containment of files named by data: one check wherever a path read from a catalog, a shard index
or an index folder is about to be opened.

A catalog row names its images, a shard index its shards, an index its thumbnails. None of them may
make eclip open a file outside the folder it was given (an absolute path elsewhere, ``../../``,
``~/``, a symlinked file or folder pointing outside): the path is resolved with every link followed
(``Path.resolve()``) and must lie inside the resolved root (``is_relative_to``). A path with a NUL
byte is refused too: no file has such a name (Python raises ``ValueError`` for it).
"""

from __future__ import annotations

import os
from pathlib import Path

from eclip.errors import PathOutsideRoot

OUTSIDE_ROOT = "outside the image root"
BAD_PATH = "bad path"


def printable(path: str | os.PathLike[str]) -> str:
    """``path`` for a one-line message: as is, or escaped where it holds control characters."""
    text = os.fspath(path)
    return text if text.isprintable() else ascii(text)[1:-1]


def resolved_root(root: str | os.PathLike[str]) -> Path:
    """``root`` as the containment check compares against: absolute, every link followed."""
    text = os.fspath(root)
    if "\0" in text:
        raise PathOutsideRoot(BAD_PATH, printable(text), "the folder's name contains a NUL byte")
    return Path(text).expanduser().resolve()


def contained(path: str | os.PathLike[str], root: str | os.PathLike[str], *,
              outside: str = OUTSIDE_ROOT) -> Path:
    """``path`` resolved (links followed), or :class:`PathOutsideRoot` when it does not lie inside
    ``root`` (resolved too) or holds a NUL byte. ``outside`` names the rule in the message.

    Relative paths are taken from the working directory, as ``open`` would."""
    text = os.fspath(path)
    if "\0" in text:
        raise PathOutsideRoot(BAD_PATH, printable(text), "the path contains a NUL byte")
    base = resolved_root(root)
    try:
        resolved = Path(text).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a link loop, an unreadable folder, ...
        raise PathOutsideRoot(outside, printable(text), f"cannot be resolved: {exc}") from None
    if not resolved.is_relative_to(base):
        raise PathOutsideRoot(outside, printable(text),
                              f"resolves to {printable(resolved)}, not under {printable(base)}")
    return resolved


def path_problem(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> PathOutsideRoot | None:
    """``None`` when ``path`` lies inside ``root``, else the :class:`PathOutsideRoot` saying why."""
    try:
        contained(path, root)
    except PathOutsideRoot as exc:
        return exc
    return None
