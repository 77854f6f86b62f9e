"""Image preprocessing between eclip's config and ``preprocessor_config.json``.

:func:`image_settings` reads a transformers ``preprocessor_config.json`` into the DualEncoderConfig
fields that reproduce it (``ImageTransform`` then gives transformers' PIL image processors' pixels
exactly), refusing what eclip cannot reproduce; :func:`preprocessor_settings` is what an eclip model
directory's own ``preprocessor_config.json`` holds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from eclip.catalog.filters import FILTER_BY_CODE
from eclip.errors import ModelError
from eclip.model.config import DualEncoderConfig
from eclip.model.files import read_json

# preprocessor_config.json keys that do not change the pixels or that image_settings reads
_HARMLESS_KEYS = {
    "image_processor_type", "processor_class", "feature_extractor_type", "do_convert_rgb",
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
    "do_normalize", "image_mean", "image_std", "default_to_square", "input_data_format",
    "data_format", "return_tensors", "device", "disable_grouping", "image_seq_length",
}


def image_settings(directory: str | Path, required: bool = True) -> dict[str, Any]:
    """The DualEncoderConfig image fields that reproduce ``directory/preprocessor_config.json``.

    ``size.shortest_edge`` + centre ``crop_size`` (CLIP) -> ``image_resize="shortest_edge"``;
    ``size.height == size.width`` without a crop (SigLIP, ViT) -> ``"squash"``; with a crop ->
    ``"squash"`` to ``image_resize_size`` then the crop; ``resample``, ``image_mean`` /
    ``image_std`` (``do_normalize: false`` -> 0 / 1). Settings eclip cannot reproduce raise
    ModelError when ``required`` (the checkpoint's vectors are promised), else are skipped and the
    nearest settings returned. No file: ``{}`` unless ``required``.
    """
    path = Path(directory) / "preprocessor_config.json"
    if not path.is_file():
        if required:
            raise ModelError(f"{path} is missing: the checkpoint's image preprocessing is unknown")
        return {}
    data = read_json(path)

    def refuse(reason: str) -> None:
        if required:
            raise ModelError(f"{path}: {reason}; eclip cannot reproduce this image preprocessing")

    extra = sorted(k for k, v in data.items() if k not in _HARMLESS_KEYS and v not in (None, False))
    if extra:
        refuse(f"unsupported setting(s) {extra}")
    if not data.get("do_resize", True):
        refuse("do_resize is false (eclip always resizes to a square)")
    if data.get("do_rescale", True) and not math.isclose(data.get("rescale_factor", 1 / 255), 1 / 255):
        refuse(f"rescale_factor {data['rescale_factor']} is not 1/255")
    size, crop = data.get("size", 224), data.get("crop_size")
    center_crop = bool(data.get("do_center_crop", False)) and crop is not None
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    out: dict[str, Any] = {}
    if isinstance(size, int):
        size = {"shortest_edge": size} if center_crop else {"height": size, "width": size}
    if "shortest_edge" in size and not size.get("longest_edge"):
        if not center_crop or crop["height"] != crop["width"]:
            refuse("a shortest-edge resize needs a square centre crop")
            out.update(image_resize="squash", image_size=int(size["shortest_edge"]))
        else:
            out.update(image_resize="shortest_edge", image_size=int(crop["height"]),
                       image_resize_size=int(size["shortest_edge"]))
    elif "height" in size and size["height"] == size["width"]:
        side = int(size["height"])
        if center_crop and crop["height"] == crop["width"] and crop["height"] < side:
            out.update(image_resize="squash", image_size=int(crop["height"]), image_resize_size=side)
        else:
            if center_crop and (crop["height"], crop["width"]) != (side, side):
                refuse(f"crop_size {crop} does not fit size {size}")
            out.update(image_resize="squash", image_size=side)
    else:
        refuse(f"size {size} is not a square or a shortest edge")
    resample = data.get("resample", 2)
    if resample in FILTER_BY_CODE:
        out["image_resample"] = FILTER_BY_CODE[resample]
    else:
        refuse(f"resample {resample!r} is not a PIL filter")
    if data.get("do_normalize", True):
        mean, std = data.get("image_mean"), data.get("image_std")
        if isinstance(mean, (int, float)):
            mean = [mean] * 3
        if isinstance(std, (int, float)):
            std = [std] * 3
        if mean is not None and std is not None:
            out.update(image_mean=[float(v) for v in mean], image_std=[float(v) for v in std])
        else:
            refuse("image_mean / image_std are missing")
    else:
        out.update(image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])
    return out


def preprocessor_settings(config: DualEncoderConfig) -> dict[str, Any]:
    """What preprocessor_config.json holds: size, mean, std, and the resize mode, filter and
    pre-crop size where they differ from the defaults (centred square, bicubic)."""
    settings: dict[str, Any] = {"image_size": config.image_size, "image_mean": config.image_mean,
                                "image_std": config.image_std}
    default = DualEncoderConfig()
    for name in ("image_resize", "image_resample", "image_resize_size"):
        if getattr(config, name) != getattr(default, name):
            settings[name] = getattr(config, name)
    return settings
