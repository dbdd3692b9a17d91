"""POL003 commit-without-rollback: a failed write left without a rollback where nothing else
will clean up.

## What it does
Reports, outside tests and migrations:

* **a swallowed failure**: an ``except`` clause (bare, ``Exception``, ``BaseException`` or a
  SQLAlchemy / DB-API error) of a ``try`` whose body calls ``db.session.flush()`` or
  ``db.session.commit()``, when the clause neither rolls back (``rollback()``, ``close()``,
  ``remove()``) nor re-raises. In a request handler a clause that returns or aborts is left
  alone (teardown rolls back before anything else runs), and so is one in a CLI command
  outside a loop (the command, and its process, end next);
* **a commit in a long-running loop** (see *long-running loop* in docs/rules/README.md) with
  no rollback path around it: one failed commit poisons the session for every later
  iteration;
* **a commit in a worker task** (Celery / Dramatiq / Huey; not RQ, whose forked work horse
  exits with the job) with no rollback path around it: a worker process outlives the task,
  and its thread's scoped session with it.

A rollback path is a ``try`` whose ``except`` rolls back or re-raises (or whose ``finally``
rolls back or removes the session), or a ``with`` opening a transaction scope
(``db.session.begin()``, ``begin_nested()``, a callee named ``*transaction*``,
``session_scope``, ``atomic``).

Not reported by default: a commit in a **request handler** (Flask-SQLAlchemy's teardown
removes the session, which rolls back an unfinished transaction), in a helper outside loops
(its callers decide), in a **CLI command** or a one-off **script** outside long-running loops
(a failed commit raises and ends the process, so no one reuses the failed session; issue 11
asked for CLI commands too, but on the corpus every such finding was judged false), in
**tests** and **migrations** (their harness owns the session). A handler that aborts or exits
(``abort()``, ``exit()``, ``sys.exit()``) is not swallowing: those raise.

## Why is this bad?
A failed flush or commit leaves the session in an invalid state: until someone calls
``rollback()`` every later use raises ``PendingRollbackError``, and the connection stays
checked out inside a dead transaction. Swallowing the error hides this until an unrelated
statement fails; in a worker or a loop nothing ever tears the session down, so one failure
poisons every following message.

## Example
```python
for row in rows:
    try:
        db.session.add(Award(**row))
        db.session.flush()
    except Exception:
        pass                      # the session is now unusable


@celery.task
def expire_coupons():
    Coupon.query.filter(Coupon.expired).delete()
    db.session.commit()
```

## Use instead
```python
for row in rows:
    try:
        db.session.add(Award(**row))
        db.session.flush()
    except Exception:
        db.session.rollback()


@celery.task
def expire_coupons():
    with db.session.begin():
        Coupon.query.filter(Coupon.expired).delete()
```

## Fix safety
No fix: where the transaction should start and what the handler should do is a design choice.

## Known limits
The check is lexical within one function: a commit in a helper whose *caller* has the ``try``
is still reported when the helper itself is a task or loops forever.
"""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from pooltender.lint.base import FileContext, Finding, module_rule
from pooltender.lint.helpers import (
    calls_in,
    dotted,
    last_name,
    nearest_function,
    session_method,
    walk,
)
from pooltender.lint.scopes import (
    file_kind,
    is_cli_command,
    is_long_running,
    is_request_handler,
    is_worker,
)

CODE = "POL003"
NAME = "commit-without-rollback"
SUMMARY = (
    "failed write left without rollback: a swallowed flush/commit error, or a commit in a "
    "long-running loop, worker or CLI command with no rollback path"
)

_SCOPE_WORDS = ("transaction", "session_scope", "atomic")
_CLEANUP = frozenset({"rollback"})
_SESSION_CLEANUP = frozenset({"rollback", "remove", "close"})
_DB_ERRORS = (
    "Exception",
    "BaseException",
    "SQLAlchemyError",
    "DBAPIError",
    "DatabaseError",
    "IntegrityError",
    "OperationalError",
    "InvalidRequestError",
    "ProgrammingError",
    "DataError",
    "StatementError",
    "PendingRollbackError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "FlushError",
)


