"""The package's torch requirement: a supported range in pyproject.toml, the exact version CI and the
README install in constraints.txt, and the range's lower bound tied to the newest torch API the code
uses.

What this covers: the pin lives only in constraints.txt; the pinned version lies in the declared
range; every torch API of ``NEWEST_APIS`` is used in src/ and exists in the installed torch; and the
declared lower bound is the newest release among them (raise it when code needs a newer API, and add
the API here). What it does not cover: CI installs only the pinned torch (the CPU wheel of
constraints.txt), so no test runs the code on the lower bound itself; an API newer than the bound
that is not listed here is not caught.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import torch
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# the torch APIs the code needs that came latest: (module, name, the release that made it public)
NEWEST_APIS = [
    ("torch.distributed.fsdp", "fully_shard", "2.6"),  # FSDP2 (eclip.train.parallel)
    ("torch.distributed.fsdp", "MixedPrecisionPolicy", "2.6"),
    ("torch.amp", "is_autocast_available", "2.4"),  # eclip.train.precision
    ("torch.distributed.checkpoint.metadata", "StorageMeta", "2.4"),
    ("torch.amp", "GradScaler", "2.3"),
    ("torch.distributed.checkpoint.state_dict", "get_state_dict", "2.2"),
    ("torch.distributed.device_mesh", "init_device_mesh", "2.2"),
]


def _torch_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [torch_req] = [Requirement(d) for d in project["dependencies"]
                   if Requirement(d).name == "torch"]
    return torch_req


def _pinned() -> Version:
    [pin] = [line.split("==", 1)[1].strip()
             for line in (ROOT / "constraints.txt").read_text().splitlines()
             if re.match(r"torch\s*==", line)]
    return Version(pin)


def test_pyproject_states_a_range_and_constraints_pin_the_version():
    req = _torch_requirement()
    operators = {spec.operator for spec in req.specifier}
    assert "==" not in operators and "===" not in operators  # the pin is constraints.txt's
    assert ">=" in operators  # a lower bound: the oldest torch the code is written for
    assert req.specifier.contains(_pinned())
    assert Version(torch.__version__.split("+")[0]) == _pinned()  # CI runs the pinned version


def test_the_lower_bound_is_the_newest_api_the_code_uses():
    [lower] = [Version(s.version) for s in _torch_requirement().specifier if s.operator == ">="]
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "eclip").rglob("*.py"))
    for module, name, since in NEWEST_APIS:
        assert hasattr(importlib.import_module(module), name), (module, name)
        assert re.search(rf"\b{name}\b", source), f"{name} is no longer used: drop it from the list"
    assert lower == max(Version(since) for _, _, since in NEWEST_APIS)
