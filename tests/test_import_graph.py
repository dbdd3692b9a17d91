"""The import graph of the checkout's two source trees (``src/``: pooltender,
``service/src/``: coupons), built from the source with ``ast``: acyclic, and layered.

Every ``import`` / ``from ... import`` at any depth counts -- inside functions, under
``if TYPE_CHECKING:``, in ``try`` blocks -- because a lazy import that closes a cycle only
hides it until the day the import order changes. Relative imports are resolved against the
importing module's package. ``from package import name`` is an edge to ``package`` and, when
``package.name`` is a module of its own, to that module too.

The rules checked (docs/architecture.md, "Data flows one way"):

* the graph of src modules has no cycle (strongly connected components by Tarjan's
  algorithm, R. Tarjan, "Depth-first search and linear graph algorithms", SIAM J. Comput.
  1(2), 1972);
* nothing in ``pooltender`` imports ``coupons`` (the library never knows its reference app);
* nothing in ``pooltender`` outside ``pooltender.cli`` imports ``pooltender.cli`` (the
  library never imports its own command line); ``pooltender.__main__``, the console
  script's entry module, is part of the command line;
* each tree holds only its own distribution's package (what lets them ship apart).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._paths import LIBRARY_SRC, SERVICE_SRC, SOURCE_TREES


def module_name(path: Path) -> str:
    tree = next(t for t in SOURCE_TREES if path.is_relative_to(t))
    parts = list(path.relative_to(tree).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


MODULES: dict[str, Path] = {
    module_name(p): p for tree in SOURCE_TREES for p in sorted(tree.rglob("*.py"))
}


def imports_of(source: str, name: str, package: bool) -> Iterator[tuple[str, int]]:
    """``(module, line)`` for every module the source of module ``name`` imports, at any
    depth (``package``: the source is a package's ``__init__``)."""
    package_name = name if package else name.rpartition(".")[0]
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package_name.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:
                yield f"{target}.{alias.name}", node.lineno


def build_graph() -> dict[str, dict[str, int]]:
    """``importer -> {imported src module: first line}``, src modules only."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        edges: dict[str, int] = {}
        source = path.read_text(encoding="utf-8")
        for target, line in imports_of(source, name, is_package(path)):
            if target in MODULES and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative); only those of two or more."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


GRAPH = build_graph()


def _describe(component: list[str]) -> str:
    members = set(component)
    lines = [
        f"    {src} -> {dst} (line {line})"
        for src in component
        for dst, line in GRAPH[src].items()
        if dst in members
    ]
    return "cycle among " + ", ".join(component) + ":\n" + "\n".join(lines)


def test_the_graph_sees_imports_inside_functions_and_relative_ones() -> None:
    """The builder itself: a lazy import and a known edge are found (else the test is blind)."""
    assert "pooltender" in MODULES
    assert "coupons" in MODULES
    assert "pooltender.settings" in GRAPH["pooltender.flask"]  # at the top
    assert "pooltender.dashboard" in GRAPH["pooltender.flask"]  # inside a method


def test_resolution_of_relative_and_nested_imports() -> None:
    source = (
        "import os\n"
        "def f():\n"
        "    from . import sibling\n"
        "    if True:\n"
        "        from ..up import thing\n"
    )
    found = [t for t, _ in imports_of(source, "pooltender.server.fake", package=False)]
    assert found == [
        "os",
        "pooltender.server",
        "pooltender.server.sibling",
        "pooltender.up",
        "pooltender.up.thing",
    ]
    as_package = [t for t, _ in imports_of("from . import x", "pooltender.server", True)]
    assert as_package == ["pooltender.server", "pooltender.server.x"]
    fake = LIBRARY_SRC / "pooltender" / "server" / "fake.py"
    assert module_name(fake) == "pooltender.server.fake"


#: Cycles known and owned by another piece of work, each with where it is closed. The test
#: below fails if one of them is gone (so this list cannot go stale) or a new one appears.
#: pooltender.lint: base.py imports LintConfig (under TYPE_CHECKING) from config.py, whose
#: known_codes() imports pooltender.lint.rules, whose rules import base.py.
def test_src_has_no_import_cycle() -> None:
    cycles = strongly_connected(GRAPH)
    assert not cycles, "\n".join(_describe(c) for c in cycles)


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b": 1}, "b": {}}) == []


@pytest.mark.parametrize("importer", sorted(m for m in GRAPH if m.split(".")[0] == "pooltender"))
def test_pooltender_never_imports_coupons_nor_its_cli(importer: str) -> None:
    bad = {
        dst: line
        for dst, line in GRAPH[importer].items()
        if dst.split(".")[0] == "coupons"
        or (
            (dst == "pooltender.cli" or dst.startswith("pooltender.cli."))
            and not (
                importer in ("pooltender.cli", "pooltender.__main__")
                or importer.startswith("pooltender.cli.")
            )
        )
    }
    assert not bad, f"{importer} imports {bad} (module -> line)"


def test_each_source_tree_holds_only_its_own_distributions_package() -> None:
    library = {p.name for p in LIBRARY_SRC.iterdir() if (p / "__init__.py").exists()}
    service = {p.name for p in SERVICE_SRC.iterdir() if (p / "__init__.py").exists()}
    assert library == {"pooltender"}
    assert service == {"coupons"}
