"""The project's import graph, read from the sources (imports inside functions included): no
cycles, no private names imported from another module, and no stage imported by the code the
stages are made of."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("exporter", "engines")
# The stages: what the commands run (exporter/stages/, and the command line that calls them).
STAGES = ("exporter.stages", "exporter.cli", "exporter.cli_options", "exporter.__main__")
# What the stages are made of, by layer: a module imports only from its own layer or the layers
# after it (and the shared exporter.errors, atomic, progress, artifacts, results).
LAYERS = (("engines",), ("exporter.rewrite",), ("exporter.kernels",), ("exporter.onnx",),
          ("exporter.evaluation", "exporter.models", "exporter.quant", "exporter.contract"),
          ("exporter.numerics",))
SHARED = ("exporter.errors", "exporter.atomic", "exporter.progress", "exporter.artifacts", "exporter.results")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(modules: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """Each module's imports of project modules, and the private names imported across modules."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    private = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    target = target if target in modules else node.module
                    if target in modules and target != name:
                        edges[name].add(target)
                    if alias.name.startswith("_") and node.module in modules:
                        private.append(f"{name} imports {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in modules and a.name != name)
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_and_no_private_imports():
    edges, private = _imports(_modules())
    assert len(edges) > 50
    assert _cycles(edges) == []
    assert private == []


def _layer(module: str) -> int | None:
    return next((i for i, prefixes in enumerate(LAYERS) if module.startswith(prefixes)), None)


def test_no_stage_is_imported_from_below_and_no_layer_from_a_lower_one():
    edges, _ = _imports(_modules())
    upward = sorted(f"{module} -> {target}" for module, targets in edges.items() for target in targets
                    if target.startswith(STAGES) and not module.startswith(STAGES))
    assert upward == []
    placed = [m for m in edges if not m.startswith(STAGES + SHARED) and m != "exporter"]
    assert [m for m in placed if _layer(m) is None] == []  # every module has a layer
    across = sorted(f"{module} -> {target}" for module in placed for target in edges[module]
                    if not target.startswith(SHARED) and _layer(target) is not None
                    and _layer(target) < _layer(module))
    assert across == []
    assert all(not targets - {t for t in targets if t.startswith(("exporter.numerics",) + SHARED)}
               for module, targets in edges.items() if module.startswith("exporter.numerics"))


def test_the_checks_find_what_they_look_for():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
