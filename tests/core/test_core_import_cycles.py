"""No import cycles in alignops. Every module under operator/alignops is parsed with ``ast`` (nothing
is imported); the graph counts imports inside functions too (a lazy import still ties two modules
together), and leaves out ``if TYPE_CHECKING:`` blocks (never run).

An edge is what a statement names: ``import a.b`` -> ``a.b``; ``from a.b import c`` -> ``a.b`` (its
``__init__`` runs to hand out ``c``) and ``a.b.c`` too when that is a module. Relative imports are
resolved first. A package's ``__init__`` importing its own submodules is no cycle by itself (the
parent package a submodule import loads is not counted), but a submodule importing back a package
``__init__`` that imports it is one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from suite import REPO

Graph = dict[str, dict[str, str]]  # module -> imported module -> where ("path:line")


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file for every ``.py`` under ``root/package`` (a package is its ``__init__``)."""
    modules: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """(module named, name imported from it or None, line) of every import statement that can run."""

    def __init__(self, package: str):
        self.package = package  # what a relative import is relative to
        self.found: list[tuple[str, str | None, int]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for statement in node.orelse:
                self.visit(statement)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, None, node.lineno) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        self.found += [(base, alias.name, node.lineno) for alias in node.names]


def module_graph(root: Path, package: str) -> Graph:
    modules = module_files(root, package)
    graph: Graph = {name: {} for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        visitor = _Imports(name if is_package else name.rpartition(".")[0])
        visitor.visit(ast.parse(path.read_text(), str(path)))
        for base, imported, line in visitor.found:
            targets = [base] + ([f"{base}.{imported}"] if imported not in (None, "*") else [])
            for target in targets:
                # an __init__ naming its own package (from . import sub) is no edge to itself
                if target in modules and target != name:
                    graph[name].setdefault(target, f"{path.relative_to(root)}:{line}")
    return graph


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups, key=lambda g: (-len(g), g))


def shortest_cycle(graph: Graph, group: list[str]) -> list[str]:
    """A shortest cycle through the group (first and last module the same)."""
    members = set(group)
    best: list[str] | None = None
    for start in group:
        paths = {start: [start]}
        frontier = [start]
        while frontier and (best is None or len(paths[frontier[0]]) < len(best)):
            following = []
            for node in frontier:
                for target in sorted(graph[node]):
                    if target == start:
                        cycle = paths[node] + [start]
                        if best is None or len(cycle) < len(best):
                            best = cycle
                    elif target in members and target not in paths:
                        paths[target] = paths[node] + [target]
                        following.append(target)
            frontier = following
    assert best is not None
    return best


def describe(graph: Graph, cycle: list[str]) -> str:
    steps = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return "\n    ".join(steps)


def import_cycles(graph: Graph) -> list[str]:
    """One line block per group of modules that import each other: its members and a shortest cycle."""
    return [f"{len(group)} modules ({', '.join(group)}), e.g.\n    {describe(graph, shortest_cycle(graph, group))}"
            for group in strongly_connected(graph)]


def test_alignops_has_no_import_cycle():
    cycles = import_cycles(module_graph(REPO / "operator", "alignops"))
    if cycles:
        pytest.fail("import cycles in operator/alignops:\n" + "\n".join(cycles), pytrace=False)


# -- the checker itself, on small made-up packages --------------------------------------------------------

CASES = {
    "an __init__ importing its submodules is no cycle": (
        {"__init__.py": "from pkg.a import A\nfrom . import b\n", "a.py": "A = 1\n", "b.py": "from pkg.a import A\n"},
        []),
    "a submodule importing back the __init__ that imports it": (
        {"__init__.py": "from pkg.a import A\n", "a.py": "A = 1\n\ndef late():\n    from pkg import B\n"},
        [["pkg", "pkg.a"]]),
    "a relative import back": (
        {"__init__.py": "", "sub/__init__.py": "from .x import X\n", "sub/x.py": "X = 1\nfrom .. import sub\n"},
        [["pkg.sub", "pkg.sub.x"]]),
    "from pkg import module names the module": (
        {"__init__.py": "", "a.py": "from pkg import b\n", "b.py": "from pkg.a import x\n"},
        [["pkg.a", "pkg.b"]]),
    "TYPE_CHECKING imports are left out, their else is not": (
        {"__init__.py": "", "a.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.b import B\n",
         "b.py": "from pkg.a import A\n",
         "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\nelse:\n    import pkg.d\n",
         "d.py": "import pkg.c\n"},
        [["pkg.c", "pkg.d"]]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_checker_on_made_up_packages(tmp_path, case):
    files, expected = CASES[case]
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    graph = module_graph(tmp_path, "pkg")
    assert strongly_connected(graph) == expected
    for group in expected:
        cycle = shortest_cycle(graph, group)
        assert cycle[0] == cycle[-1] and set(cycle) == set(group)
