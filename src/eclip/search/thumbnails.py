"""Listing photos copied into the index as JPEG thumbnails, named by the hash of their bytes.

The index is self-contained (the service never opens the catalog's image folder), and files are
shared by generations: a thumbnail is written once and removed when no kept generation names it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

from eclip.atomic import atomic_open
from eclip.catalog.config import DEFAULT_MAX_PIXELS
from eclip.catalog.images import load_image
from eclip.catalog.paths import PathOutsideRoot, contained
from eclip.errors import ImageError

NAME = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{40}\.jpg$")


class ThumbnailStore:
    """``put(photo) -> name``; ``path(name)`` only for names of the form ``ab/<sha1>.jpg``."""

    def __init__(self, root: str | Path, size: int = 256, quality: int = 85, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root = Path(root)
        self.max_pixels = max_pixels  # data.max_pixels: larger photos are decoded at reduced size
        self.size = size
        self.quality = quality

    def put(self, source: str | os.PathLike[str]) -> str:
        """Decode ``source`` safely, shrink it to fit ``size``, store it; ImageError if unusable."""
        image = load_image(source, max_pixels=self.max_pixels)
        image.thumbnail((self.size, self.size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=self.quality)
        data = buffer.getvalue()
        digest = hashlib.sha1(data).hexdigest()
        name = f"{digest[:2]}/{digest}.jpg"
        target = self.root / name
        if not target.exists():
            with atomic_open(target, "wb") as handle:
                handle.write(data)
        return name

    def put_all(self, sources: list[str]) -> tuple[list[str], list[str]]:
        """Names of the usable photos, and the reasons the others were left out."""
        names, problems = [], []
        for source in sources:
            try:
                names.append(self.put(source))
            except ImageError as exc:
                problems.append(str(exc))
        return names, problems

    def path(self, name: str) -> Path | None:
        """The file of a stored thumbnail; None for anything that is not a stored name, or whose
        file is not inside the store once links are followed (a planted symlink is never served)."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            return None
        try:
            path = contained(self.root / name, self.root, outside="outside the thumbnail store")
        except PathOutsideRoot:
            return None
        return path if path.is_file() else None

    def prune(self, keep: set[str]) -> int:
        """Delete thumbnails not in ``keep`` (and stray temporary files); returns how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for file in self.root.glob("*/*"):
            name = f"{file.parent.name}/{file.name}"
            if name not in keep:
                file.unlink(missing_ok=True)
                removed += 1
        return removed
