"""``load_model``: the one way to open a model, whatever format its folder holds.

=========================================================  ==========================================
what the folder holds                                      how it is read
=========================================================  ==========================================
``config.json`` with ``model_type: eclip-dual-encoder``    ``DualEncoder.from_pretrained`` (eclip's
                                                           own format, written by ``save_pretrained``)
``open_clip_config.json`` (+ weights, tokenizer files)     :mod:`eclip.model.open_clip` maps it onto a
                                                           transformers model, then as below
``config.json`` of a transformers ``clip`` / ``siglip`` /  :mod:`eclip.model.from_transformers`
``vision-text-dual-encoder`` model
=========================================================  ==========================================

Anything else is a ModelError naming the folder and the formats eclip reads. A checkpoint start
(``model.init_from``) goes through :func:`model_from_config`, which passes the recipe's settings
that a start honours (``from_transformers.OVERRIDABLE``).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import eclip.model.open_clip as open_clip
from eclip.errors import ConfigError, ModelError
from eclip.model.config import DualEncoderConfig
from eclip.model.dual_encoder import CONFIG_FILE, MODEL_TYPE, DualEncoder
from eclip.model.files import read_json
from eclip.model.from_transformers import (KINDS, OVERRIDABLE, check_overrides, from_hf_model,
                                           from_transformers, start_config)

FORMATS = ("eclip", "open_clip", "transformers")


def model_format(directory: str | Path) -> str:
    """``eclip``, ``open_clip`` or ``transformers``: what ``directory`` holds; ModelError naming the
    folder and the formats eclip reads when it is none of them."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    model_type = None
    if config_path.is_file():
        data = read_json(config_path)
        if not isinstance(data, dict):
            raise ModelError(f"{config_path} is not a JSON object: {directory} is not a model "
                             f"directory eclip reads")
        model_type = data.get("model_type")
        if model_type == MODEL_TYPE:
            return "eclip"
    if open_clip.is_open_clip_dir(directory):
        return "open_clip"
    if model_type in KINDS:
        return "transformers"
    if not config_path.is_file():
        raise ModelError(f"{config_path} is missing: {directory} is not a model directory eclip "
                         f"reads (an eclip model, a transformers {' / '.join(KINDS)} checkpoint, or "
                         f"an open_clip folder with {open_clip.CONFIG_FILE})")
    raise ModelError(
        f"{config_path}: model_type '{model_type}' is not a checkpoint eclip can start from; "
        f"supported: {', '.join(KINDS)} (or an eclip model directory, or an open_clip folder; a "
        f"single vision model goes in model.image_model with image_tower=hf)")


def load_model(path: str | Path, *, tokenizer: Any = None, **overrides: Any) -> DualEncoder:
    """The DualEncoder in ``path``: an eclip model directory, a transformers CLIP / SigLIP /
    VisionTextDualEncoder checkpoint, or an open_clip folder (see the module's table).

    A checkpoint (not an eclip directory) gives, before any training, the checkpoint's own
    normalised vectors. ``overrides``: DualEncoderConfig fields a checkpoint start takes
    (``from_transformers.OVERRIDABLE``: ``max_length``, ``text_composer``, ...); ``tokenizer``:
    use this one instead of the checkpoint's. An eclip directory takes neither: it is the model
    it was saved as.
    """
    directory = Path(path).expanduser()
    kind = model_format(directory)
    if kind == "eclip":
        if overrides or tokenizer is not None:
            given = sorted(overrides) + (["tokenizer"] if tokenizer is not None else [])
            raise ConfigError(f"{directory} is an eclip model directory: it keeps its own settings, "
                              f"{', '.join(given)} cannot be set when loading it")
        return DualEncoder.from_pretrained(directory)
    if kind == "open_clip":
        return _from_open_clip(directory, tokenizer, overrides)
    return from_transformers(directory, tokenizer, **overrides)


def _from_open_clip(directory: Path, tokenizer: Any, overrides: dict[str, Any]) -> DualEncoder:
    check_overrides(overrides, directory)
    hf, image_fields, bias = open_clip.to_transformers(directory)
    config = start_config(hf, directory, image_fields, overrides)
    if tokenizer is None:
        tokenizer = open_clip.load_tokenizer(directory, config.max_length)
    return from_hf_model(hf, config, tokenizer, directory, logit_bias=bias)


def start_overrides(config: DualEncoderConfig) -> dict[str, Any]:
    """The fields of ``config`` that differ from the defaults and that a checkpoint start honours."""
    default = DualEncoderConfig()
    return {name: getattr(config, name) for name in OVERRIDABLE
            if getattr(config, name) != getattr(default, name)}


def unused_by_start(config: DualEncoderConfig) -> list[str]:
    """The fields ``config`` sets (not the defaults) that a checkpoint start does not use: the
    checkpoint decides them (towers, sizes, pooling, preprocessing). Empty without ``init_from``."""
    if not config.init_from:
        return []
    default = DualEncoderConfig()
    return [field.name for field in dataclasses.fields(config)
            if field.name not in (*OVERRIDABLE, "init_from")
            and getattr(config, field.name) != getattr(default, field.name)]


def model_from_config(config: DualEncoderConfig, tokenizer: Any = None) -> DualEncoder:
    """The model before training that ``config`` (a recipe's ``model`` section) describes: the
    checkpoint of ``config.init_from`` opened by :func:`load_model` with the settings a start
    honours, else ``DualEncoder.build(config)`` (bundled or random weights)."""
    if config.init_from:
        return load_model(config.init_from, tokenizer=tokenizer, **start_overrides(config))
    return DualEncoder.build(config, tokenizer)


def from_checkpoint(directory: str | Path, tokenizer: Any = None, **overrides: Any) -> DualEncoder:
    """Deprecated alias of :func:`load_model` (eclip 0.x); kept for code written against it."""
    warnings.warn("eclip.model.from_checkpoint is deprecated: use eclip.model.load_model(path, ...), "
                  "which reads every format", DeprecationWarning, stacklevel=2)
    return load_model(directory, tokenizer=tokenizer, **overrides)
