"""The package graph of ``src/eclip`` is a DAG with the documented layers (issue 9, item 3).

    errors, config, atomic  <-  catalog  <-  model  <-  encode  <-  mining  <-  {train, tasks, search,
    engines}  <-  demo  <-  cli

A package may import itself and anything in a layer below its own; ``train``, ``tasks`` and
``search`` share a layer and must not import each other; nothing imports ``cli``. Every import
counts, also those inside functions and under ``TYPE_CHECKING`` (a lazy import is still a
dependency). Modules are read with ``ast``, not imported, so the check is fast and has no side
effects.

Check it with:

    .venv/bin/python -m pytest tests/test_imports.py -q

(``python tests/test_imports.py`` prints the package graph and any violation.)
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "eclip"

# Lowest layer first. "eclip" is the package's own __init__ (``__version__``); ``__main__`` is the
# ``python -m eclip`` entry point, the one importer of the command line.
LAYERS: list[set[str]] = [
    {"eclip", "errors", "config", "atomic"},
    {"catalog"},
    {"model"},
    {"encode"},
    {"mining"},
    {"train", "tasks", "search", "engines"},
    {"demo"},
    {"cli"},
    {"__main__"},
]
BASE = LAYERS[0]
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str:
    """The top-level unit of a dotted module name inside eclip: ``eclip.train.loss`` -> ``train``."""
    parts = module.split(".")
    assert parts[0] == "eclip", module
    return parts[1] if len(parts) > 1 else "eclip"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """Every ``eclip...`` module that ``path`` imports (relative imports resolved), with the line."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from eclip import catalog`` imports the subpackage itself
            if target == "eclip":
                found += [(f"eclip.{alias.name}" if (SRC / alias.name).is_dir()
                           or (SRC / f"{alias.name}.py").is_file() else "eclip", node.lineno)
                          for alias in node.names]
            else:
                found.append((target, node.lineno))
    return [(module, line) for module, line in found if module.split(".")[0] == "eclip"]


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer unit, imported unit) -> the places (``file:line``) where it happens."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        source = unit_of(module_name(path))
        for module, line in imported_modules(path):
            target = unit_of(module)
            if target != source:
                edges[(source, target)].append(f"{path.relative_to(SRC.parent)}:{line}")
    return edges


def violations(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    bad = []
    for (source, target), where in sorted(edges.items()):
        if source in BASE and target in BASE:
            continue  # the base layer's modules may use each other (the cycle check still applies)
        if RANK[target] >= RANK[source]:
            bad.append(f"{source} -> {target} ({', '.join(where)})")
    return bad


def cycles(edges) -> list[list[str]]:
    """The cycles of the package graph (each once, as found by a depth-first search)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        graph[source].add(target)
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_module_belongs_to_a_layer():
    units = {unit_of(module_name(path)) for path in SRC.rglob("*.py")}
    unknown = sorted(units - set(RANK))
    assert not unknown, (f"{unknown} belong to no layer: add them to LAYERS in tests/test_imports.py "
                         f"(and to the graph in docs/ARCHITECTURE.md)")


def test_the_import_scanner_sees_lazy_relative_and_package_imports():
    edges = package_edges()
    assert ("cli", "train") in edges  # cli imports the library inside its command functions
    assert ("__main__", "cli") in edges
    assert ("catalog", "errors") in edges


def test_the_checks_catch_what_they_should():
    edges = {("train", "tasks"): ["a"], ("model", "encode"): ["b"], ("catalog", "errors"): ["c"],
             ("config", "errors"): ["d"], ("demo", "cli"): ["e"]}
    assert [v.split(" (")[0] for v in violations(edges)] == [
        "demo -> cli", "model -> encode", "train -> tasks"]
    assert cycles({("a", "b"): [], ("b", "c"): [], ("c", "a"): [], ("c", "d"): []}) == [
        ["a", "b", "c", "a"]]
    assert cycles({("a", "b"): [], ("a", "c"): [], ("b", "c"): []}) == []


def test_packages_import_only_lower_layers():
    bad = violations(package_edges())
    assert not bad, ("imports against the layering errors, config, atomic <- catalog <- model <- "
                     "encode <- {train, tasks, search} <- demo <- cli:\n  " + "\n  ".join(bad))


def test_no_import_cycle_between_packages():
    found = cycles(package_edges())
    assert not found, "import cycles between packages:\n  " + "\n  ".join(" -> ".join(c) for c in found)


def test_nothing_imports_the_command_line():
    importers = sorted({source for source, target in package_edges() if target == "cli"})
    assert importers == ["__main__"], f"the library imports eclip.cli: {importers}"


if __name__ == "__main__":
    edges = package_edges()
    for source in sorted({s for s, _ in edges}, key=lambda u: (RANK.get(u, 99), u)):
        print(f"{source} -> {', '.join(sorted(t for s, t in edges if s == source))}")
    print("\n".join(["violations:"] + violations(edges)) if violations(edges) else "no violations")
    print("cycles:", cycles(edges) or "none")
