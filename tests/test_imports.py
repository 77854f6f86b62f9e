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

Inside each package the module graph must be free of circles too (issue 23): a module of
``eclip.model`` may not import, directly or through others of its package, a module that imports it
back, lazily or not. ``module_cycles`` finds them as strongly connected components of each
package's module graph (a package's ``__init__`` is a module of it: a submodule that imports its
own package closes a circle through the re-exports).
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


def resolve(module: str) -> str:
    """``eclip.model.DualEncoder`` (a name imported from a package) -> ``eclip.model``: the module
    the import loads, as a module name that has a file."""
    parts = module.split(".")
    while parts:
        path = SRC.parent.joinpath(*parts)
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return module


def module_edges() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) -> places, for modules of the same package (the package whose folder
    holds the importer: ``eclip.model.towers`` and ``eclip.model.pretrained`` or ``eclip.model``)."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        source = module_name(path)
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for module, line in imported_modules(path):
            target = resolve(module)
            inside = target == package or target.rpartition(".")[0] == package
            if target != source and inside:
                edges[(source, target)].append(f"{path.relative_to(SRC.parent)}:{line}")
    return edges


def module_cycles(edges) -> list[tuple[str, ...]]:
    """The import circles: each strongly connected component of two or more modules, its modules
    sorted, the components sorted (Tarjan's algorithm)."""
    graph: dict[str, list[str]] = defaultdict(list)
    for source, target in sorted(edges):
        graph[source].append(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[tuple[str, ...]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for node in sorted(set(graph) | {t for _, t in edges}):
        if node not in index:
            visit(node)
    return sorted(found)


def describe(component: tuple[str, ...], edges) -> str:
    """A circle with the imports that close it, one per line."""
    inside = [f"    {s} -> {t} ({', '.join(w)})" for (s, t), w in sorted(edges.items())
              if s in component and t in component]
    return "  " + " <-> ".join(component) + "\n" + "\n".join(inside)


# Circles that are known and accepted (none: every package's module graph is a DAG). The test fails
# when a circle appears that is not here, and when one listed here is gone.
EXPECTED_MODULE_CYCLES: list[tuple[str, ...]] = []


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


def test_the_module_cycle_check_finds_circles_through_lazy_imports_and_packages():
    edges = {("p.a", "p.b"): [], ("p.b", "p.a"): [], ("p.c", "p"): [], ("p", "p.c"): [],
             ("p.d", "p.a"): [], ("q.x", "q.y"): [], ("q.y", "q.z"): [], ("q.z", "q.x"): []}
    assert module_cycles(edges) == [("p", "p.c"), ("p.a", "p.b"), ("q.x", "q.y", "q.z")]
    assert module_cycles({("p.a", "p.b"): [], ("p.b", "p.c"): []}) == []
    # the scanner resolves names imported from a package to the package, submodules to themselves
    assert resolve("eclip.catalog.readers.read_catalog") == "eclip.catalog.readers"
    assert resolve("eclip.encode.embed_listings") == "eclip.encode"
    lazy = module_edges()
    assert ("eclip.cli", "eclip.cli.options") in lazy  # a package's __init__ importing its modules


def test_no_import_circle_inside_a_package():
    edges = module_edges()
    found = module_cycles(edges)
    new = [c for c in found if c not in EXPECTED_MODULE_CYCLES]
    gone = [c for c in EXPECTED_MODULE_CYCLES if c not in found]
    assert not new, "import circles inside a package:\n" + "\n".join(describe(c, edges)
                                                                      for c in new)
    assert not gone, ("circles listed in EXPECTED_MODULE_CYCLES are gone: delete them from the "
                      f"list: {gone}")


def test_nothing_imports_the_command_line():
    importers = sorted({source for source, target in package_edges() if target == "cli"})
    assert importers == ["__main__"], f"the library imports eclip.cli: {importers}"


if __name__ == "__main__":
    edges = package_edges()
    for source in sorted({s for s, _ in edges}, key=lambda u: (RANK.get(u, 99), u)):
        print(f"{source} -> {', '.join(sorted(t for s, t in edges if s == source))}")
    print("\n".join(["violations:"] + violations(edges)) if violations(edges) else "no violations")
    print("cycles:", cycles(edges) or "none")
    inner = module_edges()
    print("circles inside packages:")
    print("\n".join(describe(c, inner) for c in module_cycles(inner)) or "  none")
