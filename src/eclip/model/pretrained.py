"""Start from a vision-language checkpoint a team already has: CLIP, SigLIP, VisionTextDualEncoder.

``from_checkpoint(directory)`` reads a transformers checkpoint directory and returns a
:class:`~eclip.model.DualEncoder` that gives, before any training, the same normalised image and
text vectors as the checkpoint does in transformers (``get_image_features`` /
``get_text_features``, normalised):

============================  ==============================================================
``config.json`` model_type    what eclip builds
============================  ==============================================================
``clip``                      ``hf`` text tower = ``CLIPTextModel`` pooled as transformers does
                              (the EOS token), ``hf`` image tower = ``CLIPVisionModel`` pooled
                              (post-layernorm CLS); linear projections = ``text_projection`` /
                              ``visual_projection``; ``log_scale`` = ``logit_scale``.
``siglip``                    ``SiglipTextModel`` (its head over the last token) and
                              ``SiglipVisionModel`` (its attention-pooling head), identity
                              projections, ``logit_scale`` and ``logit_bias``.
``vision-text-dual-encoder``  its text and vision models pooled by their ``pooler_output`` (what
                              ``VisionTextDualEncoderModel`` uses), its projections and scale.
============================  ==============================================================

Also taken from the directory: the tokenizer; ``max_length`` = the text config's
``max_position_embeddings`` (less the padding offset of RoBERTa-style position tables); the padding (``text_padding``: ``max_length`` for SigLIP, which was
trained on texts padded to 64 tokens -- its documented usage is
``tokenizer(texts, padding="max_length")``, whose ``input_ids`` and ``attention_mask`` eclip passes
the same way; ``longest`` for CLIP, whose causal text model makes the EOS vector independent of the
padding after it); and the image preprocessing of ``preprocessor_config.json`` (see
:func:`image_settings`), which eclip's ``ImageTransform`` reproduces exactly for the transformers
PIL image processors.

``load_model(directory)`` opens either an eclip model directory or such a checkpoint directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from eclip.catalog.filters import FILTER_BY_CODE
from eclip.errors import ConfigError, ModelError
from eclip.model.config import DualEncoderConfig
from eclip.model.files import guard_model_dir, read_json, weights_error

# model_type in config.json -> the kind of checkpoint from_checkpoint builds
KINDS = {"clip": "clip", "siglip": "siglip", "vision-text-dual-encoder": "vtde"}

# DualEncoderConfig fields a checkpoint start takes from the user (everything else comes from the
# checkpoint): DualEncoder.build(config with init_from) passes those that differ from the defaults
OVERRIDABLE = ("max_length", "text_padding", "text_composer", "max_logit_scale", "init_logit_bias",
               "init_temperature")

# preprocessor_config.json keys that do not change the pixels or that image_settings reads
_HARMLESS_KEYS = {
    "image_processor_type", "processor_class", "feature_extractor_type", "do_convert_rgb",
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
    "do_normalize", "image_mean", "image_std", "default_to_square", "input_data_format",
    "data_format", "return_tensors", "device", "disable_grouping", "image_seq_length",
}


def read_config(directory: str | Path) -> dict:
    """``config.json`` of ``directory`` as a dict, or ModelError naming the file."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ModelError(f"{path} is missing: {directory} is not a model directory")
    data = read_json(path)
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object")
    return data


def checkpoint_kind(directory: str | Path) -> str:
    """``clip``, ``siglip`` or ``vtde`` for a supported checkpoint directory, else ModelError."""
    data = read_config(directory)
    model_type = data.get("model_type")
    if model_type not in KINDS:
        raise ModelError(
            f"{Path(directory) / 'config.json'}: model_type '{model_type}' is not a checkpoint eclip "
            f"can start from; supported: {', '.join(KINDS)} (or an eclip model directory; a single "
            f"vision model goes in model.image_model with image_tower=hf)")
    return KINDS[model_type]


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


