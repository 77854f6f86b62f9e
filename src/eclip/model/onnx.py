"""Each tower of a model as an ONNX graph, and the two graphs run by ONNX Runtime.

``export_onnx(model, out_dir)`` writes

* ``text.onnx``: ``input_ids`` + ``attention_mask`` (int64, [batch, sequence]) -> ``vector``
  (float32, [batch, embed_dim], unit length: tower, projection and normalisation);
* ``image.onnx``: ``pixel_values`` (float32, [batch, 3, H, W], normalised as the model's eval
  transform gives them) -> ``vector`` (unit length);
* ``onnx.json``: what a reader needs (embed_dim, image size, max_length, opset, versions).

Batch and sequence axes are dynamic (the photo's height and width are the model's image size).
A ViT pooled at its CLS token (eclip's ``vit`` tower, a CLIP vision tower) is exported with its last
layer computed for the CLS token alone (:class:`_ClsImageGraph`: the same vector, one layer's
matrix products fewer but its keys and values), once that graph gives eclip's vectors in PyTorch;
``onnx.json`` says which (``image_graph``: ``cls_last_layer`` or ``whole``).

The graphs come from the ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``,
which needs ``onnxscript``): with torch 2.13 and the transformers in use, the TorchScript exporter
(``dynamo=False``) traced BERT towers into graphs whose vectors differ from eclip's by 0.05-0.1 even
on the traced input, while ``torch.export`` captures the attention-mask code exactly (1e-7). (For a
CLIP ViT-B/16 photo tower it gave the right vectors, and ``onnxruntime.transformers.optimizer``
fused its attention, but the fused graph ran slower: docs/BENCHMARKS.md.) A tower ``torch.export`` cannot capture is refused by name.

Before anything is written, each graph is run by ONNX Runtime on a few inputs of two batch and
sequence sizes and must give eclip's vectors to 1e-4; a tower that cannot be exported, or whose
graph gives other vectors, is refused with a ModelError naming it. The files are written into a
temporary folder beside ``out_dir`` and renamed into place (a reader never sees half a model).

:class:`OnnxTowers` runs the two graphs (``text(ids, mask)``, ``image(pixels)``, numpy in and out);
:func:`session_options` is the one place the ONNX Runtime settings live.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eclip.errors import ModelError

TEXT_FILE, IMAGE_FILE, META_FILE = "text.onnx", "image.onnx", "onnx.json"
OUTPUT = "vector"  # not "embedding": a text tower's nn.Embedding node already has that name
OPSET = 18
CHECK_TOL = 1e-4
CLS_TOL = 1e-5  # the CLS-only last layer against the whole tower, in PyTorch (float32 rounding)
INSTALL_HINT = "pip install 'eclip[onnx]'"


def require_onnxruntime():
    """The ``onnxruntime`` module, or a ModelError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ModelError(f"ONNX export and ONNX Runtime queries need onnx and onnxruntime: "
                         f"{INSTALL_HINT} ({err})") from err
    return onnxruntime


def has_onnx(directory: str | Path) -> bool:
    """Whether ``directory`` holds a complete ONNX export (the metadata is written last)."""
    d = Path(directory)
    return all((d / name).is_file() for name in (TEXT_FILE, IMAGE_FILE, META_FILE))


class _TextGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        # the tower directly: DualEncoder.text_features' padding trim is data-dependent (a traced
        # graph would keep one width) and never changes the vectors
        return self.model.project_text(self.model.text_tower(input_ids, attention_mask))


class _ImageGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.encode_image(pixel_values)


# pre-norm transformer layers (x + attn(norm1(x)), then x + mlp(norm2(x))) by class name: the names
# of norm1, the attention module, its output projection, norm2, the MLP, the attention's head count
# and its score scale (the query, key and value projections are q_proj, k_proj, v_proj in both)
_PRE_NORM_LAYERS = {
    "CLIPEncoderLayer": ("layer_norm1", "self_attn", "out_proj", "layer_norm2", "mlp", "num_heads",
                         "scale"),
    "ViTLayer": ("layernorm_before", "attention", "o_proj", "layernorm_after", "mlp",
                 "num_attention_heads", "scaling"),
}


