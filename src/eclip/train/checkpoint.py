"""Training checkpoints: written atomically, read back with ``weights_only`` (no arbitrary pickle).

A checkpoint holds everything an exact resume needs: model, optimizer and scheduler states, the
sampler position, the step counter and the torch RNG state, and the fingerprint of the data the
run trains on (``train/fingerprint.py``). :func:`load_checkpoint` is the one guarded reader: a file
that is damaged, truncated, not a checkpoint or holds a pickle with globals is a one-line
:class:`CheckpointError` naming the file, never a traceback and never code run.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from eclip.atomic import atomic_open, clean_stale_temps
from eclip.errors import EclipError

LAST = "last.pt"
# what every checkpoint holds (``data_fingerprint`` is newer: a checkpoint without it still loads)
KEYS = ("model", "optimizer", "scheduler", "precision", "data", "torch_rng", "step")


class CheckpointError(EclipError):
    """A checkpoint that cannot be resumed from."""


def damaged(path: Path, reason: str) -> CheckpointError:
    """The one message of a checkpoint that cannot be used, naming the file and what to do."""
    reason = " ".join(str(reason).split())[:300]
    return CheckpointError(f"checkpoint {path} cannot be resumed from: {reason}; delete it to "
                           f"start the run over, or resume from a good copy")


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    final = Path(directory) / LAST
    with atomic_open(final, "wb") as fh:  # a reader sees the old or the new file, never half
        torch.save(state, fh)
    return final


def clean_checkpoint_temps(directory: str | Path) -> list[Path]:
    """Temporary checkpoint files left by a writer that was killed (``.last.pt.tmp-PID-*``)."""
    return clean_stale_temps(directory, (LAST,))


def load_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """``directory/last.pt`` as written by :func:`save_checkpoint`, None where there is none, or a
    :class:`CheckpointError` naming the file."""
    path = Path(directory) / LAST
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "Unsupported global" in line
                       or "GLOBAL" in line), "")
        raise damaged(path, "it holds objects other than tensors and plain values (a weights-only "
                            "load refuses them, nothing was run)"
                      + (f": {detail}" if detail else "")) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, TypeError,
            AttributeError, IndexError, MemoryError, RecursionError) as exc:
        text = str(exc).strip().splitlines()
        reason = text[0] if text else type(exc).__name__
        if isinstance(exc, EOFError) or "central directory" in reason or "zip archive" in reason:
            first = reason.split(". ")[0]  # torch adds a paragraph of advice
            reason = f"the file is truncated or not a torch checkpoint ({first or 'empty file'})"
        raise damaged(path, reason) from None
    if not isinstance(state, dict):
        raise damaged(path, f"it holds a {type(state).__name__}, not a checkpoint")
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise damaged(path, f"it lacks {', '.join(missing)} (not a checkpoint of eclip train)")
    if not isinstance(state["model"], dict) or not isinstance(state["data"], list) \
            or not isinstance(state["torch_rng"], list) or not isinstance(state["step"], int) \
            or isinstance(state["step"], bool) or state["step"] < 0:
        raise damaged(path, "its model, data, torch_rng or step entries have the wrong types")
    return state
