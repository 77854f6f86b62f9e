"""What trains and at which learning rate: the towers' locked layer groups, the optimizer's
parameter groups with layer-wise learning-rate decay, and the WiSE-FT start state.

Layer groups (``tower.layer_groups()``, bottom up): ``embeddings``, ``block 0`` .. ``block N-1``,
``head`` (final norm, pooler, pooling head). With ``train.text_lr_decay`` / ``image_lr_decay`` =
``d`` < 1, the parameter of layer group ``g`` of ``G`` gets ``lr x tower scale x d ** (G - 1 - g)``:
the head gets the tower's lr, the embeddings the lowest. The projections, the logit scale and the
logit bias are the heads (``lr``). Weight decay: none on biases, norms (tensors of fewer than two
dimensions) and the logit scale.
"""

from __future__ import annotations

from typing import Any

import torch

from eclip.model.merge import WiseFT
from eclip.train.recipe import TrainConfig

TOWERS = ("text_tower.", "image_tower.")


def _train_config(config: Any) -> TrainConfig:
    """A TrainConfig from itself or from a Recipe (its ``train`` section)."""
    return config if isinstance(config, TrainConfig) else config.train


def layer_depths(model, prefix: str) -> dict[str, int]:
    """Full parameter name -> depth below the top layer group (0: the top) of the tower at
    ``prefix`` (``text_tower.`` / ``image_tower.``)."""
    groups = getattr(model, prefix.rstrip(".")).layer_groups()
    top = len(groups) - 1
    return {prefix + name: top - index for index, group in enumerate(groups) for name in group.params}


def param_groups(model, train_config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters: heads at ``lr``; towers at
    ``lr * tower_lr_scale`` (the image tower at ``image_lr_scale`` when set) times
    ``decay ** depth`` of the parameter's layer group; no weight decay on biases, norms and the
    logit scale.

    Ordered by part (heads, image tower, text tower), then layer group from the bottom up, then
    decayed before not decayed; with both decays at 1.0 the groups are exactly those of earlier
    versions (one group per part and decay kind). ``train_config``: a TrainConfig (or a Recipe).
    """
    cfg = _train_config(train_config)
    scales = {"": 1.0, "text_tower.": cfg.tower_lr_scale,
              "image_tower.": cfg.tower_lr_scale if cfg.image_lr_scale is None else cfg.image_lr_scale}
    decays = {"": 1.0, "text_tower.": cfg.text_lr_decay, "image_tower.": cfg.image_lr_decay}
    depths: dict[str, int] = {}
    for part in TOWERS:
        if decays[part] != 1.0:
            depths.update(layer_depths(model, part))
    groups: dict[tuple[str, int, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = next((p for p in TOWERS if name.startswith(p)), "")
        no_decay = param.ndim < 2 or name == "log_scale"
        groups.setdefault((part, depths.get(name, 0), no_decay), []).append(param)
    return [
        {"params": params, "lr": cfg.lr * scales[part] * decays[part] ** depth,
         "weight_decay": 0.0 if no_decay else cfg.weight_decay}
        for (part, depth, no_decay), params in sorted(groups.items(),
                                                      key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2]))
    ]


def prepare_finetune(model, train_config: TrainConfig) -> WiseFT | None:
    """Lock and unlock the towers as the recipe says (``lock_image``, ``lock_text``,
    ``image_trainable_layers``, ``text_trainable_layers``); with ``train.wise_alpha``, return the
    weights before training (a copy on the CPU) as a ``WiseFT`` whose ``apply(model)`` merges the
    trained model with them before it is saved."""
    cfg = _train_config(train_config)
    model.set_trainable(image=not cfg.lock_image, text=not cfg.lock_text,
                        image_layers=cfg.image_trainable_layers, text_layers=cfg.text_trainable_layers)
    return WiseFT(model, cfg.wise_alpha) if cfg.wise_alpha is not None else None


def top_of_image_tower(train_config: TrainConfig, model, log=print) -> TrainConfig:
    """``train.image_trainable_layers: N`` with ``train.lock_image`` (train only the top of a
    locked image tower) for every image tower. A tower that can be cut between blocks
    (EfficientNet, vit) keeps its lower part locked and trains its top N - 1 blocks and head, with
    the activations below them computed once (``TrainConfig.image_cut_blocks``); any other tower,
    or N = 1 (the head alone), is unlocked with only its top N layer groups training. Returns the
    config to train with (``train_config`` itself when nothing changes)."""
    from dataclasses import replace

    layers = train_config.image_trainable_layers
    if not (train_config.lock_image and layers):
        return train_config
    tower = model.image_tower
    if layers > 1 and getattr(tower, "num_blocks", 0):
        return train_config  # the cut: checked against the tower's blocks where it is made
    log(f"train.image_trainable_layers={layers} with train.lock_image: the {type(tower).__name__} "
        f"{'cannot be cut between blocks' if layers > 1 else 'trains its head alone'}, so it is "
        f"unlocked with its top {layers} layer groups training (the groups below frozen)")
    return replace(train_config, lock_image=False)
