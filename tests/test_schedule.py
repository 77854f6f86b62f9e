"""Warm-up + cosine learning-rate schedule, and the optimizer's scheduler that applies it
(``batch_schedule.build_lr_scheduler`` with one batch-size phase: the multiplier alone)."""

from __future__ import annotations

import math

import pytest
import torch

from eclip.errors import ConfigError
from eclip.train.batch_schedule import BatchSchedule, Phase, build_lr_scheduler
from eclip.train.schedule import warmup_cosine


def f(step: int, total: int = 110, warmup: int = 10, min_ratio: float = 0.1) -> float:
    return warmup_cosine(step, total_steps=total, warmup_steps=warmup, min_ratio=min_ratio)


def test_values_at_key_steps():
    assert f(0) == pytest.approx(0.1)  # 1 / warmup_steps: the first step already moves
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)  # last warm-up step at the full rate
    assert f(10) == pytest.approx(1.0)  # cosine starts at 1
    assert f(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert f(60) == pytest.approx(0.55)  # middle of the cosine: halfway between 1 and the floor
    assert f(109) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert f(110) == pytest.approx(0.1)
    assert f(10_000) == pytest.approx(0.1)


def test_edge_configurations():
    assert warmup_cosine(0, total_steps=5, warmup_steps=0) == pytest.approx(1.0)
    assert warmup_cosine(5, total_steps=5, warmup_steps=0) == 0.0
    assert warmup_cosine(0, total_steps=1000, warmup_steps=1000) == pytest.approx(1e-3)
    assert warmup_cosine(999, total_steps=1000, warmup_steps=1000) == pytest.approx(1.0)
    assert warmup_cosine(1000, total_steps=1000, warmup_steps=1000, min_ratio=0.2) == pytest.approx(0.2)
    assert warmup_cosine(0, total_steps=1, warmup_steps=0) == pytest.approx(1.0)


def test_monotone_warm_up_then_decay():
    values = [f(s, total=200, warmup=25, min_ratio=0.0) for s in range(260)]
    assert all(v > 0 for v in values[:200])
    assert all(a < b for a, b in zip(values[:24], values[1:25]))
    assert all(a > b for a, b in zip(values[25:200], values[26:201]))
    assert all(v == 0.0 for v in values[200:])
    assert max(values) == pytest.approx(1.0)


ONE_PHASE = BatchSchedule([Phase(0, 64)])  # a constant batch: a learning-rate factor of 1


def _setup(base_lr: float = 0.5):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.arange(6.0).view(2, 3) / 10)
        model.bias.zero_()
    optimizer = torch.optim.SGD([
        {"params": [model.weight], "lr": base_lr},
        {"params": [model.bias], "lr": base_lr / 10},
    ], lr=base_lr)
    scheduler = build_lr_scheduler(optimizer, ONE_PHASE, total_steps=40, warmup_steps=8,
                                   min_ratio=0.05)
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int) -> list[list[float]]:
    lrs = []
    for _ in range(steps):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return lrs


def test_scheduler_follows_the_multiplier_per_group():
    model, optimizer, scheduler = _setup()
    lrs = _train(model, optimizer, scheduler, 45)
    for step, (weight_lr, bias_lr) in enumerate(lrs):
        multiplier = warmup_cosine(step, total_steps=40, warmup_steps=8, min_ratio=0.05)
        assert weight_lr == pytest.approx(0.5 * multiplier)
        assert bias_lr == pytest.approx(0.05 * multiplier)
    assert lrs[0][0] > 0


def test_state_dict_round_trip_continues_identically():
    ref_model, ref_optimizer, ref_scheduler = _setup()
    reference = _train(ref_model, ref_optimizer, ref_scheduler, 30)

    model, optimizer, scheduler = _setup()
    head = _train(model, optimizer, scheduler, 12)
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict()}

    model, optimizer, scheduler = _setup(base_lr=9.0)  # a fresh run; the state overrides its rates
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    tail = _train(model, optimizer, scheduler, 18)
    assert head + tail == reference
    assert scheduler.state_dict()["last_epoch"] == 30
    assert torch.equal(model.weight, ref_model.weight) and torch.equal(model.bias, ref_model.bias)


def test_validation():
    with pytest.raises(ConfigError, match="total_steps"):
        warmup_cosine(0, total_steps=0, warmup_steps=0)
    with pytest.raises(ConfigError, match="warmup_steps"):
        warmup_cosine(0, total_steps=10, warmup_steps=11)
    with pytest.raises(ConfigError, match="min_ratio"):
        warmup_cosine(0, total_steps=10, warmup_steps=1, min_ratio=1.5)
    with pytest.raises(ValueError, match="step"):
        warmup_cosine(-1, total_steps=10, warmup_steps=1)
    with pytest.raises(ConfigError):
        build_lr_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), ONE_PHASE,
                           total_steps=10, warmup_steps=20)
