"""PT003 commit-without-rollback: ``db.session.commit()`` with no rollback path around it.

## What it does
Reports a ``db.session.commit()`` that is not inside

* the body of a ``try`` one of whose ``except`` clauses rolls back (any ``.rollback()`` call)
  or re-raises (a ``raise`` statement), or whose ``finally`` rolls back or removes the session;
* a ``with`` block whose context manager opens a transaction scope: ``db.session.begin()``,
  ``begin_nested()``, or a callee whose name contains ``transaction``, ``session_scope`` or
  ``atomic``.

## Why is this bad?
A failed flush or commit leaves the session in an invalid state: until someone calls
``rollback()`` every later use raises ``PendingRollbackError``, and the connection stays
checked out inside a dead transaction. In a long-running worker nothing ever tears the session
down, so one failure poisons every following message. Making the rollback path explicit next
to the write keeps both request and worker code correct (post-mortem, best practice 4).

## Example
```python
def redeem(coupon):
    coupon.used = True
    db.session.commit()
```

## Use instead
```python
def redeem(coupon):
    try:
        coupon.used = True
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
```
or ``with db.session.begin(): ...`` around the write.

## Fix safety
No fix: where the transaction should start and what the handler should do is a design choice.

## Known limits
The check is lexical: a commit inside a helper whose *caller* has the ``try`` is still reported
(suppress it with ``# noqa: PT003`` there, or move the ``try`` into the helper).
"""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from pooltender.lint.base import FileContext, Finding, Rule
from pooltender.lint.helpers import calls_in, last_name, session_method, walk

CODE = "PT003"
NAME = "commit-without-rollback"
SUMMARY = "db.session.commit() with no rollback path (try/except or transaction scope) around it"

_SCOPE_WORDS = ("transaction", "session_scope", "atomic")


def _rolls_back(nodes: cst.CSTNode, ctx: FileContext) -> bool:
    for call in calls_in(nodes):
        name = last_name(call.func)
        if name == "rollback" or session_method(call, ctx) == "remove":
            return True
    return False


def _reraises(handler: cst.ExceptHandler | cst.ExceptStarHandler) -> bool:
    return any(isinstance(n, cst.Raise) for n in walk(handler.body))


def _protects(tr: cst.Try | cst.TryStar, ctx: FileContext) -> bool:
    for handler in tr.handlers:
        if _rolls_back(handler.body, ctx) or _reraises(handler):
            return True
    return tr.finalbody is not None and _rolls_back(tr.finalbody, ctx)


def _is_scope(item: cst.WithItem) -> bool:
    expr = item.item
    if not isinstance(expr, cst.Call):
        return False
    name = last_name(expr.func) or ""
    return name in ("begin", "begin_nested") or any(w in name for w in _SCOPE_WORDS)


def covered(call: cst.Call, ctx: FileContext) -> bool:
    """True when a rollback path lexically encloses ``call`` within its function."""
    child: cst.CSTNode = call
    for anc in ctx.ancestors(call):
        if isinstance(anc, cst.FunctionDef | cst.ClassDef | cst.Lambda):
            return False
        if isinstance(anc, cst.Try | cst.TryStar) and child is anc.body and _protects(anc, ctx):
            return True
        if isinstance(anc, cst.With) and any(_is_scope(i) for i in anc.items):
            return True
        child = anc
    return False


def check(ctx: FileContext) -> Iterator[Finding]:
    for call in ctx.nodes(cst.Call):
        if session_method(call, ctx) == "commit" and not covered(call, ctx):
            yield Finding(
                CODE,
                call,
                "db.session.commit() has no rollback path: wrap the write in try/except that "
                "calls db.session.rollback() (or re-raises), or use `with db.session.begin():`",
            )


RULE = Rule(
    code=CODE,
    name=NAME,
    summary=SUMMARY,
    doc=__doc__ or "",
    check=check,
    triggers=(("session",), ("commit",)),
)
