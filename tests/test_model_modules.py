"""``eclip.model`` is a DAG of modules, one job each (issue 23, item 2).

Every import counts, also those inside functions (a lazy import is still an edge), read with
``ast`` as ``tests/test_imports.py`` reads packages. Modules stay under 600 lines and functions
under 80, and there is one public way to open a model.
"""

from __future__ import annotations

import ast
from collections import defaultdict

from test_imports import SRC, cycles, imported_modules, module_name

MODEL = SRC / "model"

# the modules of eclip.model, lowest first: each imports only modules before it (the order the
# package's docstring gives)
ORDER = ["config", "files", "layers", "hf", "preprocessing", "towers", "tokenizer", "text_towers",
         "image_towers", "dual_encoder", "from_transformers", "to_transformers", "open_clip_siglip", "open_clip",
         "load",
         "onnx", "export", "merge"]


def module_edges() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) between modules of ``eclip.model`` (the package's ``__init__`` is
    ``eclip.model``: a module importing it imports every other)."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    names = {module_name(path) for path in MODEL.glob("*.py")}
    for path in sorted(MODEL.glob("*.py")):
        source = module_name(path)
        for target, line in imported_modules(path):
            while target not in names and target.count(".") > 1:
                target = target.rpartition(".")[0]  # eclip.model.x.attr -> eclip.model.x
            if target in names and target != source:
                edges[(source, target)].append(f"{path.name}:{line}")
    return edges


def test_model_modules_import_one_way():
    edges = module_edges()
    assert edges, "no edges found: the reader is broken"
    into_init = [f"{src} ({', '.join(where)})" for (src, dst), where in edges.items()
                 if dst == "eclip.model"]
    assert not into_init, f"modules of eclip.model import the package itself: {into_init}"
    assert cycles(edges) == [], f"import circles inside eclip.model: {cycles(edges)}"
    rank = {f"eclip.model.{name}": index for index, name in enumerate(ORDER)}
    modules = {module_name(path) for path in MODEL.glob("*.py")} - {"eclip.model"}
    assert modules == set(rank), (f"add new modules to ORDER (and the package docstring): "
                                  f"{modules ^ set(rank)}")
    upward = [f"{src} -> {dst} ({', '.join(where)})" for (src, dst), where in sorted(edges.items())
              if src in rank and rank[dst] >= rank[src]]
    assert not upward, f"imports against the documented order: {upward}"


def test_model_modules_and_functions_are_small():
    long_modules, long_functions = [], []
    for path in sorted(MODEL.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 600:
            long_modules.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > 80:
                    long_functions.append(f"{path.name}:{node.lineno} {node.name} ({size} lines)")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_one_public_way_to_open_a_model():
    import eclip.model as model

    assert model.load_model.__module__ == "eclip.model.load"
    assert not hasattr(model.DualEncoder, "from_checkpoint")
    assert not (MODEL / "pretrained.py").exists()
