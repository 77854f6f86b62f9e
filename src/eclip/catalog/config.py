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
    "hard_neighbours": at_least(0, "0: no neighbourhoods, the random batches"),
    "hard_refresh_epochs": at_least(0, "0: the start model's vectors for the whole run"),
    "hard_negative_ceiling": Range(-1, 1, note="null: no ceiling"),
}

CATALOG_SOURCES = ("given", "mined", "given+mined")  # data.catalog_source

# every numeric option of data.mining (eclip.mining: catalogs mined from a model's vectors)
MINING_RANGES: dict[str, Range] = {
    "neighbours": at_least(1),
    "max_group_size": at_least(2),
    "null_quantile": Range(0, 1, low_open=True, high_open=True),
    "null_sample": at_least(10),
    "target_precision": Range(0, 1, low_open=True),
    "rounds": at_least(1),
    "image_threshold": Range(-1, 1, note="null: from the data"),
    "text_threshold": Range(-1, 1, note="null: from the data"),
}


@dataclass
class MiningConfig:
    """``data.mining``: how listings that are the same product are grouped (eclip/mining/)."""

    neighbours: int = 10  # k of the mutual k-nearest-neighbour graph
    max_group_size: int = 8  # no mined group grows past this: no giant component
    block_by_category: bool = True  # candidates only within one category path, where there is one
    null_quantile: float = 0.9  # the label-free threshold rule (eclip/mining/thresholds.py)
    null_sample: int = 20000  # listings whose nearest certainly-different neighbour measures it
    target_precision: float = 0.95  # given+mined: thresholds calibrated on the given ids to this
    image_threshold: float | None = None  # fixed thresholds instead of the rules above
    text_threshold: float | None = None
    rounds: int = 1  # train, mine again with the trained model, train again from the start model
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, "data.mining", MINING_RANGES)

BATCHING = ("random", "hard")  # data.batching (train/sampler.py: the batch orders)
HARD_VECTORS = ("both", "image", "text")  # data.hard_vectors: which vectors place a catalog

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
    # where catalog ids come from: the file's (given), groups mined from the start model's vectors
    # with the file's ids ignored (mined), or the file's where present and mined for the rest
    # (given+mined; the given ids calibrate the mining thresholds). eclip/mining/
    catalog_source: str = "given"
    mining: MiningConfig = field(default_factory=MiningConfig)
    # how catalog chunks are put together into batches: `random`, or `hard`: each batch grown from
    # a catalog's neighbourhood (same category path first, then the nearest catalog centroids of
    # the model's vectors), so that its negatives look alike (train/sampler.py HardNegativeOrder;
    # with `shards`, among the catalogs of each shuffle buffer: train/neighbours.py BufferOrder)
    batching: str = "random"
    hard_neighbours: int = 8  # nearest catalogs per catalog; 0: no neighbourhoods (random batches)
    hard_by_category: bool = True  # neighbours of the same category path come first
    hard_vectors: str = "both"  # the vectors whose catalog centroids are compared: both | image | text
    # 0: the neighbourhoods of the start model for the whole run; N: recomputed with the model being
    # trained every N epochs
    hard_refresh_epochs: int = 0
    # catalogs whose centroids' cosine is above this are likely unlabelled duplicates: never each
    # other's neighbours, and kept out of one batch where another chunk fits (null: no ceiling)
    hard_negative_ceiling: float | None = None

    def __post_init__(self) -> None:
        check_ranges(self, "data", DATA_RANGES)
        if self.catalog_source not in CATALOG_SOURCES:
            raise ConfigError(f"data.catalog_source must be one of {', '.join(CATALOG_SOURCES)}, "
                              f"got {self.catalog_source!r}")
        if self.crop_resample not in RESAMPLE_FILTERS:
            raise ConfigError(f"data.crop_resample must be one of {', '.join(RESAMPLE_FILTERS)}, "
                              f"got {self.crop_resample!r}")
        for key, allowed in (("batching", BATCHING), ("hard_vectors", HARD_VECTORS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"data.{key} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, key)!r}")
