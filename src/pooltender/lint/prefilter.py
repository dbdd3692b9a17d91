"""Which rules can fire on a file, decided on the standard library's ``ast`` (the C parser).

The rules run on libcst trees, whose parse costs several times ``ast.parse``. Most files of a
Flask application mention ``session``, ``query`` and ``for``, so the text triggers of
:class:`~pooltender.lint.base.Rule` let nearly every file through. This module evaluates, on
the ``ast`` tree the engine parses anyway (for syntax errors), a **necessary condition** per
rule -- the shape a finding needs (a ``.query.get(...)`` call, a ``try`` around a commit, a
function with both a query and slow work ...) -- and libcst parses only the files where some
selected rule passes. A condition here must never be stricter than its rule: the fixture
tables run every "must fail" case through this path, and the stdlib test compares it with
``all_rules=True``.

Rules without a condition here keep only their text triggers. The facts a condition needs are
extracted once per file into a small :class:`FileFacts` during the engine's first pass (the
same ``ast`` parse that feeds the function summaries), so the lint pass neither keeps nor
re-parses the tree; POL008 and POL010 finish their condition once the project's summaries and
relationship names are known.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pooltender.lint.astwalk import all_nodes, dotted_name, last_name, nodes_of
from pooltender.lint.rules.legacy_query_get import pin_decision
from pooltender.lint.scopes import CONSUMER_WORDS as _CONSUMER_WORDS
from pooltender.lint.scopes import file_kind, slow_kind_of
from pooltender.lint.summaries import FunctionSummary
from pooltender.lint.versions import Pins

_SESSION_START = frozenset(
    {"query", "execute", "scalars", "scalar", "get", "get_one", "flush", "merge", "delete"}
) | {"refresh", "connection"}
_LOOP: tuple[type[ast.AST], ...] = (ast.For, ast.AsyncFor, ast.While)
_FUNC: tuple[type[ast.AST], ...] = (ast.FunctionDef, ast.AsyncFunctionDef)
_FOR: tuple[type[ast.AST], ...] = (ast.For, ast.AsyncFor)


def _session_call(node: ast.AST, methods: Iterable[str]) -> bool:
    """``<anything>.session.m(...)`` for ``m`` in ``methods`` (looser than the rules)."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in methods
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "session"
    )


_WORKER_LAST = frozenset(
    {"task", "shared_task", "periodic_task", "actor", "db_task", "db_periodic_task"}
)
_CLEANUP_CALLS = frozenset({"rollback", "abort", "exit", "_exit", "quit"})


class _File:
    """The ast facts of one file the conditions read, computed once."""

    def __init__(self, tree: ast.Module, path: str, source: str) -> None:
        self.tree = tree
        self.kind = file_kind(path, source)
        self.nodes = nodes_of(tree)
        self._by_type: dict[type, list[ast.AST]] | None = None

    def of(self, kind: type[ast.AST] | tuple[type[ast.AST], ...]) -> list[ast.AST]:
        """The nodes of exactly these types (grouped once per file)."""
        if self._by_type is None:
            groups: dict[type, list[ast.AST]] = {}
            for n in self.nodes:
                groups.setdefault(type(n), []).append(n)
            self._by_type = groups
        kinds = kind if isinstance(kind, tuple) else (kind,)
        out: list[ast.AST] = []
        for k in kinds:
            out.extend(self._by_type.get(k, ()))
        return out


def _pol002(f: _File) -> bool:
    """A ``close()`` with a ``remove()`` in the same function, or a session / query use on a
    later line of that function (the rule reports only those two shapes)."""
    scopes: list[ast.AST] = [f.tree, *f.of((*_FUNC, ast.ClassDef))]
    for scope in scopes:
        own = list(_own_nodes(scope))
        closes = [getattr(n, "lineno", 0) for n in own if _session_call(n, ("close",))]
        if not closes:
            continue
        if not isinstance(scope, _FUNC) or any(_session_call(n, ("remove",)) for n in own):
            return True
        first = min(closes)
        for n in own:
            if isinstance(n, ast.Attribute) and n.attr in ("session", "query") and n.lineno > first:
                return True
    return False


