"""The server inspector: one read-only, typed snapshot of who holds a database's connections.

:func:`take_snapshot` reads, over one short connection and with ``SELECT`` / ``SHOW`` only:

* **MySQL / MariaDB** -- ``information_schema.PROCESSLIST`` (id, user, host, db, command,
  time, state, info; MariaDB's ``TIME_MS`` when present), ``information_schema.INNODB_TRX``
  (which threads hold an open InnoDB transaction and since when), ``SHOW GLOBAL STATUS``
  (Threads_connected, Threads_running, Max_used_connections,
  Connection_errors_max_connections, Aborted_connects, ...) and ``SHOW GLOBAL VARIABLES``
  (max_connections, wait_timeout, interactive_timeout and the per-session buffers).
* **PostgreSQL** -- ``pg_stat_activity`` (pid, role, client address, database, state,
  backend type, state_change, xact_start, query, wait event) and ``pg_settings``
  (max_connections, superuser_reserved_connections, idle_in_transaction_session_timeout, ...).

The server's limits come from :func:`pooltender.server.limits.read_server_limits` (one definition
of what "reserved" means per server).

**State.** Every connection gets a normalized ``state``: ``"idle"`` (MySQL ``Sleep`` with no
open InnoDB transaction; PostgreSQL ``idle``), ``"active"`` (running a statement),
``"idle in transaction"`` (MySQL ``Sleep`` *with* an ``INNODB_TRX`` row; PostgreSQL's own
state), ``"idle in transaction (aborted)"`` (PostgreSQL), ``"system"`` (server threads), or
the raw value otherwise (``"connecting"``, ``"killed"``, ``"unknown"``). On MySQL a
transaction is only visible once it touched InnoDB: ``BEGIN; SELECT 1`` holds no InnoDB
transaction (and no locks or undo), so it shows as ``idle``.

**Least privilege.** Nothing here needs more than a login. Without ``PROCESS`` (MySQL) an
account sees only its own threads and cannot read ``INNODB_TRX``; without superuser or
``pg_read_all_stats`` (PostgreSQL) other roles' sessions show no state or query. The
snapshot still comes back, and :attr:`ServerSnapshot.unreadable` says which figure is
missing and why.

**Memory per connection** (MySQL only) is an *upper-bound estimate* of what one busy session
may allocate for its own buffers: ``sort_buffer_size + join_buffer_size + read_buffer_size +
read_rnd_buffer_size + thread_stack + net_buffer_length + binlog_cache_size``. Buffers are
allocated on demand, so an idle connection uses far less; a complex query may allocate some
buffers more than once. On PostgreSQL it is ``None``: ``work_mem`` applies per sort / hash
node of a plan, not per connection, so no honest per-connection figure exists.

URLs are only ever shown with the password masked, in the snapshot and in errors.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError

from pooltender.server._sql import name_value_pairs
from pooltender.server.limits import ServerLimits, read_server_limits
from pooltender.text import first_line, mask_url, scrub

__all__ = [
    "ACTIVE",
    "CLIENT",
    "CONNECT_TIMEOUT",
    "IDLE",
    "IDLE_IN_TRANSACTION",
    "IDLE_IN_TRANSACTION_ABORTED",
    "MYSQL_SESSION_BUFFERS",
    "MYSQL_STATUS",
    "MYSQL_VARIABLES",
    "PG_SETTINGS",
    "QUERY_CHARS",
    "REPLICATION",
    "SYSTEM",
    "SYSTEM_KIND",
    "InspectionError",
    "ServerConnection",
    "ServerSnapshot",
    "connect_for_inspection",
    "inspect_url",
    "mask_url",
    "scrub",
    "take_snapshot",
]

QUERY_CHARS = 200
"""Queries are truncated to this many characters."""

CONNECT_TIMEOUT = 5
"""Seconds :func:`connect_for_inspection` waits for the server to answer."""

IDLE = "idle"
ACTIVE = "active"
IDLE_IN_TRANSACTION = "idle in transaction"
IDLE_IN_TRANSACTION_ABORTED = "idle in transaction (aborted)"
SYSTEM = "system"

CLIENT, SYSTEM_KIND, REPLICATION = "client", "system", "replication"

MYSQL_STATUS = (
    "Threads_connected",
    "Threads_running",
    "Threads_cached",
    "Max_used_connections",
    "Connection_errors_max_connections",
    "Aborted_connects",
    "Aborted_clients",
    "Connections",
    "Uptime",
)
MYSQL_SESSION_BUFFERS = (
    "sort_buffer_size",
    "join_buffer_size",
    "read_buffer_size",
    "read_rnd_buffer_size",
    "thread_stack",
    "net_buffer_length",
    "binlog_cache_size",
)
MYSQL_VARIABLES = (
    "max_connections",
    "max_user_connections",
    "wait_timeout",
    "interactive_timeout",
    "extra_max_connections",
    "thread_handling",
    *MYSQL_SESSION_BUFFERS,
)
PG_SETTINGS = (
    "max_connections",
    "superuser_reserved_connections",
    "reserved_connections",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "statement_timeout",
    "work_mem",
)

_MYSQL_REPLICATION_COMMANDS = frozenset(
    {"Binlog Dump", "Binlog Dump GTID", "Slave_IO", "Slave_SQL", "Slave_worker"}
)
_MYSQL_SYSTEM_USERS = frozenset({"system user", "event_scheduler"})
_MYSQL_BUSY_COMMANDS = frozenset({"Query", "Execute", "Fetch", "Prepare", "Field List"})


class InspectionError(RuntimeError):
    """The server could not be reached or read. The message names the (masked) URL and the
    driver's first line of error, never a password. ``code`` is stable across releases."""

    code: ClassVar[str] = "pooltender-inspect"

    def __init__(self, message: str, *, url: str | None = None) -> None:
        self.url = url
        super().__init__(f"[{self.code}] {message}")


