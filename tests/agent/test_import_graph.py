"""The edge agent's own import graph has no cycle: a module that a lower one imports back
(even inside a function, or under ``TYPE_CHECKING``) is a split along the wrong line.

Read from the source with :mod:`ast` (every ``import`` statement anywhere in a module,
relative ones resolved), and checked again with ``grimp`` where it is installed. The heavy
imports (torch, onnx, the hub) are checked by ``test_agent_install`` and
``test_agent_runtime``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import edge_agent

PACKAGE = "edge_agent"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under ``root`` (its folder) by dotted name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: Iterable[str]) -> str | None:
    """The module ``name`` is, or the innermost module it is an attribute of."""
    known = set(modules)
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, from every import statement in it."""
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    here = name if is_package else name.rpartition(".")[0]
                    base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                # ``from pkg import sub`` imports the module ``pkg.sub`` when there is one
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                    for alias in node.names
                ]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    resolved = _resolve(target, modules)
                    if resolved is not None and resolved != name:
                        graph[name].add(resolved)
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the directed graph, or ``None`` (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        state[start] = 1
        stack = [iter(sorted(graph[start]))]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return None


def test_the_checker_finds_cycles_through_function_level_and_relative_imports(
    tmp_path: Path,
) -> None:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "low.py").write_text("def f():\n    from pkg.sub import high\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "high.py").write_text("from .. import low\nfrom ..low import f\n")
    graph = import_graph(root, "pkg")
    assert graph["pkg.low"] == {"pkg.sub.high"} and graph["pkg.sub.high"] == {"pkg.low"}
    assert find_cycle(graph) in (
        ["pkg.low", "pkg.sub.high", "pkg.low"],
        ["pkg.sub.high", "pkg.low", "pkg.sub.high"],
    )
    (root / "low.py").write_text("import os\n")
    assert find_cycle(import_graph(root, "pkg")) is None


def test_the_agent_import_graph_has_no_cycle() -> None:
    graph = import_graph(Path(edge_agent.__file__).parent, PACKAGE)
    assert {"edge_agent._runtime", "edge_agent.queue._outbound"} <= graph.keys()
    assert "edge_agent._model" in graph["edge_agent._runtime_health"]  # what it is read from
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_grimp_agrees_that_there_is_no_cycle() -> None:
    grimp = pytest.importorskip("grimp")
    built = grimp.build_graph(PACKAGE, cache_dir=None)
    graph = {m: built.find_modules_directly_imported_by(m) for m in built.modules}
    assert set(graph) == set(import_graph(Path(edge_agent.__file__).parent, PACKAGE))
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)
