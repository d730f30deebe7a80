"""The packages' import graph, read from the source (nothing imported): no circle between
modules and no arrow that runs up the layers ``resmlp_core`` < ``resmlp_mt``, ``vision`` <
``mt_tools`` < ``benchmarks`` (and none between the two model packages); vision never imports
fairseq, the plugin never imports torchvision."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

LAYERS = {"resmlp_core": 0, "resmlp_mt": 1, "vision": 1, "mt_tools": 2, "benchmarks": 3}


def module_files():
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imports(name: str, path: Path):
    """``(imported name, line)`` of every import in the file, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            yield module, node.lineno
            yield from ((f"{module}.{alias.name}", node.lineno) for alias in node.names)


def graph():
    files = dict(module_files())
    edges, external = {}, {}
    for name, path in files.items():
        for target, line in imports(name, path):
            external.setdefault(name, set()).add(target.split(".")[0])
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # (a package's own __init__)
                edges.setdefault(name, {})[target] = f"{path.relative_to(REPO)}:{line}"
    return edges, external


def test_no_import_circle():
    edges, _ = graph()
    circles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in edges.get(node, {}):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack
                               else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in list(edges):
        if node not in state:
            visit(node, [])
    assert not circles, "import circles: " + "; ".join(circles)


def test_no_import_runs_up_the_layers():
    edges, _ = graph()
    upward = [f"{a} -> {b} ({where})" for a, targets in edges.items() for b, where in targets.items()
              if LAYERS[b.split(".")[0]] > LAYERS[a.split(".")[0]]
              or {a.split(".")[0], b.split(".")[0]} == {"resmlp_mt", "vision"}]
    assert not upward, "imports that run up the layers: " + "; ".join(upward)


def test_vision_needs_no_fairseq_and_the_plugin_no_torchvision():
    _, external = graph()
    found = [f"{name} imports {lib}" for name, libs in external.items() for lib in libs
             if (name.startswith("vision") and lib == "fairseq")
             or (name.startswith("resmlp_mt") and lib == "torchvision")
             or (name.startswith("resmlp_core") and lib in ("fairseq", "torchvision", "timm"))]
    assert not found, "; ".join(found)


def test_no_library_module_imports_an_entry_point():
    """A module run as a program (``if __name__ == "__main__"``: vision.train, vision.knn, ...)
    is imported by no other module of the model and tool packages; what two programs share lives
    in a library module (vision.features holds what the k-NN and linear probes both use).
    Benchmarks, the top layer, may drive each other."""
    edges, _ = graph()
    files = dict(module_files())
    programs = {name for name, path in files.items() if '__name__ == "__main__"' in path.read_text()}
    found = [f"{a} -> {b} ({where})" for a, targets in edges.items() for b, where in targets.items()
             if b in programs and not a.startswith("benchmarks")]
    assert not found, "library imports of entry points: " + "; ".join(found)