def from_checkpoint(directory: str | Path, tokenizer: Any = None, **overrides: Any):
    """A DualEncoder with the weights of a CLIPModel / SiglipModel / VisionTextDualEncoderModel dir.

    The towers keep the checkpoint's pooling and projections, so the model's normalised vectors
    equal the checkpoint's ``get_image_features`` / ``get_text_features`` (normalised), for images
    through ``model.image_transform()`` and texts through ``model.tokenize``. ``overrides``: the
    DualEncoderConfig fields in :data:`OVERRIDABLE` (e.g. ``max_length``, ``text_composer``);
    ``tokenizer``: use this one instead of the directory's. ``config.init_from`` records
    ``directory``; ``save_pretrained`` writes an ordinary eclip directory that rebuilds without it.
    """
    from eclip.model.dual_encoder import DualEncoder
    from eclip.model.tokenizer import load_tokenizer
    from eclip.model.towers import text_positions

    directory = Path(directory).expanduser()
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ConfigError(f"model.{unknown[0]} cannot be set when starting from a checkpoint "
                          f"(model.init_from: {directory}); settable: {', '.join(OVERRIDABLE)}")
    from eclip.model import open_clip

    bias = None
    if open_clip.is_open_clip_dir(directory):  # open_clip_config.json: mapped onto a CLIPModel
        hf, image_fields, bias = open_clip.to_transformers(directory)
        kind = "clip"
    else:
        kind = checkpoint_kind(directory)
        hf = _load_transformers(directory)
        image_fields = image_settings(directory, required=True)
    hf.eval()
    text_cfg, vision_cfg = hf.config.text_config, hf.config.vision_config
    fields: dict[str, Any] = {
        "text_tower": "hf", "text_model": str(directory), "text_pooling": "pooler",
        "text_hf_config": _config_dict(text_cfg), "image_tower": "hf", "image_model": str(directory),
        "image_pooling": "pooler", "image_hf_config": _config_dict(vision_cfg),
        # the positions the text model can number (RoBERTa-style models: fewer than the table)
        "max_length": text_positions(hf.text_model) or int(text_cfg.max_position_embeddings),
        "pretrained": False,
        "init_from": str(directory),
        "text_padding": "max_length" if kind == "siglip" else "longest",
        **image_fields,
    }
    if kind == "siglip":
        fields.update(projection="identity", embed_dim=int(text_cfg.hidden_size))
    else:
        fields.update(projection="linear", embed_dim=int(hf.config.projection_dim))
    scale = float(hf.logit_scale.detach().reshape(()))
    fields["max_logit_scale"] = max(DualEncoderConfig.max_logit_scale, math.exp(scale))
    fields.update(overrides)
    try:
        config = DualEncoderConfig(**fields)
    except ConfigError as err:
        raise ModelError(f"{directory}: {err}") from err
    if tokenizer is None and open_clip.is_open_clip_dir(directory):
        tokenizer = open_clip.load_tokenizer(directory, config.max_length)
    elif tokenizer is None:
        tokenizer = load_tokenizer(config, directory)
    model = DualEncoder._assemble(config, tokenizer, load_weights=False)
    with torch.no_grad():
        _load_module(model.text_tower.model, hf.text_model, directory, "text model")
        _load_module(model.image_tower.model, hf.vision_model, directory, "vision model")
        if kind != "siglip":
            model.text_proj.weight.copy_(hf.text_projection.weight)
            model.image_proj.weight.copy_(hf.visual_projection.weight)
        model.log_scale.copy_(hf.logit_scale.detach().reshape(()))
        if kind == "siglip":
            model.logit_bias.copy_(hf.logit_bias.detach().reshape(()))
        elif bias is not None:
            model.logit_bias.fill_(bias)
    return model


def _load_transformers(directory: Path):
    """The transformers model of a checkpoint directory (eval mode); ModelError saying why not."""
    from transformers import AutoModel

    from eclip.model.towers import quiet_transformers

    guard_model_dir(directory)  # every JSON file readable, no remote code (auto_map)
    try:
        with quiet_transformers():
            hf, info = AutoModel.from_pretrained(str(directory), output_loading_info=True)
    except SafetensorError as err:
        raise weights_error(directory, err) from None
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelError(f"cannot load the checkpoint in {directory}: "
                         f"{' '.join(str(err).split())[:300]}") from None
    bad = sorted(info.get("missing_keys", [])) + sorted(info.get("mismatched_keys", []))
    if bad:
        raise ModelError(f"the weights in {directory} do not match its config.json: {bad[:5]}")
    hf.eval()
    return hf


def load_model(directory: str | Path):
    """An eclip model directory, or a checkpoint directory ``from_checkpoint`` reads; ModelError
    for any other directory (what ``eclip eval --models name=DIR`` opens)."""
    from eclip.model.dual_encoder import DualEncoder

    return DualEncoder.from_pretrained(directory)


def _config_dict(hf_config: Any) -> dict:
    data = hf_config.to_dict()
    data.pop("_name_or_path", None)
    return data


def _load_module(target: torch.nn.Module, source: torch.nn.Module, directory: Path, what: str) -> None:
    try:
        target.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as err:
        raise ModelError(f"the {what} of {directory} does not fit the tower eclip built from its "
                         f"config: {str(err).splitlines()[0]}") from err

