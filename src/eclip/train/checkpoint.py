"""Training checkpoints: written atomically, read back with ``weights_only`` (no arbitrary pickle).

A checkpoint holds everything an exact resume needs: model, optimizer and scheduler states, the
sampler position, the step counter and the torch RNG state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from eclip.atomic import atomic_open

LAST = "last.pt"


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    final = Path(directory) / LAST
    with atomic_open(final, "wb") as fh:  # a reader sees the old or the new file, never half
        torch.save(state, fh)
    return final


def load_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / LAST
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
