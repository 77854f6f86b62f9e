"""open_clip checkpoint folders in and out, without open_clip (it needs torchvision).

A hub-style open_clip folder holds ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``),
``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``, read with
``torch.load(weights_only=True)``) and tokenizer files. :func:`to_transformers` maps an OpenAI-style
ViT CLIP of open_clip (its ``VisionTransformer`` image tower and causal text transformer pooled at
the highest token id, i.e. the end-of-text token) onto a transformers ``CLIPModel`` of the same
architecture, whose normalised ``get_image_features`` / ``get_text_features`` equal open_clip's
``encode_image`` / ``encode_text``; :func:`eclip.model.load_model` builds eclip's
model from it as from any CLIP checkpoint (:func:`eclip.model.from_transformers.from_hf_model`).
:func:`to_open_clip` is the exact inverse, used by
``export_model(..., format="open_clip")``.

Layout mapping (open_clip -> transformers), per residual block ``i`` of ``transformer.resblocks``
(text) and ``visual.transformer.resblocks`` (image): ``ln_1`` -> ``layer_norm1``,
``attn.in_proj_{weight,bias}`` split in three -> ``self_attn.{q,k,v}_proj``, ``attn.out_proj`` ->
``self_attn.out_proj``, ``ln_2`` -> ``layer_norm2``, ``mlp.c_fc`` / ``mlp.c_proj`` -> ``mlp.fc1`` /
``mlp.fc2``. Text: ``token_embedding``, ``positional_embedding``, ``ln_final`` ->
``final_layer_norm``, ``text_projection`` (a ``width x embed`` matrix) -> ``text_projection.weight``
transposed. Image: ``visual.conv1`` -> ``patch_embedding``, ``visual.class_embedding``,
``visual.positional_embedding``, ``visual.ln_pre`` -> ``pre_layrnorm``, ``visual.ln_post`` ->
``post_layernorm``, ``visual.proj`` -> ``visual_projection.weight`` transposed. ``logit_scale``
(and ``logit_bias`` when present) as they are.

open_clip's SigLIP ports (a timm SigLIP ViT with MAP pooling and open_clip's bidirectional text
transformer pooled at the last position: ``ViT-B-16-SigLIP``, the SigLIP2 ports, Marqo-Ecommerce,
Marqo-FashionSigLIP) map onto a transformers ``SiglipModel`` instead; see
:mod:`eclip.model.open_clip_siglip`, which holds that family's checks and key map.

Anything else in the config (other timm towers or pools, Hugging Face text towers, layer scale,
attentional pooling, CoCa, ...) is refused with a ModelError naming the field: eclip would not
give the checkpoint's vectors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

import eclip.model.open_clip_siglip as siglip
from eclip.errors import ModelError

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TOKENIZER_HINT = ("tokenizer.json (+ tokenizer_config.json), or vocab.json + merges.txt "
                  "(the CLIP BPE files)")

# open_clip config fields and the values eclip reproduces (absent = the default, which is fine)
_VISION_DEFAULTS = {
    "ls_init_value": None, "patch_dropout": 0.0, "attentional_pool": False, "attn_pooler_queries": 256,
    "no_ln_pre": False, "pos_embed_type": "learnable", "final_ln_after_pool": False,
    "pool_type": "tok", "output_tokens": False, "act_kwargs": None, "norm_kwargs": None,
    "global_average_pool": False, "input_patchnorm": False, "timm_model_name": None,
    "image_size": None, "layers": None, "width": None, "patch_size": None, "head_width": 64,
    "mlp_ratio": 4.0, "attn_pooler_heads": 8, "timm_model_pretrained": False, "timm_pool": "avg",
    "timm_proj": "linear", "timm_proj_bias": False, "timm_drop": 0.0, "timm_drop_path": None,
    "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
}
_VISION_FREE = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio",
                "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained", "timm_pool",
                "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path", "patch_dropout",
                "output_tokens"}
_TEXT_DEFAULTS = {
    "hf_model_name": None, "hf_tokenizer_name": None, "hf_model_pretrained": True,
    "ls_init_value": None, "embed_cls": False, "pad_id": 0, "no_causal_mask": False,
    "final_ln_after_pool": False, "pool_type": "argmax", "proj_bias": False, "proj_type": "linear",
    "output_tokens": False, "act_kwargs": None, "norm_kwargs": None, "tokenizer_kwargs": None,
    "context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12,
    "mlp_ratio": 4.0, "hf_proj_type": "mlp", "hf_pooler_type": "mean_pooler", "proj": None,
    "pooler_type": None, "attn_mask": True, "eos_id": 2, "tokenizer_mode": None,
    "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
}
_TEXT_FREE = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio",
              "hf_proj_type", "hf_pooler_type", "hf_model_pretrained", "tokenizer_kwargs",
              "output_tokens", "pad_id", "hf_tokenizer_name", "proj", "pooler_type", "attn_mask",
              "eos_id"}
_MODEL_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "cast_dtype",
               "init_logit_scale", "init_logit_bias", "custom_text", "nonscalar_logit_scale"}
_RESIZE = {"shortest": "shortest_edge", "squash": "squash"}


def is_open_clip_dir(directory: str | Path) -> bool:
    """Whether ``directory`` is an open_clip checkpoint folder (has ``open_clip_config.json``)."""
    return (Path(directory) / CONFIG_FILE).is_file()


def read_config(directory: str | Path) -> dict:
    """``open_clip_config.json`` as ``{"model_cfg": ..., "preprocess_cfg": ...}``; ModelError naming
    the file when it is unreadable or has no ``model_cfg``."""
    path = Path(directory) / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: cannot read it ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg"), dict):
        raise ModelError(f"{path}: no 'model_cfg' object (not an open_clip checkpoint config)")
    data.setdefault("preprocess_cfg", {})
    if not isinstance(data["preprocess_cfg"], dict):
        raise ModelError(f"{path}: 'preprocess_cfg' is not an object")
    return data


def check_supported(model_cfg: dict, where: str) -> None:
    """ModelError naming the first part of an open_clip ``model_cfg`` eclip cannot reproduce."""
    for key in model_cfg:
        if key not in _MODEL_KEYS:
            raise ModelError(f"{where}: model_cfg.{key} is not supported (eclip reads OpenAI-style "
                             f"ViT CLIPs and timm-tower SigLIPs)")
    if siglip.is_siglip(model_cfg):
        siglip.check_supported(model_cfg, where)
        return
    for key in model_cfg:
        if key not in _MODEL_KEYS:
            raise ModelError(f"{where}: model_cfg.{key} is not supported (eclip reads OpenAI-style "
                             f"ViT CLIPs: a VisionTransformer image tower and a causal text transformer)")
    if model_cfg.get("nonscalar_logit_scale"):
        raise ModelError(f"{where}: model_cfg.nonscalar_logit_scale is not supported")
    for part, cfg, defaults, free in (("vision_cfg", model_cfg.get("vision_cfg"), _VISION_DEFAULTS, _VISION_FREE),
                                      ("text_cfg", model_cfg.get("text_cfg"), _TEXT_DEFAULTS, _TEXT_FREE)):
        if not isinstance(cfg, dict):
            raise ModelError(f"{where}: model_cfg.{part} is missing or not an object")
        for key, value in cfg.items():
            if key not in defaults:
                raise ModelError(f"{where}: model_cfg.{part}.{key} is not supported by eclip")
            if key not in free and value != defaults[key]:
                raise ModelError(f"{where}: model_cfg.{part}.{key} = {value!r} is not supported by eclip "
                                 f"(it reproduces {defaults[key]!r}); this open_clip architecture "
                                 f"cannot be loaded")
    vision = model_cfg["vision_cfg"]
    if not isinstance(vision.get("layers", 12), int):
        raise ModelError(f"{where}: model_cfg.vision_cfg.layers {vision['layers']!r} is a ResNet "
                         f"(ModifiedResNet) image tower, which eclip does not support")
    if isinstance(vision.get("image_size", 224), (list, tuple)) or \
            isinstance(vision.get("patch_size", 16), (list, tuple)):
        raise ModelError(f"{where}: model_cfg.vision_cfg image_size / patch_size must be single "
                         f"integers (square images and patches)")


def hf_configs(model_cfg: dict):
    """The transformers ``CLIPConfig`` of the same architecture as open_clip ``model_cfg``."""
    from transformers import CLIPConfig

    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    v_width = int(vision.get("width", 768))
    t_width = int(text.get("width", 512))
    text_config = dict(
        vocab_size=int(text.get("vocab_size", 49408)), hidden_size=t_width,
        intermediate_size=int(t_width * float(text.get("mlp_ratio", 4.0))),
        num_hidden_layers=int(text.get("layers", 12)), num_attention_heads=int(text.get("heads", 8)),
        max_position_embeddings=int(text.get("context_length", 77)), hidden_act=act,
        layer_norm_eps=1e-5, projection_dim=int(model_cfg["embed_dim"]),
        # eos_token_id 2 = transformers' legacy pooling at the highest token id (open_clip's argmax)
        eos_token_id=2, bos_token_id=1, pad_token_id=1)
    vision_config = dict(
        hidden_size=v_width, intermediate_size=int(v_width * float(vision.get("mlp_ratio", 4.0))),
        num_hidden_layers=int(vision.get("layers", 12)),
        num_attention_heads=v_width // int(vision.get("head_width", 64)),
        image_size=int(vision.get("image_size", 224)), patch_size=int(vision.get("patch_size", 16)),
        hidden_act=act, layer_norm_eps=1e-5, projection_dim=int(model_cfg["embed_dim"]))
    return CLIPConfig(text_config=text_config, vision_config=vision_config,
                      projection_dim=int(model_cfg["embed_dim"]))


def load_state(directory: Path) -> dict[str, torch.Tensor]:
    """The weights of an open_clip folder (safetensors first, else the PyTorch file, no pickle)."""
    for name in WEIGHTS_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(path))
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - safetensors / torch raise assorted errors
            raise ModelError(f"{path}: cannot read the weights ({' '.join(str(err).split())[:200]})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        return {k.removeprefix("module."): v for k, v in state.items()}
    raise ModelError(f"{directory} has no weights: add {' or '.join(WEIGHTS_FILES)}")


def _blocks(prefix: str, count: int, out_prefix: str) -> list[tuple[str, str, str]]:
    """(open_clip key, transformers key, how) for ``count`` residual blocks."""
    pairs = []
    for i in range(count):
        src, dst = f"{prefix}.resblocks.{i}", f"{out_prefix}.encoder.layers.{i}"
        for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            pairs += [(f"{src}.{a}.weight", f"{dst}.{b}.weight", "same"),
                      (f"{src}.{a}.bias", f"{dst}.{b}.bias", "same")]
        pairs += [(f"{src}.attn.in_proj_weight", f"{dst}.self_attn.{{}}_proj.weight", "qkv"),
                  (f"{src}.attn.in_proj_bias", f"{dst}.self_attn.{{}}_proj.bias", "qkv")]
    return pairs


def _key_map(model_cfg: dict) -> list[tuple[str, str, str]]:
    text_layers = int(model_cfg["text_cfg"].get("layers", 12))
    vision_layers = int(model_cfg["vision_cfg"].get("layers", 12))
    pairs = [
        ("token_embedding.weight", "text_model.embeddings.token_embedding.weight", "same"),
        ("positional_embedding", "text_model.embeddings.position_embedding.weight", "same"),
        ("ln_final.weight", "text_model.final_layer_norm.weight", "same"),
        ("ln_final.bias", "text_model.final_layer_norm.bias", "same"),
        ("text_projection", "text_projection.weight", "transpose"),
        ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", "same"),
        ("visual.class_embedding", "vision_model.embeddings.class_embedding", "same"),
        ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", "same"),
        ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight", "same"),
        ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias", "same"),
        ("visual.ln_post.weight", "vision_model.post_layernorm.weight", "same"),
        ("visual.ln_post.bias", "vision_model.post_layernorm.bias", "same"),
        ("visual.proj", "visual_projection.weight", "transpose"),
        ("logit_scale", "logit_scale", "scalar"),
    ]
    pairs += _blocks("transformer", text_layers, "text_model")
    pairs += _blocks("visual.transformer", vision_layers, "vision_model")
    return pairs


def to_hf_state(state: dict[str, torch.Tensor], model_cfg: dict, where: str) -> dict[str, torch.Tensor]:
    """open_clip state dict -> transformers ``CLIPModel`` state dict; ModelError naming a missing
    or unexpected weight."""
    out: dict[str, torch.Tensor] = {}
    used = set()
    for src, dst, how in _key_map(model_cfg):
        if src not in state:
            raise ModelError(f"{where}: weight '{src}' is missing (the weights do not match "
                             f"open_clip_config.json)")
        value = state[src]
        used.add(src)
        if how == "transpose":
            out[dst] = value.t().contiguous()
        elif how == "qkv":
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[dst.format(name)] = part.contiguous()
        else:
            out[dst] = value.reshape(()) if how == "scalar" else value
    if "logit_bias" in state:
        used.add("logit_bias")
    siglip.check_all_mapped(state, used, where)
    return out


def from_hf_state(hf_state: dict[str, torch.Tensor], model_cfg: dict) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_hf_state` (transformers ``CLIPModel`` -> open_clip state dict)."""
    out: dict[str, torch.Tensor] = {}
    for src, dst, how in _key_map(model_cfg):
        if how == "transpose":
            out[src] = hf_state[dst].t().contiguous()
        elif how == "qkv":
            out[src] = torch.cat([hf_state[dst.format(n)] for n in "qkv"], dim=0).contiguous()
        else:
            out[src] = hf_state[dst].reshape(()).clone() if how == "scalar" else hf_state[dst].clone()
    return out


