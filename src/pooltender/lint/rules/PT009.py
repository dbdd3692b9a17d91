"""PT009 legacy-query-get: ``Query.get()`` instead of ``Session.get()``.

## What it does
Reports ``Model.query.get(x)`` and ``<session>.query(Model).get(x)`` (and Flask-SQLAlchemy's
``Model.query.get_or_404(x)``).

## Why is this bad?
``Query.get()`` is legacy in SQLAlchemy 2.0 (it emits a ``LegacyAPIWarning``) and
Flask-SQLAlchemy 3 deprecates the ``Model.query`` interface. ``Session.get()`` is the supported
spelling of the same identity-map lookup.

## Example
```python
user = User.query.get(user_id)
order = db.session.query(Order).get(order_id)
```

## Use instead
```python
user = db.session.get(User, user_id)
order = db.session.get(Order, order_id)
```

## Fix safety
Safe: ``Query.get()`` and ``Session.get()`` perform the same primary-key lookup through the
identity map; ``get_or_404`` becomes ``db.get_or_404(Model, x)``. The fix is offered only with
a single positional argument, and for ``Model.query`` only when the file already uses a
configured ``db`` name.
"""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from pooltender.lint.base import FileContext, Finding, Fix, Rule
from pooltender.lint.helpers import dotted, is_db_session, is_model_query

CODE = "PT009"
NAME = "legacy-query-get"
SUMMARY = "legacy Query.get(); use db.session.get(Model, id)"


def _db_name(ctx: FileContext) -> str | None:
    names = {n.value for n in ctx.nodes(cst.Name)}
    return next((d for d in ctx.config.db_names if d in names), None)


def _call(func: str, model: str, ident: cst.BaseExpression) -> cst.Call:
    return cst.Call(
        func=cst.parse_expression(func),
        args=[cst.Arg(cst.Name(model)), cst.Arg(ident)],
    )


def check(ctx: FileContext) -> Iterator[Finding]:
    db: str | bool | None = False
    for call in ctx.nodes(cst.Call):
        func = call.func
        if not (isinstance(func, cst.Attribute) and func.attr.value in ("get", "get_or_404")):
            continue
        method = func.attr.value
        single = len(call.args) == 1 and call.args[0].keyword is None and not call.args[0].star
        receiver = func.value
        model: str | None = None
        session: str | None = None
        if is_model_query(receiver):
            assert isinstance(receiver, cst.Attribute)
            assert isinstance(receiver.value, cst.Name)
            model = receiver.value.value
            if db is False:
                db = _db_name(ctx)
            if isinstance(db, str):
                session = f"{db}.session"
        elif (
            isinstance(receiver, cst.Call)
            and isinstance(receiver.func, cst.Attribute)
            and receiver.func.attr.value == "query"
            and len(receiver.args) == 1
            and isinstance(receiver.args[0].value, cst.Name)
        ):
            owner = receiver.func.value
            owner_name = dotted(owner)
            if owner_name is None or not owner_name.split(".")[-1].endswith("session"):
                continue
            model = receiver.args[0].value.value
            session = owner_name
            if method == "get_or_404" and not is_db_session(owner, ctx):
                session = None
        else:
            continue
        fix = None
        if single and session is not None:
            ident = call.args[0].value
            if method == "get":
                new = _call(f"{session}.get", model, ident)
            else:
                new = _call(f"{session.rsplit('.', 1)[0]}.get_or_404", model, ident)
            fix = Fix("safe", ((call, new),), f"use {session}.get()")
        if method == "get":
            right = f"{session or 'db.session'}.get({model}, ...)"
        else:
            right = f"{(session or 'db.session').rsplit('.', 1)[0]}.get_or_404({model}, ...)"
        yield Finding(CODE, call, f"legacy Query.{method}(); use {right}", fix)


RULE = Rule(
    code=CODE,
    name=NAME,
    summary=SUMMARY,
    doc=__doc__ or "",
    check=check,
    triggers=(("get",), ("query",)),
    fix="safe",
)
