"""Training checkpoints: written atomically, read back with ``weights_only`` (no arbitrary pickle).

A checkpoint holds everything an exact resume needs: model, optimizer and scheduler states, the
sampler position, the step counter and the torch RNG state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

LAST = "last.pt"


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / LAST
    tmp = directory / f".{LAST}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)  # atomic on POSIX: a reader sees the old or the new file, never half
    return final


def load_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / LAST
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