def image_settings(preprocess_cfg: dict, image_size: int, where: str) -> dict[str, Any]:
    """DualEncoderConfig image fields for open_clip's ``preprocess_cfg`` (eval transform)."""
    mean = preprocess_cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
    std = preprocess_cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
    if isinstance(mean, (int, float)):
        mean = [mean] * 3
    if isinstance(std, (int, float)):
        std = [std] * 3
    mode = preprocess_cfg.get("resize_mode", "shortest")
    if mode not in _RESIZE:
        raise ModelError(f"{where}: preprocess_cfg.resize_mode '{mode}' is not supported (eclip "
                         f"reproduces {', '.join(_RESIZE)})")
    interp = preprocess_cfg.get("interpolation", "bicubic")
    if interp not in ("bicubic", "bilinear"):
        raise ModelError(f"{where}: preprocess_cfg.interpolation '{interp}' is not supported "
                         f"(bicubic or bilinear)")
    size = preprocess_cfg.get("size", image_size)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ModelError(f"{where}: preprocess_cfg.size {size} is not square")
        size = size[0]
    out = {"image_size": int(size), "image_resize": _RESIZE[mode], "image_resample": interp,
           "image_mean": [float(v) for v in mean], "image_std": [float(v) for v in std]}
    if mode == "shortest":
        out["image_resize_size"] = int(size)
    return out


