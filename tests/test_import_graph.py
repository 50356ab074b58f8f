"""No import cycles: every module of edgeloop's packages sits above what it imports.

The graph is grimp's (import-linter's graph library): every import, at module level, in a
function or under ``TYPE_CHECKING``, counts; a cycle is a strongly connected component of
more than one module (found with Tarjan's algorithm, iteratively: no recursion limit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set

import grimp

PACKAGES = ("hub", "edge_agent", "model_packager", "simulators", "proto", "edgeloop_cli")


def strongly_connected(graph: Mapping[str, Set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (node -> its successors), each
    sorted; iterative, so a long import chain needs no deep recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(graph.get(root, ()))))]
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:  # every successor done: node is finished
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    found.append(sorted(component))
    return found


def test_strongly_connected_finds_cycles_and_only_cycles() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": {"e"},
        "e": {"d"},
        "f": {"f", "a"},
        "g": set(),
    }
    components = sorted(strongly_connected(graph))
    assert components == [["a", "b", "c"], ["d", "e"], ["f"], ["g"]]
    chain = {str(i): {str(i + 1)} for i in range(5000)}  # deeper than the recursion limit
    chain["5000"] = {"0"}
    assert [len(c) for c in strongly_connected(chain)] == [5001]


def test_no_import_cycles() -> None:
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False, cache_dir=None)
    imports = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    cycles = [c for c in strongly_connected(imports) if len(c) > 1]
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(
        "  " + " <-> ".join(c) for c in sorted(cycles)
    )
