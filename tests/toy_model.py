"""A toy dual encoder with the interface the embedding steps use, small enough to start in many
processes at once (no transformers import), with dropout to test RNG replay."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ToyDualEncoder(nn.Module):
    def __init__(self, dropout: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float64,
                 logit_bias: float | None = None):
        super().__init__()
        torch.manual_seed(seed)
        self.image = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 4))
        self.embed = nn.Embedding(20, 8)
        self.text = nn.Sequential(nn.Dropout(dropout), nn.Linear(8, 4))
        self.log_scale = nn.Parameter(torch.tensor(2.0))
        if logit_bias is not None:  # a SigLIP-style learnable bias (rank-dependent seeds change it too)
            self.logit_bias = nn.Parameter(torch.tensor(logit_bias + 0.1 * seed))
        self.to(dtype)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(pixel_values), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        return F.normalize(self.text(pooled), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.exp()


def toy_batch(rows: int, seed: int = 1, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """A batch of ``rows`` listings; row 0 and the last row share a catalog, so do rows 1 and 4
    (when they exist), rows 2 and 5 have none, the others are catalogs of their own."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 7, (rows,), generator=gen)
    mask = (torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)).long()
    groups = torch.arange(rows) + 100
    groups[rows - 1] = 100
    if rows > 4:
        groups[4] = 101
    groups[2] = -1
    if rows > 5:
        groups[5] = -1
    return {"pixel_values": torch.randn(rows, 6, generator=gen, dtype=dtype),
            "input_ids": torch.randint(1, 20, (rows, 7), generator=gen) * mask,
            "attention_mask": mask, "group": groups}


def rows_of(batch: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {k: v[start:stop] for k, v in batch.items()}


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def units_of(batch: dict[str, torch.Tensor], micro: int) -> list[dict[str, torch.Tensor]]:
    """``batch`` cut into micro-batches of ``micro`` rows (the units of a multi-stream step)."""
    rows = batch["group"].shape[0]
    return [rows_of(batch, start, start + micro) for start in range(0, rows, micro)]
