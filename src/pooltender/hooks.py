"""Process hooks: forget inherited pooled connections in a forked child.

A pool built before ``fork()`` (gunicorn with ``preload_app``, Celery's prefork pool,
``multiprocessing``) is copied into every child; two processes then share one socket and
interleave their packets, which shows up as "Lost connection to MySQL server during query",
"Commands out of sync" or another process's result set. SQLAlchemy's remedy is
``engine.dispose(close=False)`` in the child: drop the copied pool without closing the
parent's sockets, so the child opens its own.

gunicorn, in ``gunicorn.conf.py``::

    from pooltender.hooks import gunicorn_post_fork as post_fork

Celery (prefork), in the worker module::

    from celery.signals import worker_process_init
    worker_process_init.connect(lambda **_: dispose_inherited(), weak=False)

Anything else: call :func:`dispose_inherited` first thing in the child.

The watch's own state needs no hook: :mod:`pooltender.watch` and :mod:`pooltender.liveness`
register ``os.register_at_fork(after_in_child=...)``, so a forked child starts with fresh
locks, counts from zero and a leak sweeper of its own (started on its first checkout).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import Engine

__all__ = [
    "dispose_inherited",
    "gunicorn_post_fork",
    "register_engine",
]

log = logging.getLogger("pooltender.hooks")

_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def register_engine(engine: Engine) -> Engine:
    """Remember ``engine`` so :func:`gunicorn_post_fork` disposes it in each worker."""
    _ENGINES.add(engine)
    return engine


def dispose_inherited(engines: Iterable[Engine] | None = None) -> int:
    """``dispose(close=False)`` each engine (default: the registered ones); return how many."""
    targets = list(_ENGINES if engines is None else engines)
    for engine in targets:
        engine.dispose(close=False)
    return len(targets)


def gunicorn_post_fork(server: Any, worker: Any) -> None:
    """gunicorn ``post_fork`` hook: dispose every registered engine in the new worker.

    Engines created by the :class:`~pooltender.flask.Pooltender` extension are registered
    automatically; register others with :func:`register_engine`.
    """
    count = dispose_inherited()
    log.debug("worker %s: disposed %d inherited engine(s)", getattr(worker, "pid", "?"), count)
