"""Run recipes: YAML files of nested sections, overridable from the command line with ``key=value``.

Precedence is dataclass defaults < YAML recipe < command-line overrides. A recipe is plain data; the
sections map onto dataclasses (``eclip.train.recipe.Recipe``), and an unknown key is an error that
names the key and the keys that exist.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from eclip.errors import ConfigError

T = TypeVar("T")


def bundled_recipe(name: str) -> Path:
    """Path of a recipe that ships with the package (``configs/NAME.yaml``)."""
    from importlib import resources

    return Path(str(resources.files("eclip") / "configs" / f"{name}.yaml"))


def find_recipe(value: str | Path) -> Path:
    """A recipe file, or the name of one that ships with eclip (``demo``, ``eval``, ...)."""
    path = Path(value)
    if path.is_file():
        return path
    bundled = bundled_recipe(str(value))
    if bundled.is_file():
        return bundled
    raise ConfigError(f"recipe {value} not found (neither a file nor a bundled recipe name)")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"recipe {path} cannot be read ({exc.strerror or exc})") from None
    except RecursionError:
        raise ConfigError(f"recipe {path} is nested too deeply to read") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> ``(["train", "lr"], 0.0001)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except RecursionError:
        raise ConfigError(f"override {text[:80]!r}...: value is nested too deeply") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return [part for part in key.strip().split(".")], _number_or_value(value)


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _number_or_value(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; users mean a number."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` applied (sections are created as needed)."""
    result = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{key}' is a value, not a section")
            node = child
        node[keys[-1]] = value
    return result


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into dataclass-typed fields.

    Unknown keys raise ConfigError naming the key, its section and the known keys. Values are checked
    loosely (ints are accepted for floats, YAML scalars for strings); nested dataclasses are built.
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"section '{where or cls.__name__}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(
                f"unknown key '{key}' in section '{where or cls.__name__}'; known keys: "
                + ", ".join(sorted(known))
            )
        kwargs[key] = coerce(hints[key], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def coerce(hint: Any, value: Any, where: str) -> Any:
    """``value`` converted to the type ``hint`` or a ConfigError naming ``where``.

    Loose where users mean the obvious: ints for floats, ``1e-4`` strings for numbers, numbers for
    strings, tuples for lists and lists for tuples, a list of ints for ``list[float]``; a dataclass
    hint builds the dataclass from a mapping (see :func:`from_dict`).
    """
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return coerce(args[0], value, where)
        return value
    value = _number_or_value(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, bool, str) and (not isinstance(value, hint)
                                            or (hint is not bool and isinstance(value, bool))):
        if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{where}' must be {hint.__name__}, got {value!r}")
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        if origin is list and args and args[0] in (int, float):
            value = [coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return origin(value)
    if (origin or hint) in (list, tuple, dict) and not isinstance(value, origin or hint):
        raise ConfigError(f"'{where}' must be a {(origin or hint).__name__}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric option may take: ``low``/``high`` bounds (None: unbounded), each
    inclusive unless ``*_open``; NaN is never in range, and infinity only with ``allow_inf``.
    ``note`` says what a special value means (e.g. ``"null: no cap"``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allow_inf: bool = False
    note: str = ""

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return self.allow_inf and not math.isnan(value) and (
                (value > 0 and self.high is None) or (value < 0 and self.low is None))
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = (f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.high_open else ']'}")
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {_num(self.high)}"
        else:
            text = "a number"
        return text + (f" ({self.note})" if self.note else "")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def at_least(low: float, note: str = "") -> Range:
    return Range(low=low, note=note)


def above(low: float, note: str = "", allow_inf: bool = False) -> Range:
    return Range(low=low, low_open=True, note=note, allow_inf=allow_inf)


def check_ranges(obj: Any, section: str, ranges: dict[str, Range]) -> None:
    """ConfigError naming ``section.key`` (as a user types it) and the allowed range for the first
    numeric field of ``obj`` outside its range in ``ranges``. ``None`` is left alone (an optional
    setting that is off); values of other types are the type check's business (:func:`coerce`).

    Every numeric option of a config section is listed in one such table, checked from the
    dataclass's ``__post_init__``, so a recipe, an override and a direct construction are held to
    the same limits."""
    for name, allowed in ranges.items():
        value = getattr(obj, name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value not in allowed:
            raise ConfigError(f"{section}.{name} must be {allowed.describe()}, got {value!r}")


def to_dict(obj: Any) -> Any:
    """A dataclass (possibly nested) as plain YAML/JSON-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# Threads: one rule for every command that computes (train.threads, --threads, ECLIP_THREADS)

MAX_DEFAULT_THREADS = 32
THREADS_ENV = "ECLIP_THREADS"


def _affinity_cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _local_processes() -> int:
    import os

    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_threads() -> int:
    """The CPU cores this process may use (its affinity, which a container or ``taskset`` may
    narrow), shared among the processes of a torchrun job on this machine (``LOCAL_WORLD_SIZE``),
    at most ``MAX_DEFAULT_THREADS``."""
    return max(1, min(MAX_DEFAULT_THREADS, _affinity_cores() // _local_processes()))


def busy_cores(samples: int = 3, interval_s: float = 0.01, loadavg: str = "/proc/loadavg") -> float:
    """How many of this process's cores other processes keep busy now: the runnable threads of
    the machine less this one (``/proc/loadavg``'s fourth field, the median of ``samples`` reads
    ``interval_s`` apart; elsewhere the 1-minute load average), the share of them that falls on
    the cores this process may use. 0 where the system does not say."""
    import os
    import statistics
    import time

    try:
        counts = []
        for i in range(samples):
            if i:
                time.sleep(interval_s)
            with open(loadavg, encoding="ascii") as handle:
                counts.append(int(handle.read().split()[3].split("/")[0]))
        others = statistics.median(counts) - 1  # this thread is running while it reads
    except (OSError, ValueError, IndexError):
        try:
            others = os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0
    return max(0.0, others) * _affinity_cores() / max(1, os.cpu_count() or 1)


def available_threads() -> int:
    """The thread count that ``use_threads`` sets by default: :func:`default_threads`, less the
    cores other processes keep busy (:func:`busy_cores`, rounded), at least 1.

    torch's intra-op threads meet at the end of every parallel operation; when another process
    holds one of the cores, each meeting waits for a descheduled thread, and a model of many
    small operations runs several times slower on all the cores than on one. The count is taken
    once, when a command starts (``ECLIP_THREADS`` or ``--threads`` fix it)
    (docs/BENCHMARKS.md, "Torch threads on shared cores"). On an idle machine this is
    :func:`default_threads`."""
    idle = _affinity_cores() - busy_cores()
    return max(1, min(default_threads(), int(idle / _local_processes() + 0.5)))


def use_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads for this process: ``threads``; where it is None, the
    ``ECLIP_THREADS`` environment variable, else :func:`available_threads`. Returns the number
    set. The one place eclip sets it (the search service's per-request threads aside)."""
    import os

    import torch

    where = "threads"
    if threads is None and os.environ.get(THREADS_ENV, "").strip():
        where, threads = THREADS_ENV, os.environ[THREADS_ENV].strip()
        threads = int(threads) if threads.isdigit() else threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ConfigError(f"{where} must be a positive integer (or unset: the CPU cores this "
                          f"process may use, less those other processes keep busy), "
                          f"got {threads!r}")
    count = threads if threads is not None else available_threads()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