class _ClsImageGraph(nn.Module):
    """The image path of a ViT pooled at its CLS token, with the last layer's query, attention
    output, MLP and the final norm computed for the CLS token alone. No other token's final state is
    read, so the vector is the same (the keys and values still come from every token); the last
    layer's matrix products shrink to its keys and values (for a 12-layer ViT-B/16, 1/14 of the
    tower's)."""

    def __init__(self, model, stem, layer, head):
        super().__init__()
        self.model, self.layer = model, layer  # registered: torch.export finds their parameters
        self._stem, self._head = stem, head
        self._names = _PRE_NORM_LAYERS[type(layer).__name__]

    def forward(self, pixel_values):
        norm1, attention, out, norm2, mlp, heads, scale = self._names
        attn = getattr(self.layer, attention)
        hidden = self._stem(pixel_values)
        x = getattr(self.layer, norm1)(hidden)
        batch, n_heads = x.shape[0], getattr(attn, heads)
        q = attn.q_proj(x[:, :1]).view(batch, 1, n_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, -1, n_heads, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(batch, -1, n_heads, attn.head_dim).transpose(1, 2)
        context = nn.functional.scaled_dot_product_attention(q, k, v, scale=getattr(attn, scale))
        cls = hidden[:, 0] + getattr(attn, out)(context.reshape(batch, -1))
        cls = cls + getattr(self.layer, mlp)(getattr(self.layer, norm2)(cls))
        return self.model.project_image(self._head(cls))


def _cls_image_graph(model, pixels: torch.Tensor) -> nn.Module | None:
    """A :class:`_ClsImageGraph` of ``model``'s image tower when the tower is a ViT pooled at its
    CLS token (eclip's ``vit`` tower; a transformers CLIP vision model pooled by ``pooler`` or
    ``cls``) and the graph gives eclip's vectors on ``pixels`` in PyTorch; else None (the whole
    image path is exported)."""
    from eclip.model.image_towers import HFImageTower, ViTTower

    tower = model.image_tower
    hf = getattr(tower, "model", None)
    if isinstance(tower, ViTTower):
        layers, head = hf.layers, hf.layernorm

        def stem(pixel_values):
            return tower.below(pixel_values, 1)
    elif (isinstance(tower, HFImageTower) and tower.pooling in ("pooler", "cls")
          and type(hf).__name__ == "CLIPVisionModel"):
        layers = hf.encoder.layers
        head = hf.post_layernorm if tower.pooling == "pooler" else nn.Identity()

        def stem(pixel_values):
            hidden = hf.pre_layrnorm(hf.embeddings(pixel_values))
            for layer in layers[:-1]:
                hidden = layer(hidden, None)
            return hidden
    else:
        return None
    if type(layers[-1]).__name__ not in _PRE_NORM_LAYERS:
        return None
    graph = _ClsImageGraph(model, stem, layers[-1], head)
    try:
        with torch.no_grad():
            diff = float((graph(pixels) - model.encode_image(pixels)).abs().max())
    except Exception:  # noqa: BLE001 - a layer laid out otherwise: the whole path instead
        return None
    return graph if diff <= CLS_TOL else None


def _sample_inputs(model, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    side = model.config.image_size
    pixels = torch.randn(2, 3, side, side, generator=gen)
    tokens = model.tokenize(["a red cotton shirt size m with long sleeves", "shoes"])
    return tokens, pixels


def export_onnx(model, out_dir: str | Path, *, opset: int = OPSET, progress: bool = False) -> Path:
    """Write ``model``'s (a DualEncoder) towers to ``out_dir`` as ONNX graphs (see the module doc);
    returns ``out_dir``. ModelError when ``out_dir`` exists and is not empty, when onnx or
    onnxruntime is missing, or when a tower cannot be exported to give eclip's vectors."""
    require_onnxruntime()
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError as err:
        raise ModelError(f"ONNX export needs the onnx package: {INSTALL_HINT} ({err})") from err
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"cannot export to {out}: it exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    was_training = model.training
    model.eval()
    try:
        tokens, pixels = _sample_inputs(model)
        with torch.no_grad():
            _export(_TextGraph(model), (tokens["input_ids"], tokens["attention_mask"]),
                    tmp / TEXT_FILE, ["input_ids", "attention_mask"],
                    {"input_ids": {0: "batch", 1: "sequence"},
                     "attention_mask": {0: "batch", 1: "sequence"}},
                    f"'{model.config.text_tower}' text tower", opset)
            cls_graph = _cls_image_graph(model, pixels)
            image_graph = _ImageGraph(model) if cls_graph is None else cls_graph
            _export(image_graph, (pixels,), tmp / IMAGE_FILE, ["pixel_values"],
                    {"pixel_values": {0: "batch"}}, f"'{model.config.image_tower}' image tower", opset)
        _check(model, tmp)
        meta = {"format": "eclip-onnx", "version": 1, "opset": opset, "exporter": "dynamo",
                "embed_dim": model.config.embed_dim, "image_size": model.config.image_size,
                "max_length": model.config.max_length, "text_tower": model.config.text_tower,
                "image_tower": model.config.image_tower, "torch": torch.__version__,
                "image_graph": "cls_last_layer" if cls_graph is not None else "whole",
                "inputs": {"text": ["input_ids", "attention_mask"], "image": ["pixel_values"]},
                "output": OUTPUT}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", "utf-8")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        model.train(was_training)
    return out


def _export(graph: nn.Module, args: tuple, path: Path, names: list[str], axes: dict, what: str,
            opset: int) -> None:
    dims = {label: torch.export.Dim(label) for spec in axes.values() for label in spec.values()}
    shapes = tuple({axis: dims[label] for axis, label in axes[name].items()} for name in names)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, args, input_names=names, output_names=[OUTPUT],
                                        dynamic_shapes=shapes, opset_version=opset, dynamo=True,
                                        optimize=True, verbose=False)
            program.save(str(path))
    except Exception as err:  # noqa: BLE001 - any exporter failure becomes one clear error
        text = str(err).strip()
        first = text.splitlines()[0][:300] if text else type(err).__name__
        raise ModelError(f"cannot export the {what} to ONNX: {first}") from err


def _check(model, directory: Path) -> None:
    """Refuse graphs whose vectors differ from eclip's: two batch sizes, two sequence lengths."""
    towers = OnnxTowers(directory, threads=1)
    gen = torch.Generator().manual_seed(1)
    side = model.config.image_size
    texts = ["blue denim jeans slim fit size m white running shoes 270", "mug", "yoga mat purple"]
    with torch.no_grad():
        for rows in (1, 3):
            tokens = model.tokenize(texts[:rows])
            ours = model.encode_text(**tokens).numpy()
            theirs = towers.text(tokens["input_ids"].numpy(), tokens["attention_mask"].numpy())
            _compare(ours, theirs, f"'{model.config.text_tower}' text tower")
            pixels = torch.randn(rows, 3, side, side, generator=gen)
            _compare(model.encode_image(pixels).numpy(), towers.image(pixels.numpy()),
                     f"'{model.config.image_tower}' image tower")


def _compare(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    diff = float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape else float("inf")
    if not diff <= CHECK_TOL:
        raise ModelError(f"cannot export the {what} to ONNX: ONNX Runtime's vectors differ from "
                         f"eclip's by {diff:.2e} (shape {theirs.shape}, eclip's {ours.shape})")


def session_options(threads: int = 1, optimization: str = "all"):
    """ONNX Runtime session options: ``threads`` intra-op threads (1: requests run in parallel,
    one core each, as ``eclip serve`` runs torch), no inter-op pool, graph optimisation level
    ``optimization`` (``disable``, ``basic``, ``extended`` or ``all``)."""
    ort = require_onnxruntime()
    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if optimization not in levels:
        raise ModelError(f"unknown ONNX Runtime optimisation level '{optimization}'; choose one "
                         f"of: {', '.join(levels)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


class OnnxTowers:
    """The two graphs of an :func:`export_onnx` folder in ONNX Runtime sessions (CPU). Sessions
    are thread-safe: concurrent calls run in parallel."""

    def __init__(self, directory: str | Path, *, threads: int = 1, optimization: str = "all"):
        ort = require_onnxruntime()
        self.directory = Path(directory)
        for name in (TEXT_FILE, IMAGE_FILE):
            if not (self.directory / name).is_file():
                raise ModelError(f"{self.directory} holds no ONNX export: {name} is missing "
                                 f"(write one with: eclip export --format onnx)")
        options = session_options(threads, optimization)
        self.settings: dict[str, Any] = {"intra_op_threads": threads, "optimization": optimization,
                                         "onnxruntime": ort.__version__}
        try:
            self._text = ort.InferenceSession(str(self.directory / TEXT_FILE), options,
                                              providers=["CPUExecutionProvider"])
            self._image = ort.InferenceSession(str(self.directory / IMAGE_FILE), options,
                                               providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - a damaged file
            raise ModelError(f"cannot load the ONNX graphs in {self.directory}: "
                             f"{str(err).splitlines()[0][:300]}") from err
        self._text_inputs = {i.name for i in self._text.get_inputs()}

    def text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": np.asarray(input_ids, dtype=np.int64),
                "attention_mask": np.asarray(attention_mask, dtype=np.int64)}
        # the tracer drops an input the graph does not read (a tower that ignores the mask)
        return self._text.run(None, {k: v for k, v in feed.items() if k in self._text_inputs})[0]

    def image(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._image.run(None, {"pixel_values": np.asarray(pixel_values, dtype=np.float32)})[0]
