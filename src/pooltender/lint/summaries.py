"""One level of project-wide analysis: a summary of every function in the linted tree.

Before linting, each file is parsed with the standard library's ``ast`` (the C parser, cheap
next to libcst) and every ``def`` is summarised: does it touch ``db.session`` or a model's
``query`` property, does it end the transaction it may have opened (commit / rollback / remove
/ close), does it return a query (of which model), does it do slow work (sleep, HTTP, hashing,
cloud storage, subprocess; :mod:`pooltender.lint.scopes`). Rules then see one call away:
POL010 counts ``poll_jobs()`` as opening a transaction when ``poll_jobs`` queries and does not
end it, and ``hash_it()`` as slow when ``hash_it`` hashes; POL008 iterates ``recent_posts()`` as
rows of ``Post`` when it returns ``Post.query...``.

Names are resolved by the function's own name only (``helper()``, ``mod.helper()``,
``self.helper()``): summaries of functions that share a name are merged conservatively (a fact
holds only when it holds for every definition), so a common name such as ``get`` rarely carries
one. Only "ends the transaction" travels further than one call (``obj.update()`` calling
``self.save()`` calling ``commit()``), to a fixpoint: it can only silence a finding, never add
one. This is the usual first step of interprocedural analysis (summary-based, after
Sharir & Pnueli, "Two approaches to interprocedural data flow analysis", 1981), cut at depth one.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace

from pooltender.lint.astwalk import all_nodes, dotted_name, last_name
from pooltender.lint.facts import NOT_ROWS
from pooltender.lint.facts import FunctionSummary as FunctionSummary
from pooltender.lint.scopes import slow_kind_of

_ENDS = frozenset({"commit", "rollback", "remove", "close"})
_NOT_ROWS = NOT_ROWS | {"options"}  # here a chain that starts with ``options`` too
_LOADERS = frozenset({"joinedload", "selectinload", "subqueryload", "contains_eager"})


_UNRESOLVABLE = frozenset(
    {"get", "set", "add", "append", "pop", "update", "items", "keys", "values", "format"}
)


def _resolvable_callee(func: ast.AST) -> str | None:
    """The name of a call we can attribute to a project function: ``name()`` or
    ``self.name()`` / ``cls.name()``; not ``obj.get()`` (a dict, a cache, anything)."""
    if isinstance(func, ast.Name):
        name = func.id
    elif (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id in ("self", "cls")
    ):
        name = func.attr
    else:
        return None
    return None if name in _UNRESOLVABLE else name


def _walk(node: ast.AST) -> list[ast.AST]:
    return all_nodes(node)


class _Facts:
    def __init__(self, db_names: frozenset[str], imports: frozenset[str]) -> None:
        self.db_names = db_names
        self.imports = imports

    def is_db(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.db_names
        if isinstance(node, ast.Attribute):
            name = dotted_name(node)
            if name is None:
                return False
            if name in self.db_names:
                return True
            return node.attr in self.db_names and name.split(".", 1)[0] in self.imports
        return False

    def is_session(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "session" and self.is_db(node.value)

    def model_query(self, node: ast.AST) -> str | None:
        if not (isinstance(node, ast.Attribute) and node.attr == "query"):
            return None
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id[:1].isupper():
            return owner.id
        if isinstance(owner, ast.Attribute) and owner.attr[:1].isupper():
            name = dotted_name(owner)
            if name is not None and name.split(".", 1)[0] in self.imports:
                return owner.attr
        return None

    def query_model(self, expr: ast.AST) -> str | None:
        """The model when ``expr`` is a query of ORM rows of one model (no loader options)."""
        methods: list[str] = []
        node = expr
        while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            methods.append(node.func.attr)
            receiver = node.func.value
            if any(isinstance(n, ast.Name) and n.id in _LOADERS for n in _walk(node)):
                return None
            if self.is_session(receiver):
                if node.func.attr == "query" and len(node.args) == 1:
                    if methods[0] in _NOT_ROWS:
                        return None
                    return last_name(node.args[0])
                return None
            model = self.model_query(receiver)
            if model is not None:
                return None if methods[0] in _NOT_ROWS else model
            node = receiver
        return None


def _own_nodes(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.AST]:
    """The function's nodes, not entering nested defs, lambdas or classes (an explicit stack
    over ``_fields``: :func:`ast.iter_child_nodes` costs a generator per node)."""
    nested = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
    out: list[ast.AST] = []
    stack: list[ast.AST] = [n for n in func.body if not isinstance(n, nested)]
    ast_type = ast.AST
    while stack:
        node = stack.pop()
        out.append(node)
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, ast_type):
                if not isinstance(value, nested):
                    stack.append(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast_type) and not isinstance(item, nested):
                        stack.append(item)
    return out


def summarize_function(
    func: ast.FunctionDef | ast.AsyncFunctionDef, facts: _Facts
) -> FunctionSummary:
    touches = ends = False
    slow: str | None = None
    returns: str | None = None
    calls: set[str] = set()
    for node in _own_nodes(func):
        if isinstance(node, ast.Attribute):
            if facts.is_session(node) or facts.model_query(node):
                touches = True
        elif isinstance(node, ast.Call):
            f = node.func
            callee = _resolvable_callee(f)
            if callee is not None:
                calls.add(callee)
            if isinstance(f, ast.Attribute) and facts.is_session(f.value) and f.attr in _ENDS:
                ends = True
            if slow is None:
                attr = f.attr if isinstance(f, ast.Attribute) else None
                inner = None
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call):
                    inner = last_name(f.value.func)
                slow = slow_kind_of(dotted_name(f), attr, inner)
        elif isinstance(node, ast.Return) and node.value is not None and returns is None:
            returns = facts.query_model(node.value)
    return FunctionSummary(touches, ends, returns, slow, frozenset(calls))


def _imports(tree: ast.Module) -> frozenset[str]:
    """Names bound by imports at module level (also under ``if`` / ``try``, one level)."""
    names: set[str] = set()
    top: list[ast.stmt] = []
    for node in tree.body:
        top.append(node)
        if isinstance(node, ast.If | ast.Try):
            top.extend(node.body)
            top.extend(node.orelse)
            if isinstance(node, ast.Try):
                for handler in node.handlers:
                    top.extend(handler.body)
    for node in top:
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".", 1)[0])
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                names.add(alias.asname or alias.name)
    return frozenset(names)


# A function whose text has none of these words can only carry the names it calls; its nodes
# are not walked (the walk is Python-speed, the parse is C-speed).
_INTERESTING = re.compile(
    r"session|query|sleep|requests|httpx|urllib|urlopen|aiohttp|hash|verify|password|bcrypt"
    r"|pbkdf2|scrypt|upload|download|_object|_blob|subprocess|Popen|system|popen|check_call"
    r"|check_output"
)
_CALL = re.compile(r"(?:\b(?:self|cls)\.|(?<![\w.]))([A-Za-z_]\w*)\s*\(")
_KEYWORDS = frozenset({"if", "while", "for", "return", "and", "or", "not", "in", "elif", "with"})


def summarize_tree(
    tree: ast.Module, db_names: Iterable[str], source: str | None = None
) -> dict[str, FunctionSummary]:
    """Summaries of the module-level functions and class methods of one parsed file. With
    ``source``, functions whose text cannot matter are summarised from their text alone."""
    facts = _Facts(frozenset(db_names), _imports(tree))
    lines = source.splitlines(keepends=True) if source is not None else None
    out: dict[str, list[FunctionSummary]] = {}
    for node in tree.body:
        defs: list[ast.stmt] = [node]
        if isinstance(node, ast.ClassDef):
            defs = list(node.body)
        for d in defs:
            if not isinstance(d, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if lines is not None:
                text = "".join(lines[d.lineno - 1 : d.end_lineno or d.lineno])
                if not _INTERESTING.search(text):
                    calls = {m for m in _CALL.findall(text) if m not in _KEYWORDS}
                    calls -= _UNRESOLVABLE | {d.name}
                    out.setdefault(d.name, []).append(FunctionSummary(calls=frozenset(calls)))
                    continue
            out.setdefault(d.name, []).append(summarize_function(d, facts))
    return propagate_ends({name: merge(items) for name, items in out.items()})


def summarize_source(source: str, db_names: Iterable[str]) -> dict[str, FunctionSummary]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    return summarize_tree(tree, db_names, source)


def merge(items: Iterable[FunctionSummary]) -> FunctionSummary:
    """The facts every summary agrees on (conservative: a name defined twice differently
    carries only what both definitions do)."""
    items = list(items)
    first = items[0]
    if len(items) == 1:
        return first
    return FunctionSummary(
        touches_session=all(i.touches_session for i in items),
        ends_transaction=any(i.ends_transaction for i in items),
        returns_query=first.returns_query
        if all(i.returns_query == first.returns_query for i in items)
        else None,
        slow=first.slow if all(i.slow == first.slow for i in items) else None,
        calls=frozenset().union(*(i.calls for i in items)),
    )


def merge_maps(maps: Iterable[Mapping[str, FunctionSummary]]) -> dict[str, FunctionSummary]:
    grouped: dict[str, list[FunctionSummary]] = {}
    for m in maps:
        for name, summary in m.items():
            grouped.setdefault(name, []).append(summary)
    return propagate_ends({name: merge(items) for name, items in grouped.items()})


def propagate_ends(summaries: dict[str, FunctionSummary]) -> dict[str, FunctionSummary]:
    """A function that calls one that ends the transaction ends it too (``update()`` that
    calls ``save()`` that commits). Only this fact travels further than one call: it can only
    silence POL010, never add a finding. Iterated to a fixpoint (at most a few rounds)."""
    for _ in range(4):
        ending = {n for n, s in summaries.items() if s.ends_transaction}
        changed = False
        for name, summary in summaries.items():
            if not summary.ends_transaction and summary.calls & ending:
                summaries[name] = replace(summary, ends_transaction=True)
                changed = True
        if not changed:
            break
    return summaries