def to_transformers(directory: str | Path):
    """(``CLIPModel`` or, for a timm-tower SigLIP, ``SiglipModel`` in eval mode with the folder's
    weights, image settings, logit bias or None: a SiglipModel holds its own)."""
    directory = Path(directory)
    where = str(directory / CONFIG_FILE)
    data = read_config(directory)
    model_cfg = data["model_cfg"]
    check_supported(model_cfg, where)
    from transformers import CLIPModel

    from eclip.model.hf import quiet_transformers

    state = load_state(directory)
    if siglip.is_siglip(model_cfg):
        from transformers import SiglipModel

        config = siglip.hf_config(model_cfg, state, str(directory))
        hf_state = siglip.to_hf_state(state, config, str(directory))
        with quiet_transformers():
            hf = SiglipModel(config)
        if "logit_bias" not in hf_state:  # no bias in the checkpoint: eclip's sigmoid-loss start
            hf_state["logit_bias"] = torch.full((1,), -10.0)
    else:
        hf_state = to_hf_state(state, model_cfg, str(directory))
        with quiet_transformers():
            hf = CLIPModel(hf_configs(model_cfg))
    try:
        hf.load_state_dict(hf_state, strict=True)
    except RuntimeError as err:
        raise ModelError(f"{directory}: the weights do not fit open_clip_config.json: "
                         f"{str(err).splitlines()[0][:300]}") from None
    hf.eval()
    bias = state.get("logit_bias")
    settings = image_settings(data["preprocess_cfg"], int(hf.config.vision_config.image_size), where)
    if siglip.is_siglip(model_cfg):  # SiglipModel holds its bias
        return hf, settings, None
    return hf, settings, (None if bias is None else float(bias.reshape(())))


