"""The project's import graph, read from the sources (imports inside functions included): no
cycles, no private names imported from another module, and no stage imported by the code the
stages are made of."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("exporter", "engines")
# The stages: what the commands run. Methods, numerics, kernels, graphs and engines sit below them.
STAGES = {"exporter.cli", "exporter.cli_options", "exporter.calibrate", "exporter.build", "exporter.evaluate",
          "exporter.validate", "exporter.export.onnx_export", "exporter.rewrite.rewrite"}
BELOW_STAGES = ("exporter.quant", "exporter.kernels", "exporter.export", "exporter.rewrite", "engines")


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


def test_no_stage_is_imported_from_below():
    edges, _ = _imports(_modules())
    upward = sorted(f"{module} -> {target}" for module, targets in edges.items() for target in targets
                    if target in STAGES and module not in STAGES and module.startswith(BELOW_STAGES))
    assert upward == []
    assert STAGES <= edges.keys()


def test_the_checks_find_what_they_look_for():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
