"""POL009 legacy-query-get: ``Query.get()`` instead of ``Session.get()``, where the project's
pinned versions have ``Session.get()``.

## What it does
Reports ``Model.query.get(x)``, ``models.Model.query.get(x)`` and ``<session>.query(Model)
.get(x)`` when the pinned SQLAlchemy is 1.4 or newer (or unknown), and Flask-SQLAlchemy's
``Model.query.get_or_404(x)`` when the pinned Flask-SQLAlchemy is 3 or newer (or unknown). On
a project that pins older versions (``SQLAlchemy==1.3.24``, ``>=1.3,<2``) nothing is reported:
the replacement does not exist there. The pinned version is the lowest the project's
constraints allow (docs/rules/README.md, "pinned version").

## Why is this bad?
``Query.get()`` is legacy in SQLAlchemy 2.0 (it emits a ``LegacyAPIWarning``) and
Flask-SQLAlchemy 3 deprecates the ``Model.query`` interface. ``Session.get()`` (SQLAlchemy
1.4+) is the supported spelling of the same identity-map lookup.

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
identity map; ``get_or_404`` becomes ``db.get_or_404(Model, x)``. The fix is offered only

* with a single positional argument;
* when a constraint guarantees the API: SQLAlchemy >= 1.4 for ``Session.get``,
  Flask-SQLAlchemy >= 3 for ``db.get_or_404`` (an unpinned project gets the finding without
  the fix, and the reason is printed once);
* when every name it writes is bound in the module: ``db`` must be imported or assigned there
  (a test whose only ``db`` is ``app.db`` gets no fix, since ``db`` would be undefined).
"""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from pooltender.lint.base import FileContext, Finding, Fix, module_rule
from pooltender.lint.helpers import dotted, is_db_session, is_model_query, model_of_query
from pooltender.lint.versions import Pins, show

CODE = "POL009"
NAME = "legacy-query-get"
SUMMARY = "legacy Query.get(); use db.session.get(Model, id) (SQLAlchemy >= 1.4)"

SESSION_GET = (1, 4)
DB_GET_OR_404 = (3, 0)


def _bound_db(ctx: FileContext) -> str | None:
    """A configured ``db`` name the module binds (so a fix may write it)."""
    bound = ctx.bound_names
    for name in ctx.config.db_names:
        if name.split(".", 1)[0] in bound:
            return name
    return None


def _call(func: str, model: cst.BaseExpression, ident: cst.BaseExpression) -> cst.Call:
    return cst.Call(
        func=cst.parse_expression(func),
        args=[cst.Arg(model), cst.Arg(ident)],
    )


def pin_decision(method: str, pins: Pins) -> tuple[bool, bool, str | None]:
    """``(report, may fix, note)`` for ``get`` / ``get_or_404`` under the pinned versions; the
    note says why a finding or its fix is withheld (shared with the ast prefilter, which
    skips libcst for a file whose only candidates the pins rule out)."""
    if method == "get":
        pinned, wanted, what, api = pins.sqlalchemy, SESSION_GET, "SQLAlchemy", "Session.get"
    else:
        pinned, wanted, what = pins.flask_sqlalchemy, DB_GET_OR_404, "Flask-SQLAlchemy"
        api = "db.get_or_404"
    if pinned is not None and pinned < wanted:
        note = (
            f"{CODE} {method}: not reported, {what} is pinned at {show(pinned)} "
            f"({pins.source}) and {api} needs >= {show(wanted)}"
        )
        return False, False, note
    if pinned is None:
        note = (
            f"{CODE} {method}: reported without a fix, no {what} version is pinned and "
            f"{api} needs >= {show(wanted)} (pin it, or set {what.lower()}-version in "
            "[tool.pooltender.lint])"
        )
        return True, False, note
    return True, True, None


def _applies(method: str, ctx: FileContext) -> tuple[bool, bool]:
    """``(report, may fix)`` for ``method`` under the pinned versions; notes the reason."""
    report, may_fix, note = pin_decision(method, ctx.config.pins)
    if note is not None:
        ctx.note(note)
    return report, may_fix


def check(ctx: FileContext) -> Iterator[Finding]:
    db: str | bool | None = False
    for call in ctx.nodes(cst.Call):
        func = call.func
        if not (isinstance(func, cst.Attribute) and func.attr.value in ("get", "get_or_404")):
            continue
        method = func.attr.value
        single = len(call.args) == 1 and call.args[0].keyword is None and not call.args[0].star
        receiver = func.value
        model: cst.BaseExpression | None = None
        session: str | None = None
        if is_model_query(receiver, ctx):
            assert isinstance(receiver, cst.Attribute)
            model = receiver.value
            if db is False:
                db = _bound_db(ctx)
            if isinstance(db, str):
                session = f"{db}.session"
        elif (
            isinstance(receiver, cst.Call)
            and isinstance(receiver.func, cst.Attribute)
            and receiver.func.attr.value == "query"
            and len(receiver.args) == 1
            and dotted(receiver.args[0].value) is not None
        ):
            owner = receiver.func.value
            owner_name = dotted(owner)
            if owner_name is None or not owner_name.split(".")[-1].endswith("session"):
                continue
            model = receiver.args[0].value
            session = owner_name
            if method == "get_or_404" and not is_db_session(owner, ctx):
                session = None
        else:
            continue
        report, may_fix = _applies(method, ctx)
        if not report:
            continue
        written = dotted(model) or model_of_query(receiver)  # type: ignore[arg-type]
        fix = None
        if single and session is not None and may_fix:
            ident = call.args[0].value
            if method == "get":
                new = _call(f"{session}.get", model, ident)
            else:
                new = _call(f"{session.rsplit('.', 1)[0]}.get_or_404", model, ident)
            fix = Fix("safe", ((call, new),), f"use {session}.get()")
        if method == "get":
            right = f"{session or 'db.session'}.get({written}, ...)"
        else:
            right = f"{(session or 'db.session').rsplit('.', 1)[0]}.get_or_404({written}, ...)"
        yield Finding(CODE, call, f"legacy Query.{method}(); use {right}", fix)


RULE = module_rule(
    __name__,
    triggers=(("get",), ("query",)),
    fix="safe",
)
