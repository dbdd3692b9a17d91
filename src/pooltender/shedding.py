"""Load shedding: a web request waits a short, bounded time for a connection, then gives up.

The post-mortem's ``pool_timeout = 30`` means that when the pool is exhausted every request
thread blocks for 30 s before failing: a worker full of waiting threads serves nobody, the
load balancer keeps sending, and the outage spreads. Shedding answers fast instead: a request
that cannot get a connection within ``shed_wait`` (0.5 s by default) fails with
:class:`PoolExhausted`, which the Flask integration turns into ``503 Service Unavailable``
with ``Retry-After``; the client retries against a less busy worker, and the worker stays
responsive.

The wait is per *caller*, not per pool: :func:`shed_after` sets it in a context variable for
the current request only, so a consumer or a CLI command on the same engine keeps the full
``pool_timeout``. :class:`SheddingQueuePool` reads it in the pool's get step.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, cast

from sqlalchemy import exc
from sqlalchemy.pool import ConnectionPoolEntry

from pooltender.watch import WatchedQueuePool

__all__ = [
    "PoolExhausted",
    "SheddingQueuePool",
    "begin_shed_wait",
    "current_shed_wait",
    "end_shed_wait",
    "shed_after",
]

_shed_wait: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pooltender_shed_wait", default=None
)


class PoolExhausted(exc.TimeoutError):
    """No connection could be had within the caller's shed wait.

    A subclass of SQLAlchemy's pool ``TimeoutError``, so code that already handles pool
    timeouts keeps working. ``wait`` is the shed wait that ran out; ``checked_out``,
    ``pool_size`` and ``overflow`` are the pool's state when it did (the figures HikariCP puts
    in its timeout message), so the log line says why without a second look.
    """

    code = "pooltender-shed"

    def __init__(self, wait: float, checked_out: int, pool_size: int, overflow: int) -> None:
        super().__init__(
            f"no connection within the shed wait of {wait:g} s: {checked_out} checked out, "
            f"pool_size {pool_size}, overflow in use {max(overflow, 0)}; raise "
            "POOLTENDER_SHED_WAIT to queue longer, or size the pool from `pooltender budget`"
        )
        self.wait = wait
        self.checked_out = checked_out
        self.pool_size = pool_size
        self.overflow = overflow


def current_shed_wait() -> float | None:
    """The shed wait of the current context, or None outside :func:`shed_after`."""
    return _shed_wait.get()


#: ``begin_shed_wait(seconds)``: from now on in this context, a checkout waits at most
#: ``seconds``; pass the returned token to :func:`end_shed_wait` (for hooks that cannot wrap
#: a ``with`` block). The context variable's own methods, so each is one C call and no
#: Python frame: the Flask extension calls both once per request.
begin_shed_wait: Final = _shed_wait.set
#: ``end_shed_wait(token)``: undo the matching :func:`begin_shed_wait`.
end_shed_wait: Final = _shed_wait.reset


@contextmanager
def shed_after(seconds: float | None) -> Iterator[None]:
    """Within the block, a checkout waits at most ``seconds`` (None: the pool's timeout)."""
    token = begin_shed_wait(seconds)
    try:
        yield
    finally:
        end_shed_wait(token)


class SheddingQueuePool(WatchedQueuePool):
    """A watched ``QueuePool`` whose wait is cut to the caller's shed wait, if one is set.

    ``QueuePool`` reads its timeout from ``self._timeout`` in the get step; here that
    attribute is a property answering ``min(pool_timeout, shed wait)`` for the calling
    context. A timeout under a shed wait is raised as :class:`PoolExhausted`.
    :meth:`recreate` (``engine.dispose()``) carries the configured ``pool_timeout`` over,
    never the calling context's shed wait.
    """

    _pool_timeout: float = 30.0

    @property
    def _timeout(self) -> float:
        wait = _shed_wait.get()
        pool_timeout = self._pool_timeout
        # min(wait, pool_timeout) without the call: read on every checkout
        return pool_timeout if wait is None or wait >= pool_timeout else wait

    @_timeout.setter
    def _timeout(self, value: float) -> None:
        self._pool_timeout = value

    def recreate(self) -> SheddingQueuePool:
        # QueuePool.recreate passes timeout=self._timeout, which here is the *caller's* shed
        # wait when engine.dispose() runs inside a request: the new pool must keep the
        # configured pool_timeout instead.
        new = cast(SheddingQueuePool, super().recreate())
        new._pool_timeout = self._pool_timeout
        return new

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            return super()._do_get()
        except exc.TimeoutError:
            wait = _shed_wait.get()
            if wait is None or wait >= self._pool_timeout:
                raise
            raise PoolExhausted(wait, self.checkedout(), self.size(), self.overflow()) from None
