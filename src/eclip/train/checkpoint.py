"""Training checkpoints: written atomically, read back with ``weights_only`` (no arbitrary pickle).

A checkpoint holds everything an exact resume needs: model, optimizer and scheduler states, the
sampler position, the step counter and the torch RNG state, and the fingerprint of the data the
run trains on (``train/fingerprint.py``). :func:`load_checkpoint` is the one guarded reader: a file
that is damaged, truncated, not a checkpoint or holds a pickle with globals is a one-line
:class:`CheckpointError` naming the file, never a traceback and never code run.

Two layouts, one per ``train.parallel`` strategy:

- ``last.pt`` (one process, DDP): one file, every state whole, written by rank 0;
- ``last.dcp/`` (FSDP, ``train/fsdp.py``): a folder in the format of ``torch.distributed.checkpoint``
  (DCP): every rank writes its own shards of the model and optimizer tensors (``__R_0.distcp``),
  rank 0 the index (``.metadata``) and ``state.pt``, the rest of the state (steps, data positions,
  RNG, scheduler, the optimizer's parameter groups). The folder is assembled under a temporary
  name and renamed into place, so a kill leaves the previous checkpoint. It is read without
  running pickled code: ``.metadata`` through an unpickler that knows only DCP's index classes,
  ``state.pt`` with ``weights_only``, the shards as tensors only; every file the index names must
  be a shard inside the folder.
"""

from __future__ import annotations

import io
import pickle
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from eclip.atomic import atomic_open, clean_stale_temps, temp_sibling
from eclip.errors import CheckpointError

LAST = "last.pt"
LAST_SHARDED = "last.dcp"  # FSDP: a DCP folder
STATE = "state.pt"  # in LAST_SHARDED: everything but the sharded tensors
METADATA = ".metadata"  # DCP's index of the shards
# what every checkpoint holds (``data_fingerprint`` and ``cuda_rng``, every rank's GPU generator
# state or None, are newer: a checkpoint without them still loads)
KEYS = ("model", "optimizer", "scheduler", "precision", "data", "torch_rng", "step")
# what ``state.pt`` of a sharded checkpoint holds (the model and optimizer tensors are the shards)
SHARDED_KEYS = ("optimizer_groups", "scheduler", "precision", "data", "torch_rng", "step")
SHARD_FILE = re.compile(r"^__\d+_\d+\.distcp$")


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
    """Temporary checkpoint files and folders left by a writer that was killed
    (``.last.pt.tmp-PID-*``, ``.last.dcp.tmp-PID-*``; an ``.last.dcp.old-*`` whose replacement
    never arrived is put back)."""
    return clean_stale_temps(directory, (LAST, LAST_SHARDED))


def load_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """``directory/last.pt`` as written by :func:`save_checkpoint`, None where there is none, or a
    :class:`CheckpointError` naming the file."""
    path = Path(directory) / LAST
    if not path.is_file():
        sharded = Path(directory) / LAST_SHARDED
        if sharded.is_dir():
            raise CheckpointError(f"checkpoint {sharded} was written by a run with "
                                  "train.parallel=fsdp: resume it with train.parallel=fsdp")
        return None
    state = _read_state(path)
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise damaged(path, f"it lacks {', '.join(missing)} (not a checkpoint of eclip train)")
    if not isinstance(state["model"], dict):
        raise damaged(path, "its model, data, torch_rng or step entries have the wrong types")
    _check_types(path, state)
    return state


def _check_types(path: Path, state: dict[str, Any]) -> None:
    if not isinstance(state["data"], list) or not isinstance(state["torch_rng"], list) \
            or not isinstance(state["step"], int) or isinstance(state["step"], bool) \
            or state["step"] < 0:
        raise damaged(path, "its model, data, torch_rng or step entries have the wrong types")


def _read_state(path: Path, folder: Path | None = None) -> dict[str, Any]:
    """A dict saved with ``torch.save`` at ``path``, loaded ``weights_only``; anything else is a
    :class:`CheckpointError` naming the file (or the checkpoint ``folder`` that holds it)."""
    named, its = (path, "it") if folder is None else (folder, f"its {path.name}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "Unsupported global" in line
                       or "GLOBAL" in line), "")
        raise damaged(named, f"{its} holds objects other than tensors and plain values (a "
                             "weights-only load refuses them, nothing was run)"
                      + (f": {detail}" if detail else "")) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, TypeError,
            AttributeError, IndexError, MemoryError, RecursionError) as exc:
        text = str(exc).strip().splitlines()
        reason = text[0] if text else type(exc).__name__
        if isinstance(exc, EOFError) or "central directory" in reason or "zip archive" in reason:
            first = reason.split(". ")[0]  # torch adds a paragraph of advice
            reason = f"the file is truncated or not a torch checkpoint ({first or 'empty file'})"
        raise damaged(named, reason if folder is None else f"{its}: {reason}") from None
    if not isinstance(state, dict):
        raise damaged(named, f"{its} holds a {type(state).__name__}, not a checkpoint")
    return state


