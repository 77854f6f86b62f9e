"""open_clip's SigLIP ports (a timm ViT image tower, open_clip's bidirectional text transformer) as
transformers' ``SiglipModel``, and back; used by :mod:`eclip.model.open_clip`.

The family: ``vision_cfg.timm_model_name`` names one of timm's SigLIP ViTs (no class token, MAP
pooling: ``timm_pool: map``, ``timm_proj: none``), and the text tower (``custom_text``) is open_clip's
``TextTransformer`` with ``no_causal_mask``, ``pool_type: last`` and a projection with bias -- the
configs of ``ViT-B-16-SigLIP``, ``ViT-L-16-SigLIP-384``, ``ViT-SO400M-14-SigLIP``, the SigLIP2
ports, and the Marqo-Ecommerce / Marqo-FashionSigLIP folders built on them. transformers'
``SiglipVisionModel`` (embeddings, encoder, ``post_layernorm``, the multi-head attention pooling
``head``) and ``SiglipTextModel`` (encoder, ``final_layer_norm``, the biased ``head`` over the last
position) are the same computations, so the weights map one to one:

======================================================  ===============================================
open_clip (timm) weight                                 transformers ``SiglipModel`` weight
======================================================  ===============================================
``visual.trunk.patch_embed.proj``                       ``vision_model.embeddings.patch_embedding``
``visual.trunk.pos_embed`` [1, N, D]                    ``vision_model.embeddings.position_embedding``
``visual.trunk.blocks.i.norm1`` / ``norm2``             ``...encoder.layers.i.layer_norm1`` / ``2``
``visual.trunk.blocks.i.attn.qkv`` (split in three)     ``...self_attn.{q,k,v}_proj``
``visual.trunk.blocks.i.attn.proj``                     ``...self_attn.out_proj``
``visual.trunk.blocks.i.mlp.fc1`` / ``fc2``             ``...mlp.fc1`` / ``fc2``
``visual.trunk.norm``                                   ``vision_model.post_layernorm``
``visual.trunk.attn_pool.latent``                       ``vision_model.head.probe``
``visual.trunk.attn_pool.q`` + ``kv`` (concatenated)    ``vision_model.head.attention.in_proj_*``
``visual.trunk.attn_pool.proj`` / ``norm`` / ``mlp``    ``vision_model.head.attention.out_proj`` /
                                                        ``layernorm`` / ``mlp``
``text.token_embedding``, ``text.positional_embedding``  ``text_model.embeddings.*``
``text.transformer.resblocks.i`` (CLIP block layout)    ``text_model.encoder.layers.i``
``text.ln_final``, ``text.text_projection``             ``text_model.final_layer_norm``, ``text_model.head``
``logit_scale``, ``logit_bias``                         the same
======================================================  ===============================================

What the weights do not say comes from the config: the vision head count and activation from
:data:`TIMM_VITS` (timm's definitions of each name; :func:`register_timm_vit` adds one), the text
activation (open_clip's default is exact GELU, ``act_kwargs: {approximate: tanh}`` the tanh form,
``quick_gelu`` QuickGELU) and layer norm eps (``norm_kwargs.eps``). The original ``model_cfg`` rides
along in the vision config (``open_clip_model_cfg``) so that the export writes the same timm name,
tokenizer settings and text cleaning back.

Texts: open_clip's SigLIP tokenizer pads to ``context_length`` and the text tower attends over the
padding (no mask), pooling the last position; eclip pads to ``max_length`` the same way and its
tokenizer returns no attention mask (all ones). open_clip cleans texts before tokenizing
(``tokenizer_kwargs.clean``: ``canonicalize`` -- lower case, punctuation removed, whitespace
collapsed; ``lower``; ``whitespace``); eclip puts the same cleaning in front of the tokenizer's own
normaliser (tokenizers' normalizers), except ftfy's mojibake repair and HTML unescaping, which only
change broken or escaped text.
"""

from __future__ import annotations

import string
from typing import Any

import torch

from eclip.errors import ModelError