def _own_nodes(scope: ast.AST) -> list[ast.AST]:
    """The nodes of a module or function, not entering nested functions or classes."""
    out: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def _maybe_long_running(loop: ast.AST) -> bool:
    """Looser than :func:`pooltender.lint.scopes.is_long_running`: every ``while``; a ``for``
    over a consumer-like iterator; any loop with a call named like ``sleep``."""
    if isinstance(loop, ast.While):
        return True
    if isinstance(loop, ast.For | ast.AsyncFor):
        for n in all_nodes(loop.iter):
            name = last_name(n.func) if isinstance(n, ast.Call) else last_name(n)
            if name and (name.lower() in _CONSUMER_WORDS or name in ("iter", "count")):
                return True
    return any(
        isinstance(n, ast.Call) and (last_name(n.func) or "").endswith("sleep")
        for n in all_nodes(loop)
    )


def _swallowing_handler(tr: ast.Try) -> bool:
    """A handler with no ``raise``, no ``rollback()`` / abort / exit call and no
    ``<x>.session.remove()`` / ``close()`` (what the rule counts as handling the failure)."""
    for handler in tr.handlers:
        body = [n for stmt in handler.body for n in all_nodes(stmt)]
        if any(isinstance(n, ast.Raise) for n in body):
            continue
        if any(isinstance(n, ast.Call) and last_name(n.func) in _CLEANUP_CALLS for n in body):
            continue
        if any(_session_call(n, ("remove", "close")) for n in body):
            continue
        return True
    return False


def _pol003(f: _File) -> bool:
    if f.kind in ("test", "migration"):
        return False
    writes = ("commit", "flush")
    for node in f.of(ast.Try):
        assert isinstance(node, ast.Try)
        in_body = any(_session_call(n, writes) for stmt in node.body for n in all_nodes(stmt))
        if in_body and _swallowing_handler(node):
            return True
    for loop in f.of(_LOOP):
        if _maybe_long_running(loop) and any(_session_call(n, writes) for n in all_nodes(loop)):
            return True
    return any(
        isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(
            last_name(d.func if isinstance(d, ast.Call) else d) in _WORKER_LAST
            for d in n.decorator_list
        )
        and any(_session_call(c, ("commit",)) for c in all_nodes(n))
        for n in f.nodes
    )


def _pol004(f: _File) -> bool:
    text_callbacks = any(
        isinstance(n, ast.keyword) and n.arg and ("callback" in n.arg or n.arg == "on_message")
        for n in f.nodes
    ) or any(
        isinstance(n, ast.Call)
        and last_name(n.func) in ("basic_consume", "register_callback", "add_callback")
        for n in f.nodes
    )
    if text_callbacks:
        return True
    for loop in f.of(_LOOP):
        if not _maybe_long_running(loop):
            continue
        for n in all_nodes(loop):
            if isinstance(n, ast.Attribute) and n.attr in ("session", "query"):
                return True
    return False


def _row_attributes(f: _File) -> frozenset[str]:
    """Attributes read on the row of a ``for row in ...:`` loop (POL008 reports only those
    that are lazy relationships, or any when the project declares none)."""
    found: set[str] = set()
    for loop in f.of(_FOR):
        assert isinstance(loop, ast.For | ast.AsyncFor)
        if not isinstance(loop.target, ast.Name):
            continue
        row = loop.target.id
        for stmt in loop.body:
            for n in all_nodes(stmt):
                if (
                    isinstance(n, ast.Attribute)
                    and isinstance(n.value, ast.Name)
                    and n.value.id == row
                ):
                    found.add(n.attr)
    return frozenset(found)


def _legacy_get_methods(f: _File) -> frozenset[str]:
    """``get`` / ``get_or_404`` called on ``<x>.query`` or ``<x>.query(...)`` (POL009)."""
    found: set[str] = set()
    for n in f.of(ast.Attribute):
        assert isinstance(n, ast.Attribute)
        if n.attr not in ("get", "get_or_404"):
            continue
        recv = n.value
        if (isinstance(recv, ast.Attribute) and recv.attr == "query") or (
            isinstance(recv, ast.Call) and last_name(recv.func) == "query"
        ):
            found.add(n.attr)
    return frozenset(found)


def _slow(call: ast.Call) -> bool:
    f = call.func
    attr = f.attr if isinstance(f, ast.Attribute) else None
    inner = None
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call):
        inner = last_name(f.value.func)
    return slow_kind_of(dotted_name(f), attr, inner) is not None


