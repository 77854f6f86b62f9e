"""Where a run's checkpoints live and how a run continues from one (``--resume``).

``OUTPUT_DIR/checkpoints/`` holds the last checkpoint (``train/checkpoint.py``: one file, or a
folder of shards under FSDP). :func:`resume_state` reads it and checks its data fingerprint against
the run's data before anything is built; :func:`resume_step` puts it into the run's model,
optimizer, scheduler, precision and data source (every rank) once they are built, so that the
resumed run draws the same batches, dropout masks and updates as an uninterrupted one.
:func:`clean_run_temps` removes what a killed writer left in the run's folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from eclip.atomic import clean_stale_temps
from eclip.errors import ConfigError
from eclip.train.checkpoint import clean_checkpoint_temps, damaged
from eclip.train.distributed import DataParallel, DistEnv
from eclip.train.fingerprint import check_fingerprint
from eclip.train.precision import Precision
from eclip.train.recipe import TrainConfig
from eclip.train.sources import DataSource

CHECKPOINTS = "checkpoints"  # OUTPUT_DIR/checkpoints/last.pt


def clean_run_temps(out_dir: Path, cfg: TrainConfig) -> None:
    """Temporary files that a run killed in this folder left (a checkpoint, the model, init/,
    reports half written): removed where their writer is gone (``eclip.atomic.clean_stale_temps``)."""
    clean_stale_temps(out_dir)
    clean_checkpoint_temps(out_dir / CHECKPOINTS)
    if cfg.model_dir:
        clean_stale_temps(Path(cfg.model_dir).parent, (Path(cfg.model_dir).name,))


def resume_state(ckpt_dir: Path, resume: bool, fingerprint: dict[str, Any], out_dir: Path,
                  log: Callable[[str], None], parallel=None) -> dict[str, Any] | None:
    """The checkpoint a resumed run continues from (None: none there, or not resuming), once its
    data fingerprint matches the data of this run (else ConfigError naming what changed); a
    damaged checkpoint is a CheckpointError naming the file. ``parallel``: the strategy whose
    checkpoints are read (default DDP's ``last.pt``)."""
    parallel = parallel if parallel is not None else DataParallel(DistEnv())
    state = parallel.load_checkpoint(ckpt_dir) if resume else None
    if state is None:
        if resume:
            log(f"no checkpoint in {ckpt_dir}: starting from scratch")
        return None
    note = check_fingerprint(state.get("data_fingerprint"), fingerprint,
                             parallel.checkpoint_path(ckpt_dir), out_dir)
    if note:
        log(note)
    return state


def resume_step(ckpt_dir: Path, state: dict[str, Any] | None, model, optimizer, scheduler,
                precision: Precision, source: DataSource, env: DistEnv,
                log: Callable[[str], None], parallel=None) -> int:
    """The step the run starts at: the checkpoint's (``state``, see :func:`resume_state`),
    restored into the run's objects; 0 without one. A checkpoint that does not fit the run's model,
    optimizer or data is a CheckpointError naming the file."""
    if state is None:
        return 0
    parallel = parallel if parallel is not None else DataParallel(env)
    path = parallel.checkpoint_path(ckpt_dir)
    try:
        step = _restore(state, model, optimizer, scheduler, precision, source, env, parallel)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        lines = str(exc).strip().splitlines()
        detail = "; ".join(line.strip() for line in lines[:3]) or type(exc).__name__
        raise damaged(path, f"it does not fit this run's model, optimizer or data "
                            f"({detail})") from None
    log(f"resumed from {path} at step {step}")
    return step


def _restore(state: dict[str, Any], model, optimizer, scheduler, precision: Precision,
             source: DataSource, env: DistEnv, parallel) -> int:
    """Load a checkpoint into the run's objects; returns its step."""
    ranks = len(state["data"])
    if ranks != env.world_size:
        raise ConfigError(f"the checkpoint was written by a job of {ranks} rank(s): resume it with "
                          f"{ranks} (this job has {env.world_size})")
    parallel.restore(state, model, optimizer)  # the model and optimizer: whole or sharded
    scheduler.load_state_dict(state["scheduler"])
    precision.load_state_dict(state["precision"])
    source.load_state_dict(state["data"][env.rank])
    torch.set_rng_state(state["torch_rng"][env.rank])
    cuda_rng = state.get("cuda_rng")  # absent before 2026-12 and from CPU runs
    if cuda_rng and cuda_rng[env.rank] is not None and env.device.type == "cuda":
        torch.cuda.set_rng_state(cuda_rng[env.rank], env.device)
    return int(state["step"])
