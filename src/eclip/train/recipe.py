"""The sections of a training recipe (``configs/*.yaml``) as dataclasses.

``data`` is the catalog's own section (``eclip.catalog.config.DataConfig``), shared with ``eclip
eval``, ``embed``, ``prepare`` and ``index``; ``model`` is the model's own config
(``eclip.model.DualEncoderConfig``: typed, range-checked, unknown keys named when the recipe is
loaded). ``data.text`` stays a plain mapping here, validated by ``ComposerConfig``, so that each
idea has one definition.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from eclip.catalog.config import DataConfig
from eclip.config import Range, above, apply_overrides, at_least, check_ranges, from_dict, load_yaml
from eclip.errors import ConfigError
from eclip.model.config import DualEncoderConfig

PARALLEL = ("ddp", "fsdp")  # train.parallel: DDP, or FSDP2 (eclip.train.fsdp)
LORA_TOWERS = ("text", "image")
# train.lora.targets: names of peft's target modules (the last parts of a module's name, e.g.
# q_proj), or these groups of them (eclip.train.lora resolves them per tower)
LORA_GROUPS = ("attention", "mlp", "all-linear")
LORA_RANGES: dict[str, Range] = {
    "rank": at_least(1),
    "alpha": above(0),
    "dropout": Range(0, 1, high_open=True),
}


@dataclass
class LoraConfig:
    """``train.lora``: low-rank adapters (peft's LoRA) on the linear layers ``targets`` of the
    ``towers``; only the adapters train, everything else is frozen (eclip.train.lora). The update
    of a layer is ``alpha / rank x B A``; the saved model has the adapters merged in."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] | str = field(default_factory=lambda: ["attention"])
    towers: list[str] | str = field(default_factory=lambda: list(LORA_TOWERS))

    def __post_init__(self) -> None:
        check_ranges(self, "train.lora", LORA_RANGES)
        for key in ("targets", "towers"):
            value = getattr(self, key)
            value = [value] if isinstance(value, str) else value
            if not value or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"train.lora.{key} must be a name or a list of names, got "
                                  f"{getattr(self, key)!r}")
            setattr(self, key, list(dict.fromkeys(value)))
        unknown = [t for t in self.towers if t not in LORA_TOWERS]
        if unknown:
            raise ConfigError(f"train.lora.towers: unknown tower {unknown[0]!r}; the towers are "
                              f"{', '.join(LORA_TOWERS)}")

    def check_against(self, train: TrainConfig) -> None:
        """The train options that say otherwise what trains: a ConfigError naming the one set."""
        for tower in self.towers:
            if getattr(train, f"lock_{tower}"):
                raise ConfigError(f"train.lock_{tower}=true and train.lora.towers has {tower}: a "
                                  f"locked tower takes no adapters; drop one of the two")
        for key in ("text_trainable_layers", "image_trainable_layers"):
            if getattr(train, key):
                raise ConfigError(f"train.{key} and train.lora both say what trains: with LoRA "
                                  f"only the adapters train (unset train.{key})")


# The allowed values of every numeric option of the train section, checked in one place
# (``TrainConfig.__post_init__``: recipes, overrides and direct construction alike); a value outside
# is a ConfigError naming ``train.<key>`` and the range. ``None`` stays allowed where the field is
# optional (off / no cap). A new numeric field belongs here.
_LAYERS_NOTE = ("or null: the whole tower; at least 1 layer group trains: lock a whole tower with "
                "train.lock_text / lock_image")
TRAIN_RANGES: dict[str, Range] = {
    "epochs": at_least(0, "0: no step, the initial model saved as the trained one"),
    "max_steps": at_least(0, "or null: no cap; 0: no step, the initial model saved as the trained "
                             "one"),
    "threads": at_least(1, "or null: the free CPU cores this process may use, at most 32"),
    "batch_size": at_least(1),
    "micro_batch_size": at_least(1, "or null: the whole batch at once"),
    "loss_chunk_size": at_least(1, "or null: all rows at once"),
    "text_text_weight": at_least(0),
    "image_image_weight": at_least(0),
    "per_group": at_least(1),
    "lr": above(0),
    "tower_lr_scale": at_least(0),
    "image_lr_scale": at_least(0, "or null: tower_lr_scale"),
    "weight_decay": at_least(0),
    "warmup_steps": at_least(0),
    "min_lr_ratio": Range(0, 1),
    # the largest gradient norm kept; .inf: no clipping (a norm <= 0 would flip or zero the update)
    "grad_clip": above(0, ".inf: no clipping", allow_inf=True),
    "image_trainable_blocks": at_least(0, "deprecated: train.image_trainable_layers=N+1"),
    "text_trainable_layers": at_least(1, _LAYERS_NOTE),
    "image_trainable_layers": at_least(1, _LAYERS_NOTE),
    "text_lr_decay": Range(0, 1, low_open=True, note="1.0: no decay"),
    "image_lr_decay": Range(0, 1, low_open=True, note="1.0: no decay"),
    "wise_alpha": Range(0, 1, note="or null: no merge"),
    "seed": at_least(0),
    "checkpoint_every": at_least(1),
    "log_every": at_least(1),
    "eval_batch_size": at_least(1),
    "num_workers": at_least(0),
}


