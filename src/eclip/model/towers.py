"""The tower interface and registry: text and image encoders that a DualEncoder plugs together.

A tower is an ``nn.Module`` with ``out_dim`` (the size of its pooled features), ``hf_config`` (the
Hugging Face config dict that rebuilds it without the original weights, or None) and ``forward``
returning pooled features; ``layer_groups()`` lists its parameters by layer group, bottom up
(embeddings, blocks, head), for locking and layer-wise learning rates. New towers are added with
``register_text_tower`` / ``register_image_tower``; the DualEncoder looks them up by the name in its
config. The built-in towers live in :mod:`eclip.model.text_towers` and
:mod:`eclip.model.image_towers`, which register themselves when imported (``dual_encoder`` does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from eclip.errors import ConfigError
from eclip.model.config import IMAGE_NORMALISATION, DualEncoderConfig
from eclip.model.layers import LayerGroup, find_layer_groups


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
    only the top of the locked tower (``train.image_trainable_layers: n + 1``, the blocks and the
    head) and computes the activations at the cut once:
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
            raise ConfigError(f"the {type(self).__name__} cannot be cut between blocks: train its "
                              f"top layer groups unlocked (train.lock_image=false with "
                              f"train.image_trainable_layers)")
        if not 1 <= blocks <= self.num_blocks:
            raise ConfigError(f"train.image_trainable_layers with train.lock_image must be between 2 "
                              f"and {self.num_blocks + 1} for the {type(self).__name__} (its top "
                              f"blocks and the head), got {blocks + 1}")
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

