"""Cheaper liveness checks: ping a pooled connection only after it sat idle for a while.

``pool_pre_ping=True`` (the post-mortem's setting) costs one round trip on *every* checkout.
HikariCP instead skips validation when the connection was used within the last 500 ms
(``aliveBypassWindowMs``): a connection that was fine a moment ago almost certainly still is,
and the dangerous cases -- the server closed it after ``wait_timeout``, a restart, a
``KILL`` by an operator, a firewall dropping idle flows -- all need idle time to happen.

:func:`install_idle_ping` does the same for SQLAlchemy, with the documented pessimistic
disconnect recipe: a ``checkin`` listener stamps the connection record with the time it came
back; a ``checkout`` listener pings the connection only if it sat idle longer than
``after_idle`` seconds, and on a failed ping raises ``sqlalchemy.exc.DisconnectionError``, on
which the pool invalidates that connection and retries the checkout with a fresh one (up to
its built-in attempts). The caller never sees the dead connection.

The ping is the dialect's own ``do_ping`` -- the cheapest round trip each driver offers and
the same one ``pool_pre_ping`` uses: ``ping()`` for mysqlclient and PyMySQL (never with
reconnection: mysqlclient's ``ping()`` without argument leaves ``MYSQL_OPT_RECONNECT`` off,
its default, and SQLAlchemy passes ``False`` to PyMySQL, so a dead connection is reported,
not silently replaced with one that lost its session state), ``SELECT 1`` elsewhere.

**Hazard (the same as HikariCP's):** a connection that dies *within* the window (killed a
moment after it was returned) is handed out unchecked; its first statement fails with a
disconnect error. SQLAlchemy then raises ``DBAPIError`` with ``connection_invalidated=True``
and invalidates the whole pool, so the *next* checkout gets a fresh connection -- but that
one statement fails. Only ``pool_pre_ping`` on every checkout (``after_idle = 0`` in
``PoolSettings``) closes that gap, for a round trip per checkout. ``tests/pooltender/
test_liveness.py`` demonstrates both behaviours on MariaDB and PostgreSQL.

A connection that was just opened is not pinged (its record has no check-in stamp yet).

**A hung server** (frozen, black-holed): the ping blocks until the driver's read timeout
(``POOLTENDER_READ_TIMEOUT``). A ping that failed after :data:`HUNG_PING_SECONDS` or more
fails the checkout with the driver's error instead of reconnecting, so a request waits one
bound, not the read timeout plus the connect timeout (tests/test_faults_freeze.py).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import event, exc

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.engine.interfaces import DBAPIConnection, Dialect
    from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

__all__ = ["IdlePing", "IdlePingStats", "idle_ping_of", "install_idle_ping"]

#: ``record.info`` key holding ``time.monotonic()`` of the connection's last check-in.
LAST_CHECKIN_KEY: Final = "pooltender.last_checkin"
#: A failed ping that took this long timed out on a hung server rather than hitting a dead
#: socket (which fails at once): the checkout fails instead of reconnecting.
HUNG_PING_SECONDS: Final = 1.0


@dataclass(frozen=True)
class IdlePingStats:
    """How often the idle ping ran and failed (failures = dead connections discarded)."""

    after_idle: float
    pings: int
    failures: int


class IdlePing:
    """The installed idle-ping listeners of one engine. Build with :func:`install_idle_ping`."""

    def __init__(self, engine: Engine, after_idle: float) -> None:
        self.after_idle = after_idle
        self._engine_ref = weakref.ref(engine)
        self._dialect: Dialect = engine.dialect
        self._lock = threading.Lock()
        self._pings = 0
        self._failures = 0

    def _attach(self, engine: Engine) -> None:
        # insert=True: run before other checkout listeners (e.g. the watch), so they see a
        # connection that is known to be alive.
        event.listen(engine, "checkout", self._on_checkout, insert=True)
        event.listen(engine, "checkin", self._on_checkin)

    def remove(self) -> None:
        """Uninstall the listeners (for tests and reconfiguration)."""
        engine = self._engine_ref()
        if engine is None:
            return
        event.remove(engine, "checkout", self._on_checkout)
        event.remove(engine, "checkin", self._on_checkin)
        with _REGISTRY_LOCK:
            if _PINGS.get(engine) is self:
                del _PINGS[engine]

    def stats(self) -> IdlePingStats:
        with self._lock:
            return IdlePingStats(self.after_idle, self._pings, self._failures)

    def _on_checkin(self, dbapi_connection: DBAPIConnection | None, record: Any) -> None:
        record.info[LAST_CHECKIN_KEY] = time.monotonic()

    def _on_checkout(
        self,
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        proxy: PoolProxiedConnection,
    ) -> None:
        last = record.info.get(LAST_CHECKIN_KEY)
        if last is None or time.monotonic() - last <= self.after_idle:
            return  # just opened, or used within the window: skip the round trip
        started = time.monotonic()
        try:
            alive = self._dialect.do_ping(dbapi_connection)
        except Exception as err:
            self._count(failed=True)
            dbapi_error = self._dialect.loaded_dbapi.Error
            if time.monotonic() - started >= HUNG_PING_SECONDS and isinstance(err, dbapi_error):
                # The ping waited out the driver's read timeout: the server is hung (frozen,
                # black-holed), not just this connection dead. A reconnect would wait the
                # connect timeout on top, doubling the bound; fail this checkout now (the
                # pool discards the connection) with the driver's error, which
                # pooltender.failures classifies as unavailable.
                raise exc.DBAPIError.instance(
                    None, None, err, dbapi_error, connection_invalidated=True, dialect=self._dialect
                ) from err
            # any other failure of the ping of an idle connection means it is unusable; the
            # pool replaces it (a server that is really down then fails the *connect*, loudly)
            raise exc.DisconnectionError(
                f"idle connection failed its liveness ping after "
                f"{time.monotonic() - last:.1f} s idle: {type(err).__name__}: {err}"
            ) from err
        if not alive:
            self._count(failed=True)
            raise exc.DisconnectionError("idle connection failed its liveness ping")
        self._count(failed=False)
        # a successful ping counts as use: another checkout right after skips the ping
        record.info[LAST_CHECKIN_KEY] = time.monotonic()

    def _count(self, *, failed: bool) -> None:
        with self._lock:
            self._pings += 1
            self._failures += failed


_PINGS: weakref.WeakKeyDictionary[Engine, IdlePing] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """In a forked child: new locks (a parent thread may have held one at the fork) and the
    ping counts from zero (they are the parent's)."""
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    for ping in list(_PINGS.values()):
        ping._lock = threading.Lock()
        ping._pings = ping._failures = 0


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def install_idle_ping(engine: Engine, after_idle: float) -> IdlePing:
    """Ping a connection at checkout only if it sat idle longer than ``after_idle`` seconds.

    Idempotent per engine: a second call returns the installed :class:`IdlePing` with its
    window set to ``after_idle``. ``after_idle`` must be > 0 (for a ping on every checkout use
    SQLAlchemy's ``pool_pre_ping=True``), and the engine must not already pre-ping (that would
    ping twice); both are refused with a ``ValueError`` naming the fix.
    """
    if not after_idle > 0:
        raise ValueError(
            f"after_idle must be > 0 seconds, got {after_idle!r}; to ping on every checkout "
            "create the engine with pool_pre_ping=True instead"
        )
    if getattr(engine.pool, "_pre_ping", False):
        raise ValueError(
            "the engine already pings every checkout (pool_pre_ping=True); create it with "
            "pool_pre_ping=False to use the idle-window ping instead"
        )
    with _REGISTRY_LOCK:
        ping = _PINGS.get(engine)
        if ping is None:
            ping = IdlePing(engine, after_idle)
            ping._attach(engine)
            _PINGS[engine] = ping
        else:
            ping.after_idle = after_idle
    return ping


def idle_ping_of(engine: Engine) -> IdlePing | None:
    """The idle ping installed on ``engine``, or None."""
    return _PINGS.get(engine)
