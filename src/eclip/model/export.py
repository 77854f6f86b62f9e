"""Hand a trained eclip model back in the formats other tools load, without eclip.

``export_model(model, out_dir, format="transformers")`` writes a transformers model directory:

* a model started from a CLIP checkpoint (``hf`` towers holding ``CLIPTextModel`` /
  ``CLIPVisionModel`` pooled by their ``pooler_output``, linear projections) -> ``CLIPModel``;
* from a SigLIP checkpoint (``SiglipTextModel`` / ``SiglipVisionModel``, identity projections)
  -> ``SiglipModel`` (logit scale and bias included);
* any other model whose two towers are transformers models pooled by their ``pooler_output``,
  with linear projections -> ``VisionTextDualEncoderModel``;

with the tokenizer (``model_max_length`` = eclip's ``max_length``) and an image processor of
eclip's preprocessing (CLIP- or SigLIP-style; see below), so that
``AutoModel.from_pretrained(out_dir).get_image_features / get_text_features`` (normalised) give
eclip's vectors. Before anything is written the exported model is checked against eclip on random
inputs; an export that cannot reproduce eclip's vectors is refused with a ModelError saying why
(the EfficientNet or eclip ``vit`` towers, mean / CLS text pooling, identity projections outside
SigLIP, ...).

``format="onnx"`` writes each tower as an ONNX graph for ONNX Runtime (see ``eclip.model.onnx``).
``format="open_clip"`` writes an open_clip folder (``open_clip_config.json``,
``open_clip_model.safetensors``, tokenizer files) for CLIP-architecture models; see
:mod:`eclip.model.open_clip`.

``format="sentence-transformers"`` writes the same model as a sentence-transformers directory (its
``Transformer`` module, which calls ``get_text_features`` / ``get_image_features``, then
``Normalize``): ``SentenceTransformer(out_dir).encode(texts)`` and ``.encode([PIL images])`` give
eclip's unit vectors.

Images: for models with ``image_resize`` ``shortest_edge`` or ``squash`` the exported processor
gives eclip's pixels exactly (transformers' PIL backend). eclip's default ``crop`` (the centred
square resampled in one step) has no transformers equivalent; it is exported as shortest edge =
``image_size`` + centre crop, whose pixels differ slightly at the crop's edges (resampling windows
clipped differently); vectors for the same pixel tensors are exact either way.
SigLIP texts: the exported tokenizer is used with ``padding="max_length"`` (eclip's
``text_padding``), which the sentence-transformers export sets for you.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from eclip.catalog.filters import filter_code
from eclip.errors import ModelError

FORMATS = ("transformers", "sentence-transformers", "onnx", "open_clip")
_CHECK_TOL = 1e-4


def export_model(model, out_dir: str | Path, format: str = "transformers") -> Path:
    """Write ``model`` (a DualEncoder) to ``out_dir`` as ``transformers`` or
    ``sentence-transformers``; returns ``out_dir``. ModelError when the format cannot give eclip's
    vectors, or when ``out_dir`` exists and is not empty."""
    if format not in FORMATS:
        raise ModelError(f"unknown export format '{format}'; choose one of: {', '.join(FORMATS)}")
    if format == "onnx":  # each tower as an ONNX graph (eclip.model.onnx)
        from eclip.model.onnx import export_onnx

        return export_onnx(model, out_dir)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"cannot export to {out}: it exists and is not an empty directory")
    if format == "open_clip":  # see eclip.model.open_clip
        from eclip.model.open_clip import write_open_clip

        write_open_clip(model, out)
        return out
    hf_model, kind = to_transformers(model)
    if format == "transformers":
        _write_transformers(model, hf_model, kind, out)
        return out
    tmp = Path(tempfile.mkdtemp(prefix="eclip-export-"))
    try:
        _write_transformers(model, hf_model, kind, tmp / "hf")
        _write_sentence_transformers(model, tmp / "hf", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_kind(model) -> str:
    """``clip``, ``siglip`` or ``vtde``: the transformers class ``model`` exports to; ModelError
    saying why when none reproduces its vectors."""
    from eclip.model.towers import HFImageTower, HFTextTower

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

    from eclip.model.towers import quiet_transformers

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


def _image_processor(model, kind: str):
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    cfg = model.config
    common = dict(image_mean=list(cfg.image_mean), image_std=list(cfg.image_std),
                  resample=filter_code(cfg.image_resample), do_rescale=True, rescale_factor=1 / 255,
                  do_normalize=True, do_convert_rgb=True)
    crop = {"height": cfg.image_size, "width": cfg.image_size}
    if cfg.image_resize == "squash":
        side = cfg.image_resize_size or cfg.image_size
        if kind == "siglip" and side == cfg.image_size:
            return SiglipImageProcessorPil(size={"height": side, "width": side}, **common)
        return CLIPImageProcessorPil(size={"height": side, "width": side}, crop_size=crop,
                                     do_center_crop=side != cfg.image_size, **common)
    side = cfg.image_resize_size or cfg.image_size  # shortest_edge (and crop: its nearest equivalent)
    return CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size=crop, do_center_crop=True, **common)


def _write_transformers(model, hf, kind: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.model_max_length = model.config.max_length
    tokenizer.save_pretrained(str(out))
    _image_processor(model, kind).save_pretrained(str(out))


def _write_sentence_transformers(model, hf_dir: Path, out: Path) -> None:
    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules import Normalize, Transformer
    except ImportError as err:
        raise ModelError("the sentence-transformers export needs the sentence-transformers package "
                         f"(pip install sentence-transformers): {err}") from err
    text_kwargs: dict[str, Any] = {"max_length": model.config.max_length, "truncation": True}
    if model.config.text_padding == "max_length":
        text_kwargs["padding"] = "max_length"
    transformer = Transformer(str(hf_dir), processing_kwargs={"text": text_kwargs},
                              max_seq_length=model.config.max_length)
    SentenceTransformer(modules=[transformer, Normalize()], device="cpu").save(str(out))
