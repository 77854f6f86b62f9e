"""The names of image resampling filters and resize modes: one home for the catalog and the model.

A recipe, a model's ``config.json`` and a transformers ``preprocessor_config.json`` all name how an
image is resized. The recipe and the model config use names (``bicubic``); transformers stores PIL's
integer codes (3). Both forms live here, and every module that checks or converts one reads it from
this table.
"""

from __future__ import annotations

from PIL import Image

# name -> PIL filter; the integer value of each is the code transformers' image processors store
RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
}
# PIL's integer code -> name (the ``resample`` field of a preprocessor_config.json)
FILTER_BY_CODE: dict[int, str] = {int(code): name for name, code in RESAMPLE_FILTERS.items()}

# How an evaluation image is brought to the tower's square input (see catalog/images.py
# ImageTransform): centre crop after a shortest-edge resize, shortest edge then crop, or squash.
RESIZE_MODES = ("crop", "shortest_edge", "squash")


def filter_code(name: str) -> int:
    """PIL's integer code of the filter ``name`` (what transformers writes as ``resample``)."""
    return int(RESAMPLE_FILTERS[name])