@dataclass(frozen=True)
class ServerConnection:
    """One connection (MySQL thread / PostgreSQL backend) as the server sees it."""

    id: int
    user: str | None
    host: str | None
    database: str | None
    state: str
    command: str | None
    seconds_in_state: float
    transaction_age: float | None
    query: str | None
    wait_event: str | None
    is_self: bool
    kind: str

    @property
    def is_idle(self) -> bool:
        """Idle with no open transaction: a pooled connection nobody is using."""
        return self.kind == CLIENT and self.state == IDLE

    @property
    def is_idle_in_transaction(self) -> bool:
        """Idle while holding a transaction open (locks, snapshot, undo)."""
        return self.kind == CLIENT and self.state in (
            IDLE_IN_TRANSACTION,
            IDLE_IN_TRANSACTION_ABORTED,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _count(values: Iterable[str]) -> dict[str, int]:
    counts = Counter(values)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


@dataclass(frozen=True)
class ServerSnapshot:
    """A database server's connections, counters and settings at one moment.

    Groupings (:meth:`by_user` and friends) count *client* connections only (not server
    threads or replication), largest first; a missing user / host / database is counted
    under ``"(none)"``.
    """

    backend: str
    server_version: str
    taken_at: float
    url: str
    max_connections: int | None
    reserved_connections: int
    connections: tuple[ServerConnection, ...]
    status: Mapping[str, float]
    variables: Mapping[str, str]
    memory_per_connection_bytes: int | None
    unreadable: Mapping[str, str]
    limits: ServerLimits | None = None
    current_user: str | None = None
    privileged: bool | None = None
    """The inspecting account has SUPER / CONNECTION ADMIN (MySQL) or is a superuser
    (PostgreSQL); ``None`` when that could not be read."""
    privilege_evidence: str | None = None
    self_id: int | None = None
    privileged_users: frozenset[str] | None = None
    """Account names with SUPER / CONNECTION ADMIN (MySQL, from USER_PRIVILEGES: without
    privileges an account sees only its own) or rolsuper (PostgreSQL); ``None`` if unread."""
    notes: tuple[str, ...] = field(default=())

    # ------------------------------------------------------------------ views

    def only_users(self, users: Iterable[str]) -> ServerSnapshot:
        """This snapshot with only the connections of ``users`` (counters unchanged)."""
        wanted = frozenset(users)
        return replace(self, connections=tuple(c for c in self.connections if c.user in wanted))

    def client_connections(self) -> tuple[ServerConnection, ...]:
        """Connections from clients (not server threads, not replication)."""
        return tuple(c for c in self.connections if c.kind == CLIENT)

    @property
    def client_connection_limit(self) -> int | None:
        """Connections ordinary clients may open (see :class:`ServerLimits`)."""
        return None if self.limits is None else self.limits.client_connection_limit

    @property
    def connected(self) -> int:
        """Connections counted against max_connections: the server's own figure where it has
        one (MySQL Threads_connected), else the client and replication connections seen."""
        figure = self.status.get("Threads_connected")
        if figure is not None:
            return int(figure)
        return sum(1 for c in self.connections if c.kind != SYSTEM_KIND)

    @property
    def usage(self) -> float | None:
        """``connected / max_connections``; ``None`` when there is no limit."""
        if not self.max_connections:
            return None
        return self.connected / self.max_connections

    def by_user(self) -> dict[str, int]:
        return _count(c.user or "(none)" for c in self.client_connections())

    def by_host(self) -> dict[str, int]:
        return _count(c.host or "(none)" for c in self.client_connections())

    def by_database(self) -> dict[str, int]:
        return _count(c.database or "(none)" for c in self.client_connections())

    def by_state(self) -> dict[str, int]:
        return _count(c.state for c in self.client_connections())

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: every field, the groupings, and the derived figures."""
        return {
            "backend": self.backend,
            "server_version": self.server_version,
            "taken_at": self.taken_at,
            "url": self.url,
            "max_connections": self.max_connections,
            "reserved_connections": self.reserved_connections,
            "client_connection_limit": self.client_connection_limit,
            "connected": self.connected,
            "usage": self.usage,
            "status": dict(self.status),
            "variables": dict(self.variables),
            "memory_per_connection_bytes": self.memory_per_connection_bytes,
            "unreadable": dict(self.unreadable),
            "current_user": self.current_user,
            "privileged": self.privileged,
            "privilege_evidence": self.privilege_evidence,
            "self_id": self.self_id,
            "privileged_users": None
            if self.privileged_users is None
            else sorted(self.privileged_users),
            "notes": list(self.notes),
            "by_user": self.by_user(),
            "by_host": self.by_host(),
            "by_database": self.by_database(),
            "by_state": self.by_state(),
            "connections": [c.to_json() for c in self.connections],
        }


def _connect_args(url: str) -> dict[str, Any]:
    driver = make_url(url).get_driver_name()
    if driver in ("mysqldb", "pymysql", "mariadbconnector", "mysqlconnector"):
        return {"connect_timeout": CONNECT_TIMEOUT}
    if driver in ("psycopg", "psycopg2"):
        return {"connect_timeout": CONNECT_TIMEOUT, "application_name": "pooltender-inspect"}
    return {}


def connect_for_inspection(url: str) -> Engine:
    """An engine for inspection: no pool (each use opens and closes one connection), a short
    connect timeout, and errors that never show the password. Dispose it when done."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    try:
        return create_engine(url, poolclass=NullPool, connect_args=_connect_args(url))
    except Exception as exc:  # bad URL, unknown or missing driver
        raise InspectionError(
            f"cannot use {mask_url(url)}: {scrub(first_line(exc), url)}", url=mask_url(url)
        ) from None


def inspect_url(url: str) -> ServerSnapshot:
    """Connect to ``url``, take one snapshot, disconnect; errors are masked."""
    engine = connect_for_inspection(url)
    try:
        return take_snapshot(engine, url=url)
    finally:
        engine.dispose()


# ---------------------------------------------------------------------- snapshot


def take_snapshot(bind: Engine | Connection, *, url: str | None = None) -> ServerSnapshot:
    """Read the server's connections, counters and settings (read-only; see module doc).

    With an :class:`Engine` one connection is opened and closed; a :class:`Connection` is
    used as is. ``url`` (shown masked) defaults to the engine's URL. Raises
    :class:`InspectionError` when the server cannot be reached or read.
    """
    engine = bind if isinstance(bind, Engine) else bind.engine
    raw_url = url if url is not None else engine.url.render_as_string(hide_password=False)
    shown = mask_url(raw_url)
    try:
        if isinstance(bind, Engine):
            with bind.connect() as connection:
                snapshot = _take(connection, shown)
                connection.rollback()
                return snapshot
        return _take(bind, shown)
    except InspectionError:
        raise
    except (DBAPIError, OSError) as exc:
        raise InspectionError(
            f"cannot inspect {shown}: {scrub(first_line(exc), raw_url)}", url=shown
        ) from None


def _take(connection: Connection, shown_url: str) -> ServerSnapshot:
    name = connection.dialect.name
    if name in ("mysql", "mariadb"):
        return _take_mysql(connection, shown_url)
    if name == "postgresql":
        return _take_postgresql(connection, shown_url)
    raise InspectionError(f"pooltender cannot inspect a {name!r} server ({shown_url})")


def _snapshot(limits: ServerLimits, shown_url: str, **observed: Any) -> ServerSnapshot:
    """A snapshot taken now, of the server ``limits`` describe: what every backend's snapshot
    takes from the limits, plus what was ``observed``."""
    return ServerSnapshot(
        backend=limits.backend,
        server_version=limits.server_version,
        taken_at=time.time(),
        url=shown_url,
        max_connections=limits.max_connections,
        reserved_connections=limits.reserved_connections,
        limits=limits,
        **observed,
    )


def _floats(values: Mapping[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def _strip_port(host: str | None) -> str | None:
    """``'10.0.0.5:51234'`` -> ``'10.0.0.5'``; ``'localhost'`` stays; ``''`` -> ``None``."""
    if not host:
        return None
    head, sep, tail = host.rpartition(":")
    if sep and head and tail.isdigit():
        return head.strip("[]")
    return host


def _truncate(query: object) -> str | None:
    if query is None:
        return None
    shown = query.decode("utf-8", "replace") if isinstance(query, bytes) else str(query)
    if not shown:
        return None
    return shown if len(shown) <= QUERY_CHARS else shown[: QUERY_CHARS - 1] + "\u2026"


def _is_privilege_error(exc: DBAPIError) -> bool:
    orig = exc.orig
    args = getattr(orig, "args", ())
    code = args[0] if args and isinstance(args[0], int) else None
    # 1227 access denied (you need PROCESS), 1142 SELECT command denied, 1044 / 1045
    return code in (1227, 1142, 1044, 1045, 1143) or "denied" in str(orig).lower()


# ---------------------------------------------------------------------- MySQL / MariaDB


def _take_mysql(connection: Connection, shown_url: str) -> ServerSnapshot:
    unreadable: dict[str, str] = {}
    notes: list[str] = []
    limits = read_server_limits(connection)
    variables = name_value_pairs(
        connection, "SHOW GLOBAL VARIABLES WHERE Variable_name IN :names", MYSQL_VARIABLES
    )
    status = _floats(
        name_value_pairs(
            connection, "SHOW GLOBAL STATUS WHERE Variable_name IN :names", MYSQL_STATUS
        )
    )
    self_id, current_user = connection.execute(text("SELECT CONNECTION_ID(), CURRENT_USER()")).one()
    mariadb = "mariadb" in limits.server_version.lower()

    trx_age: dict[int, float] = {}
    try:
        rows = connection.execute(
            text(
                "SELECT trx_mysql_thread_id, "
                "TIMESTAMPDIFF(MICROSECOND, trx_started, NOW(6)) / 1000000 "
                "FROM information_schema.INNODB_TRX"
            )
        )
        trx_age = {int(r[0]): max(float(r[1] or 0), 0.0) for r in rows}
    except DBAPIError as exc:
        if not _is_privilege_error(exc):
            raise
        connection.rollback()
        unreadable["transactions"] = (
            "information_schema.INNODB_TRX needs the PROCESS privilege: open transactions "
            "and their age are unknown, so idle-in-transaction connections show as idle"
        )
        unreadable["processlist"] = (
            "without the PROCESS privilege an account sees only its own threads: the "
            "connection list and groupings cover this account only (Threads_connected is "
            "still server-wide)"
        )

    time_column = "TIME_MS / 1000" if mariadb else "TIME"
    rows = connection.execute(
        text(
            f"SELECT ID, USER, HOST, DB, COMMAND, {time_column}, STATE, "
            f"LEFT(INFO, {QUERY_CHARS}) FROM information_schema.PROCESSLIST"
        )
    )
    connections = tuple(
        sorted(
            (_mysql_connection(row, trx_age, int(self_id)) for row in rows),
            key=lambda c: c.id,
        )
    )

    privileged, evidence = _mysql_privileges(connection, str(current_user))
    if privileged is None:
        unreadable["privileges"] = evidence
    privileged_users: frozenset[str] | None = None
    try:
        grantees = connection.execute(
            text(
                "SELECT DISTINCT GRANTEE FROM information_schema.USER_PRIVILEGES "
                "WHERE PRIVILEGE_TYPE IN :kinds"
            ).bindparams(
                bindparam(
                    "kinds", ["SUPER", "CONNECTION ADMIN", "CONNECTION_ADMIN"], expanding=True
                )
            )
        )
        privileged_users = frozenset(str(g[0]).split("@", 1)[0].strip("'`") for g in grantees)
    except DBAPIError as exc:
        connection.rollback()
        unreadable["privileged_users"] = f"USER_PRIVILEGES: {first_line(exc)}"

    memory: int | None = None
    if all(name in variables for name in MYSQL_SESSION_BUFFERS):
        memory = sum(int(variables[name]) for name in MYSQL_SESSION_BUFFERS)
    else:
        missing = [n for n in MYSQL_SESSION_BUFFERS if n not in variables]
        unreadable["memory_per_connection_bytes"] = f"variables not reported: {', '.join(missing)}"

    return _snapshot(
        limits,
        shown_url,
        connections=connections,
        status=status,
        variables=variables,
        memory_per_connection_bytes=memory,
        unreadable=unreadable,
        current_user=str(current_user),
        privileged=privileged,
        privilege_evidence=evidence,
        self_id=int(self_id),
        privileged_users=privileged_users,
        notes=tuple(notes),
    )


def _mysql_connection(row: Any, trx_age: Mapping[int, float], self_id: int) -> ServerConnection:
    ident, user, host, db, command, seconds, state, info = tuple(row)
    ident = int(ident)
    command = None if command is None else str(command)
    user = None if user is None else str(user)
    age = trx_age.get(ident)
    if command in _MYSQL_REPLICATION_COMMANDS:
        kind, norm = REPLICATION, SYSTEM
    elif user in _MYSQL_SYSTEM_USERS or command == "Daemon":
        kind, norm = SYSTEM_KIND, SYSTEM
    else:
        kind = CLIENT
        if command == "Sleep":
            norm = IDLE_IN_TRANSACTION if age is not None else IDLE
        elif command in _MYSQL_BUSY_COMMANDS:
            norm = ACTIVE
        elif command == "Connect":
            norm = "connecting"
        elif command == "Killed":
            norm = "killed"
        else:
            norm = (command or "unknown").lower()
    return ServerConnection(
        id=ident,
        user=user,
        host=_strip_port(None if host is None else str(host)),
        database=None if db is None else str(db),
        state=norm,
        command=command,
        seconds_in_state=float(seconds or 0),
        transaction_age=age,
        query=_truncate(info),
        wait_event=str(state) if state else None,
        is_self=ident == self_id,
        kind=kind,
    )


_MYSQL_ADMIN_GRANTS = ("ALL PRIVILEGES", "SUPER", "CONNECTION ADMIN", "CONNECTION_ADMIN")


def _mysql_privileges(connection: Connection, current_user: str) -> tuple[bool | None, str]:
    """Whether the account may use the slot kept beyond max_connections, from SHOW GRANTS."""
    try:
        grants = [str(r[0]) for r in connection.execute(text("SHOW GRANTS"))]
    except DBAPIError as exc:
        connection.rollback()
        return None, f"SHOW GRANTS failed: {first_line(exc)}"
    for grant in grants:
        head = grant.upper().split(" TO ", 1)[0]
        if " ON *.*" not in head:
            continue
        for name in _MYSQL_ADMIN_GRANTS:
            if name in head:
                return True, f"{current_user} has {name} ON *.* ({grant.split(' TO ')[0]})"
    return False, f"{current_user} has no SUPER / CONNECTION ADMIN on *.*"


# ---------------------------------------------------------------------- PostgreSQL


_PG_ACTIVITY = f"""
SELECT pid, usename, host(client_addr), client_port, datname, state, backend_type,
       EXTRACT(EPOCH FROM (now() - state_change)),
       EXTRACT(EPOCH FROM (now() - xact_start)),
       left(query, {QUERY_CHARS}), wait_event_type, wait_event,
       pid = pg_backend_pid()
FROM pg_stat_activity
"""


def _take_postgresql(connection: Connection, shown_url: str) -> ServerSnapshot:
    unreadable: dict[str, str] = {}
    limits = read_server_limits(connection)
    variables = name_value_pairs(
        connection, "SELECT name, setting FROM pg_settings WHERE name IN :names", PG_SETTINGS
    )
    current_user, privileged, can_read_all = connection.execute(
        text(
            "SELECT current_user, rolsuper, "
            "rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') "
            "FROM pg_roles WHERE rolname = current_user"
        )
    ).one()
    self_id = int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
    connections = tuple(
        sorted(
            (_pg_connection(row) for row in connection.execute(text(_PG_ACTIVITY))),
            key=lambda c: c.id,
        )
    )
    if not can_read_all:
        unreadable["activity"] = (
            f"{current_user} is neither superuser nor a member of pg_read_all_stats: other "
            "roles' sessions show no state, query or transaction start (state 'unknown')"
        )
    clients = [c for c in connections if c.kind == CLIENT]
    replication = [c for c in connections if c.kind == REPLICATION]
    status: dict[str, float] = {
        "Threads_connected": float(len(clients) + len(replication)),
        "Threads_running": float(sum(1 for c in clients if c.state == ACTIVE)),
        "idle_in_transaction": float(sum(1 for c in clients if c.is_idle_in_transaction)),
        "backends": float(len(connections)),
    }
    unreadable["Max_used_connections"] = "PostgreSQL keeps no high-water mark of connections"
    unreadable["Connection_errors_max_connections"] = (
        "PostgreSQL counts no refused connections (see its log: 'sorry, too many clients')"
    )
    return _snapshot(
        limits,
        shown_url,
        connections=connections,
        status=status,
        variables=variables,
        memory_per_connection_bytes=None,
        unreadable=unreadable,
        current_user=str(current_user),
        privileged=bool(privileged),
        privilege_evidence=f"{current_user}: rolsuper = {'true' if privileged else 'false'}",
        self_id=self_id,
        privileged_users=frozenset(
            str(r[0])
            for r in connection.execute(text("SELECT rolname FROM pg_roles WHERE rolsuper"))
        ),
    )


def _pg_connection(row: Any) -> ServerConnection:
    (pid, user, addr, port, db, state, backend_type, in_state, xact, query, wtype, wevent,
     is_self) = tuple(row)  # fmt: skip
    backend_type = None if backend_type is None else str(backend_type)
    if backend_type == "client backend" or backend_type is None:
        # backend_type is NULL for other roles' sessions without pg_read_all_stats
        kind = CLIENT
        norm = str(state) if state else "unknown"
    elif backend_type == "walsender":
        kind, norm = REPLICATION, SYSTEM
    else:
        kind, norm = SYSTEM_KIND, SYSTEM
    if addr is not None:
        host: str | None = str(addr)
    elif port is not None and int(port) == -1:
        host = "[local]"
    else:
        host = None
    wait = f"{wtype}:{wevent}" if wtype and wevent else (str(wevent) if wevent else None)
    return ServerConnection(
        id=int(pid),
        user=None if user is None else str(user),
        host=host,
        database=None if db is None else str(db),
        state=norm,
        command=backend_type,
        seconds_in_state=max(float(in_state), 0.0) if in_state is not None else 0.0,
        transaction_age=max(float(xact), 0.0) if xact is not None else None,
        query=_truncate(query),
        wait_event=wait,
        is_self=bool(is_self),
        kind=kind,
    )