def load_tokenizer(directory: str | Path, max_length: int):
    """The tokenizer of an open_clip folder from its tokenizer files; ModelError naming the files
    to add when there are none."""
    from eclip.model.hf import quiet_transformers

    directory = Path(directory)
    model_cfg = read_config(directory)["model_cfg"]
    if siglip.is_siglip(model_cfg):
        return _siglip_tokenizer(directory, model_cfg, max_length)
    try:
        with quiet_transformers():
            if (directory / "tokenizer_config.json").is_file() and (directory / "tokenizer.json").is_file():
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(str(directory))
            elif (directory / "tokenizer.json").is_file() or \
                    ((directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()):
                from transformers import CLIPTokenizer  # CLIP's byte-level BPE, from either file set

                tok = CLIPTokenizer.from_pretrained(str(directory))
            else:
                raise ModelError(f"{directory} has no tokenizer files: add {TOKENIZER_HINT} "
                                 f"(open_clip's hub folders ship them beside the weights)")
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001 - the Rust tokenizers raise a bare Exception
        raise ModelError(f"{directory}: the tokenizer cannot be loaded "
                         f"({' '.join(str(err).split())[:300]})") from None
    tok.model_max_length = max_length
    return tok


def _siglip_tokenizer(directory: Path, model_cfg: dict, max_length: int):
    """The tokenizer of a timm-tower (SigLIP) folder: its ``tokenizer.json`` (with
    ``tokenizer_config.json`` when there is one), no attention mask (open_clip's SigLIP text tower
    attends over the padding), open_clip's text cleaning in front."""
    from eclip.model.hf import quiet_transformers

    if not (directory / "tokenizer.json").is_file():
        raise ModelError(f"{directory} has no tokenizer files: add tokenizer.json (+ tokenizer_config.json "
                         f"and special_tokens_map.json), the Hugging Face tokenizer of its "
                         f"text_cfg.hf_tokenizer_name (open_clip's hub folders ship them beside the weights)")
    try:
        with quiet_transformers():
            if (directory / "tokenizer_config.json").is_file():
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(str(directory), model_input_names=["input_ids"])
            else:
                from transformers import PreTrainedTokenizerFast

                tok = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"),
                                              model_input_names=["input_ids"])
    except Exception as err:  # noqa: BLE001 - the Rust tokenizers raise a bare Exception
        raise ModelError(f"{directory}: the tokenizer cannot be loaded "
                         f"({' '.join(str(err).split())[:300]})") from None
    if getattr(tok, "backend_tokenizer", None) is None:
        raise ModelError(f"{directory}: the tokenizer is not a tokenizers (tokenizer.json) one")
    if tok.pad_token_id is None:
        raise ModelError(f"{directory}: the tokenizer has no pad token (open_clip pads SigLIP texts to "
                         f"context_length): add tokenizer_config.json with pad_token")
    text_cfg = model_cfg["text_cfg"]
    siglip.add_text_cleaning(tok, (text_cfg.get("tokenizer_kwargs") or {}).get("clean", "whitespace"))
    tok.padding_side = "right"
    tok.model_max_length = max_length
    return tok