def _rolls_back(nodes: cst.CSTNode, ctx: FileContext) -> bool:
    for call in calls_in(nodes):
        name = last_name(call.func)
        if name in _CLEANUP or session_method(call, ctx) in _SESSION_CLEANUP:
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


def _loop_around(ctx: FileContext, node: cst.CSTNode) -> cst.While | cst.For | None:
    """The innermost long-running loop around ``node`` within its function."""
    for anc in ctx.ancestors(node):
        if isinstance(anc, cst.FunctionDef | cst.ClassDef | cst.Lambda):
            return None
        if isinstance(anc, cst.While | cst.For) and is_long_running(anc):
            return anc
    return None


def _catches_db_errors(handler: cst.ExceptHandler | cst.ExceptStarHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elements if isinstance(handler.type, cst.Tuple) else [handler.type]
    for t in types:
        expr = t.value if isinstance(t, cst.Element) else t
        name = dotted(expr) or ""
        if name.rsplit(".", 1)[-1] in _DB_ERRORS:
            return True
    return False


_RAISING_CALLS = frozenset({"abort", "exit", "_exit", "quit"})


def _ends_request(handler: cst.ExceptHandler | cst.ExceptStarHandler) -> bool:
    for node in walk(handler.body):
        if isinstance(node, cst.Return):
            return True
        if isinstance(node, cst.Call) and last_name(node.func) in ("abort", "redirect"):
            return True
    return False


def _raises_by_call(handler: cst.ExceptHandler | cst.ExceptStarHandler) -> bool:
    """``abort(...)``, ``exit(1)``, ``sys.exit()``: calls that raise, so nothing is swallowed."""
    return any(
        isinstance(n, cst.Call) and last_name(n.func) in _RAISING_CALLS for n in walk(handler.body)
    )


def _within_function(ctx: FileContext, node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    for anc in ctx.ancestors(node):
        if isinstance(anc, cst.FunctionDef | cst.ClassDef | cst.Lambda):
            return
        yield anc


def _swallowed(ctx: FileContext) -> Iterator[Finding]:
    for tr in ctx.nodes(cst.Try):
        writes = [
            session_method(c, ctx)
            for c in calls_in(tr.body)
            if session_method(c, ctx) in ("commit", "flush")
        ]
        if not writes:
            continue
        func = nearest_function(ctx, tr)
        in_request = func is not None and is_request_handler(ctx, func)
        in_loop = any(isinstance(a, cst.While | cst.For) for a in _within_function(ctx, tr))
        if func is not None and is_cli_command(ctx, func) and not in_loop:
            continue  # the command ends and the process with it: nobody reuses the session
        for handler in tr.handlers:
            if not _catches_db_errors(handler) or _reraises(handler) or _raises_by_call(handler):
                continue
            if _rolls_back(handler.body, ctx):
                continue
            if tr.finalbody is not None and _rolls_back(tr.finalbody, ctx):
                continue
            if in_request and _ends_request(handler):
                continue
            what = f"db.session.{writes[0]}()"
            yield Finding(
                CODE,
                handler,
                f"except clause swallows a failed {what} without db.session.rollback(): the "
                "session stays in a failed state and its next use raises PendingRollbackError; "
                "roll back in the handler (or re-raise)",
            )


def check(ctx: FileContext) -> Iterator[Finding]:
    kind = file_kind(ctx.path, ctx.source)
    if kind in ("test", "migration"):
        return
    yield from _swallowed(ctx)
    for call in ctx.nodes(cst.Call):
        if session_method(call, ctx) != "commit" or covered(call, ctx):
            continue
        func = nearest_function(ctx, call)
        if func is not None and is_request_handler(ctx, func):
            continue
        if _loop_around(ctx, call) is not None:
            yield Finding(
                CODE,
                call,
                "db.session.commit() in a long-running loop has no rollback path: one failed "
                "commit leaves the session failed for every later iteration; wrap each "
                "iteration's write in try/except that calls db.session.rollback()",
            )
        elif func is not None and is_worker(ctx, func):
            yield Finding(
                CODE,
                call,
                f"db.session.commit() in worker task {func.name.value}() has no rollback "
                "path: wrap the write in try/except that calls db.session.rollback() (or "
                "re-raises), or use `with db.session.begin():`",
            )


RULE = module_rule(
    __name__,
    triggers=(("session",), ("commit", "flush")),
)
