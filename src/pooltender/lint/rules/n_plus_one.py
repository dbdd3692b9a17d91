"""POL008 n-plus-one: a lazy relationship touched inside a loop over query results.

## What it does
Reports ``for row in <query>:`` loops where ``<query>`` (directly, or a name assigned from it
in the same scope, or a call to a project function that returns one -- one call away, from the
function summaries of the linted tree) is ``Model.query...`` (also ``models.Model.query``),
``db.session.query(Model)...`` or
``db.session.scalars(select(Model)...)`` / ``db.session.execute(select(Model)).scalars()``
with no ``.options(...)`` and no eager loader (``joinedload``, ``selectinload``, ...), and the
loop body touches a relationship of ``row``:

* when relationship names are known -- ``name = relationship(...)`` /
  ``db.relationship(...)`` and ``backref="name"`` in any linted file, or ``relationships`` in
  the configuration -- any access ``row.name`` to a relationship that loads lazily (not
  ``lazy="joined"``/``"selectin"``/``"subquery"``/``"raise"``...);
* assignments (``row.owner = x``) are not loads and are never reported; test files are skipped
  (a fixture's handful of rows costs nothing);
* otherwise, only iteration over an attribute (``for c in row.children``, ``len(row.children)``),
  which is almost always a collection relationship.

## Why is this bad?
The query loads N rows in one statement; each lazy relationship access then issues one more
statement per row: N+1 round trips, each holding the connection, where two would do.

## Example
```python
for user in User.query.all():
    print(user.name, len(user.posts))
```

## Use instead
```python
for user in User.query.options(selectinload(User.posts)).all():
    print(user.name, len(user.posts))
```
(``joinedload`` suits many-to-one relationships, ``selectinload`` collections.)

## Fix safety
No fix: which loader fits depends on the relationship's shape and size.

## Known limits
Comprehensions are not checked, and neither are loops over results returned by a helper.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import libcst as cst

from pooltender.lint.base import FileContext, Finding, module_rule
from pooltender.lint.facts import NOT_ROWS
from pooltender.lint.helpers import is_db_session, is_model_query, last_name, walk
from pooltender.lint.scopes import file_kind
from pooltender.lint.summaries import FunctionSummary

CODE = "POL008"
NAME = "n-plus-one"
SUMMARY = "lazy relationship touched inside a loop over query results (N+1 queries)"

_LOADERS = frozenset(
    {
        "joinedload",
        "selectinload",
        "subqueryload",
        "contains_eager",
        "immediateload",
        "raiseload",
        "noload",
        "lazyload",
        "defaultload",
    }
)


def _select_model(expr: cst.BaseExpression) -> str | None:
    """``M`` for ``select(M)...`` (chained methods allowed)."""
    while isinstance(expr, cst.Call):
        if last_name(expr.func) == "select":
            first = expr.args[0].value if expr.args else None
            return last_name(first) if first is not None else None
        if isinstance(expr.func, cst.Attribute):
            expr = expr.func.value
        else:
            return None
    return None


def _helper_model(expr: cst.BaseExpression, ctx: FileContext) -> str | None:
    """``M`` when ``expr`` calls a project function that returns a query of ``M`` rows."""
    if not isinstance(expr, cst.Call):
        return None
    name = last_name(expr.func)
    summary = ctx.summaries.get(name) if name else None
    return summary.returns_query if summary is not None else None


def query_model(expr: cst.BaseExpression, ctx: FileContext) -> str | None:
    """The model name when ``expr`` iterates ORM rows of one model, else None (also one call
    away: a helper whose summary says it returns such a query)."""
    if not isinstance(expr, cst.Call):
        return None
    via_helper = _helper_model(expr, ctx)
    if via_helper is not None:
        return via_helper
    if any(isinstance(n, cst.Name) and n.value in _LOADERS for n in walk(expr)):
        return None
    methods: list[str] = []
    node: cst.BaseExpression = expr
    scalars = False
    while True:
        if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute):
            method = node.func.attr.value
            methods.append(method)
            receiver = node.func.value
            if is_db_session(receiver, ctx):
                if method == "query" and node.args:
                    model = node.args[0].value
                    model_name = last_name(model) if len(node.args) == 1 else None
                    break_out = model_name
                elif node.args and (method == "scalars" or (method == "execute" and scalars)):
                    break_out = _select_model(node.args[0].value)
                else:
                    return None
                if methods[0] in NOT_ROWS or "options" in methods:
                    return None
                return break_out
            if is_model_query(receiver, ctx):
                assert isinstance(receiver, cst.Attribute)
                if methods[0] in NOT_ROWS or "options" in methods:
                    return None
                return last_name(receiver.value)
            if method == "scalars":
                scalars = True
            node = receiver
            continue
        return None


def _assigned_queries(scope: cst.CSTNode, ctx: FileContext) -> dict[str, str | None]:
    """Names assigned (once) in ``scope`` -> the model they hold rows of (None: not a query)."""
    found: dict[str, str | None] = {}
    for node in walk(scope):
        if isinstance(node, cst.Assign) and len(node.targets) == 1:
            target = node.targets[0].target
            if isinstance(target, cst.Name):
                model = query_model(node.value, ctx)
                name = target.value
                found[name] = model if name not in found else None
    return found


def _scope(loop: cst.For, ctx: FileContext) -> cst.CSTNode:
    for anc in ctx.ancestors(loop):
        if isinstance(anc, cst.FunctionDef | cst.Module):
            return anc
    return ctx.module


def _iterated(attr: cst.Attribute, ctx: FileContext) -> bool:
    parent = ctx.parent(attr)
    if isinstance(parent, cst.For | cst.CompFor) and parent.iter is attr:
        return True
    if isinstance(parent, cst.Arg):
        call = ctx.parent(parent)
        return isinstance(call, cst.Call) and last_name(call.func) == "len"
    return False


def check(ctx: FileContext) -> Iterator[Finding]:
    if file_kind(ctx.path, ctx.source) == "test":
        return  # a handful of rows in a fixture: the extra queries cost nothing
    assigned: dict[int, dict[str, str | None]] = {}
    for loop in ctx.nodes(cst.For):
        if not isinstance(loop.target, cst.Name):
            continue
        model = query_model(loop.iter, ctx)
        if model is None and isinstance(loop.iter, cst.Name):
            scope = _scope(loop, ctx)
            if id(scope) not in assigned:
                assigned[id(scope)] = _assigned_queries(scope, ctx)
            model = assigned[id(scope)].get(loop.iter.value)
        if model is None:
            continue
        row = loop.target.value
        seen: set[str] = set()
        for node in walk(loop.body):
            if not (
                isinstance(node, cst.Attribute)
                and isinstance(node.value, cst.Name)
                and node.value.value == row
            ):
                continue
            attr = node.attr.value
            if attr in seen or isinstance(ctx.parent(node), cst.AssignTarget):
                continue  # assigning a relationship loads nothing
            if ctx.relationships:
                lazy = ctx.relationships.get(attr)
                if not lazy:
                    continue
            elif not _iterated(node, ctx):
                continue
            seen.add(attr)
            yield Finding(
                CODE,
                node,
                f"N+1 queries: {row}.{attr} loads lazily once per {model} row of the loop; "
                f"add .options(selectinload({model}.{attr})) to the query "
                "(joinedload for a many-to-one)",
            )


def helper_triggers(
    summaries: Mapping[str, FunctionSummary],
) -> tuple[tuple[str, ...], ...]:
    returning = tuple(f"{n}(" for n, s in summaries.items() if s.returns_query)
    return (("for",), ("query", "scalars", *returning))


RULE = module_rule(
    __name__,
    triggers=(("for",), ("query", "scalars")),
    helper_triggers=helper_triggers,
)