def to_open_clip(model) -> tuple[dict, dict[str, torch.Tensor]]:
    """(``open_clip_config.json`` content, open_clip state dict) of an eclip model whose towers are
    transformers CLIP text / vision models with linear projections, or a SigLIP that started from
    an open_clip folder (:mod:`eclip.model.open_clip_siglip`); ModelError otherwise."""
    from eclip.model.to_transformers import to_transformers as eclip_to_transformers

    hf, kind = eclip_to_transformers(model)
    if kind == "siglip":
        model_cfg = siglip.export_config(hf)
        state = siglip.from_hf_state(hf.state_dict(), hf.config)
        model_cfg["init_logit_bias"] = float(state["logit_bias"])
        return {"model_cfg": model_cfg, "preprocess_cfg": _preprocess_cfg(model, hf.config.vision_config)}, state
    if kind != "clip":
        raise ModelError(f"cannot export to open_clip: only CLIP-architecture models (transformers "
                         f"CLIPTextModel + CLIPVisionModel towers, linear projections) and SigLIPs "
                         f"started from an open_clip folder map onto open_clip; this model exports "
                         f"as '{kind}'")
    tc, vc = hf.config.text_config, hf.config.vision_config
    if tc.hidden_act != vc.hidden_act or tc.hidden_act not in ("gelu", "quick_gelu"):
        raise ModelError(f"cannot export to open_clip: activations {tc.hidden_act} / {vc.hidden_act} "
                         f"(open_clip uses one of gelu / quick_gelu for both towers)")
    if tc.eos_token_id != 2:
        raise ModelError("cannot export to open_clip: the text model pools at the first eos_token_id, "
                         "open_clip's CLIP at the highest token id (transformers' eos_token_id 2)")
    if vc.hidden_size % vc.num_attention_heads or not math.isclose(tc.layer_norm_eps, 1e-5) \
            or not math.isclose(vc.layer_norm_eps, 1e-5):
        raise ModelError("cannot export to open_clip: layer norm eps must be 1e-5 and the vision "
                         "width divisible by its heads")
    model_cfg = {
        "embed_dim": int(hf.config.projection_dim),
        "quick_gelu": tc.hidden_act == "quick_gelu",
        "vision_cfg": {"image_size": int(vc.image_size), "layers": int(vc.num_hidden_layers),
                       "width": int(vc.hidden_size), "patch_size": int(vc.patch_size),
                       "head_width": int(vc.hidden_size // vc.num_attention_heads),
                       "mlp_ratio": vc.intermediate_size / vc.hidden_size},
        "text_cfg": {"context_length": int(tc.max_position_embeddings), "vocab_size": int(tc.vocab_size),
                     "width": int(tc.hidden_size), "heads": int(tc.num_attention_heads),
                     "layers": int(tc.num_hidden_layers), "mlp_ratio": tc.intermediate_size / tc.hidden_size},
    }
    preprocess = _preprocess_cfg(model, vc)
    state = from_hf_state(hf.state_dict(), model_cfg)
    # eclip's model always carries the sigmoid loss's bias; open_clip keeps it when init_logit_bias is set
    state["logit_bias"] = model.logit_bias.detach().reshape(1).clone()
    model_cfg["init_logit_bias"] = model.logit_bias.item()
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}, state


