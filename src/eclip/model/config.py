"""The dual encoder's configuration: a plain dataclass that round-trips through JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from eclip.catalog.filters import RESAMPLE_FILTERS, RESIZE_MODES
from eclip.config import Range, above, at_least, check_ranges, coerce, from_dict
from eclip.errors import ConfigError

BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"

VIT_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"patch_size": 16, "hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 3},
    "small": {"patch_size": 16, "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "base": {"patch_size": 16, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
}

# Per image tower: the (mean, std) its pixels are normalised with. Towers registered later add theirs.
IMAGE_NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
_FALLBACK_NORMALISATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# The largest image side (model.image_size, model.image_resize_size) accepted: far beyond any tower
# eclip builds (224-512 in practice), well below sizes whose activations cannot be allocated.
MAX_IMAGE_SIZE = 4096

# The allowed values of every numeric field, checked in one place (``__post_init__``: recipes,
# overrides, saved configs and direct construction alike); a value outside is a ConfigError naming
# ``model.<key>`` and the range. ``None`` stays allowed where the field is optional.
MODEL_RANGES: dict[str, Range] = {
    "max_length": at_least(1),
    "scratch_hidden": at_least(1),
    "scratch_layers": at_least(1),
    "scratch_heads": at_least(1),
    "scratch_vocab_size": at_least(1),
    "image_size": Range(1, MAX_IMAGE_SIZE),
    "image_resize_size": Range(1, MAX_IMAGE_SIZE, note="or null: image_size"),
    "embed_dim": at_least(1),
    "init_temperature": above(0),
    "max_logit_scale": above(0),
    "init_logit_bias": Range(note="any finite number"),
    "fusion_weight": Range(0, 1, note="or null: chosen on the validation catalogs"),
}

TEXT_POOLINGS = ("mean", "cls", "pooler")
IMAGE_POOLINGS = ("pooler", "cls", "mean")
TEXT_PADDINGS = ("longest", "max_length")
PROJECTIONS = ("linear", "identity")


@dataclass
class DualEncoderConfig:
    """Everything needed to rebuild a DualEncoder's architecture (weights live in model.safetensors)."""

    # text tower
    text_tower: str = "hf"
    text_model: str = BUNDLED_MINILM
    # mean | cls | pooler (the model's own pooled output: BERT's tanh head, CLIP's EOS token,
    # SigLIP's head over the last token)
    text_pooling: str = "mean"
    max_length: int = 48
    # longest: pad a batch to its longest text; max_length: always to max_length (SigLIP's usage)
    text_padding: str = "longest"
    scratch_hidden: int = 256
    scratch_layers: int = 4
    scratch_heads: int = 4
    scratch_vocab_size: int = 8000
    text_hf_config: dict | None = None
    # how a listing becomes text (a ComposerConfig dict); saved so that embedding composes text
    # the way training did
    text_composer: dict | None = None
    # image tower
    image_tower: str = "efficientnet_lite0"
    vit_preset: str = "tiny"
    image_size: int = 128
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    image_hf_config: dict | None = None
    # the `hf` image tower: a transformers vision model directory and how its output is pooled
    # (pooler: the model's pooler_output; cls: the first token; mean: all tokens / positions)
    image_model: str | None = None
    image_pooling: str = "pooler"
    # evaluation preprocessing (see eclip.catalog.images.ImageTransform): crop | shortest_edge |
    # squash, the PIL resample filter, and the shorter side before the crop (shortest_edge)
    image_resize: str = "crop"
    image_resample: str = "bicubic"
    image_resize_size: int | None = None
    # joint space
    embed_dim: int = 256
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    # linear: a bias-free Linear per tower into embed_dim; identity: the towers' pooled features
    # are the embeddings (SigLIP; both towers must have the same out_dim)
    projection: str = "linear"
    # the learnable scalar bias of the sigmoid loss (DualEncoder.logit_bias)
    init_logit_bias: float = -10.0
    pretrained: bool = True
    # a checkpoint directory (transformers CLIPModel / SiglipModel / VisionTextDualEncoderModel,
    # or an open_clip folder) that the model starts from: towers, projections, logit scale (and
    # bias), tokenizer and preprocessing all come from it (eclip.model.load.model_from_config,
    # which opens it with load_model)
    init_from: str | None = None
    # the image's share of the fused ("both") vector, [sqrt(w) image; sqrt(1-w) text]
    # (eclip.encode.fusion): chosen on the validation catalogs at the end of training; None: not
    # chosen (eclip.encode.FUSION_WEIGHT serves, and the evaluation chooses one on its val split)
    fusion_weight: float | None = None

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for field in dataclasses.fields(self):
            setattr(self, field.name, coerce(hints[field.name], getattr(self, field.name),
                                             f"model.{field.name}"))
        mean, std = IMAGE_NORMALISATION.get(self.image_tower, _FALLBACK_NORMALISATION)
        if self.image_mean is None:
            self.image_mean = list(mean)
        if self.image_std is None:
            self.image_std = list(std)
        self._validate()

    def _validate(self) -> None:
        check_ranges(self, "model", MODEL_RANGES)
        for name, allowed in (("text_pooling", TEXT_POOLINGS), ("image_pooling", IMAGE_POOLINGS),
                              ("text_padding", TEXT_PADDINGS), ("projection", PROJECTIONS),
                              ("image_resize", RESIZE_MODES),
                              ("image_resample", tuple(RESAMPLE_FILTERS)),
                              ("vit_preset", tuple(VIT_PRESETS))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"model.{name} must be one of {', '.join(allowed)}, "
                                  f"got '{getattr(self, name)}'")
        if self.image_resize_size is not None and self.image_resize_size < self.image_size:
            raise ConfigError(f"model.image_resize_size ({self.image_resize_size}) must be >= "
                              f"model.image_size ({self.image_size}): the crop comes from the resized image")
        if self.scratch_hidden % self.scratch_heads:
            raise ConfigError(f"model.scratch_hidden ({self.scratch_hidden}) must be divisible by "
                              f"model.scratch_heads ({self.scratch_heads})")
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if len(values) != 3:
                raise ConfigError(f"model.{name} needs 3 values (R, G, B), got {values}")
        if any(not s > 0 for s in self.image_std):
            raise ConfigError(f"model.image_std values must be > 0, got {self.image_std}")

    def image_transform(self, train: bool = False, **options: Any):
        """The ``ImageTransform`` this model's images go through (``options``: scale, ratio)."""
        from eclip.catalog.images import ImageTransform

        return ImageTransform(self.image_size, tuple(self.image_mean), tuple(self.image_std),
                              train=train, resize=self.image_resize, resample=self.image_resample,
                              resize_size=self.image_resize_size, **options)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DualEncoderConfig:
        """Build from a mapping as the recipe's ``model`` section is built (``eclip.config.from_dict``):
        an unknown key or a bad value is a ConfigError naming ``model.<key>``."""
        return from_dict(cls, dict(data), "model")
