"""Units of work: who owns a checked-out connection.

A second connection "in one unit of work" (the post-mortem's ``Session(bind=db.engine)``
beside ``db.session``) and a connection "left out when the request ended" only mean
something if the unit is the request, the message or the task, not the OS thread: servers
and consumers reuse threads, so a thread-keyed owner blames every later request on a
reused thread for one request's leak. The owner of a checkout, in order:

1. the unit of work begun in this context with :func:`begin_unit` (the Flask extension
   begins one per request, :func:`pooltender.session.unit_of_work` one per message,
   :func:`pooltender.watch.unit_scope` one per block);
2. else the running asyncio task;
3. else the thread (``threading.get_ident()``, which gevent / eventlet monkeypatching turns
   into the greenlet).

The unit lives in a :class:`contextvars.ContextVar`, so reading it on the checkout path is
one ``ContextVar.get`` (asyncio tasks and ``copy_context`` runs inherit it, threads do not).
Ending a unit is :func:`pooltender.watch.end_unit_of_work`: connections its unit still
holds are reported once and then belong to no one.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Hashable
from typing import Final

__all__ = [
    "NOBODY",
    "ScopedUnit",
    "UnitOfWork",
    "begin_unit",
    "current_owner",
    "current_unit",
    "enter_unit",
    "leave_unit",
    "reset_unit",
]


class UnitOfWork:
    """One unit of work (a request, a message, a task scope). Compared by identity: two
    units are never the same owner, whatever their names."""

    __slots__ = ("__weakref__", "name")

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<unit of work {self.name}>"


class ScopedUnit(UnitOfWork):
    """A unit of work begun in one place and ended in another (the Flask extension begins a
    request's unit in its WSGI wrapper and ends it in its app-context teardown): it carries
    the context-variable tokens its end resets, so the two halves share no other storage
    (no ``flask.g``, no lookup). ``scope`` is whoever began it (only that one ends it);
    ``shed_token`` is the token of a shed wait begun with it, or None."""

    __slots__ = ("scope", "shed_token", "token")

    def __init__(self, name: str, scope: object) -> None:
        self.name = name
        self.scope = scope
        self.shed_token: contextvars.Token[float | None] | None = None
        self.token = _unit.set(self)


class _Nobody:
    """The owner of a connection whose unit ended with it still checked out."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<nobody: its unit of work ended>"


#: Owner of connections disowned at the end of their unit (never held by anyone).
NOBODY: Final[Hashable] = _Nobody()

_unit: contextvars.ContextVar[UnitOfWork | None] = contextvars.ContextVar(
    "pooltender_unit_of_work", default=None
)
_unit_get = _unit.get
#: ``enter_unit(unit)`` makes ``unit`` the current one and returns the token for
#: ``leave_unit(token)`` (the context variable's own methods: one C call each, for callers on
#: a per-request path that keep the token themselves).
enter_unit: Final = _unit.set
leave_unit: Final = _unit.reset
_running_loop = asyncio._get_running_loop  # None outside a loop; never raises (unlike
# asyncio.get_running_loop / current_task), so the checkout path pays no exception
_current_task = asyncio.current_task
_thread = threading.get_ident


#: ``current_unit()``: the unit of work begun in this context, or None. (The context
#: variable's own ``get``: one C call, no Python frame, for the per-request paths.)
current_unit: Final[Callable[[], UnitOfWork | None]] = _unit_get


def current_owner() -> Hashable:
    """Who a checkout made now belongs to: the unit, else the asyncio task, else the thread."""
    unit = _unit_get()
    if unit is not None:
        return unit
    if _running_loop() is not None:
        task = _current_task()
        if task is not None:
            return task
    return _thread()


def begin_unit(name: str) -> contextvars.Token[UnitOfWork | None]:
    """Begin a unit of work named ``name`` in this context; pass the token to
    :func:`pooltender.watch.end_unit_of_work` (or :func:`reset_unit`) when it ends."""
    return _unit.set(UnitOfWork(name))


def reset_unit(token: contextvars.Token[UnitOfWork | None]) -> UnitOfWork | None:
    """End the unit begun with ``token`` in this context; return it (None if there was
    none). Only the context variable: use :func:`pooltender.watch.end_unit_of_work` to also
    report and disown what it still holds."""
    unit = _unit_get()
    _unit.reset(token)
    return unit
