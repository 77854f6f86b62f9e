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

from eclip.catalog.filters import filter_code
from eclip.errors import ModelError
from eclip.model.onnx import export_onnx
from eclip.model.open_clip import write_open_clip
from eclip.model.to_transformers import to_transformers

FORMATS = ("transformers", "sentence-transformers", "onnx", "open_clip")


def export_model(model, out_dir: str | Path, format: str = "transformers") -> Path:
    """Write ``model`` (a DualEncoder) to ``out_dir`` as ``transformers`` or
    ``sentence-transformers``; returns ``out_dir``. ModelError when the format cannot give eclip's
    vectors, or when ``out_dir`` exists and is not empty."""
    if format not in FORMATS:
        raise ModelError(f"unknown export format '{format}'; choose one of: {', '.join(FORMATS)}")
    if format == "onnx":  # each tower as an ONNX graph (eclip.model.onnx)
        return export_onnx(model, out_dir)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"cannot export to {out}: it exists and is not an empty directory")
    if format == "open_clip":  # see eclip.model.open_clip
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
