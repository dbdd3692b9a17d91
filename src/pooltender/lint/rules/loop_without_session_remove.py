"""POL004 loop-without-session-remove: a long-running loop or consumer callback using
``db.session`` without ``db.session.remove()`` in a ``finally`` per iteration.

## What it does
Reports

* a **long-running loop** whose body uses ``db.session`` (or ``Model.query``, or their dotted
  forms ``models.db.session`` / ``models.User.query``): a ``while`` whose condition is not a
  bounded counter (``while True``, ``while 1``, ``while not stop.is_set()``,
  ``while self.running``), a ``for`` over a consumer, queue, pub/sub, ``listen()`` /
  ``poll()`` / ``consume()`` iterator, or any loop whose body sleeps (see docs/rules/README.md,
  "long-running loop");
* a function registered as a message-consumer callback in the same file (passed as
  ``callbacks=[f]``, ``on_message=f``, ``on_message_callback=f`` or ``callback=f``, or as an
  argument of ``basic_consume``/``register_callback``) that uses ``db.session``,

unless every such use is, *inside* the loop body (or the callback), either within a ``try``
whose ``finally`` calls ``db.session.remove()`` (or ``rollback()``/``close()``, which also end
the transaction and hand the connection back), or within its own
``with <app>.app_context():`` block -- whose teardown removes the session.

## Why is this bad?
Outside a request nothing tears the scoped session down. A worker that loops forever keeps one
session for its whole life: its identity map grows without bound, objects go stale, and after
an error the session stays in a failed transaction that poisons every following message.
Cleaning up per message is the post-mortem's consumer rule.

## Example
```python
def consume():
    with app.app_context():
        while True:
            message = queue.get()
            handle(message)
            db.session.commit()
```

## Use instead
```python
def consume():
    while True:
        message = queue.get()
        with app.app_context():
            handle(message)
            db.session.commit()
```
or ``try: ... finally: db.session.remove()`` inside the loop.

## Fix safety
No fix: where the per-message boundary lies is a design choice.

## Known limits
A loop that only calls helpers that use the session is not seen (the check does not follow
calls); a ``remove()`` after the loop does not count, because it runs once, not per message.
"""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from pooltender.lint.base import FileContext, Finding, module_rule
from pooltender.lint.helpers import (
    is_db_session,
    is_model_query,
    last_name,
    session_method,
    walk,
)
from pooltender.lint.scopes import is_long_running, loop_description

CODE = "POL004"
NAME = "loop-without-session-remove"
SUMMARY = "long-running loop or consumer callback uses db.session without remove() per iteration"

_CALLBACK_KEYWORDS = frozenset({"callbacks", "on_message", "on_message_callback", "callback"})
_CALLBACK_CALLS = frozenset({"basic_consume", "register_callback", "add_callback"})
_CLEANUP = frozenset({"remove", "rollback", "close"})
_CONTEXTS = frozenset({"app_context", "test_request_context", "request_context"})


def _session_uses(scope: cst.CSTNode, ctx: FileContext) -> list[cst.CSTNode]:
    uses: list[cst.CSTNode] = []
    for node in walk(scope):
        if is_db_session(node, ctx) or is_model_query(node, ctx):
            parent = ctx.parent(node)
            if isinstance(parent, cst.Attribute) and parent.attr.value in ("remove", "close"):
                continue
            uses.append(node)
    return uses


def _removes_in_finally(tr: cst.Try | cst.TryStar, ctx: FileContext) -> bool:
    if tr.finalbody is None:
        return False
    return any(
        isinstance(n, cst.Call) and session_method(n, ctx) in _CLEANUP for n in walk(tr.finalbody)
    )


def _is_context(item: cst.WithItem) -> bool:
    return isinstance(item.item, cst.Call) and last_name(item.item.func) in _CONTEXTS


def _covered(use: cst.CSTNode, boundary: cst.CSTNode, ctx: FileContext) -> bool:
    for anc in ctx.ancestors(use):
        if anc is boundary:
            return False
        if isinstance(anc, cst.Try | cst.TryStar) and _removes_in_finally(anc, ctx):
            return True
        if isinstance(anc, cst.With) and any(_is_context(i) for i in anc.items):
            return True
    return False


def _callback_names(ctx: FileContext) -> set[str]:
    names: set[str] = set()

    def add(expr: cst.BaseExpression) -> None:
        if isinstance(expr, cst.List | cst.Tuple):
            for element in expr.elements:
                add(element.value)
        else:
            name = last_name(expr)
            if name:
                names.add(name)

    for call in ctx.nodes(cst.Call):
        callee = last_name(call.func)
        for arg in call.args:
            if (arg.keyword is not None and arg.keyword.value in _CALLBACK_KEYWORDS) or (
                arg.keyword is None and callee in _CALLBACK_CALLS
            ):
                add(arg.value)
    return names


def check(ctx: FileContext) -> Iterator[Finding]:
    loops: list[cst.While | cst.For] = [*ctx.nodes(cst.While), *ctx.nodes(cst.For)]
    for loop in loops:
        if not is_long_running(loop):
            continue
        if any(
            isinstance(a, cst.While | cst.For) and is_long_running(a) for a in ctx.ancestors(loop)
        ):
            continue  # the outer loop is the one to report
        uses = _session_uses(loop.body, ctx)
        if uses and not all(_covered(u, loop, ctx) for u in uses):
            yield Finding(
                CODE,
                loop,
                f"{loop_description(loop)} uses db.session without db.session.remove() in a "
                "finally per iteration (or a `with app.app_context():` per iteration)",
            )
    source = ctx.source
    callbacks = _callback_names(ctx) if "callback" in source or "on_message" in source else set()
    if not callbacks:
        return
    for func in ctx.nodes(cst.FunctionDef):
        if func.name.value not in callbacks:
            continue
        uses = _session_uses(func.body, ctx)
        if uses and not all(_covered(u, func, ctx) for u in uses):
            yield Finding(
                CODE,
                func.name,
                f"consumer callback {func.name.value}() uses db.session without "
                "db.session.remove() in a finally (or a `with app.app_context():` per message)",
            )


RULE = module_rule(
    __name__,
    triggers=(("session", "query"), ("while", "for", "callback", "on_message", "consume")),
)
