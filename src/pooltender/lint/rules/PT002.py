"""PT002 manual-session-close: ``db.session.close()`` called by hand.

## What it does
Reports every ``db.session.close()`` call. Said twice over when it follows
``db.session.remove()`` on the line before (or earlier on the same line), where it is a no-op.

## Why is this bad?
Flask-SQLAlchemy removes the scoped session when the app context tears down, which closes it
and returns its connection. A manual ``close()`` in the middle of a request hands the
connection back early, expunges every loaded object (the next attribute access raises
``DetachedInstanceError`` or silently opens a new transaction) and hides where the session's
life really ends. After ``remove()`` it does nothing at all. The post-mortem removed these from
``lib/query.py``.

## Example
```python
def get_user(user_id):
    user = db.session.get(User, user_id)
    db.session.close()
    return user


finally:
    db.session.remove()
    db.session.close()
```

## Use instead
```python
def get_user(user_id):
    return db.session.get(User, user_id)


finally:
    db.session.remove()
```

## Fix safety
Removing a ``close()`` right after ``remove()`` is **safe**: ``remove()`` already closed the
session. Removing any other ``close()`` is **unsafe**: objects stay attached to the session and
the connection returns at teardown instead, which is the intent but changes behaviour. A
``close()`` that is the only statement of its block is replaced by ``pass``.
"""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from pooltender.lint.base import FileContext, Finding, Fix, Rule
from pooltender.lint.helpers import removal_edits, session_method

CODE = "PT002"
NAME = "manual-session-close"
SUMMARY = "db.session.close() called by hand; Flask-SQLAlchemy removes the session at teardown"


def _is_remove(small: cst.BaseSmallStatement, ctx: FileContext) -> bool:
    return (
        isinstance(small, cst.Expr)
        and isinstance(small.value, cst.Call)
        and session_method(small.value, ctx) == "remove"
    )


def _after_remove(expr: cst.Expr, ctx: FileContext) -> bool:
    line = ctx.parent(expr)
    if not isinstance(line, cst.SimpleStatementLine):
        return False
    index = next(i for i, s in enumerate(line.body) if s is expr)
    if index > 0:
        return _is_remove(line.body[index - 1], ctx)
    block = ctx.parent(line)
    if not isinstance(block, cst.IndentedBlock | cst.Module):
        return False
    pos = next(i for i, s in enumerate(block.body) if s is line)
    if pos == 0:
        return False
    before = block.body[pos - 1]
    return isinstance(before, cst.SimpleStatementLine) and _is_remove(before.body[-1], ctx)


def check(ctx: FileContext) -> Iterator[Finding]:
    for call in ctx.nodes(cst.Call):
        if session_method(call, ctx) != "close":
            continue
        expr = ctx.parent(call)
        fix = None
        redundant = False
        if isinstance(expr, cst.Expr):
            redundant = _after_remove(expr, ctx)
            edits = removal_edits(ctx, expr)
            if edits:
                fix = Fix(
                    "safe" if redundant else "unsafe", edits, "remove the db.session.close() call"
                )
        if redundant:
            message = "redundant db.session.close() right after db.session.remove(); delete it"
        else:
            message = (
                "manual db.session.close(): Flask-SQLAlchemy removes the session at app-context "
                "teardown; delete it"
            )
        yield Finding(CODE, call, message, fix)


RULE = Rule(
    code=CODE,
    name=NAME,
    summary=SUMMARY,
    doc=__doc__ or "",
    check=check,
    triggers=(("session",), ("close",)),
    fix="safe",
)
