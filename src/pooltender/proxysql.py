"""ProxySQL configuration from the connection budget, and ProxySQL's multiplexing breakers.

ProxySQL (MySQL / MariaDB) multiplexes by default: after each statement outside a
transaction a backend connection may go back to the hostgroup's pool and serve another
client. It stops doing that for a client connection, pinning its backend connection until the
client disconnects, as soon as the client does something whose state lives on the backend.
The documented breakers (ProxySQL docs, "Multiplexing"; :data:`MULTIPLEXING_BREAKERS`):

* an open transaction (multiplexing resumes at COMMIT / ROLLBACK; ``transaction_persistent``
  keeps the whole transaction on one hostgroup),
* ``LOCK TABLES`` / ``FLUSH TABLES ... WITH READ LOCK`` (until ``UNLOCK TABLES``),
* ``GET_LOCK()``, a named lock held by the session,
* a query that sets or reads ``@`` user variables (``SET @x``, ``SELECT @x``),
* ``SQL_CALC_FOUND_ROWS`` (its ``FOUND_ROWS()`` must run on the same backend),
* ``CREATE TEMPORARY TABLE``,
* text-protocol ``PREPARE`` / ``EXECUTE`` (binary-protocol prepared statements are tracked
  by ProxySQL and are fine),
* ``SET`` of a session variable ProxySQL does not track.

A pooled client never disconnects, so one breaker on a hot path quietly turns ProxySQL into
a session proxy and every client connection into a pinned backend connection: the budget's
server side is then the client side again. :func:`multiplexing_breaker` recognises them.

:func:`proxysql_config` writes ``proxysql.cnf`` (libconfig syntax, ProxySQL's bootstrap
format) from a :class:`~pooltender.budget.BudgetReport` whose fleet has a ProxySQL in front:

* ``mysql_servers``: each backend in one hostgroup with ``max_connections`` = the proxy's
  ``server_pool_size``, the per-backend cap the budget checked against the server;
* ``mysql_users``: the application's users with ``max_connections`` = the client connections
  the fleet opens to one instance, ``transaction_persistent=1``, ``fast_forward=0`` (fast
  forward bypasses multiplexing);
* ``mysql_variables``: ``max_connections`` = the proxy's client limit, ``multiplexing=true``,
  ``connection_max_age_ms`` below the server's ``wait_timeout`` (or the app's
  ``pool_recycle``), ``free_connections_pct``, ``ping_interval_server_msec``;
* ``mysql_query_rules``: one rule that lets SQLAlchemy's connect-time ``SELECT @@...``
  reads (``@@`` system variables, not ``@`` user variables) keep multiplexing
  (``multiplex=2``: not disabled for that query).

Passwords are never written: the file carries placeholders to replace (or set them through
the admin interface); the generator takes no secret.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pooltender.budget import BudgetReport, ProxyKind

__all__ = [
    "MULTIPLEXING_BREAKERS",
    "Backend",
    "ProxySQLConfigError",
    "multiplexing_breaker",
    "proxysql_config",
]

MULTIPLEXING_BREAKERS: tuple[tuple[str, str], ...] = (
    (r"^\s*(START\s+TRANSACTION|BEGIN)\b", "an open transaction pins the backend until it ends"),
    (r"^\s*LOCK\s+TABLES?\b", "LOCK TABLES pins the backend until UNLOCK TABLES"),
    (r"^\s*FLUSH\s+TABLES?\b.*\bWITH\s+READ\s+LOCK\b", "a global read lock pins the backend"),
    (r"\bGET_LOCK\s*\(", "GET_LOCK() holds a named lock on the backend session"),
    (r"(?<![@\w])@(?!@)\w+", "a query with @ user variables disables multiplexing"),
    (r"\bSQL_CALC_FOUND_ROWS\b", "SQL_CALC_FOUND_ROWS needs FOUND_ROWS() on the same backend"),
    (r"^\s*CREATE\s+TEMPORARY\s+TABLE\b", "a temporary table lives on one backend session"),
    (r"^\s*(PREPARE|EXECUTE|DEALLOCATE\s+PREPARE)\s", "text-protocol PREPARE pins the backend"),
)
"""(pattern, why) for each documented multiplexing breaker, matched case-insensitively."""

_BREAKERS = tuple(
    (re.compile(p, re.IGNORECASE | re.DOTALL), why) for p, why in MULTIPLEXING_BREAKERS
)
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`", re.DOTALL)


def multiplexing_breaker(statement: str) -> str | None:
    """Why ``statement`` would stop ProxySQL multiplexing the connection, or ``None``.
    String literals and quoted identifiers are ignored (an ``@`` in an e-mail address is
    not a user variable)."""
    bare = _STRING_LITERAL.sub("''", statement)
    for pattern, why in _BREAKERS:
        if pattern.search(bare):
            return why
    return None


class ProxySQLConfigError(ValueError):
    """The budget cannot be turned into a ProxySQL configuration (no ProxySQL in the fleet,
    the fleet does not fit, or a bad backend); the message says what to change."""


@dataclass(frozen=True)
class Backend:
    """One MySQL / MariaDB server behind ProxySQL."""

    address: str
    port: int = 3306

    @classmethod
    def parse(cls, text: str) -> Backend:
        """``host`` or ``host:port``."""
        host, _, port = text.strip().rpartition(":") if ":" in text else (text.strip(), "", "")
        if not host or any(c in host for c in ' "\\'):
            raise ProxySQLConfigError(f"backend {text!r}: give host or host:port")
        try:
            number = int(port) if port else 3306
        except ValueError:
            raise ProxySQLConfigError(f"backend {text!r}: the port must be a number") from None
        if not 0 < number < 65536:
            raise ProxySQLConfigError(f"backend {text!r}: the port must be 1..65535")
        return cls(host, number)


_NAME = re.compile(r"^[A-Za-z0-9_$.-]{1,64}$")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def proxysql_config(
    report: BudgetReport,
    *,
    backends: Sequence[Backend],
    users: Sequence[str],
    hostgroup: int = 0,
    schema: str | None = None,
    wait_timeout: int | None = None,
    listen: str = "0.0.0.0:6033",
    threads: int = 4,
) -> str:
    """``proxysql.cnf`` for the fleet of ``report`` (see the module doc for the mapping).

    ``wait_timeout`` is the server's (seconds), when known: backend connections are retired
    before it. Raises :class:`ProxySQLConfigError` when the fleet has no ProxySQL, does not
    fit, or a name cannot be written safely.
    """
    side = report.proxy_side
    if side is None or side.proxy.kind is not ProxyKind.PROXYSQL:
        raise ProxySQLConfigError(
            'the fleet has no ProxySQL in front: set fleet.proxy.kind = "proxysql" '
            "(POOLTENDER_FLEET_PROXY_KIND=proxysql or --proxy proxysql)"
        )
    if not report.fits:
        raise ProxySQLConfigError("the fleet does not fit: " + "; ".join(report.refusals))
    if not backends:
        raise ProxySQLConfigError("give at least one backend (host:port)")
    if not users:
        raise ProxySQLConfigError("give at least one application user")
    for name in (*users, *([schema] if schema else [])):
        if not _NAME.match(name):
            raise ProxySQLConfigError(f"{name!r} is not a plain MySQL user or schema name")
    if not 0 <= hostgroup <= 2**31 - 1:
        raise ProxySQLConfigError(f"hostgroup must be 0..2147483647, got {hostgroup}")
    recycle_s = report.settings.pool_recycle
    candidates = [s for s in (recycle_s if recycle_s > 0 else None, wait_timeout) if s]
    max_age_ms = max(1000, (min(candidates) - 30) * 1000) if candidates else 0
    per_backend = side.proxy.server_pool_size
    client_limit = side.client_limit_per_instance
    clients_per_user = max(1, math.ceil(side.client_demand_per_instance))
    lines = [
        "# proxysql.cnf generated by `pooltender proxysql-config` from the connection budget.",
        f"# Fleet: {report.shape.hosts} host(s) x {report.shape.processes_per_host} process(es), "
        f"{side.instances} ProxySQL instance(s) ({side.proxy.placement}).",
        f"# Client side: {side.client_demand_per_instance} connections per instance "
        f"<= mysql-max_connections {client_limit}.",
        f"# Server side: {side.instances} x {per_backend} per backend + direct clients = "
        f"{report.server_demand} <= the server's {report.client_connection_limit}.",
        "# Replace every CHANGE_ME (passwords are never generated), or set them through the",
        "# admin interface (UPDATE mysql_users SET password=...; LOAD MYSQL USERS TO RUNTIME).",
        "",
        'datadir = "/var/lib/proxysql"',
        "",
        "admin_variables =",
        "{",
        '    admin_credentials = "admin:CHANGE_ME"',
        '    mysql_ifaces = "127.0.0.1:6032"',
        "}",
        "",
        "mysql_variables =",
        "{",
        f"    threads = {threads}",
        f"    max_connections = {client_limit}",
        f"    interfaces = {_quote(listen)}",
        "    multiplexing = true",
        "    connection_delay_multiplex_ms = 0",
        "    free_connections_pct = 10",
        f"    connection_max_age_ms = {max_age_ms}",
        "    ping_interval_server_msec = 10000",
        "    ping_timeout_server = 500",
        "    connect_timeout_server = 3000",
        '    monitor_username = "monitor"',
        '    monitor_password = "CHANGE_ME"',
        "}",
        "",
        "mysql_servers =",
        "(",
    ]
    for i, backend in enumerate(backends):
        lines += [
            "    {",
            f"        address = {_quote(backend.address)}",
            f"        port = {backend.port}",
            f"        hostgroup = {hostgroup}",
            f"        max_connections = {per_backend}",
            "        weight = 1",
            f'        comment = "budget: server_pool_size {per_backend}"',
            "    }" + ("," if i < len(backends) - 1 else ""),
        ]
    lines += [")", "", "mysql_users =", "("]
    for i, user in enumerate(users):
        lines += [
            "    {",
            f"        username = {_quote(user)}",
            '        password = "CHANGE_ME"',
            f"        default_hostgroup = {hostgroup}",
            *([f"        default_schema = {_quote(schema)}"] if schema else []),
            f"        max_connections = {min(clients_per_user, client_limit)}",
            "        transaction_persistent = 1",
            "        fast_forward = 0",
            "        active = 1",
            "    }" + ("," if i < len(users) - 1 else ""),
        ]
    lines += [
        ")",
        "",
        "mysql_query_rules =",
        "(",
        "    {",
        "        rule_id = 1",
        "        active = 1",
        '        match_digest = "^SELECT @@[a-z_.]+( AS [a-z_]+)?(, *@@[a-z_.]+( AS [a-z_]+)?)*$"',
        "        multiplex = 2",
        "        apply = 0",
        '        comment = "system-variable reads at connect (SQLAlchemy) keep multiplexing"',
        "    }",
        ")",
        "",
    ]
    return "\n".join(lines)
