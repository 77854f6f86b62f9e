"""Weight-space ensembling of a fine-tuned model with the model it started from (WiSE-FT).

Wortsman et al. (2022), "Robust fine-tuning of zero-shot models": interpolating the weights of a
zero-shot model and of its fine-tuned version keeps much of the zero-shot robustness while keeping
most of the fine-tuning gain. Here every floating-point tensor of the state dict (tower weights,
projections, logit scale and bias, floating buffers) becomes ``(1 - alpha) * init + alpha *
finetuned``; integer and boolean buffers (position ids, batch-norm step counts) are the fine-tuned
model's. ``alpha = 0`` gives the starting model's weights, ``alpha = 1`` the fine-tuned ones, both
exactly.

``merge_models`` merges two models (or model directories: an eclip model directory, or the
transformers checkpoint directory a run started from); ``WiseFT`` is the end-of-training option
(``train.wise_alpha``): it keeps a CPU copy of the weights before training and merges them into the
trained model before it is saved.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from eclip.errors import ConfigError, ModelError
from eclip.model.load import load_model

if TYPE_CHECKING:
    from eclip.model.dual_encoder import DualEncoder


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float in [0, 1], else ConfigError."""
    try:
        value = float(alpha)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"the merge alpha must be a number in [0, 1], got {alpha!r}") from err
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"the merge alpha must be in [0, 1] (0: the starting model, 1: the "
                          f"fine-tuned one), got {alpha}")
    return value


def check_same_architecture(init: dict[str, Tensor], finetuned: dict[str, Tensor]) -> None:
    """ModelError naming the first tensor (in the fine-tuned model's order) that one state dict
    lacks or that differs in shape or kind (floating point or not) between the two."""
    for name, tensor in finetuned.items():
        if name not in init:
            raise ModelError(f"the models differ in architecture: '{name}' is in the fine-tuned model "
                             f"but not in the starting one")
        other = init[name]
        if other.shape != tensor.shape:
            raise ModelError(f"the models differ in architecture: '{name}' has shape "
                             f"{tuple(other.shape)} in the starting model and {tuple(tensor.shape)} "
                             f"in the fine-tuned one")
        if other.is_floating_point() != tensor.is_floating_point():
            raise ModelError(f"the models differ in architecture: '{name}' is {other.dtype} in the "
                             f"starting model and {tensor.dtype} in the fine-tuned one")
    extra = next((name for name in init if name not in finetuned), None)
    if extra is not None:
        raise ModelError(f"the models differ in architecture: '{extra}' is in the starting model but "
                         f"not in the fine-tuned one")


def merge_state_dicts(init: dict[str, Tensor], finetuned: dict[str, Tensor],
                      alpha: float) -> dict[str, Tensor]:
    """``(1 - alpha) * init + alpha * finetuned`` for the floating tensors (computed in at least
    float32, returned in the fine-tuned dtype and on its device); the fine-tuned tensor for the
    others. Same keys and shapes are required (ModelError otherwise)."""
    alpha = check_alpha(alpha)
    check_same_architecture(init, finetuned)
    merged: dict[str, Tensor] = {}
    for name, tuned in finetuned.items():
        tuned = tuned.detach()
        if not tuned.is_floating_point() or alpha == 1.0:
            merged[name] = tuned.clone()
            continue
        start = init[name].detach().to(device=tuned.device)
        if alpha == 0.0:
            merged[name] = start.to(dtype=tuned.dtype, copy=True)
            continue
        work = torch.promote_types(tuned.dtype, torch.float32)
        merged[name] = (start.to(work) * (1.0 - alpha) + tuned.to(work) * alpha).to(tuned.dtype)
    return merged


def _as_model(model: Any, what: str) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, (str, Path)):
        return load_model(model)
    raise ConfigError(f"the {what} model must be a DualEncoder or a model directory, got "
                      f"{type(model).__name__}")


def merge_models(init: DualEncoder | str | Path, finetuned: DualEncoder | str | Path,
                 alpha: float) -> DualEncoder:
    """WiSE-FT: a new DualEncoder with weights ``(1 - alpha) * init + alpha * finetuned``.

    ``init`` / ``finetuned``: DualEncoders or model directories (an eclip model directory or a
    transformers CLIPModel / SiglipModel / VisionTextDualEncoderModel directory, read by
    ``eclip.model.load_model``). Both must have the same architecture (ModelError naming the
    first tensor that differs). The result keeps the fine-tuned model's config and tokenizer; the
    models given are not changed.
    """
    alpha = check_alpha(alpha)
    start = _as_model(init, "starting")
    tuned_given = not isinstance(finetuned, nn.Module)
    tuned = _as_model(finetuned, "fine-tuned")
    merged = merge_state_dicts(start.state_dict(), tuned.state_dict(), alpha)
    result = tuned if tuned_given else copy.deepcopy(tuned)
    result.load_state_dict(merged)
    return result


class WiseFT:
    """``train.wise_alpha``: the weights of ``model`` now (before training, copied to the CPU),
    merged into the trained model by :meth:`apply`."""

    def __init__(self, model: nn.Module, alpha: float):
        self.alpha = check_alpha(alpha)
        self.initial = {name: tensor.detach().to("cpu", copy=True)
                        for name, tensor in model.state_dict().items()}

    def apply(self, model: nn.Module) -> nn.Module:
        """Replace ``model``'s weights, in place, by the merge of the initial and its current ones."""
        model.load_state_dict(merge_state_dicts(self.initial, model.state_dict(), self.alpha))
        return model
