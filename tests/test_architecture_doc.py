"""docs/ARCHITECTURE.md names the house as built: every module it names exists, and every module of
``src/eclip`` is named in it (issue 23: the module map stays true as modules come and go)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "eclip"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
NAMED = re.compile(r"`([A-Za-z0-9_./]+\.py)`")


def named_files() -> set[str]:
    return set(NAMED.findall(DOC.read_text(encoding="utf-8")))


def resolves(name: str) -> bool:
    """A named file exists: as a path from the repository, from ``src/`` or from ``src/eclip/``,
    or, for a bare file name (in a package's row of the table), somewhere under ``src/eclip``."""
    if "/" in name:
        return any((base / name).is_file() for base in (ROOT, ROOT / "src", SRC))
    return any(SRC.rglob(name))


def test_every_file_the_architecture_names_exists():
    missing = sorted(name for name in named_files() if not resolves(name))
    assert not missing, f"docs/ARCHITECTURE.md names files that do not exist: {missing}"


def test_every_module_is_named_in_the_architecture():
    named = named_files()
    bare = {Path(name).name for name in named}
    unnamed = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if path.name in ("__init__.py", "__main__.py"):
            continue
        if rel not in named and f"eclip/{rel}" not in named and path.name not in bare:
            unnamed.append(rel)
    assert not unnamed, f"modules missing from docs/ARCHITECTURE.md: {unnamed}"


def test_the_check_sees_a_missing_file():
    assert resolves("catalog/readers.py") and resolves("readers.py")
    assert not resolves("catalog/no_such_module.py") and not resolves("no_such_module.py")
