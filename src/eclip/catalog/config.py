"""The ``data`` section of a recipe: which catalog, how its columns map, how it is split and composed.

Every command that reads a catalog (train, eval, embed, prepare, index) reads it through this
section, so that ``data.column_map.title=item_name`` means the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eclip.catalog.filters import RESAMPLE_FILTERS
from eclip.config import Range, at_least, check_ranges
from eclip.errors import ConfigError

# every numeric option of the data section and its allowed values (see eclip.config.check_ranges)
DATA_RANGES: dict[str, Range] = {
    "val_fraction": Range(0, 1, high_open=True),
    "shuffle_buffer": at_least(0, "0 or 1: the shards' own order"),
    "max_pixels": at_least(1),
}

# 64 megapixels (8000 x 8000) is far beyond any product photo yet stays below PIL's own warning
# threshold (about 89 megapixels). A larger image is decoded at reduced size (catalog/images.py).
DEFAULT_MAX_PIXELS = 64_000_000


@dataclass
class DataConfig:
    catalog: str | None = None  # a JSONL / CSV / Parquet catalog file
    image_root: str | None = None  # default: the catalog file's folder
    column_map: dict[str, str] = field(default_factory=dict)  # standard field -> user's column
    strict: bool = False  # stop at the first bad row instead of skipping and reporting it
    train_split: str = "train"
    val_split: str = "val"
    # held out by catalog as val when the catalog has no split column, or one without val rows
    val_fraction: float = 0.1
    text: dict[str, Any] = field(default_factory=dict)  # ComposerConfig for training text
    augment: bool = False  # random-resized crops on training images
    # the PIL filter that resizes those crops (bicubic, bilinear, ...; evaluation keeps the model's
    # own filter): bilinear by default, 2.3x the loader's speed of bicubic (docs/BENCHMARKS.md)
    crop_resample: str = "bilinear"
    # prepared shards (`eclip prepare`) to stream instead of reading `catalog` into memory
    shards: str | None = None
    shuffle_buffer: int = 1000  # samples shuffled together per loader worker when streaming shards
    # the most pixels an image is used at: a larger one is decoded at reduced size (JPEG directly at
    # 1/2, 1/4 or 1/8 scale; other formats whole, up to 4 x max_pixels, then reduced), a still
    # larger one dropped as too large (catalog/images.py)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        check_ranges(self, "data", DATA_RANGES)
        if self.crop_resample not in RESAMPLE_FILTERS:
            raise ConfigError(f"data.crop_resample must be one of {', '.join(RESAMPLE_FILTERS)}, "
                              f"got {self.crop_resample!r}")
