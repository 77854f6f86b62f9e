"""The ``data`` section of a recipe: which catalog, how its columns map, how it is split and composed.

Every command that reads a catalog (train, eval, embed, prepare, index) reads it through this
section, so that ``data.column_map.title=item_name`` means the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eclip.config import Range, at_least, check_ranges

# every numeric option of the data section and its allowed values (see eclip.config.check_ranges)
DATA_RANGES: dict[str, Range] = {
    "val_fraction": Range(0, 1, high_open=True),
    "shuffle_buffer": at_least(0, "0 or 1: the shards' own order"),
}


@dataclass
class DataConfig:
    catalog: str | None = None  # a JSONL / CSV / Parquet catalog file
    image_root: str | None = None  # default: the catalog file's folder
    column_map: dict[str, str] = field(default_factory=dict)  # standard field -> user's column
    strict: bool = False  # stop at the first bad row instead of skipping and reporting it
    train_split: str = "train"
    val_split: str = "val"
    val_fraction: float = 0.1  # used when the catalog has no split column: held out by catalog
    text: dict[str, Any] = field(default_factory=dict)  # ComposerConfig for training text
    augment: bool = False  # random-resized crops on training images
    # prepared shards (`eclip prepare`) to stream instead of reading `catalog` into memory
    shards: str | None = None
    shuffle_buffer: int = 1000  # samples shuffled together per loader worker when streaming shards

    def __post_init__(self) -> None:
        check_ranges(self, "data", DATA_RANGES)
