"""Convert a transformers vision-language checkpoint into a DualEncoder: CLIP, SigLIP, VisionTextDualEncoder.

``from_transformers(directory)`` reads a transformers checkpoint directory and returns a
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
``max_position_embeddings`` (less the padding offset of RoBERTa-style position tables); the padding
(``text_padding``: ``max_length`` for SigLIP, which was trained on texts padded to 64 tokens -- its
documented usage is ``tokenizer(texts, padding="max_length")``, whose ``input_ids`` and
``attention_mask`` eclip passes the same way; ``longest`` for CLIP, whose causal text model makes
the EOS vector independent of the padding after it); and the image preprocessing of
``preprocessor_config.json`` (see :func:`image_settings`), which eclip's ``ImageTransform``
reproduces exactly for the transformers PIL image processors.

The conversion lives here, out of the model class (as transformers keeps its conversion scripts
out of its modeling code); :func:`eclip.model.load_model` dispatches to it. :func:`from_hf_model`
is the shared second half, also used for open_clip folders once :mod:`eclip.model.open_clip` has
mapped them onto a transformers model.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from eclip.errors import ConfigError, ModelError
from eclip.model.config import DualEncoderConfig
from eclip.model.dual_encoder import DualEncoder
from eclip.model.files import guard_model_dir, read_json, weights_error
from eclip.model.hf import hf_config_to_dict, quiet_transformers, text_positions
from eclip.model.preprocessing import image_settings
from eclip.model.tokenizer import load_tokenizer

# model_type in config.json -> the kind of checkpoint from_transformers builds
KINDS = {"clip": "clip", "siglip": "siglip", "vision-text-dual-encoder": "vtde"}

# DualEncoderConfig fields a checkpoint start takes from the user (everything else comes from the
# checkpoint): eclip.model.load.model_from_config passes those that differ from the defaults
OVERRIDABLE = ("max_length", "text_padding", "text_composer", "max_logit_scale", "init_logit_bias",
               "init_temperature")


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


def check_overrides(overrides: dict[str, Any], directory: Path) -> None:
    """ConfigError naming the first override a checkpoint start does not take."""
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ConfigError(f"model.{unknown[0]} cannot be set when starting from a checkpoint "
                          f"(model.init_from: {directory}); settable: {', '.join(OVERRIDABLE)}")


def from_transformers(directory: str | Path, tokenizer: Any = None, **overrides: Any) -> DualEncoder:
    """A DualEncoder with the weights of a CLIPModel / SiglipModel / VisionTextDualEncoderModel dir.

    The towers keep the checkpoint's pooling and projections, so the model's normalised vectors
    equal the checkpoint's ``get_image_features`` / ``get_text_features`` (normalised), for images
    through ``model.image_transform()`` and texts through ``model.tokenize``. ``overrides``: the
    DualEncoderConfig fields in :data:`OVERRIDABLE` (e.g. ``max_length``, ``text_composer``);
    ``tokenizer``: use this one instead of the directory's. ``config.init_from`` records
    ``directory``; ``save_pretrained`` writes an ordinary eclip directory that rebuilds without it.
    """
    directory = Path(directory).expanduser()
    check_overrides(overrides, directory)
    checkpoint_kind(directory)
    hf = _load_transformers(directory)
    config = start_config(hf, directory, image_settings(directory, required=True), overrides)
    if tokenizer is None:
        tokenizer = load_tokenizer(config, directory)
    return from_hf_model(hf, config, tokenizer, directory)


def hf_kind(hf: Any) -> str:
    """``clip``, ``siglip`` or ``vtde``: the kind of a loaded transformers dual encoder."""
    model_type = getattr(hf.config, "model_type", None)
    if model_type not in KINDS:
        raise ModelError(f"a transformers '{model_type}' model is not a dual encoder eclip reads; "
                         f"supported: {', '.join(KINDS)}")
    return KINDS[model_type]


def start_config(hf: Any, directory: Path, image_fields: dict[str, Any],
                 overrides: dict[str, Any]) -> DualEncoderConfig:
    """The DualEncoderConfig of a model started from ``hf`` (a transformers dual encoder read from
    ``directory``): ``hf`` towers pooled as the checkpoint pools, its projections (or identity for
    SigLIP), its preprocessing (``image_fields``), then the user's ``overrides``."""
    kind = hf_kind(hf)
    text_cfg, vision_cfg = hf.config.text_config, hf.config.vision_config
    fields: dict[str, Any] = {
        "text_tower": "hf", "text_model": str(directory), "text_pooling": "pooler",
        "text_hf_config": hf_config_to_dict(text_cfg), "image_tower": "hf",
        "image_model": str(directory), "image_pooling": "pooler",
        "image_hf_config": hf_config_to_dict(vision_cfg),
        # the positions the text model can number (RoBERTa-style models: fewer than the table)
        "max_length": text_positions(hf.text_model) or int(text_cfg.max_position_embeddings),
        "pretrained": False,
        "init_from": str(directory),
        "text_padding": "max_length" if kind == "siglip" else "longest",
        **image_fields,
    }
    if kind == "siglip":
        # the text head projects to projection_size (open_clip's embed_dim; SigLIP: hidden_size)
        fields.update(projection="identity",
                      embed_dim=int(getattr(text_cfg, "projection_size", None) or text_cfg.hidden_size))
    else:
        fields.update(projection="linear", embed_dim=int(hf.config.projection_dim))
    scale = float(hf.logit_scale.detach().reshape(()))
    fields["max_logit_scale"] = max(DualEncoderConfig.max_logit_scale, math.exp(scale))
    fields.update(overrides)
    try:
        return DualEncoderConfig(**fields)
    except ConfigError as err:
        raise ModelError(f"{directory}: {err}") from err


def from_hf_model(hf: Any, config: DualEncoderConfig, tokenizer: Any, directory: Path,
                  logit_bias: float | None = None) -> DualEncoder:
    """The DualEncoder of ``config`` (from :func:`start_config`) holding ``hf``'s weights: towers,
    projections, logit scale and (SigLIP's, or ``logit_bias`` when given) logit bias."""
    kind = hf_kind(hf)
    hf.eval()
    model = DualEncoder.build(config, tokenizer, load_weights=False)
    with torch.no_grad():
        _load_module(model.text_tower.model, hf.text_model, directory, "text model")
        _load_module(model.image_tower.model, hf.vision_model, directory, "vision model")
        if kind != "siglip":
            model.text_proj.weight.copy_(hf.text_projection.weight)
            model.image_proj.weight.copy_(hf.visual_projection.weight)
        model.log_scale.copy_(hf.logit_scale.detach().reshape(()))
        if kind == "siglip":
            model.logit_bias.copy_(hf.logit_bias.detach().reshape(()))
        elif logit_bias is not None:
            model.logit_bias.fill_(logit_bias)
    return model


def _load_transformers(directory: Path):
    """The transformers model of a checkpoint directory (eval mode); ModelError saying why not."""
    from transformers import AutoModel

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


def _load_module(target: torch.nn.Module, source: torch.nn.Module, directory: Path, what: str) -> None:
    try:
        target.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as err:
        raise ModelError(f"the {what} of {directory} does not fit the tower eclip built from its "
                         f"config: {str(err).splitlines()[0]}") from err