# timm's SigLIP ViTs with MAP pooling (timm 1.0's vision_transformer.py): name -> (attention heads,
# activation). Widths, depth, MLP width, patch and grid come from the weights.
_G, _T = "gelu", "gelu_pytorch_tanh"
TIMM_VITS: dict[str, tuple[int, str]] = {
    "vit_base_patch32_siglip_256": (12, _T), "vit_base_patch16_siglip_224": (12, _G),
    "vit_base_patch16_siglip_256": (12, _G), "vit_base_patch16_siglip_384": (12, _G),
    "vit_base_patch16_siglip_512": (12, _G), "vit_large_patch16_siglip_256": (16, _G),
    "vit_large_patch16_siglip_384": (16, _G), "vit_large_patch16_siglip_512": (16, _T),
    "vit_so400m_patch14_siglip_224": (16, _G), "vit_so400m_patch14_siglip_378": (16, _G),
    "vit_so400m_patch14_siglip_384": (16, _G), "vit_so400m_patch16_siglip_256": (16, _T),
    "vit_so400m_patch16_siglip_384": (16, _T), "vit_so400m_patch16_siglip_512": (16, _T),
    "vit_giantopt_patch16_siglip_256": (16, _T), "vit_giantopt_patch16_siglip_384": (16, _T),
}
_ACTS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "gelu_pytorch_tanh": "gelu_pytorch_tanh",
         "quick_gelu": "quick_gelu"}

_VISION_KEYS = {  # vision_cfg fields of the timm family: their reproduced value (None: any)
    "image_size": None, "timm_model_name": None, "timm_model_pretrained": None, "timm_pool": "map",
    "timm_proj": "none", "timm_proj_bias": None, "timm_drop": None, "timm_drop_path": None,
    "patch_dropout": None, "output_tokens": None,
    # VisionTransformer fields that a timm tower ignores
    "layers": None, "width": None, "patch_size": None, "head_width": None, "mlp_ratio": None,
}
_TEXT_KEYS = {  # text_cfg fields: their reproduced value (None: any)
    "context_length": None, "vocab_size": None, "width": None, "heads": None, "layers": None,
    "mlp_ratio": None, "hf_tokenizer_name": None, "tokenizer_kwargs": None, "pad_id": None,
    "eos_id": None, "output_tokens": None, "norm_kwargs": None, "act_kwargs": None,
    "no_causal_mask": True, "pool_type": "last", "proj_bias": True, "proj_type": "linear",
    "ls_init_value": "default", "embed_cls": False, "final_ln_after_pool": False,
    "tokenizer_mode": "default", "block_type": "default", "qk_norm": False,
    "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
    "scale_attn": False, "scale_fc": False, "hf_model_name": "default",
}
_CLEANINGS = ("canonicalize", "lower", "whitespace")


def register_timm_vit(name: str, heads: int, act: str = "gelu") -> None:
    """Teach eclip a timm SigLIP ViT name (MAP pooling, no class token): its attention heads and
    activation (``gelu``, ``gelu_tanh`` or ``quick_gelu``), which its weights do not say."""
    if act not in _ACTS:
        raise ModelError(f"register_timm_vit: act '{act}' is not one of {', '.join(_ACTS)}")
    TIMM_VITS[name] = (int(heads), _ACTS[act])


def is_siglip(model_cfg: dict) -> bool:
    """Whether an open_clip ``model_cfg`` has a timm image tower (this module's family)."""
    vision = model_cfg.get("vision_cfg")
    return isinstance(vision, dict) and bool(vision.get("timm_model_name"))


