"""DualEncoder: an image tower and a text tower projected into one normalised embedding space.

Saved as a Hugging Face-style directory::

    config.json               DualEncoderConfig + model_type + eclip_version + the towers' HF configs
    model.safetensors         the full state dict
    tokenizer.json, ...       the tokenizer
    preprocessor_config.json  image_size, image_mean, image_std (+ image_resize, image_resample,
                              image_resize_size where not the defaults)

``save_pretrained`` writes it and ``from_pretrained`` reads it back; :func:`eclip.model.load_model`
is the one entry point that opens this and every other format eclip reads (:mod:`eclip.model.load`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors
from safetensors.torch import save_model as save_safetensors
from torch import Tensor, nn

import eclip.model.image_towers  # noqa: F401 - the built-in towers register themselves
import eclip.model.text_towers  # noqa: F401
from eclip import __version__
from eclip.atomic import temp_sibling
from eclip.errors import ConfigError, ModelError
from eclip.model.config import DualEncoderConfig
from eclip.model.files import guard_model_dir, read_json
from eclip.model.layers import train_top_groups
from eclip.model.preprocessing import preprocessor_settings
from eclip.model.tokenizer import load_tokenizer
from eclip.model.towers import ImageTower, TextTower, build_image_tower, build_text_tower

MODEL_TYPE = "eclip-dual-encoder"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"


class DualEncoder(nn.Module):
    """CLIP-style dual encoder; build one with ``DualEncoder.build(config)``, open a saved one with
    :func:`eclip.model.load_model`."""

    def __init__(self, config: DualEncoderConfig, tokenizer: Any, text_tower: TextTower,
                 image_tower: ImageTower):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.text_tower = text_tower
        self.image_tower = image_tower
        if config.projection == "identity":
            if not text_tower.out_dim == image_tower.out_dim == config.embed_dim:
                raise ConfigError(f"model.projection 'identity' needs towers of the same size as "
                                  f"embed_dim: text {text_tower.out_dim}, image {image_tower.out_dim}, "
                                  f"embed_dim {config.embed_dim}")
            self.text_proj: nn.Module = nn.Identity()
            self.image_proj: nn.Module = nn.Identity()
        else:
            self.text_proj = nn.Linear(text_tower.out_dim, config.embed_dim, bias=False)
            self.image_proj = nn.Linear(image_tower.out_dim, config.embed_dim, bias=False)
            nn.init.normal_(self.text_proj.weight, std=text_tower.out_dim ** -0.5)
            nn.init.normal_(self.image_proj.weight, std=image_tower.out_dim ** -0.5)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        # the sigmoid loss's learnable bias (softmax losses ignore it)
        self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))
        self._image_locked = False
        self._text_locked = False

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def build(cls, config: DualEncoderConfig, tokenizer: Any = None, *,
              load_weights: bool | None = None) -> DualEncoder:
        """Build the towers named in ``config`` from the tower registry.

        ``load_weights`` (default ``config.pretrained``): the towers' bundled or pretrained weights,
        else a random initialisation of the same architecture (what a loader fills in). A
        ``scratch`` text tower needs ``tokenizer`` (see ``train_tokenizer``); ``hf`` towers default
        to the tokenizer of ``config.text_model``. A checkpoint to start from
        (``config.init_from``) is read by :func:`eclip.model.load_model`, not here: with it set
        (and ``load_weights`` not given) this raises ConfigError; loaders pass ``load_weights=False``
        and fill the weights in (``init_from`` is then only the record of the start).
        """
        if load_weights is None:
            if config.init_from:  # a start from a checkpoint, not a model built from a config
                raise ConfigError(f"model.init_from={config.init_from}: the checkpoint is opened by "
                                  f"eclip.model.load_model (model_from_config), not DualEncoder.build")
            load_weights = config.pretrained
        if tokenizer is None:
            tokenizer = load_tokenizer(config)
        text_tower = build_text_tower(config, tokenizer, load_weights)
        image_tower = build_image_tower(config, load_weights)
        extra: dict[str, Any] = {}
        if hasattr(image_tower, "pooling"):  # the `hf` image tower may fall back from a missing pooler
            extra["image_pooling"] = image_tower.pooling
        if load_weights and hasattr(image_tower, "preprocessing"):
            extra.update(image_tower.preprocessing)  # the directory's preprocessor_config.json
        if config.projection == "identity":
            extra["embed_dim"] = text_tower.out_dim
        config = dataclasses.replace(config, text_hf_config=text_tower.hf_config,
                                     image_hf_config=image_tower.hf_config, **extra)
        return cls(config, tokenizer, text_tower, image_tower)

    # ------------------------------------------------------------------------------- encoding
    @property
    def device(self) -> torch.device:
        """Where the model's weights are (the logit scale's device): encoders move inputs there."""
        return self.log_scale.device

    def logit_scale(self) -> Tensor:
        """``exp(log_scale)`` capped at ``max_logit_scale`` (gradients flow while below the cap)."""
        return self.log_scale.exp().clamp(max=self.config.max_logit_scale)

    def image_features(self, pixel_values: Tensor) -> Tensor:
        """Pooled image-tower features, before projection."""
        return self.image_tower(pixel_values)

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled text-tower features, before projection.

        Columns that are padding in every row are dropped first (:func:`trim_padding`) where that
        cannot change the features: the tower masks padding out (``masks_padding``) and the model
        does not pad to ``max_length`` on purpose (SigLIP pools the last position).
        """
        if self.config.text_padding != "max_length" and getattr(self.text_tower, "masks_padding", False):
            input_ids, attention_mask = trim_padding(input_ids, attention_mask)
        return self.text_tower(input_ids, attention_mask)

    def project_image(self, features: Tensor, normalize: bool = True) -> Tensor:
        """Image-tower features -> joint space (unit length when ``normalize``)."""
        emb = self.image_proj(features)
        return F.normalize(emb, dim=-1) if normalize else emb

    def project_text(self, features: Tensor, normalize: bool = True) -> Tensor:
        """Text-tower features -> joint space (unit length when ``normalize``)."""
        emb = self.text_proj(features)
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_image(self, pixel_values: Tensor, normalize: bool = True) -> Tensor:
        return self.project_image(self.image_features(pixel_values), normalize)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor, normalize: bool = True) -> Tensor:
        return self.project_text(self.text_features(input_ids, attention_mask), normalize)

    def forward(self, pixel_values: Tensor, input_ids: Tensor,
                attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(image_emb, text_emb, logit_scale)`` with unit-length embeddings."""
        return (self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask),
                self.logit_scale())

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """``input_ids`` and ``attention_mask`` [B, L], cut at ``max_length``; padded to the longest
        text, or always to ``max_length`` when ``config.text_padding == "max_length"`` (SigLIP)."""
        padding = "max_length" if self.config.text_padding == "max_length" else True
        batch = self.tokenizer(list(texts), padding=padding, truncation=True,
                               max_length=self.config.max_length, return_tensors="pt")
        ids = batch["input_ids"]
        mask = batch["attention_mask"] if "attention_mask" in batch else torch.ones_like(ids)
        return {"input_ids": ids, "attention_mask": mask}

    def image_transform(self, train: bool = False, **options: Any):
        """The ``ImageTransform`` of this model's images (see ``DualEncoderConfig.image_transform``)."""
        return self.config.image_transform(train=train, **options)

    # ------------------------------------------------------------------------------- locking
    @property
    def image_locked(self) -> bool:
        return self._image_locked

    @property
    def text_locked(self) -> bool:
        return self._text_locked

    def set_trainable(self, image: bool = True, text: bool = True, image_layers: int | None = None,
                      text_layers: int | None = None, *, image_top_blocks: int = 0) -> DualEncoder:
        """Lock (``False``) or unlock a tower; a locked tower stays in eval mode.

        ``image_layers`` / ``text_layers`` (None: all of an unlocked tower, none of a locked one):
        only the top N layer groups of the tower (``tower.layer_groups()``: embeddings, blocks,
        head) train; the groups below get no gradients and their batch-norm statistics stay as
        they are. An unlocked tower is otherwise in train mode (dropout); a locked image tower
        with ``image_layers`` trains its top groups in eval mode (frozen normalisation statistics,
        no dropout), which is what lets a tower that can be cut compute the activations below
        its top ``image_layers - 1`` blocks once (``ImageTower.top_prefixes`` names the same
        parameters). Projections and the logit scale stay trainable. ``image_top_blocks=N``
        (deprecated) is ``image_layers=N + 1``.
        """
        if image_top_blocks:
            if image_layers is not None:
                raise ConfigError("set_trainable: give image_layers only (image_top_blocks=N is its "
                                  "old name for image_layers=N + 1)")
            warnings.warn("DualEncoder.set_trainable(image_top_blocks=N) is deprecated: use "
                          "image_layers=N + 1 (the top N blocks and the head)", DeprecationWarning,
                          stacklevel=2)
            image_layers = image_top_blocks + 1
        if text_layers is not None and not text:
            raise ConfigError("train.text_trainable_layers applies to an unlocked text tower: set "
                              "train.lock_text=false")
        self.image_tower.requires_grad_(image)
        if image_layers is not None:
            train_top_groups(self.image_tower, image_layers, "image")
        self.text_tower.requires_grad_(text)
        if text_layers is not None:
            train_top_groups(self.text_tower, text_layers, "text")
        self._image_locked, self._text_locked = not image, not text
        return self.train(self.training)

    def train(self, mode: bool = True) -> DualEncoder:
        super().train(mode)
        towers = ((self.image_tower, self._image_locked), (self.text_tower, self._text_locked))
        for tower, locked in towers:
            if locked:
                tower.eval()
            elif mode:  # batch norms of locked layer groups keep their statistics
                for module in tower.modules():
                    params = list(module.parameters(recurse=False))
                    if (isinstance(module, nn.modules.batchnorm._BatchNorm) and params
                            and not any(p.requires_grad for p in params)):
                        module.eval()
        return self

    def compile_towers(self, **options: Any) -> None:
        """``torch.compile`` both towers in place (``options``: those of ``torch.compile``).

        Only the towers: the padding trim before the text tower (data-dependent width), the
        projections and the loss stay eager, so that the compiled graphs have no breaks. Parameter
        names, and so checkpoints and saved models, stay the same. A new text width recompiles once,
        then torch marks it dynamic.
        """
        self.text_tower.compile(**options)
        self.image_tower.compile(**options)

    def enable_gradient_checkpointing(self) -> dict[str, bool]:
        """Gradient checkpointing in both towers where supported; says which towers have it."""
        return {"text": self.text_tower.enable_gradient_checkpointing(),
                "image": self.image_tower.enable_gradient_checkpointing()}

    # ---------------------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the model directory; files go to a temporary sibling that is renamed into place.

        An existing ``directory`` is replaced only if it is empty or holds an eclip model.
        """
        target = Path(directory)
        _check_replaceable(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(target)  # .NAME.tmp-PID-*: clean_stale_temps removes it after a kill
        tmp.mkdir()
        try:
            config = {"model_type": MODEL_TYPE, "eclip_version": __version__, **self.config.to_dict()}
            _write_json(tmp / CONFIG_FILE, config)
            _write_json(tmp / PREPROCESSOR_FILE, preprocessor_settings(self.config))
            self.tokenizer.save_pretrained(str(tmp))
            save_safetensors(self, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "eclip_version": __version__})
            if target.exists():
                old = temp_sibling(target, "old")
                target.rename(old)
                tmp.rename(target)
                shutil.rmtree(old)
            else:
                tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DualEncoder:
        """Rebuild from a directory written by ``save_pretrained`` (no bundled weights, no pickle).

        Only eclip's own format: :func:`eclip.model.load_model` is the one entry point, which
        calls this for an eclip directory and converts the other formats (transformers CLIP /
        SigLIP / VisionTextDualEncoder, open_clip). Any other directory raises ModelError.
        """
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise ModelError(f"{config_path} is missing: {directory} is not an eclip model directory "
                             f"(eclip.model.load_model also reads transformers and open_clip folders)")
        guard_model_dir(directory)  # every JSON file readable, no remote code (auto_map)
        data = read_json(config_path)
        if not isinstance(data, dict):
            raise ModelError(f"{config_path} is not an eclip model config (not a JSON object)")
        if data.get("model_type") != MODEL_TYPE:
            raise ModelError(f"{config_path}: model_type '{data.get('model_type')}' is not an eclip "
                             f"model; eclip.model.load_model reads the checkpoint formats it supports")
        data.pop("model_type")
        data.pop("eclip_version", None)
        try:
            config = DualEncoderConfig.from_dict(data)
        except ConfigError as err:
            raise ModelError(f"{config_path}: {err}") from err
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise ModelError(f"{weights} is missing: the model directory has no weights")
        try:  # e.g. a max_length beyond the text model's positions: name the file that says so
            model = cls.build(config, load_tokenizer(config, directory), load_weights=False)
        except ConfigError as err:
            raise ModelError(f"{config_path}: {err}") from err
        _read_weights(model, weights, config_path)
        return model


def _read_weights(model: DualEncoder, weights: Path, config_path: Path) -> None:
    """``weights`` (safetensors) into ``model``; ModelError naming the file when they do not fit."""
    try:
        missing, unexpected = load_safetensors(model, str(weights), strict=False)
    except SafetensorError as err:
        raise ModelError(f"{weights} cannot be read (damaged or truncated?): "
                         f"{' '.join(str(err).split())[:300]}") from None
    except (RuntimeError, OSError) as err:
        raise ModelError(f"{weights} does not fit the model in {config_path}: {err}") from err
    missing = [k for k in missing if k != "logit_bias"]  # saved before models had a logit bias
    if missing or unexpected:
        raise ModelError(f"{weights} does not match {config_path}: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def trim_padding(input_ids: Tensor, attention_mask: Tensor, multiple: int = 8) -> tuple[Tensor, Tensor]:
    """``input_ids`` and ``attention_mask`` without their trailing columns that are padding in every
    row (mask 0), the width rounded up to a ``multiple`` (fewer distinct shapes for a compiled tower)
    and never more than it was. A batch padded to a long context (77 tokens) for titles of 10 to 30
    runs the tower on about a third of the positions. Left padding is never trimmed."""
    width = attention_mask.shape[1]
    used = attention_mask.any(dim=0).nonzero()
    keep = int(used[-1]) + 1 if used.numel() else 1
    keep = min(width, -(-keep // multiple) * multiple)
    if keep == width:
        return input_ids, attention_mask
    return input_ids[:, :keep], attention_mask[:, :keep]


def _check_replaceable(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise ModelError(f"cannot save the model to {target}: it exists and is not a directory")
    if any(target.iterdir()):
        try:
            model_type = json.loads((target / CONFIG_FILE).read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None
        if model_type != MODEL_TYPE:
            raise ModelError(f"cannot save the model to {target}: it holds other files; "
                             f"choose an empty or new directory")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
