"""Embedding steps: how one optimizer step turns this rank's batch into gradients.

The loader hands out *unit* batches (a fixed number of rows per rank); a step takes as many units as
the batch-size schedule asks for. Two strategies, with the same signature::

    loss = step(embedder, units, loss_fn, precision)   # the global batch's loss; .grad filled

- :class:`WholeBatchStep`: the units concatenated, one forward pass, the loss, one backward pass.
  Activation memory grows with the batch.
- :class:`MultiStreamStep` (multi-stream accumulation, "gradient caching"): the contrastive batch is
  ``micro x streams x ranks`` rows while activation memory stays that of one micro-batch:

  1. embed every micro-batch (unit) without autograd, remembering the RNG state before each;
  2. compute the loss over all embeddings of all ranks and its gradient with respect to them;
  3. run each micro-batch again *with* autograd, from the RNG state of its first pass (so dropout
     draws the same masks), and back-propagate ``sum(embedding * its gradient)``: by the chain rule
     this adds exactly that micro-batch's share of the parameter gradients.

  The parameter gradients equal one pass over the whole batch with the same dropout masks.
  With DDP the all-reduce runs once, after the last micro-batch (``no_sync`` before it).

A model with a ``logit_bias`` parameter (SigLIP) hands it to the loss as ``logit_bias=``; like the
logit scale it comes out of the embedder's forward pass, so that DDP sees it used, and in
multi-stream accumulation its gradient is added once, in the last micro-batch's pass.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eclip.train.distributed import no_sync
from eclip.train.precision import Precision, full_precision

Batch = dict[str, Any]
TEXT_KEYS = ("input_ids", "attention_mask")


class Embedder(nn.Module):
    """What a step runs forward (and what DDP wraps): a batch -> ``(image_emb, text_emb, logit_scale,
    logit_bias)``, the last ``None`` for a model without a ``logit_bias``.

    ``image_input(model, batch)`` says where image embeddings come from (pixels through the tower, or
    cached features of a locked tower; see ``eclip.train.features``).
    """

    def __init__(self, model: nn.Module, image_input):
        super().__init__()
        self.model = model
        self.image_input = image_input

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        image = self.image_input(self.model, batch)
        text = self.model.encode_text(batch["input_ids"], batch["attention_mask"])
        return image, text, self.model.logit_scale(), getattr(self.model, "logit_bias", None)


def _bias_kwargs(bias: Tensor | None) -> dict[str, Tensor]:
    """``logit_bias=`` for the loss when the model has one (loss functions without a bias still work)."""
    return {} if bias is None else {"logit_bias": bias}


class EmbeddingStep(Protocol):
    def __call__(self, embedder: nn.Module, units: list[Batch], loss_fn: nn.Module,
                 precision: Precision) -> float: ...


def concat_batches(batches: list[Batch], pad_token_id: int = 0) -> Batch:
    """One batch from several: token tensors right-padded to the longest, everything else stacked."""
    if len(batches) == 1:
        return batches[0]
    width = max(b["input_ids"].shape[1] for b in batches)
    out: Batch = {}
    for key in batches[0]:
        parts = [b[key] for b in batches]
        if key in TEXT_KEYS:
            fill = pad_token_id if key == "input_ids" else 0
            parts = [F.pad(p, (0, width - p.shape[1]), value=fill) for p in parts]
        out[key] = torch.cat(parts)
    return out


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class WholeBatchStep:
    """This rank's units as one batch: one forward pass, the loss, one backward pass."""

    def __init__(self, pad_token_id: int = 0):
        self.pad_token_id = pad_token_id

    def __call__(self, embedder: nn.Module, units: list[Batch], loss_fn: nn.Module,
                 precision: Precision) -> float:
        batch = concat_batches(units, self.pad_token_id)
        with precision.autocast():
            image, text, scale, bias = embedder(batch)
        bias = None if bias is None else full_precision(bias)
        loss = loss_fn(full_precision(image), full_precision(text), full_precision(scale), batch["group"],
                       **_bias_kwargs(bias))
        value = float(loss_fn.global_value(loss))
        if math.isfinite(value):
            precision.backward(loss)
        return value


class MultiStreamStep:
    """Multi-stream accumulation over the units (micro-batches); see the module's docstring."""

    def __init__(self, pad_token_id: int = 0):
        self.whole = WholeBatchStep(pad_token_id)

    def __call__(self, embedder: nn.Module, units: list[Batch], loss_fn: nn.Module,
                 precision: Precision) -> float:
        if len(units) == 1:  # one stream: the same gradients for half the forward passes
            return self.whole(embedder, units, loss_fn, precision)
        device = units[0]["group"].device
        images, texts, states = [], [], []
        with torch.no_grad():
            for unit in units:
                states.append(_rng_state(device))
                with precision.autocast():
                    image, text, scale, bias = embedder(unit)
                images.append(full_precision(image))
                texts.append(full_precision(text))
        image = torch.cat(images).requires_grad_()
        text = torch.cat(texts).requires_grad_()
        scale = full_precision(scale).detach().requires_grad_()
        if bias is not None:
            bias = full_precision(bias).detach().requires_grad_()
        loss = loss_fn(image, text, scale, torch.cat([u["group"] for u in units]), **_bias_kwargs(bias))
        value = float(loss_fn.global_value(loss))
        if not math.isfinite(value):
            return value
        precision.backward(loss)  # fills image.grad, text.grad, scale.grad, bias.grad (fp16: scaled)

        start = 0
        for k, unit in enumerate(units):
            last = k == len(units) - 1
            stop = start + unit["group"].shape[0]
            _set_rng_state(states[k], device)
            with nullcontext() if last else no_sync(embedder):
                with precision.autocast():
                    image_k, text_k, scale_k, bias_k = embedder(unit)
                surrogate = ((full_precision(image_k) * image.grad[start:stop]).sum()
                             + (full_precision(text_k) * text.grad[start:stop]).sum())
                if last:  # the logit scale's (and bias's) gradient, once
                    surrogate = surrogate + full_precision(scale_k) * scale.grad
                    if bias is not None and bias.grad is not None:
                        surrogate = surrogate + (full_precision(bias_k) * bias.grad).sum()
                surrogate.backward()
            start = stop
        return value
