"""POL002 manual-session-close: a ``db.session.close()`` that does nothing or cuts a unit of
work in two.

## What it does
Reports a hand-written ``db.session.close()`` when

* it is **redundant**: right after ``db.session.remove()`` (which already closed the session)
  or right before it (``remove()`` closes first);
* it sits **in the middle of a unit of work**: the function goes on to use the session again
  (``db.session.*`` or a model's ``query``) with no slow or long-lived work in between.

A ``close()`` that releases the connection before slow or long-lived work is **not** reported:
before returning a streaming response (``Response(generator)``, ``stream_with_context``,
``yield``), before sending mail, an HTTP call, a sleep, a subprocess, a long-running loop, or
``engine.dispose()``; nor one that ends the function's use of the session (the usual "release
early" at the end of a handler, or per iteration of a worker loop). Those hand the connection
back before the request or the process needs it for a long time: exactly what this project asks
for.

## Why is this bad?
Flask-SQLAlchemy removes the scoped session when the app context tears down. A ``close()``
followed by more queries only begins a new transaction on a (possibly different) pooled
connection and detaches every object loaded before it, so later attribute access raises
``DetachedInstanceError`` or reloads silently. Next to ``remove()`` it does nothing at all.

## Example
```python
def rename(user_id, name):
    user = db.session.get(User, user_id)
    db.session.close()
    user.name = name                      # detached: the change is never flushed
    db.session.commit()


finally:
    db.session.remove()
    db.session.close()
```

## Use instead
```python
def rename(user_id, name):
    user = db.session.get(User, user_id)
    user.name = name
    db.session.commit()


finally:
    db.session.remove()
```

## Fix safety
Deleting a ``close()`` right after or right before ``remove()`` is **safe**: ``remove()``
closes the session. Deleting a ``close()`` in the middle of a unit of work is **unsafe**
(objects stay attached, which is the intent, but behaviour changes). A ``close()`` that is the
only statement of its block becomes ``pass``. Nothing else is ever deleted.
"""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from pooltender.lint.base import FileContext, Finding, Fix, FixSafety, module_rule
from pooltender.lint.helpers import (
    dotted,
    is_db_session,
    is_model_query,
    last_name,
    removal_edits,
    session_method,
    walk,
)
from pooltender.lint.scopes import is_long_running, slow_kind

CODE = "POL002"
NAME = "manual-session-close"
SUMMARY = "db.session.close() next to remove() (redundant) or in the middle of a unit of work"

_STREAMING = frozenset(
    {"Response", "stream_with_context", "stream_template", "send_file", "StreamingResponse"}
)


def _is_session_call(small: cst.CSTNode, ctx: FileContext, method: str) -> bool:
    return (
        isinstance(small, cst.Expr)
        and isinstance(small.value, cst.Call)
        and session_method(small.value, ctx) == method
    )


def _neighbour(expr: cst.Expr, ctx: FileContext, step: int) -> cst.CSTNode | None:
    """The small statement just before (``step=-1``) or after (``+1``) ``expr``."""
    line = ctx.parent(expr)
    if not isinstance(line, cst.SimpleStatementLine):
        return None
    index = next(i for i, s in enumerate(line.body) if s is expr)
    if 0 <= index + step < len(line.body):
        return line.body[index + step]
    block = ctx.parent(line)
    if not isinstance(block, cst.IndentedBlock | cst.Module):
        return None
    pos = next(i for i, s in enumerate(block.body) if s is line)
    if not 0 <= pos + step < len(block.body):
        return None
    other = block.body[pos + step]
    if not isinstance(other, cst.SimpleStatementLine):
        return None
    return other.body[-1] if step < 0 else other.body[0]


def _redundant(expr: cst.Expr, ctx: FileContext) -> str | None:
    if _is_session_call(_neighbour(expr, ctx, -1) or expr, ctx, "remove"):
        return "after"
    if _is_session_call(_neighbour(expr, ctx, +1) or expr, ctx, "remove"):
        return "before"
    return None


