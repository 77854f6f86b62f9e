"""An eclip model as the transformers dual encoder that gives its vectors: ``CLIPModel``,
``SiglipModel`` or ``VisionTextDualEncoderModel`` (:func:`to_transformers`), checked on random
inputs to give eclip's vectors; refused with a ModelError saying why where none does.

The reverse of :mod:`eclip.model.from_transformers`; used by :mod:`eclip.model.export` and by
:mod:`eclip.model.open_clip`'s writer.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from eclip.errors import ModelError
from eclip.model.hf import quiet_transformers
from eclip.model.image_towers import HFImageTower
from eclip.model.text_towers import HFTextTower

_CHECK_TOL = 1e-4


def export_kind(model) -> str:
    """``clip``, ``siglip`` or ``vtde``: the transformers class ``model`` exports to; ModelError
    saying why when none reproduces its vectors."""
    cfg = model.config
    text, image = model.text_tower, model.image_tower
    if not isinstance(image, HFImageTower):
        raise ModelError(f"cannot export the '{cfg.image_tower}' image tower: only 'hf' image towers "
                         f"(transformers vision models pooled by their pooler_output) map onto a "
                         f"transformers dual encoder that gives the same vectors")
    if not isinstance(text, HFTextTower):
        raise ModelError(f"cannot export the '{cfg.text_tower}' text tower: it is not a transformers model")
    if text.pooling != "pooler":
        raise ModelError(f"cannot export text pooling '{text.pooling}': transformers' dual encoders "
                         f"use the text model's pooler_output, so the exported vectors would differ "
                         f"(train with model.text_pooling=pooler to export)")
    if image.pooling != "pooler":
        raise ModelError(f"cannot export image pooling '{image.pooling}': transformers' dual encoders "
                         f"use the vision model's pooler_output, so the exported vectors would differ")
    text_type = text.model.config.model_type
    image_type = image.model.config.model_type
    if text_type == "clip_text_model" and image_type == "clip_vision_model" and cfg.projection == "linear":
        return "clip"
    if text_type == "siglip_text_model" and image_type == "siglip_vision_model" \
            and cfg.projection == "identity":
        return "siglip"
    if cfg.projection != "linear":
        raise ModelError(f"cannot export identity projections with {text_type} + {image_type} towers: "
                         f"only SiglipModel has no projections, VisionTextDualEncoderModel has linear ones")
    return "vtde"


def to_transformers(model) -> tuple[Any, str]:
    """The transformers model (CLIPModel / SiglipModel / VisionTextDualEncoderModel, eval mode) with
    ``model``'s weights, and its kind; checked to give ``model``'s vectors (ModelError if not)."""
    kind = export_kind(model)
    text_cfg = copy.deepcopy(model.text_tower.model.config)
    vision_cfg = copy.deepcopy(model.image_tower.model.config)
    try:
        hf = _empty_model(kind, text_cfg, vision_cfg, model.config.embed_dim)
    except (ValueError, TypeError) as err:
        raise ModelError(f"cannot export a {text_cfg.model_type} + {vision_cfg.model_type} model: "
                         f"{str(err).splitlines()[0][:200]}") from err
    with torch.no_grad():
        _copy(hf.text_model, model.text_tower.model, "text model")
        _copy(hf.vision_model, model.image_tower.model, "vision model")
        if kind == "siglip":
            hf.logit_scale.copy_(model.log_scale.detach().reshape(1))
            hf.logit_bias.copy_(model.logit_bias.detach().reshape(1))
        else:
            hf.text_projection.weight.copy_(model.text_proj.weight)
            hf.visual_projection.weight.copy_(model.image_proj.weight)
            hf.logit_scale.copy_(model.log_scale.detach().reshape(()))
    hf.eval()
    _check_same_vectors(model, hf)
    return hf, kind


def _empty_model(kind: str, text_cfg, vision_cfg, embed_dim: int):
    from transformers import (CLIPConfig, CLIPModel, SiglipConfig, SiglipModel, VisionTextDualEncoderConfig,
                              VisionTextDualEncoderModel)

    with quiet_transformers():
        if kind == "clip":
            return CLIPModel(CLIPConfig(text_config=text_cfg.to_dict(), vision_config=vision_cfg.to_dict(),
                                        projection_dim=embed_dim))
        if kind == "siglip":
            return SiglipModel(SiglipConfig(text_config=text_cfg.to_dict(), vision_config=vision_cfg.to_dict()))
        return VisionTextDualEncoderModel(VisionTextDualEncoderConfig.from_vision_text_configs(
            vision_cfg, text_cfg, projection_dim=embed_dim))


def _copy(target: torch.nn.Module, source: torch.nn.Module, what: str) -> None:
    try:
        target.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as err:
        raise ModelError(f"cannot export the {what}: the transformers class does not hold the same "
                         f"weights ({str(err).splitlines()[0][:200]})") from err


def _check_same_vectors(model, hf) -> None:
    """Refuse an export whose vectors differ from eclip's on random pixels and token ids."""
    gen = torch.Generator().manual_seed(0)
    cfg = model.image_tower.model.config
    side = getattr(cfg, "image_size", model.config.image_size)
    side = side[0] if isinstance(side, (list, tuple)) else side
    pixels = torch.randn(2, getattr(cfg, "num_channels", 3), side, side, generator=gen)
    tokens = model.tokenize(["a red cotton shirt", "shoes"])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ours_image = model.encode_image(pixels)
            ours_text = model.encode_text(**tokens)
            theirs_image = F.normalize(_pooled(hf.get_image_features(pixel_values=pixels)), dim=-1)
            theirs_text = F.normalize(_pooled(hf.get_text_features(**tokens)), dim=-1)
    finally:
        model.train(was_training)
    for what, a, b in (("image", ours_image, theirs_image), ("text", ours_text, theirs_text)):
        diff = (a - b).abs().max().item()
        if not diff <= _CHECK_TOL:
            raise ModelError(f"cannot export: the {type(hf).__name__}'s {what} vectors differ from eclip's "
                             f"by {diff:.2e} (its pooling or layers are not eclip's)")


def _pooled(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output
