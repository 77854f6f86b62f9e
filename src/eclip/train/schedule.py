"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

The optimizer's scheduler is ``eclip.train.batch_schedule.build_lr_scheduler``: this multiplier times
the batch-size schedule's learning-rate factor.
"""

from __future__ import annotations

import math

from eclip.errors import ConfigError


def _check(total_steps: int, warmup_steps: int, min_ratio: float) -> None:
    if total_steps < 1:
        raise ConfigError(f"total_steps must be at least 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError(f"warmup_steps must lie in [0, total_steps={total_steps}], got {warmup_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ConfigError(f"min_ratio (the floor of the learning rate, relative) must lie in [0, 1], "
                          f"got {min_ratio}")


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (counted from 0).

    Warm-up: ``(step + 1) / warmup_steps`` for ``step < warmup_steps``, so the first step already moves
    (``1 / warmup_steps``, never 0) and the last warm-up step runs at the full rate. Then a half cosine
    from 1 at ``step = warmup_steps`` down to ``min_ratio`` at ``step = total_steps``, and ``min_ratio``
    after that (the last of ``total_steps`` steps is still slightly above the floor).
    """
    _check(total_steps, warmup_steps, min_ratio)
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= total_steps:
        return min_ratio
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

