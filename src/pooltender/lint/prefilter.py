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

Rules without a condition here keep only their text triggers.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping

from pooltender.lint.config import LintConfig
from pooltender.lint.scopes import CONSUMER_WORDS as _CONSUMER_WORDS
from pooltender.lint.scopes import file_kind, slow_kind_of
from pooltender.lint.summaries import FunctionSummary

_SESSION_START = frozenset(
    {"query", "execute", "scalars", "scalar", "get", "get_one", "flush", "merge", "delete"}
) | {"refresh", "connection"}
_LOOP: tuple[type[ast.AST], ...] = (ast.For, ast.AsyncFor, ast.While)
_FUNC: tuple[type[ast.AST], ...] = (ast.FunctionDef, ast.AsyncFunctionDef)
_FOR: tuple[type[ast.AST], ...] = (ast.For, ast.AsyncFor)


def _last(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


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

    def __init__(
        self, tree: ast.Module, path: str, source: str, relationships: Mapping[str, bool]
    ) -> None:
        self.tree = tree
        self.kind = file_kind(path, source)
        self.nodes = list(ast.walk(tree))
        self.relationships = relationships

    def of(self, kind: type[ast.AST] | tuple[type[ast.AST], ...]) -> list[ast.AST]:
        return [n for n in self.nodes if isinstance(n, kind)]


def _pol002(f: _File, config: LintConfig, summaries: Mapping[str, FunctionSummary]) -> bool:
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
        for n in ast.walk(loop.iter):
            name = _last(n.func) if isinstance(n, ast.Call) else _last(n)
            if name and (name.lower() in _CONSUMER_WORDS or name in ("iter", "count")):
                return True
    return any(
        isinstance(n, ast.Call) and (_last(n.func) or "").endswith("sleep") for n in ast.walk(loop)
    )


def _swallowing_handler(tr: ast.Try) -> bool:
    """A handler with no ``raise``, no ``rollback()`` / abort / exit call and no
    ``<x>.session.remove()`` / ``close()`` (what the rule counts as handling the failure)."""
    for handler in tr.handlers:
        body = [n for stmt in handler.body for n in ast.walk(stmt)]
        if any(isinstance(n, ast.Raise) for n in body):
            continue
        if any(isinstance(n, ast.Call) and _last(n.func) in _CLEANUP_CALLS for n in body):
            continue
        if any(_session_call(n, ("remove", "close")) for n in body):
            continue
        return True
    return False


def _pol003(f: _File, config: LintConfig, summaries: Mapping[str, FunctionSummary]) -> bool:
    if f.kind in ("test", "migration"):
        return False
    writes = ("commit", "flush")
    for node in f.of(ast.Try):
        assert isinstance(node, ast.Try)
        in_body = any(_session_call(n, writes) for stmt in node.body for n in ast.walk(stmt))
        if in_body and _swallowing_handler(node):
            return True
    for loop in f.of(_LOOP):
        if _maybe_long_running(loop) and any(_session_call(n, writes) for n in ast.walk(loop)):
            return True
    return any(
        isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(
            _last(d.func if isinstance(d, ast.Call) else d) in _WORKER_LAST
            for d in n.decorator_list
        )
        and any(_session_call(c, ("commit",)) for c in ast.walk(n))
        for n in f.nodes
    )


def _pol004(f: _File, config: LintConfig, summaries: Mapping[str, FunctionSummary]) -> bool:
    text_callbacks = any(
        isinstance(n, ast.keyword) and n.arg and ("callback" in n.arg or n.arg == "on_message")
        for n in f.nodes
    ) or any(
        isinstance(n, ast.Call)
        and _last(n.func) in ("basic_consume", "register_callback", "add_callback")
        for n in f.nodes
    )
    if text_callbacks:
        return True
    for loop in f.of(_LOOP):
        if not _maybe_long_running(loop):
            continue
        for n in ast.walk(loop):
            if isinstance(n, ast.Attribute) and n.attr in ("session", "query"):
                return True
    return False


def _pol008(f: _File, config: LintConfig, summaries: Mapping[str, FunctionSummary]) -> bool:
    if f.kind == "test" or not any(_touches_row_attribute(loop, f) for loop in f.of(_FOR)):
        return False
    for n in f.nodes:  # the loop may iterate a name assigned from the query elsewhere
        if isinstance(n, ast.Attribute) and n.attr in ("query", "scalars", "execute"):
            return True
        if isinstance(n, ast.Call):
            s = summaries.get(_last(n.func) or "")
            if s is not None and s.returns_query:
                return True
    return False


def _touches_row_attribute(loop: ast.AST, f: _File) -> bool:
    """``for row in ...:`` whose body reads ``row.<a>`` where ``a`` may be a lazy relationship
    (any attribute when the project declares no relationships)."""
    assert isinstance(loop, ast.For | ast.AsyncFor)
    if not isinstance(loop.target, ast.Name):
        return False
    row = loop.target.id
    for stmt in loop.body:
        for n in ast.walk(stmt):
            if (
                isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name)
                and n.value.id == row
                and (not f.relationships or f.relationships.get(n.attr))
            ):
                return True
    return False


def _pol009(f: _File, config: LintConfig, summaries: Mapping[str, FunctionSummary]) -> bool:
    methods = ("get", "get_or_404")  # not narrowed by the pins: the rule notes why it skips
    for n in f.of(ast.Attribute):
        assert isinstance(n, ast.Attribute)
        if n.attr not in methods:
            continue
        recv = n.value
        if isinstance(recv, ast.Attribute) and recv.attr == "query":
            return True
        if isinstance(recv, ast.Call) and _last(recv.func) == "query":
            return True
    return False


def _slow(call: ast.Call) -> bool:
    f = call.func
    attr = f.attr if isinstance(f, ast.Attribute) else None
    inner = None
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call):
        inner = _last(f.value.func)
    return slow_kind_of(_dotted(f), attr, inner) is not None


def _pol010(f: _File, config: LintConfig, summaries: Mapping[str, FunctionSummary]) -> bool:
    if f.kind == "test":
        return False
    for func in f.of(_FUNC):
        start = slow = False
        for n in ast.walk(func):
            if not isinstance(n, ast.Call):
                continue
            fn = n.func
            if isinstance(fn, ast.Attribute) and (
                (fn.attr in _SESSION_START and _last(fn.value) == "session")
                or (isinstance(fn.value, ast.Attribute) and fn.value.attr == "query")
            ):
                start = True
            elif _slow(n):
                slow = True
            else:
                s = summaries.get(_last(fn) or "")
                if s is not None:
                    slow = slow or s.slow is not None
                    start = start or s.holds_transaction
            if start and slow:
                return True
    return False


Condition = Callable[[_File, LintConfig, Mapping[str, FunctionSummary]], bool]
CONDITIONS: dict[str, Condition] = {
    "POL002": _pol002,
    "POL003": _pol003,
    "POL004": _pol004,
    "POL008": _pol008,
    "POL009": _pol009,
    "POL010": _pol010,
}


def could_fire(
    codes: Iterable[str],
    tree: ast.Module,
    path: str,
    source: str,
    config: LintConfig,
    summaries: Mapping[str, FunctionSummary],
    relationships: Mapping[str, bool] | None = None,
) -> set[str]:
    """The subset of ``codes`` whose necessary condition holds on ``tree``."""
    codes = list(codes)
    if not any(c in CONDITIONS for c in codes):
        return set(codes)
    facts = _File(tree, path, source, relationships or {})
    return {c for c in codes if c not in CONDITIONS or CONDITIONS[c](facts, config, summaries)}