def check_supported(model_cfg: dict, where: str) -> None:
    """ModelError naming the first part of a timm-tower ``model_cfg`` eclip cannot reproduce."""
    vision, text = model_cfg.get("vision_cfg"), model_cfg.get("text_cfg")
    if not isinstance(text, dict):
        raise ModelError(f"{where}: model_cfg.text_cfg is missing or not an object")
    if model_cfg.get("nonscalar_logit_scale"):
        raise ModelError(f"{where}: model_cfg.nonscalar_logit_scale is not supported")
    name = vision["timm_model_name"]
    for key, value in vision.items():
        if key not in _VISION_KEYS:
            raise ModelError(f"{where}: model_cfg.vision_cfg.{key} is not supported with a timm "
                             f"image tower")
        wanted = _VISION_KEYS[key]
        if wanted is not None and value != wanted:
            raise ModelError(f"{where}: model_cfg.vision_cfg.timm_{key.removeprefix('timm_')} "
                             f"{value!r} is not supported (eclip reads timm SigLIP ViTs with "
                             f"timm_pool 'map' and timm_proj 'none', whose attention-pooling head "
                             f"is transformers' SiglipVisionModel head)")
    if name not in TIMM_VITS:
        raise ModelError(f"{where}: model_cfg.vision_cfg.timm_model_name '{name}' is not a timm "
                         f"SigLIP ViT eclip knows (it reads {', '.join(sorted(TIMM_VITS))}); a "
                         f"SigLIP-design ViT of another name: eclip.model.open_clip_siglip."
                         f"register_timm_vit(name, heads, act)")
    if text.get("hf_model_name"):
        raise ModelError(f"{where}: model_cfg.text_cfg.hf_model_name '{text['hf_model_name']}' (a Hugging "
                         f"Face text tower) is not supported; eclip reads open_clip's own text "
                         f"transformer")
    for key, value in text.items():
        if key not in _TEXT_KEYS:
            raise ModelError(f"{where}: model_cfg.text_cfg.{key} is not supported by eclip")
        wanted = _TEXT_KEYS[key]
        if wanted == "default":
            ok = value in (None, "default")
        else:
            ok = wanted is None or value == wanted
        if not ok:
            raise ModelError(f"{where}: model_cfg.text_cfg.{key} = {value!r} is not supported with a "
                             f"timm image tower (eclip reproduces SigLIP's text tower: "
                             f"no_causal_mask true, pool_type 'last', proj_bias true)")
    norm = text.get("norm_kwargs") or {}
    if set(norm) - {"eps"}:
        raise ModelError(f"{where}: model_cfg.text_cfg.norm_kwargs {norm} is not supported (eps only)")
    _text_act(model_cfg, where)
    clean = (text.get("tokenizer_kwargs") or {}).get("clean", "whitespace")
    if clean not in _CLEANINGS:
        raise ModelError(f"{where}: model_cfg.text_cfg.tokenizer_kwargs.clean '{clean}' is not one of "
                         f"{', '.join(_CLEANINGS)}")
    if set(text.get("tokenizer_kwargs") or {}) - {"clean"}:
        raise ModelError(f"{where}: model_cfg.text_cfg.tokenizer_kwargs "
                         f"{sorted(text['tokenizer_kwargs'])} is not supported (clean only)")


def _text_act(model_cfg: dict, where: str) -> str:
    act = (model_cfg["text_cfg"].get("act_kwargs")) or {}
    quick = bool(model_cfg.get("quick_gelu", False))
    if not act:
        return "quick_gelu" if quick else "gelu"
    if act == {"approximate": "tanh"} and not quick:
        return "gelu_pytorch_tanh"
    if act == {"approximate": "none"} and not quick:
        return "gelu"
    raise ModelError(f"{where}: model_cfg.text_cfg.act_kwargs {act} is not supported (exact GELU, "
                     f"approximate 'tanh', or quick_gelu)")