# ------------------------------------------------------------------------ sharded (FSDP) checkpoints
def save_sharded_checkpoint(directory: str | Path, tensors: dict[str, Any],
                            state: dict[str, Any]) -> Path:
    """``directory/last.dcp``: every rank's shards of ``tensors`` (a DCP state dict: DTensors, and
    plain tensors that every rank holds alike) and rank 0's ``state`` (plain values) as
    ``state.pt``. Collective: every rank of the job calls it. The folder is written under a
    temporary name (``.last.dcp.tmp-PID-*``, PID: rank 0's) and renamed into place by rank 0."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    final = Path(directory) / LAST_SHARDED
    distributed = dist.is_available() and dist.is_initialized()
    main = not distributed or dist.get_rank() == 0
    if main:
        final.parent.mkdir(parents=True, exist_ok=True)
    names = [str(temp_sibling(final)) if main else None]
    if distributed:
        dist.broadcast_object_list(names, src=0)  # one folder for all ranks (a shared file system)
    tmp = Path(names[0])
    try:
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(tmp))  # rank 0 writes .metadata last
        if main:
            with atomic_open(tmp / STATE, "wb") as fh:
                torch.save(state, fh)
            _replace_folder(tmp, final)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if distributed:
        dist.barrier()  # no rank reads or writes the next checkpoint before this one is in place
    return final


def _replace_folder(tmp: Path, final: Path) -> None:
    """``tmp`` renamed to ``final``; an existing ``final`` is first renamed aside
    (``.NAME.old-PID-*``, put back by :func:`clean_checkpoint_temps` after a kill in between)."""
    if final.exists():
        old = temp_sibling(final, "old")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def load_sharded_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The ``state.pt`` of ``directory/last.dcp`` with its DCP index checked (``"index"``: the
    index, for :func:`read_sharded_tensors`); None where there is no such folder; a
    :class:`CheckpointError` naming the folder or file where it cannot be used."""
    path = Path(directory) / LAST_SHARDED
    if not path.is_dir():
        if (Path(directory) / LAST).is_file():
            raise CheckpointError(f"checkpoint {Path(directory) / LAST} was written by a run with "
                                  "train.parallel=ddp (or by one process): resume it with "
                                  "train.parallel=ddp")
        return None
    state_path = path / STATE
    if not state_path.is_file():
        raise damaged(path, f"it has no {STATE} (not a checkpoint of eclip train, or damaged)")
    state = _read_state(state_path, path)
    missing = [key for key in SHARDED_KEYS if key not in state]
    if missing:
        raise damaged(path, f"its {STATE} lacks {', '.join(missing)} (not a checkpoint of eclip "
                            "train)")
    _check_types(path, state)
    if not isinstance(state["optimizer_groups"], list):
        raise damaged(path, f"its {STATE} has an optimizer_groups entry of the wrong type")
    state["index"] = read_index(path)
    return state


# The globals a DCP index (``.metadata``) may name: its own record classes, torch sizes, dtypes and
# layouts, and the path it was written to. Nothing else is looked up, so nothing else can run.
_INDEX_GLOBALS = {
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"), ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")),
}


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _INDEX_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not part of a checkpoint index")


def read_index(path: Path) -> Any:
    """DCP's index of the folder ``path``, unpickled with :class:`_IndexUnpickler`, every shard it
    names a file of the folder (``__R_K.distcp``) long enough for the bytes it points to."""
    from torch.distributed.checkpoint.metadata import Metadata

    index_path = path / METADATA
    if not index_path.is_file():
        raise damaged(path, f"it has no {METADATA} (the index of its shards)")
    try:
        with open(index_path, "rb") as fh:
            index = _IndexUnpickler(fh).load()
    except pickle.UnpicklingError as exc:
        raise damaged(path, f"its {METADATA} is not an index of shards ({exc}; nothing was "
                            "run)") from None
    except (EOFError, OSError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            MemoryError, RecursionError, ImportError) as exc:
        raise damaged(path, f"its {METADATA} is truncated or not an index of shards "
                            f"({type(exc).__name__}: {exc})") from None
    storage = getattr(index, "storage_data", None)
    if not isinstance(index, Metadata) or not isinstance(storage, dict):
        raise damaged(path, f"its {METADATA} is not an index of shards")
    sizes: dict[str, int] = {}
    for info in storage.values():
        name = str(getattr(info, "relative_path", ""))
        if not SHARD_FILE.match(name):
            raise damaged(path, f"its {METADATA} names {name!r}, not a shard file of the folder")
        if name not in sizes:
            shard = path / name
            if not shard.is_file():
                raise damaged(path, f"its shard {name} is missing")
            sizes[name] = shard.stat().st_size
        offset, length = getattr(info, "offset", -1), getattr(info, "length", -1)
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
            raise damaged(path, f"its {METADATA} points into {name} at an invalid position")
        if offset + length > sizes[name]:
            raise damaged(path, f"its shard {name} is truncated ({sizes[name]} bytes, the index "
                                f"reads up to byte {offset + length})")
    return index


def read_sharded_tensors(path: Path, tensors: dict[str, Any], index: Any) -> None:
    """Fill ``tensors`` (a DCP state dict of this rank: DTensors are read for their shards) in
    place from the folder ``path`` whose checked index is ``index``. Collective. Non-tensor entries
    are refused (a DCP checkpoint may hold pickled objects; eclip's hold none)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if getattr(index, "storage_meta", None) is None:
                index.storage_meta = StorageMeta()
            index.storage_meta.load_id = self.load_id
            return index

    class TensorsOnly(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            raise ValueError(f"entry {read_item.dest_index.fqn} is a pickled object, not a tensor")

    import torch.distributed as dist

    alone = not (dist.is_available() and dist.is_initialized())  # e.g. a test reading it whole
    try:
        with warnings.catch_warnings():
            if alone:  # DCP warns that it assumes one process: that is the intent here
                warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(tensors, storage_reader=Reader(path), planner=TensorsOnly(), no_dist=alone)
    except CheckpointError:
        raise
    except Exception as exc:  # DCP gathers every rank's failure into one CheckpointException
        raise damaged(path, f"its shards cannot be read into this run's model and optimizer "
                            f"({_first_failure(exc)})") from None


def _first_failure(exc: BaseException) -> str:
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = getattr(next(iter(failures.values())), "exception", None)
        if isinstance(inner, BaseException):
            exc = inner
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip(": ")