@dataclass
class TrainConfig:
    output_dir: str = "runs/eclip"  # checkpoints, metrics.jsonl, tensorboard/, bad-row report
    model_dir: str | None = None  # where the trained model is saved; default OUTPUT_DIR/model
    targets: str = "catalog"  # "catalog" (e-CLIP) or "clip" (identity targets, for ablation)
    # "softmax" (CLIP's cross-entropy) or "sigmoid" (SigLIP: every pair a binary problem, with the
    # model's learnable logit bias); both with the targets above. "auto": sigmoid for a model that
    # carries SigLIP's heads (started from a SigLIP checkpoint), softmax otherwise
    loss: str = "auto"
    epochs: int = 5
    max_steps: int | None = None  # stop early after this many optimizer steps
    batch_size: int = 64  # the global contrastive batch: all ranks and streams together
    # the batch grows by step, e.g. [{step: 0, batch_size: 1024}, {step: 2000, batch_size: 8192}]
    batch_schedule: list[dict[str, int]] | None = None
    lr_scaling: str = "sqrt"  # lr * (batch / first batch) ** p: "sqrt" p=0.5, "linear" p=1, "none"
    # rows per rank embedded at once; set it for multi-stream accumulation (batch = micro x streams
    # x ranks): activation memory stays that of one micro-batch
    micro_batch_size: int | None = None
    loss_chunk_size: int | None = None  # rows of the similarity matrix computed at a time
    local_loss: bool = False  # each rank: its rows against all columns (memory linear in the batch)
    # weights of the same loss within a modality (title vs titles, photo vs photos), same targets
    text_text_weight: float = 0.0
    image_image_weight: float = 0.0
    precision: str = "fp32"  # "fp32", "bf16" or "fp16" (autocast around the towers)
    # how the ranks of a torchrun job share the model: "ddp" (each holds all of it) or "fsdp"
    # (FSDP2: weights, gradients and optimizer states sharded per tower block; see train/fsdp.py)
    parallel: str = "ddp"
    grad_checkpointing: bool = False  # recompute tower activations in the backward pass
    # torch.compile the towers: true, false or "auto" (on with CUDA and DDP; off on the CPU, where
    # compiling costs minutes: docs/BENCHMARKS.md)
    compile: bool | str = "auto"
    device: str = "auto"  # "auto" (CUDA when there is one), "cpu" or "cuda"
    per_group: int = 2  # listings of one catalog kept together in a batch (1 = plain shuffle)
    lr: float = 1e-4
    tower_lr_scale: float = 1.0  # learning rate of unlocked towers relative to the heads
    image_lr_scale: float | None = None  # the image tower's own scale (default: tower_lr_scale)
    weight_decay: float = 0.1
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    lock_image: bool = False
    # deprecated, the old name of image_trainable_layers: N blocks = N + 1 layer groups (the top
    # N blocks and the head); mapped onto image_trainable_layers when the recipe loads
    image_trainable_blocks: int | None = None
    lock_text: bool = False
    # the one knob for "train only the top of a tower" (its layer groups, bottom up: embeddings,
    # block 0..N-1, head): only the top N layer groups train, the groups below are frozen (None:
    # the whole tower, as lock_text / lock_image say). With lock_image, the image tower stays in
    # eval mode and, where it can be cut between blocks (EfficientNet, vit), the activations below
    # its top N - 1 blocks are computed once, like a locked tower's features; any other image
    # tower is unlocked with its top N groups training (eclip.train.optim.top_of_image_tower)
    text_trainable_layers: int | None = None
    image_trainable_layers: int | None = None
    # layer-wise learning-rate decay, in (0, 1]: the top layer group of the tower gets the tower's
    # lr, each group below it lr x decay ** depth (1.0: off); the projections, logit scale and bias
    # keep the heads' lr
    text_lr_decay: float = 1.0
    image_lr_decay: float = 1.0
    # WiSE-FT, in [0, 1]: the saved model is (1 - alpha) x the weights before training + alpha x
    # the trained ones (None: off); the checkpoint keeps the trained weights unmerged
    wise_alpha: float | None = None
    cache_locked_features: bool = True  # embed a locked tower's inputs once, not every step
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    eval_batch_size: int = 128
    # DataLoader worker processes per process: a number (0: load in the process), or "auto": the
    # cores this process may use less one, shared among torchrun's processes on this machine, for
    # a run that decodes photos; 0 when a locked image tower is served from its feature cache or
    # an epoch has fewer than 32 batches (eclip.train.data.loader_workers).
    # With data.shards the worker count is part of the data order (0 and 1 read alike): give a
    # number where runs on machines with other core counts must read the same batches
    num_workers: int | str = "auto"
    # torch threads of each process (None: $ECLIP_THREADS, else the CPU cores it may use, shared
    # among the processes of a torchrun job on this machine, at most 32, less the cores other
    # processes keep busy); see eclip.config.use_threads
    threads: int | None = None
    progress: bool = True
    # LoRA adapters on the towers, e.g. {rank: 8, alpha: 16, targets: [attention], towers: [text,
    # image]} (None: off); the package's extra: pip install 'eclip[lora]'
    lora: LoraConfig | None = None

    @property
    def image_cut_blocks(self) -> int:
        """The blocks above the cut of a locked image tower whose top layer groups train
        (``image_trainable_layers - 1`` with ``lock_image``: the top group is the head), else 0."""
        layers = self.image_trainable_layers
        return layers - 1 if self.lock_image and layers and layers > 1 else 0

    @property
    def no_steps(self) -> bool:
        """``epochs=0`` or ``max_steps=0``: the run saves the initial model as its model."""
        return self.epochs == 0 or self.max_steps == 0

    def __post_init__(self) -> None:
        check_ranges(self, "train", TRAIN_RANGES)
        self._map_image_trainable_blocks()
        if self.parallel not in PARALLEL:
            raise ConfigError(f"train.parallel must be one of {', '.join(PARALLEL)}, "
                              f"got {self.parallel!r}")
        if self.num_workers != "auto" and (isinstance(self.num_workers, bool)
                                           or not isinstance(self.num_workers, int)):
            raise ConfigError(f"train.num_workers must be auto or an integer >= 0, "
                              f"got {self.num_workers!r}")
        if self.compile not in (True, False, "auto"):
            raise ConfigError(f"train.compile must be true, false or auto, got {self.compile!r}")
        if self.parallel == "fsdp" and self.precision == "fp16":
            raise ConfigError("train.parallel=fsdp does not run with train.precision=fp16 (the "
                              "loss scaler would see only this rank's shards): use bf16 or fp32")
        if self.lora is not None:
            self.lora.check_against(self)

    def _map_image_trainable_blocks(self) -> None:
        """``image_trainable_blocks: N`` (deprecated) is ``image_trainable_layers: N + 1``."""
        blocks = self.image_trainable_blocks
        self.image_trainable_blocks = None
        if not blocks:  # None, or 0: the old "off"
            return
        if self.image_trainable_layers is not None:
            raise ConfigError(f"train.image_trainable_blocks is the old name of "
                              f"train.image_trainable_layers (N blocks = N + 1 layer groups): set "
                              f"only train.image_trainable_layers (got both, {blocks} and "
                              f"{self.image_trainable_layers})")
        warnings.warn(f"train.image_trainable_blocks is deprecated: it is now "
                      f"train.image_trainable_layers={blocks + 1} (the top {blocks} blocks and the "
                      f"head, as layer groups), which works on every tower", FutureWarning,
                      stacklevel=2)
        self.image_trainable_layers = blocks + 1


@dataclass
class Recipe:
    model: DualEncoderConfig = field(default_factory=DualEncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):  # Recipe(model={...}) from Python: checked the same way
            self.model = DualEncoderConfig.from_dict(self.model)


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Recipe from a YAML file (optional) with ``section.key=value`` overrides applied on top."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(Recipe, data, "")