def _vision_shape(state: dict[str, torch.Tensor], where: str) -> dict[str, int]:
    try:
        patch = state["visual.trunk.patch_embed.proj.weight"]
        pos = state["visual.trunk.pos_embed"]
        fc1 = state["visual.trunk.blocks.0.mlp.fc1.weight"]
    except KeyError as err:
        raise ModelError(f"{where}: weight {err} is missing (the weights do not match "
                         f"open_clip_config.json's timm tower)") from None
    grid = round(pos.shape[1] ** 0.5)
    if pos.dim() != 3 or pos.shape[0] != 1 or grid * grid != pos.shape[1]:
        raise ModelError(f"{where}: visual.trunk.pos_embed {tuple(pos.shape)} is not a square grid "
                         f"without a class token (not a SigLIP ViT)")
    layers = 0
    while f"visual.trunk.blocks.{layers}.norm1.weight" in state:
        layers += 1
    return {"width": int(patch.shape[0]), "patch": int(patch.shape[-1]), "grid": grid,
            "layers": layers, "mlp": int(fc1.shape[0])}


def hf_config(model_cfg: dict, state: dict[str, torch.Tensor], where: str):
    """The transformers ``SiglipConfig`` of an open_clip timm-tower model (shapes from ``state``)."""
    from transformers import SiglipConfig

    text = model_cfg["text_cfg"]
    shape = _vision_shape(state, where)
    heads, act = TIMM_VITS[model_cfg["vision_cfg"]["timm_model_name"]]
    if shape["width"] % heads:
        raise ModelError(f"{where}: the timm tower's width {shape['width']} is not divisible by the "
                         f"{heads} heads of {model_cfg['vision_cfg']['timm_model_name']}")
    image_size = model_cfg["vision_cfg"].get("image_size", shape["grid"] * shape["patch"])
    if isinstance(image_size, (list, tuple)) and len(set(image_size)) == 1:
        image_size = image_size[0]
    if not isinstance(image_size, int) or image_size // shape["patch"] != shape["grid"]:
        raise ModelError(f"{where}: model_cfg.vision_cfg.image_size {image_size} does not give the timm "
                         f"tower's {shape['grid']}x{shape['grid']} patch grid (patch {shape['patch']})")
    embed_dim = int(model_cfg["embed_dim"])
    if embed_dim != shape["width"]:
        raise ModelError(f"{where}: model_cfg.embed_dim {embed_dim} differs from the timm tower's width "
                         f"{shape['width']} (timm_proj 'none' keeps the tower's width)")
    width = int(text.get("width", 512))
    vision_config = dict(
        hidden_size=shape["width"], intermediate_size=shape["mlp"], num_hidden_layers=shape["layers"],
        num_attention_heads=heads, image_size=image_size, patch_size=shape["patch"], hidden_act=act,
        layer_norm_eps=1e-6, open_clip_model_cfg=model_cfg)
    text_config = dict(
        vocab_size=int(text.get("vocab_size", 49408)), hidden_size=width,
        intermediate_size=int(width * float(text.get("mlp_ratio", 4.0))),
        num_hidden_layers=int(text.get("layers", 12)), num_attention_heads=int(text.get("heads", 8)),
        max_position_embeddings=int(text.get("context_length", 77)), hidden_act=_text_act(model_cfg, where),
        layer_norm_eps=float((text.get("norm_kwargs") or {}).get("eps", 1e-5)),
        projection_size=embed_dim, pad_token_id=int(text.get("pad_id", 0)), bos_token_id=None,
        eos_token_id=None)
    return SiglipConfig(text_config=text_config, vision_config=vision_config)


