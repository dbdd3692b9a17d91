"""What pooltender applies when a connection proxy sits between the app and the server.

Set ``POOLTENDER_PROXY`` (a :class:`~pooltender.settings.PoolSettings` field) to say what is in
front of the database:

``none``                   (default) the app talks to the server itself
``pgbouncer-transaction``  PgBouncer with ``pool_mode=transaction``: a server connection is lent
                           to a client for one transaction, then to another client
``pgbouncer-session``      PgBouncer with ``pool_mode=session`` (PgBouncer's default): a client
                           keeps its server connection while connected; nothing changes here
``proxysql``               ProxySQL (MySQL / MariaDB); it multiplexes on its own and disables
                           multiplexing for a connection that uses session state (see
                           :mod:`pooltender.proxysql`)

Transaction pooling means consecutive transactions of one client connection may run on
different server connections, so nothing may outlive a transaction on the server side
(PgBouncer's "features" page, https://www.pgbouncer.org/features.html, lists what breaks:
``SET``/``RESET``, ``LISTEN``, ``WITH HOLD`` cursors, ``PREPARE``/``DEALLOCATE``,
``PRESERVE``/``DELETE ROWS`` temporary tables, ``LOAD``, session-level advisory locks). For
``pgbouncer-transaction`` pooltender therefore:

* turns psycopg 3's automatic server-side prepared statements off (``prepare_threshold=None``
  in ``connect_args``). Debian's PgBouncer 1.18 has no protocol-level prepared statement
  support (added in 1.21, ``max_prepared_statements``); with psycopg's default threshold of 5
  the sixth execution of a query prepares ``_pg3_0`` on whichever server connection serves it,
  and the next client doing the same there gets ``prepared statement "_pg3_0" already
  exists``: an aborted transaction, and under load connections stuck ``idle in transaction
  (aborted)`` until the server pool is full (psycopg's docs, "Using psycopg with PgBouncer",
  and its issue tracker). asyncpg's statement cache is turned off the same way;
  psycopg2 never prepares on its own;
* offers :func:`install_session_state_guard`, which refuses the statements listed above
  before they reach the proxy, naming the statement (the Flask extension or the application
  installs it on the engine);
* assumes nothing of a reset on return: SQLAlchemy's ``reset_on_return="rollback"`` still
  ends the client's transaction (through PgBouncer a ``ROLLBACK`` outside a transaction is
  a no-op), and PgBouncer does not run ``server_reset_query`` in transaction mode
  (``server_reset_query_always=0``), so session state must never be created in the first
  place rather than cleaned up afterwards;
* keeps the liveness ping as configured, knowing what it tests: through PgBouncer
  ``SELECT 1`` is a transaction of its own, so it reaches a *server* connection, and when the
  server is down PgBouncer queues it for up to ``query_wait_timeout`` (120 s by default)
  instead of failing it. Give PgBouncer a ``query_wait_timeout`` below the app's
  ``POOLTENDER_POOL_TIMEOUT`` and prefer the idle-window ping (``POOLTENDER_PING_AFTER_IDLE``)
  to a ping on every checkout, which would double the server transactions of short requests.

:func:`read_pgbouncer_pools` reads PgBouncer's ``SHOW POOLS`` from its admin console (simple
query protocol only, so it uses psycopg's low-level ``PGconn.exec_``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Engine

__all__ = [
    "PROXIES",
    "PgBouncerPool",
    "ProxyKind",
    "SessionStateError",
    "install_session_state_guard",
    "is_transaction_pooling",
    "proxy_engine_options",
    "read_pgbouncer_pools",
    "session_state_statement",
]

ProxyKind = Literal["none", "pgbouncer-transaction", "pgbouncer-session", "proxysql"]
"""The values of ``POOLTENDER_PROXY`` (read by :class:`pooltender.settings.PoolSettings`)."""

PROXIES: Final[tuple[str, ...]] = get_args(ProxyKind)

TRANSACTION_POOLING = frozenset({"pgbouncer-transaction"})


def is_transaction_pooling(proxy: str) -> bool:
    """True when consecutive transactions may run on different server connections."""
    return proxy in TRANSACTION_POOLING


def proxy_engine_options(proxy: str, url: str | URL | None) -> dict[str, Any]:
    """``create_engine`` options a proxy needs for the driver of ``url`` (merged into
    :meth:`PoolSettings.engine_options`); empty when nothing is needed."""
    if not is_transaction_pooling(proxy) or url is None:
        return {}
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return {}
    driver = parsed.get_driver_name()
    if driver == "psycopg":
        return {"connect_args": {"prepare_threshold": None}}
    if driver == "asyncpg":
        return {"connect_args": {"statement_cache_size": 0, "prepared_statement_cache_size": 0}}
    return {}


# --------------------------------------------------------------------- session state

_SESSION_STATE = re.compile(
    r"""^\s*(?:
        (?P<set>SET)\s+(?!LOCAL\b|TRANSACTION\b|CONSTRAINTS\b)
      | (?P<reset>RESET)\b
      | (?P<prepare>PREPARE)\s
      | (?P<deallocate>DEALLOCATE)\b
      | (?P<listen>LISTEN|UNLISTEN)\b
      | (?P<load>LOAD)\s
      | (?P<temp>CREATE\s+(?:GLOBAL\s+|LOCAL\s+)?TEMP(?:ORARY)?\s+TABLE)\b
        (?!.*\bON\s+COMMIT\s+DROP\b)
      | (?P<hold>DECLARE)\b(?=.*\bWITH\s+HOLD\b)
    )
    | (?P<advisory>\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\()
    """,
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)

_WHY = {
    "set": "SET outlives the transaction (use SET LOCAL inside the transaction)",
    "reset": "RESET changes session state",
    "prepare": "a prepared statement lives on one server connection",
    "deallocate": "a prepared statement lives on one server connection",
    "listen": "a LISTEN registration lives on one server connection",
    "load": "LOAD changes the server connection for its whole life",
    "temp": "a temporary table outlives the transaction (use ON COMMIT DROP)",
    "hold": "a WITH HOLD cursor outlives the transaction",
    "advisory": "a session-level advisory lock outlives the transaction "
    "(use pg_advisory_xact_lock)",
}


class SessionStateError(RuntimeError):
    """A statement that creates session state was sent through a transaction-pooling proxy;
    on the next transaction the state would be on a different client's connection."""

    code = "pooltender-session-state"

    def __init__(self, statement: str, why: str) -> None:
        self.statement = statement
        first = " ".join(statement.split())[:80]
        super().__init__(
            f"[{self.code}] refused {first!r} behind a transaction-mode proxy: {why}; "
            "connect directly (not through the proxy) for work that needs a session"
        )


def session_state_statement(statement: str) -> str | None:
    """Why ``statement`` would create session state behind a transaction-pooling proxy, or
    ``None`` when it does not."""
    match = _SESSION_STATE.search(statement)
    if match is None or match.lastgroup is None:
        return None
    return _WHY[match.lastgroup]


def _refuse_session_state(
    _conn: Any, _cursor: Any, statement: str, _params: Any, _ctx: Any, _many: bool
) -> None:
    why = session_state_statement(statement)
    if why is not None:
        raise SessionStateError(statement, why)


def install_session_state_guard(engine: Engine) -> None:
    """Refuse statements that create session state on ``engine`` (raise
    :class:`SessionStateError` before they are sent). Install it on engines that reach the
    server through a transaction-pooling proxy; the Flask extension does when
    ``POOLTENDER_PROXY=pgbouncer-transaction``. Installing it twice is one guard."""
    from sqlalchemy import event

    if not event.contains(engine, "before_cursor_execute", _refuse_session_state):
        event.listen(engine, "before_cursor_execute", _refuse_session_state)


# ------------------------------------------------------------------------ SHOW POOLS


@dataclass(frozen=True, kw_only=True)
class PgBouncerPool:
    """One row of PgBouncer's ``SHOW POOLS``: one (database, user) pair.

    ``cl_active``: client connections linked to a server connection or idle with nothing
    waiting; ``cl_waiting``: clients that sent a query and wait for a server connection;
    ``sv_active``: server connections linked to a client; ``sv_idle``: ready for use;
    ``sv_used``: idle longer than ``server_check_delay`` (to be checked before reuse);
    ``maxwait``: seconds the oldest waiting client has waited.
    """

    database: str
    user: str
    cl_active: int
    cl_waiting: int
    sv_active: int
    sv_idle: int
    sv_used: int
    maxwait: float
    pool_mode: str

    @property
    def clients(self) -> int:
        return self.cl_active + self.cl_waiting

    @property
    def servers(self) -> int:
        return self.sv_active + self.sv_idle + self.sv_used

    @classmethod
    def from_row(cls, row: Mapping[str, str | None]) -> PgBouncerPool:
        def number(name: str) -> int:
            return int(row.get(name) or 0)

        return cls(
            database=str(row.get("database") or ""),
            user=str(row.get("user") or ""),
            cl_active=number("cl_active"),
            cl_waiting=number("cl_waiting"),
            sv_active=number("sv_active"),
            sv_idle=number("sv_idle"),
            sv_used=number("sv_used"),
            maxwait=number("maxwait") + number("maxwait_us") / 1e6,
            pool_mode=str(row.get("pool_mode") or ""),
        )


def read_pgbouncer_pools(admin_dsn: str) -> tuple[PgBouncerPool, ...]:
    """``SHOW POOLS`` from PgBouncer's admin console (``dbname=pgbouncer``, a user listed in
    ``admin_users`` or ``stats_users``), without the console's own ``pgbouncer`` row.

    ``admin_dsn`` is a libpq connection string or ``postgresql://`` URL (no SQLAlchemy
    dialect prefix). The console speaks only the simple query protocol, so the query is sent
    with libpq's ``PQexec``.
    """
    import psycopg

    dsn = admin_dsn.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        result = conn.pgconn.exec_(b"SHOW POOLS")
        if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
            message = (result.error_message or b"").decode(errors="replace").strip()
            raise RuntimeError(f"SHOW POOLS failed: {message}")
        names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
        rows = []
        for r in range(result.ntuples):
            values = [result.get_value(r, i) for i in range(result.nfields)]
            row = {
                n: (v.decode() if v is not None else None)
                for n, v in zip(names, values, strict=True)
            }
            if row.get("database") != "pgbouncer":
                rows.append(PgBouncerPool.from_row(row))
    return tuple(rows)