def _releases_before(node: cst.CSTNode) -> bool:
    """Slow or long-lived work: the reason to hand the connection back first."""
    if isinstance(node, cst.Yield):
        return True
    if isinstance(node, cst.While | cst.For) and is_long_running(node):
        return True
    if isinstance(node, cst.Call):
        if slow_kind(node) is not None:
            return True
        name = dotted(node.func) or ""
        last = last_name(node.func) or ""
        if last in _STREAMING or last == "dispose":
            return True
        if "mail" in name.lower():  # mail.send, send_email, email.verify_email_address
            return True
    return False


def _following(stmt: cst.CSTNode, ctx: FileContext) -> Iterator[cst.CSTNode]:
    """Statements that may run after ``stmt`` within its function, in order; stops after a
    ``return`` / ``raise`` and does not leave the function."""
    node = stmt
    while True:
        block = ctx.parent(node)
        if not isinstance(block, cst.IndentedBlock | cst.Module):
            return
        body = list(block.body)
        pos = next(i for i, s in enumerate(body) if s is node)
        for other in body[pos + 1 :]:
            yield other
            if isinstance(other, cst.SimpleStatementLine) and any(
                isinstance(s, cst.Return | cst.Raise) for s in other.body
            ):
                return
        owner = ctx.parent(block)
        if owner is None or isinstance(owner, cst.FunctionDef | cst.ClassDef | cst.Module):
            return
        if isinstance(owner, cst.While | cst.For):
            return  # per-iteration cleanup: the loop's next round is its own unit of work
        node = owner
        while not isinstance(ctx.parent(node), cst.IndentedBlock | cst.Module):
            parent = ctx.parent(node)
            if parent is None:
                return
            node = parent
            if isinstance(node, cst.While | cst.For):
                return


def _reused_after(expr: cst.Expr, ctx: FileContext) -> int | None:
    """The node using the session again after ``expr`` (no slow work between), else None."""
    line = ctx.parent(expr)
    if not isinstance(line, cst.SimpleStatementLine):
        return None
    for stmt in _following(line, ctx):
        for node in walk(stmt):
            if _releases_before(node):
                return None
            if is_db_session(node, ctx) or is_model_query(node, ctx):
                parent = ctx.parent(node)
                if isinstance(parent, cst.Attribute) and parent.attr.value in ("remove", "close"):
                    return None  # the session ends here anyway
                return ctx.position(node).start.line
    return None


def _removing_close(
    call: cst.Call, expr: cst.Expr, ctx: FileContext, safety: FixSafety, message: str
) -> Finding:
    """The finding on ``call``, with a fix of ``safety`` that deletes its statement ``expr``
    (no fix where the statement cannot be removed on its own)."""
    edits = removal_edits(ctx, expr)
    fix = Fix(safety, edits, "remove the db.session.close() call") if edits else None
    return Finding(CODE, call, message, fix)


def check(ctx: FileContext) -> Iterator[Finding]:
    for call in ctx.nodes(cst.Call):
        if session_method(call, ctx) != "close":
            continue
        expr = ctx.parent(call)
        if not isinstance(expr, cst.Expr):
            continue
        where = _redundant(expr, ctx)
        if where is not None:
            yield _removing_close(
                call,
                expr,
                ctx,
                "safe",
                f"redundant db.session.close() right {where} db.session.remove() (which closes "
                "the session); delete it",
            )
            continue
        line = _reused_after(expr, ctx)
        if line is None:
            continue
        yield _removing_close(
            call,
            expr,
            ctx,
            "unsafe",
            f"db.session.close() in the middle of a unit of work: line {line} uses the session "
            "again (a new transaction; objects loaded before are detached); delete the close() "
            "and let teardown end the session",
        )


RULE = module_rule(
    __name__,
    triggers=(("session",), ("close",)),
    fix="safe",
)
