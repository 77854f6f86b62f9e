"""Numeric precision of a step as a strategy: autocast around the towers, loss scaling for fp16.

``fp32`` runs everything in float32. ``bf16`` and ``fp16`` run the towers under ``torch.autocast``
(matrix products in half precision, reductions and the loss in float32); ``fp16`` adds a gradient
scaler because its narrow exponent underflows small gradients. The contrastive loss always
computes its softmax in float32.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

from eclip.errors import ConfigError

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def full_precision(tensor: Tensor) -> Tensor:
    """``tensor`` in float32 when it is half precision, else unchanged (float64 stays float64)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


class Precision:
    """``autocast()`` for the forward pass, ``backward(loss)``, and ``step`` (clip + optimizer)."""

    def __init__(self, name: str = "fp32", device: torch.device | str = "cpu"):
        if name not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
        self.name = name
        self.device = torch.device(device)
        self.dtype = PRECISIONS[name]
        if self.dtype is not None and not torch.amp.is_autocast_available(self.device.type):
            raise ConfigError(f"train.precision={name}: torch has no autocast for {self.device.type}")
        self.scaler = torch.amp.GradScaler(self.device.type) if name == "fp16" else None

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        """Back-propagate ``loss`` (scaled by the fp16 gradient scaler, which ``step`` undoes)."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
             max_norm: float) -> float | None:
        """Clip the gradients to ``max_norm`` and step; returns the gradient norm before clipping.

        A non-finite gradient norm skips the update and returns None; under fp16 the scaler skips
        such steps itself (and lowers its scale), as it does while calibrating.
        """
        if self.scaler is None:
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if not math.isfinite(norm):
                return None
            optimizer.step()
            return norm
        self.scaler.unscale_(optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.scaler.step(optimizer)
        self.scaler.update()
        return norm

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