def _functions_for_pol010(f: _File) -> tuple[tuple[bool, bool, frozenset[str]], ...]:
    """Per function: (queries directly, slow directly, names it calls)."""
    out = []
    for func in f.of(_FUNC):
        start = slow = False
        callees: set[str] = set()
        for n in all_nodes(func):
            if not isinstance(n, ast.Call):
                continue
            fn = n.func
            if isinstance(fn, ast.Attribute) and (
                (fn.attr in _SESSION_START and last_name(fn.value) == "session")
                or (isinstance(fn.value, ast.Attribute) and fn.value.attr == "query")
            ):
                start = True
            elif _slow(n):
                slow = True
            else:
                name = last_name(fn)
                if name:
                    callees.add(name)
        if start or slow or callees:
            out.append((start, slow, frozenset(callees)))
    return tuple(out)


Condition = Callable[[_File], bool]
# conditions that need nothing but the file; POL008 and POL010 also need project facts
CONDITIONS: dict[str, Condition] = {
    "POL002": _pol002,
    "POL003": _pol003,
    "POL004": _pol004,
}
PROJECT_CONDITIONS = frozenset({"POL008", "POL009", "POL010"})


@dataclass(frozen=True)
class FileFacts:
    """What the conditions need from one file, small and picklable: computed once from the
    ``ast`` tree (in the engine's first pass over the project), evaluated once the project's
    summaries and relationship names are known, so the tree itself need not be kept."""

    static: frozenset[str]
    kind: str
    row_attributes: frozenset[str] = frozenset()
    names_query: bool = False
    called: frozenset[str] = frozenset()
    functions: tuple[tuple[bool, bool, frozenset[str]], ...] = ()
    legacy_get: frozenset[str] = frozenset()

    def could_fire(
        self,
        codes: Iterable[str],
        summaries: Mapping[str, FunctionSummary],
        relationships: Mapping[str, bool],
        pins: Pins | None = None,
    ) -> set[str]:
        """The subset of ``codes`` whose necessary condition holds."""
        out = set()
        for code in codes:
            if code == "POL009":
                if any(pin_decision(m, pins or Pins())[0] for m in self.legacy_get):
                    out.add(code)
            elif code == "POL008":
                if self._pol008(summaries, relationships):
                    out.add(code)
            elif code == "POL010":
                if self._pol010(summaries):
                    out.add(code)
            elif code not in CONDITIONS or code in self.static:
                out.add(code)
        return out

    def notes(self, pins: Pins) -> list[str]:
        """Why POL009 is silent here (the rule's own note), for a file libcst skips."""
        out = []
        for method in sorted(self.legacy_get):
            report, _fix, note = pin_decision(method, pins)
            if not report and note is not None:
                out.append(note)
        return out

    def _pol008(
        self, summaries: Mapping[str, FunctionSummary], relationships: Mapping[str, bool]
    ) -> bool:
        if self.kind == "test" or not self.row_attributes:
            return False
        if relationships and not any(relationships.get(a) for a in self.row_attributes):
            return False
        if self.names_query:
            return True
        return any((s := summaries.get(n)) is not None and s.returns_query for n in self.called)

    def _pol010(self, summaries: Mapping[str, FunctionSummary]) -> bool:
        if self.kind == "test":
            return False
        for start, slow, callees in self.functions:
            for name in callees:
                if start and slow:
                    break
                s = summaries.get(name)
                if s is not None:
                    slow = slow or s.slow is not None
                    start = start or s.holds_transaction
            if start and slow:
                return True
        return False


def facts_of(
    tree: ast.Module, path: str, source: str, codes: Iterable[str] | None = None
) -> FileFacts:
    """The facts of one parsed file; with ``codes``, only what their conditions need."""
    wanted = set(CONDITIONS) | PROJECT_CONDITIONS if codes is None else set(codes)
    f = _File(tree, path, source)
    static = frozenset(c for c, cond in CONDITIONS.items() if c in wanted and cond(f))
    names_query = False
    called: frozenset[str] = frozenset()
    rows: frozenset[str] = frozenset()
    if "POL008" in wanted and f.kind != "test":
        rows = _row_attributes(f)
        if rows:
            names_query = any(
                isinstance(n, ast.Attribute) and n.attr in ("query", "scalars", "execute")
                for n in f.nodes
            )
            called = frozenset(
                name
                for n in f.nodes
                if isinstance(n, ast.Call) and (name := last_name(n.func)) is not None
            )
    functions: tuple[tuple[bool, bool, frozenset[str]], ...] = ()
    if "POL010" in wanted and f.kind != "test":
        functions = _functions_for_pol010(f)
    legacy_get = _legacy_get_methods(f) if "POL009" in wanted else frozenset()
    return FileFacts(
        static=static,
        kind=f.kind,
        row_attributes=rows,
        names_query=names_query,
        called=called,
        functions=functions,
        legacy_get=legacy_get,
    )
