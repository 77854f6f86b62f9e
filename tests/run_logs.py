"""What a training run wrote: its logged steps, read back for the tests that compare two runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eclip.model import load_model


def logged_rows(out: Path) -> dict[int, dict]:
    """The rows of OUT/metrics.jsonl that carry a loss, by step ({} before the first one); a resumed
    run rewrites the steps after its checkpoint, and the later row wins."""
    path = Path(out) / "metrics.jsonl"
    rows: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "loss" in row:
                rows[row["step"]] = row
    return rows


def logged_losses(out: Path) -> dict[int, float]:
    return {step: row["loss"] for step, row in logged_rows(out).items()}


def assert_same_losses(expected: dict[int, float], got: dict[int, float], atol: float) -> None:
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=atol), step


def assert_same_models(a_dir: Path, b_dir: Path, atol: float) -> None:
    a = load_model(a_dir).state_dict()
    b = load_model(b_dir).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0)
