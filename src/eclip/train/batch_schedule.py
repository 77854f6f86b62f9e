"""Batch-size schedule: the contrastive batch grows during training, and the learning rate with it.

Very large contrastive batches converge slowly from a random start; e-CLIP starts small and grows the
batch. A recipe names phases by optimizer step::

    train:
      batch_schedule: [{step: 0, batch_size: 1024}, {step: 2000, batch_size: 8192},
                       {step: 6000, batch_size: 32768}]
      lr_scaling: sqrt

The batch size is the *global* contrastive batch (all ranks, all streams). The learning rate rule:

    lr(step) = train.lr * (batch(step) / batch(0)) ** p * warmup_cosine(step)

with ``p = 0.5`` for ``sqrt`` (the default: the square-root rule for Adam-type optimizers, Malladi et
al., NeurIPS 2022), ``p = 1`` for ``linear`` (Goyal et al., 2017, derived for SGD) and ``p = 0`` for
``none``. ``train.lr`` is thus the rate of the first phase. Everything is a function of the step
number, so a run resumed in the middle of a phase continues on the same schedule.

Data arrive in *units*: a fixed number of rows per rank (``train.micro_batch_size``, or else the
largest size that divides every phase). A step of the schedule takes ``batch(step) / (unit x ranks)``
units, so changing the batch size never changes what a unit is, and the data position stays a plain
count of units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from eclip.errors import ConfigError
from eclip.train.schedule import warmup_cosine

LR_SCALING: dict[str, float] = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}


@dataclass(frozen=True)
class Phase:
    step: int  # the first optimizer step of the phase
    batch_size: int  # the global contrastive batch during the phase


class BatchSchedule:
    """Global batch size by optimizer step, the learning-rate factor that goes with it, and units."""

    def __init__(self, phases: Sequence[Phase], lr_scaling: str = "sqrt"):
        phases = list(phases)
        if not phases or phases[0].step != 0:
            raise ConfigError("train.batch_schedule must start with a phase at step 0")
        for before, after in zip(phases, phases[1:]):
            if after.step <= before.step:
                raise ConfigError(f"train.batch_schedule steps must increase: {before.step} then "
                                  f"{after.step}")
        for phase in phases:
            if isinstance(phase.batch_size, bool) or not isinstance(phase.batch_size, int) \
                    or phase.batch_size < 1:
                raise ConfigError(f"train.batch_schedule batch_size must be a positive integer, "
                                  f"got {phase.batch_size!r}")
        if lr_scaling not in LR_SCALING:
            raise ConfigError(f"train.lr_scaling must be one of {', '.join(LR_SCALING)}, got {lr_scaling!r}")
        self.phases = phases
        self.lr_scaling = lr_scaling

    @classmethod
    def from_recipe(cls, batch_size: int, schedule: list[dict[str, Any]] | None,
                    lr_scaling: str = "sqrt") -> BatchSchedule:
        """``train.batch_schedule`` when given, else one phase of ``train.batch_size``."""
        if not schedule:
            return cls([Phase(0, batch_size)], lr_scaling)
        phases = []
        for entry in schedule:
            if not isinstance(entry, dict) or set(entry) != {"step", "batch_size"}:
                raise ConfigError(f"each train.batch_schedule entry must be {{step: N, batch_size: N}}, "
                                  f"got {entry!r}")
            phases.append(Phase(int(entry["step"]), entry["batch_size"]))
        return cls(phases, lr_scaling)

    def phase(self, step: int) -> Phase:
        current = self.phases[0]
        for phase in self.phases[1:]:
            if phase.step > step:
                break
            current = phase
        return current

    def batch_size(self, step: int) -> int:
        return self.phase(step).batch_size

    def lr_factor(self, step: int) -> float:
        """``(batch(step) / batch(0)) ** p`` for the configured scaling rule."""
        return (self.batch_size(step) / self.phases[0].batch_size) ** LR_SCALING[self.lr_scaling]

    def unit_rows(self, world_size: int, micro_batch_size: int | None = None) -> int:
        """Rows per rank in one unit: ``micro_batch_size``, or the largest size that divides every
        phase's per-rank batch."""
        sizes = [p.batch_size for p in self.phases]
        for size in sizes:
            if size % world_size:
                raise ConfigError(f"batch size {size} does not split over {world_size} ranks: use a "
                                  f"multiple of {world_size}")
        if micro_batch_size is None:
            return math.gcd(*(s // world_size for s in sizes))
        if isinstance(micro_batch_size, bool) or micro_batch_size < 1:
            raise ConfigError(f"train.micro_batch_size must be a positive integer, got {micro_batch_size!r}")
        for size in sizes:
            if size % (micro_batch_size * world_size):
                raise ConfigError(
                    f"batch size {size} is not a whole number of micro-batches: it must be a multiple of "
                    f"micro_batch_size x ranks = {micro_batch_size} x {world_size}")
        return micro_batch_size

    def units(self, step: int, unit_rows: int, world_size: int) -> int:
        """Units per rank that the step ``step`` takes."""
        return self.batch_size(step) // (unit_rows * world_size)

    def steps_for_units(self, total_units: int, unit_rows: int, world_size: int) -> int:
        """How many whole steps ``total_units`` units (per rank) make."""
        steps, left = 0, total_units
        for k, phase in enumerate(self.phases):
            per_step = self.units(phase.step, unit_rows, world_size)
            length = self.phases[k + 1].step - phase.step if k + 1 < len(self.phases) else None
            n = left // per_step if length is None else min(length, left // per_step)
            steps += n
            left -= n * per_step
            if length is None or n < length:
                break
        return steps


def _lr_multiplier(step: int, *, schedule: BatchSchedule, total_steps: int, warmup_steps: int,
                   min_ratio: float) -> float:
    return schedule.lr_factor(step) * warmup_cosine(step, total_steps=total_steps,
                                                    warmup_steps=warmup_steps, min_ratio=min_ratio)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: BatchSchedule, *, total_steps: int,
                       warmup_steps: int, min_ratio: float = 0.0) -> LambdaLR:
    """Warm-up + cosine (``eclip.train.schedule``) times the schedule's batch-size factor.

    The multiplier is a pure function of the step: ``state_dict`` restores the position exactly.
    """
    return LambdaLR(optimizer, partial(_lr_multiplier, schedule=schedule, total_steps=total_steps,
                                       warmup_steps=warmup_steps, min_ratio=min_ratio))


def too_few_rows(rows: int, unit: int, world_size: int, batch_size: int,
                 schedule: list[dict[str, Any]] | None, micro_batch_size: int | None) -> str:
    """The message for ``rows`` training listings that do not fill one sampled batch of ``unit`` x
    ``world_size`` rows: the setting that decides that size (``train.micro_batch_size``, else
    ``train.batch_schedule``, else ``train.batch_size``) and the overrides that fit the catalog."""
    size = unit * world_size
    if micro_batch_size is not None:
        binding = f"train.micro_batch_size={micro_batch_size} (x {world_size} ranks)"
    elif schedule:
        shown = ", ".join(str(e.get("batch_size")) for e in schedule if isinstance(e, dict))
        binding = f"train.batch_schedule (batch sizes {shown}: the largest size dividing them all)"
    else:
        binding = f"train.batch_size={batch_size}"
    fit = world_size  # a power of two times the ranks, at most half the rows: two batches an epoch
    while fit * 2 <= rows // 2:
        fit *= 2
    return (f"{rows} training listings do not fill one batch of {size}, which {binding} sets. "
            f"For a catalog this small, train one batch size of {fit} rows: "
            f"train.batch_schedule=null train.micro_batch_size=null train.batch_size={fit}")
