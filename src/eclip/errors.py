"""One exception family for everything a user can get wrong.

Messages say what was wrong and how to mend it; where a file, row or field is involved they name it.
"""

from __future__ import annotations


class EclipError(Exception):
    """Base class of user-facing errors. The CLI prints the message and exits with status 2."""


class CatalogError(EclipError):
    """A catalog file or one of its rows cannot be used."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 field: str | None = None, line: int | None = None):
        # ``row``: the 1-based row; ``line``: the file's line where it starts, where that differs
        # (a CSV's header is line 1), shown beside it
        at_row = f"row {row}" if row is not None else None
        if line is not None and line != row:
            at_row = f"{at_row} (line {line})" if at_row else f"line {line}"
        where = ", ".join(
            part for part in (
                f"file {file}" if file is not None else None,
                at_row,
                f"field '{field}'" if field is not None else None,
            ) if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.file, self.row, self.field, self.reason = file, row, field, message
        self.line = line


class ImageError(EclipError):
    """An image cannot be decoded safely (missing, corrupt, truncated, too large, ...)."""


class ConfigError(EclipError):
    """A recipe or command-line override is invalid."""


class ModelError(EclipError):
    """A model directory is missing files or does not match the code."""


class PathOutsideRoot(EclipError):
    """A path named by data resolves outside the folder it must stay in, or cannot name a file.

    ``kind`` is the rule (``"outside the image root"``, ``"bad path"``: catalog/paths.py), ``path``
    the path as given (printable: a NUL byte is shown escaped) and ``detail`` why.
    """

    def __init__(self, kind: str, path: str, detail: str):
        super().__init__(f"{kind}: {path} ({detail})")
        self.kind, self.path, self.detail = kind, path, detail


class CheckpointError(EclipError):
    """A checkpoint that cannot be resumed from."""


class SearchIndexError(EclipError):
    """Not an index, a locked index, or a write that cannot be done."""
