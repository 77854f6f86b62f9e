"""The package states the torch versions it supports; the exact build is pinned only in
constraints.txt (so `pip install eclip` can sit beside any supported torch, a CUDA build included,
while every install step here passes `-c constraints.txt`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import torch
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def requirement(name: str) -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found = [Requirement(d) for d in deps["dependencies"] if Requirement(d).name == name]
    assert len(found) == 1, f"{name} must be one dependency of the package"
    return found[0]


def test_torch_is_a_range_in_the_package_and_a_pin_in_the_constraints():
    spec = requirement("torch").specifier
    assert not any(s.operator in ("==", "===") for s in spec), "the package must not pin torch"
    lower = [Version(s.version) for s in spec if s.operator == ">="]
    assert lower, "the package states the lowest torch it supports"
    pins = [line.split("==")[1].strip() for line in
            (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
            if line.startswith("torch==")]
    assert len(pins) == 1 and Version(pins[0]) in spec
    assert Version(torch.__version__.split("+")[0]) in spec  # what this environment runs


def test_the_lower_bound_has_what_the_code_uses():
    """The lower bound (2.6) is where the torch APIs eclip calls became public; those still exist."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: F401 (FSDP2)
    from torch.utils.flop_counter import FlopCounterMode  # noqa: F401

    assert min(Version(s.version) for s in requirement("torch").specifier
               if s.operator == ">=") >= Version("2.6")