def _block_pairs(prefix: str, dst_prefix: str, count: int, timm: bool) -> list[tuple[str, str, str]]:
    pairs = []
    for i in range(count):
        src, dst = f"{prefix}.{i}", f"{dst_prefix}.encoder.layers.{i}"
        if timm:
            names = (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.out_proj"),
                     ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"))
            qkv = ("attn.qkv.weight", "attn.qkv.bias")
        else:
            names = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
            qkv = ("attn.in_proj_weight", "attn.in_proj_bias")
        for a, b in names:
            pairs += [(f"{src}.{a}.weight", f"{dst}.{b}.weight", "same"),
                      (f"{src}.{a}.bias", f"{dst}.{b}.bias", "same")]
        pairs += [(f"{src}.{qkv[0]}", f"{dst}.self_attn.{{}}_proj.weight", "qkv"),
                  (f"{src}.{qkv[1]}", f"{dst}.self_attn.{{}}_proj.bias", "qkv")]
    return pairs


def key_map(text_layers: int, vision_layers: int) -> list[tuple[str, str, str]]:
    """(open_clip key, transformers SiglipModel key, how) for every weight."""
    v, t = "visual.trunk", "text"
    pairs = [
        (f"{v}.patch_embed.proj.weight", "vision_model.embeddings.patch_embedding.weight", "same"),
        (f"{v}.patch_embed.proj.bias", "vision_model.embeddings.patch_embedding.bias", "same"),
        (f"{v}.pos_embed", "vision_model.embeddings.position_embedding.weight", "squeeze"),
        (f"{v}.norm.weight", "vision_model.post_layernorm.weight", "same"),
        (f"{v}.norm.bias", "vision_model.post_layernorm.bias", "same"),
        (f"{v}.attn_pool.latent", "vision_model.head.probe", "same"),
        (f"{v}.attn_pool.{{}}.weight", "vision_model.head.attention.in_proj_weight", "q_kv"),
        (f"{v}.attn_pool.{{}}.bias", "vision_model.head.attention.in_proj_bias", "q_kv"),
        (f"{t}.token_embedding.weight", "text_model.embeddings.token_embedding.weight", "same"),
        (f"{t}.positional_embedding", "text_model.embeddings.position_embedding.weight", "same"),
        (f"{t}.ln_final.weight", "text_model.final_layer_norm.weight", "same"),
        (f"{t}.ln_final.bias", "text_model.final_layer_norm.bias", "same"),
        (f"{t}.text_projection.weight", "text_model.head.weight", "same"),
        (f"{t}.text_projection.bias", "text_model.head.bias", "same"),
        ("logit_scale", "logit_scale", "scalar"),
    ]
    for a, b in (("proj", "attention.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.fc1"),
                 ("mlp.fc2", "mlp.fc2")):
        pairs += [(f"{v}.attn_pool.{a}.{w}", f"vision_model.head.{b}.{w}", "same") for w in ("weight", "bias")]
    pairs += _block_pairs(f"{v}.blocks", "vision_model", vision_layers, timm=True)
    pairs += _block_pairs(f"{t}.transformer.resblocks", "text_model", text_layers, timm=False)
    return pairs


def _with_text_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Older custom-text checkpoints keep the text tower at the top level (open_clip's
    ``convert_to_custom_text_state_dict``): move it under ``text.``."""
    if any(k.startswith("text.") for k in state):
        return state
    tops = ("text_projection", "positional_embedding", "token_embedding", "transformer", "ln_final")
    return {("text." + k if k.startswith(tops) else k): v for k, v in state.items()}


def to_hf_state(state: dict[str, torch.Tensor], config, where: str) -> dict[str, torch.Tensor]:
    """open_clip timm-tower state dict -> transformers ``SiglipModel`` state dict; ModelError
    naming a missing or an unmapped weight."""
    state = _with_text_prefix(state)
    out: dict[str, torch.Tensor] = {}
    used = set()
    pairs = key_map(config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers)
    for src, dst, how in pairs:
        sources = [src.format("q"), src.format("kv")] if how == "q_kv" else [src]
        for key in sources:
            if key not in state:
                raise ModelError(f"{where}: weight '{key}' is missing (the weights do not match "
                                 f"open_clip_config.json)")
            used.add(key)
        value = state[sources[0]]
        if how == "qkv":
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[dst.format(name)] = part.contiguous()
        elif how == "q_kv":
            out[dst] = torch.cat([state[k] for k in sources], dim=0).contiguous()
        elif how == "squeeze":
            out[dst] = value.reshape(value.shape[-2], value.shape[-1])
        elif how == "scalar":
            out[dst] = value.reshape(1)
        else:
            out[dst] = value
    if "logit_bias" in state:
        out["logit_bias"] = state["logit_bias"].reshape(1)
        used.add("logit_bias")
    check_all_mapped(state, used, where)
    return out


def check_all_mapped(state: dict[str, torch.Tensor], used: set[str], where: str) -> None:
    """A ModelError naming the open_clip weights (``state``) that no rule mapped (``used``);
    the causal mask buffer is not a weight."""
    extra = sorted(k for k in state if k not in used and not k.endswith("attn_mask"))
    if extra:
        raise ModelError(f"{where}: weights eclip does not map: {extra[:5]} (an architecture part "
                         f"open_clip_config.json does not describe, or one eclip does not support)")


def from_hf_state(hf_state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_hf_state` (``SiglipModel`` -> open_clip state dict)."""
    out: dict[str, torch.Tensor] = {}
    width = config.vision_config.hidden_size
    for src, dst, how in key_map(config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers):
        value = hf_state.get(dst)
        if how == "qkv":
            out[src] = torch.cat([hf_state[dst.format(n)] for n in "qkv"], dim=0).contiguous()
        elif how == "q_kv":
            out[src.format("q")] = value[:width].clone()
            out[src.format("kv")] = value[width:].clone()
        elif how == "squeeze":
            out[src] = value.reshape(1, *value.shape).clone()
        elif how == "scalar":
            out[src] = value.reshape(()).clone()
        else:
            out[src] = value.clone()
    out["logit_bias"] = hf_state["logit_bias"].reshape(()).clone()
    return out


def export_config(hf) -> dict:
    """The open_clip ``model_cfg`` of a ``SiglipModel`` that came from an open_clip folder: the
    original ``model_cfg`` (kept in the vision config), checked against the model's shapes."""
    vc, tc = hf.config.vision_config, hf.config.text_config
    model_cfg = getattr(vc, "open_clip_model_cfg", None)
    if not isinstance(model_cfg, dict):
        raise ModelError("cannot export this SigLIP model to open_clip: it did not start from an open_clip "
                         "folder, so the timm model name and tokenizer settings of its image and text "
                         "towers are unknown (export it as transformers)")
    model_cfg = dict(model_cfg, text_cfg=dict(model_cfg["text_cfg"]), vision_cfg=dict(model_cfg["vision_cfg"]))
    text = model_cfg["text_cfg"]
    expected = {"width": tc.hidden_size, "layers": tc.num_hidden_layers, "heads": tc.num_attention_heads,
                "context_length": tc.max_position_embeddings, "vocab_size": tc.vocab_size}
    for key, value in expected.items():
        if int(text.get(key, value)) != int(value):
            raise ModelError(f"cannot export to open_clip: text_cfg.{key} {text[key]} of the original "
                             f"config differs from the model's {value}")
    name = model_cfg["vision_cfg"]["timm_model_name"]
    if name not in TIMM_VITS:
        raise ModelError(f"cannot export to open_clip: timm_model_name '{name}' is not a timm SigLIP ViT "
                         f"eclip knows in this process (eclip.model.open_clip_siglip.register_timm_vit)")
    heads, act = TIMM_VITS[name]
    if heads != vc.num_attention_heads or act != vc.hidden_act:
        raise ModelError(f"cannot export to open_clip: the vision model ({vc.num_attention_heads} heads, "
                         f"{vc.hidden_act}) is not timm's {model_cfg['vision_cfg']['timm_model_name']}")
    return model_cfg


def add_text_cleaning(tokenizer: Any, clean: str) -> None:
    """Put open_clip's text cleaning ``clean`` in front of ``tokenizer``'s own normaliser (a
    tokenizers-backed tokenizer), so that it is saved with the tokenizer."""
    from tokenizers import Regex, normalizers

    steps = [normalizers.NFC()]
    if clean == "canonicalize":
        steps += [normalizers.Replace("_", " "),
                  normalizers.Replace(Regex("[" + "".join("\\" + c for c in string.punctuation) + "]"), "")]
    if clean in ("canonicalize", "lower"):
        steps.append(normalizers.Lowercase())
    steps += [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None:
        steps.append(backend.normalizer)
    backend.normalizer = normalizers.Sequence(steps)