def _preprocess_cfg(model, vc) -> dict:
    """open_clip's ``preprocess_cfg`` of eclip's image settings; ModelError when it has none."""
    cfg = model.config
    if cfg.image_resize not in ("shortest_edge", "squash"):
        raise ModelError(f"cannot export to open_clip: image_resize '{cfg.image_resize}' (open_clip "
                         f"resizes the shortest edge then crops, or squashes)")
    if cfg.image_resample not in ("bicubic", "bilinear"):
        raise ModelError(f"cannot export to open_clip: image_resample '{cfg.image_resample}'")
    if cfg.image_size != vc.image_size:
        raise ModelError(f"cannot export to open_clip: image_size {cfg.image_size} differs from the "
                         f"vision model's {vc.image_size}")
    if cfg.image_resize == "shortest_edge" and cfg.image_resize_size not in (None, cfg.image_size):
        raise ModelError(f"cannot export to open_clip: a resize to {cfg.image_resize_size} before a "
                         f"{cfg.image_size} crop has no open_clip preprocess_cfg")
    return {"size": int(cfg.image_size), "mean": list(cfg.image_mean), "std": list(cfg.image_std),
            "interpolation": cfg.image_resample,
            "resize_mode": "shortest" if cfg.image_resize == "shortest_edge" else "squash"}


def write_open_clip(model, out: Path) -> None:
    """Write ``model`` as an open_clip folder (config, safetensors weights, tokenizer files)."""
    from safetensors.torch import save_file

    config, state = to_open_clip(model)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / WEIGHTS_FILES[0]))
    model.tokenizer.save_pretrained(str(out))
