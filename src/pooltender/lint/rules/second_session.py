"""POL001 second-session: a Session of its own beside Flask-SQLAlchemy's ``db.session``.

## What it does
Reports sessions created by hand in a Flask-SQLAlchemy application: ``Session(bind=db.engine)``,
``sessionmaker(bind=db.engine)`` (and ``sessionmaker(...)()`` in a file that uses ``db``),
``db.create_scoped_session(...)`` and ``db.create_session(...)``.

## Why is this bad?
Each extra session checks out a connection of its own, beside the one the request's scoped
``db.session`` already holds, so one request can hold two connections and a pool of N serves
N/2 requests; if the extra session is not closed on every path the connection leaks. This was
the post-mortem's root cause in ``services/coupon.py``.

## Example
```python
def expire(code):
    session = Session(bind=db.engine)
    session.query(Coupon).filter_by(code=code).update({"expired": True})
    session.commit()
    session.close()
```

## Use instead
```python
def expire(code):
    Coupon.query.filter_by(code=code).update({"expired": True})
    db.session.commit()
```

## Fix safety
Unsafe, and offered only when mechanical: ``name = Session(bind=db.engine)`` is a statement of
its own in a function, ``name`` is assigned once there and only ever used as ``name.<attr>``.
The fix deletes the assignment, renames the uses to ``db.session`` and drops ``name.close()``.
It is unsafe because the work joins the request's transaction: a ``commit()`` now also commits
whatever the request had pending, which is usually the intent but must be reviewed.
"""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from pooltender.lint.base import FileContext, Finding, Fix, Replacement, module_rule
from pooltender.lint.helpers import (
    enclosing_function,
    keyword,
    last_name,
    removal_edits,
    walk,
)

CODE = "POL001"
NAME = "second-session"
SUMMARY = "a Session of its own beside Flask-SQLAlchemy's db.session"


def _db_engine_name(node: cst.CSTNode | None, ctx: FileContext) -> str | None:
    """The ``db`` name when ``node`` is ``db.engine``, ``db.get_engine()`` or ``db.engines[k]``."""
    if isinstance(node, cst.Call):
        node = node.func
    if isinstance(node, cst.Subscript):
        node = node.value
    if (
        isinstance(node, cst.Attribute)
        and node.attr.value in ("engine", "get_engine", "engines")
        and isinstance(node.value, cst.Name)
        and node.value.value in ctx.config.db_names
    ):
        return node.value.value
    return None


def _bind(call: cst.Call, ctx: FileContext) -> str | None:
    arg = keyword(call, "bind")
    if arg is None and call.args and call.args[0].keyword is None and not call.args[0].star:
        arg = call.args[0]
    return _db_engine_name(arg.value if arg else None, ctx)


def _uses_flask_sqlalchemy(ctx: FileContext) -> bool:
    src = ctx.source
    return "flask_sqlalchemy" in src or any(f"{n}.session" in src for n in ctx.config.db_names)


def _classify(call: cst.Call, ctx: FileContext) -> tuple[str, str | None] | None:
    """``(description, db name for a fix)`` when ``call`` creates a second session."""
    name = last_name(call.func)
    if name == "Session":
        db = _bind(call, ctx)
        return (f"Session(bind={db}.engine)", db) if db else None
    if name == "sessionmaker":
        db = _bind(call, ctx)
        return (f"sessionmaker(bind={db}.engine)", None) if db else None
    if isinstance(call.func, cst.Call) and last_name(call.func.func) == "sessionmaker":
        db = _bind(call.func, ctx)
        if db or _uses_flask_sqlalchemy(ctx):
            return "sessionmaker(...)()", db
        return None
    if (
        isinstance(call.func, cst.Attribute)
        and call.func.attr.value in ("create_scoped_session", "create_session")
        and isinstance(call.func.value, cst.Name)
        and call.func.value.value in ctx.config.db_names
    ):
        return f"{call.func.value.value}.{call.func.attr.value}()", None
    return None


def _fix(call: cst.Call, db: str, ctx: FileContext) -> Fix | None:
    """The mechanical rewrite to ``db.session`` (see Fix safety), or None."""
    assign = ctx.parent(call)
    if not (
        isinstance(assign, cst.Assign)
        and len(assign.targets) == 1
        and isinstance(assign.targets[0].target, cst.Name)
    ):
        return None
    var = assign.targets[0].target.value
    func = enclosing_function(ctx, call)
    if func is None:
        return None
    direct = [n for n in walk(func.body) if isinstance(n, cst.Name) and n.value == var]
    nested = [
        n
        for n in walk(func.body, into_functions=True)
        if isinstance(n, cst.Name) and n.value == var
    ]
    if len(nested) != len(direct):
        return None
    if any(p.name.value == var for p in (*func.params.params, *func.params.kwonly_params)):
        return None
    edits: list[tuple[cst.CSTNode, Replacement]] = list(removal_edits(ctx, assign))
    if not edits:
        return None
    replacement = cst.Attribute(value=cst.Name(db), attr=cst.Name("session"))
    for name in direct:
        parent = ctx.parent(name)
        if parent is assign.targets[0]:
            continue
        if isinstance(parent, cst.Attribute) and parent.attr is name:
            continue  # x.session: an attribute called like our variable
        if isinstance(parent, cst.Arg) and parent.keyword is name:
            continue  # f(session=...): a keyword called like our variable
        if not (isinstance(parent, cst.Attribute) and parent.value is name):
            return None  # passed, returned, reassigned: not mechanical
        call_of = ctx.parent(parent)
        expr = ctx.parent(call_of) if call_of is not None else None
        if (
            parent.attr.value == "close"
            and isinstance(call_of, cst.Call)
            and isinstance(expr, cst.Expr)
            and not call_of.args
        ):
            removal = removal_edits(ctx, expr)
            if not removal:
                return None
            edits.extend(removal)
            continue
        edits.append((name, replacement))
    return Fix("unsafe", tuple(edits), f"use {db}.session instead of `{var}`")


def check(ctx: FileContext) -> Iterator[Finding]:
    for call in ctx.nodes(cst.Call):
        found = _classify(call, ctx)
        if found is None:
            continue
        what, db = found
        fix = _fix(call, db, ctx) if db else None
        target = f"{db}.session" if db else "db.session"
        yield Finding(
            CODE,
            call,
            f"{what} opens a second session (and connection) beside {target}; use {target}",
            fix,
        )


RULE = module_rule(
    __name__,
    triggers=(("Session(", "sessionmaker", "create_scoped_session", "create_session"),),
    fix="unsafe",
)
