"""Catalog-aware contrastive loss (e-CLIP).

In a marketplace the same product (a *catalog*) is listed by many sellers. In a plain CLIP batch two
listings of one catalog are negatives of each other, although their titles and photos describe the same
thing. e-CLIP turns them into positives: the target of each row is spread uniformly over every row of
the batch that shares its catalog.

Group ids are an integer tensor ``[B]``: equal ids mean "same catalog"; a negative id means "no
catalog", and such a row is a positive of itself only (two rows with ``-1`` are *not* positives of each
other). With every id distinct (or every id negative) the loss is exactly the CLIP loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eclip.errors import ConfigError

TARGET_MODES = ("catalog", "clip")


def _check_targets(targets: str) -> None:
    if targets not in TARGET_MODES:
        raise ConfigError(f"unknown contrastive targets {targets!r}: use one of {', '.join(TARGET_MODES)}")


def _check_group_ids(group_ids: Tensor, batch: int | None = None) -> None:
    if not isinstance(group_ids, Tensor) or group_ids.dim() != 1:
        raise ValueError("group_ids must be a 1-D integer tensor [B]")
    if group_ids.dtype.is_floating_point or group_ids.dtype.is_complex or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must hold integers, got {group_ids.dtype}")
    if batch is not None and group_ids.shape[0] != batch:
        raise ValueError(f"group_ids has {group_ids.shape[0]} entries for a batch of {batch}")


def positive_mask(group_ids: Tensor) -> Tensor:
    """``[B, B]`` boolean mask: ``mask[i, j]`` is True when rows i and j are positives of each other.

    Rows sharing a non-negative id are positives; a negative id matches only its own row. The diagonal
    is always True. The mask is symmetric.
    """
    _check_group_ids(group_ids)
    same = group_ids.unsqueeze(1) == group_ids.unsqueeze(0)
    has_catalog = (group_ids >= 0).unsqueeze(1)
    eye = torch.eye(group_ids.shape[0], dtype=torch.bool, device=group_ids.device)
    return (same & has_catalog) | eye


def catalog_targets(group_ids: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[B, B]`` soft targets: each row spreads probability 1 uniformly over its positives.

    Positives share one catalog, so every row of a catalog has the same count and the matrix is
    symmetric: the same targets serve both directions (image->text and text->image).
    """
    mask = positive_mask(group_ids).to(dtype)
    return mask / mask.sum(dim=1, keepdim=True)


def _soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of ``-sum_j targets[i, j] * log_softmax(logits)[i, j]``."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float,
                     group_ids: Tensor | None = None, targets: str = "catalog") -> Tensor:
    """Symmetric contrastive loss with catalog-aware (or plain CLIP) targets.

    ``logits = logit_scale * image_emb @ text_emb.T``; the loss is the mean of the soft cross-entropy of
    the image->text rows and of the text->image rows (the rows of ``logits.T``). ``logit_scale`` is the
    multiplier itself (a CLIP model passes ``log_scale.exp()``). Embeddings are used as given: normalise
    them first for cosine logits. ``targets="clip"`` uses identity targets whatever the group ids, and
    ``group_ids=None`` behaves the same. Half-precision inputs are upcast to float32 for the softmax.
    """
    _check_targets(targets)
    if image_emb.dim() != 2 or text_emb.dim() != 2:
        raise ValueError("image_emb and text_emb must be 2-D tensors [B, D]")
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} "
                         "must have the same shape [B, D]")
    batch = image_emb.shape[0]
    if batch == 0:
        raise ValueError("the batch is empty")
    if isinstance(logit_scale, Tensor) and logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")

    logits = logit_scale * (image_emb @ text_emb.T)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()

    if targets == "clip" or group_ids is None:
        labels = torch.arange(batch, device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    _check_group_ids(group_ids, batch)
    soft = catalog_targets(group_ids.to(logits.device), dtype=logits.dtype)
    # soft is symmetric (see catalog_targets), so soft.T == soft serves the text->image direction.
    return (_soft_cross_entropy(logits, soft) + _soft_cross_entropy(logits.T, soft)) / 2


class ContrastiveLoss(nn.Module):
    """The contrastive loss as a strategy object: the target mode is fixed when it is built."""

    def __init__(self, targets: str = "catalog"):
        super().__init__()
        _check_targets(targets)
        self.targets = targets

    def forward(self, image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float,
                group_ids: Tensor | None = None) -> Tensor:
        return contrastive_loss(image_emb, text_emb, logit_scale, group_ids, targets=self.targets)

    def extra_repr(self) -> str:
        return f"targets={self.targets!r}"
