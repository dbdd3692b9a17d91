"""The live server's connection limits, read once, read-only, over one short connection.

What "reserved" means differs between servers, and the budget depends on getting it right:

* **MySQL / MariaDB** accept ``max_connections`` ordinary client connections *plus one*:
  the extra one is kept for an account with ``SUPER`` (MySQL 8: ``CONNECTION_ADMIN``;
  MariaDB 10.5+: ``CONNECTION ADMIN``) so an administrator can still log in when the server
  is full. That slot lies *beyond* ``max_connections``, so it does not reduce what
  applications may use: ``reserved_connections`` is 1, ``reserved_within_max`` is false.
  (MariaDB's ``extra_max_connections`` on ``extra_port`` is a separate listener and is not
  counted.) ``max_user_connections``, when non-zero, caps one account and is read from the
  session, which reflects a per-account limit if one is set.
* **PostgreSQL** keeps ``superuser_reserved_connections`` (default 3) and, on PostgreSQL 16+,
  ``reserved_connections`` (for roles with ``pg_use_reserved_connections``) *inside*
  ``max_connections``: ordinary roles get ``max_connections`` minus both.
  ``reserved_within_max`` is true. A role's ``rolconnlimit`` (-1 = none) is reported as
  ``max_user_connections``. PostgreSQL has no ``wait_timeout`` (its idle timeouts are off by
  default), so that is ``None``.
* **SQLite** has no server and no connection limit: ``max_connections`` is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from pooltender.server._sql import name_value_pairs

__all__ = [
    "MYSQL_RESERVED_BEYOND_MAX",
    "POSTGRES_DEFAULT_SUPERUSER_RESERVED",
    "Backend",
    "ServerLimits",
    "read_server_limits",
]

Backend = Literal["mysql", "postgresql", "sqlite"]

MYSQL_RESERVED_BEYOND_MAX = 1
"""The one extra connection MySQL/MariaDB accept beyond max_connections for SUPER accounts."""

POSTGRES_DEFAULT_SUPERUSER_RESERVED = 3
"""PostgreSQL's default superuser_reserved_connections, used when limits are given by hand."""

_MYSQL_VARIABLES = ("max_connections", "max_user_connections", "wait_timeout", "version")
_MYSQL_STATUS = ("Threads_connected", "Max_used_connections")
_PG_SETTINGS = ("max_connections", "superuser_reserved_connections", "reserved_connections")


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """A database server's connection limits and current use, as read at one moment."""

    backend: Backend
    server_version: str
    max_connections: int | None
    reserved_connections: int = 0
    reserved_within_max: bool = False
    wait_timeout: int | None = None
    current_connections: int | None = None
    max_used_connections: int | None = None
    max_user_connections: int | None = None

    @property
    def client_connection_limit(self) -> int | None:
        """Connections ordinary (non-admin) clients may open; ``None`` when unlimited.

        ``max_connections`` minus what the server keeps inside it (PostgreSQL), lowered to
        ``max_user_connections`` when an account limit is set.
        """
        if self.max_connections is None:
            return None
        usable = self.max_connections
        if self.reserved_within_max:
            usable -= self.reserved_connections
        if self.max_user_connections:
            usable = min(usable, self.max_user_connections)
        return max(usable, 0)

    def max_connections_for(self, client_connections: int) -> int:
        """The ``max_connections`` setting under which clients may open ``client_connections``
        (adds back what the server reserves inside the limit)."""
        return client_connections + (self.reserved_connections if self.reserved_within_max else 0)

    @classmethod
    def declared(
        cls,
        max_connections: int,
        backend: Backend = "mysql",
        *,
        reserved_connections: int | None = None,
    ) -> ServerLimits:
        """Limits given by hand (no server to read), with each backend's reserve rules."""
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if backend == "postgresql":
            reserved = (
                POSTGRES_DEFAULT_SUPERUSER_RESERVED
                if reserved_connections is None
                else reserved_connections
            )
            return cls(
                backend=backend,
                server_version="declared",
                max_connections=max_connections,
                reserved_connections=reserved,
                reserved_within_max=True,
            )
        if backend == "mysql":
            return cls(
                backend=backend,
                server_version="declared",
                max_connections=max_connections,
                reserved_connections=MYSQL_RESERVED_BEYOND_MAX,
                reserved_within_max=False,
            )
        return cls(backend="sqlite", server_version="declared", max_connections=None)


def read_server_limits(bind: Engine | Connection) -> ServerLimits:
    """Read the server's limits through ``bind``.

    With an :class:`Engine`, one connection is opened and closed again; with a
    :class:`Connection` it is used as is (and its transaction left to the caller). Only
    ``SHOW`` and ``SELECT`` statements are issued, with bound parameters.
    """
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return _read(connection)
    return _read(bind)


def _read(connection: Connection) -> ServerLimits:
    name = connection.dialect.name
    if name in ("mysql", "mariadb"):
        return _read_mysql(connection)
    if name == "postgresql":
        return _read_postgresql(connection)
    if name == "sqlite":
        version = connection.execute(text("SELECT sqlite_version()")).scalar_one()
        return ServerLimits(backend="sqlite", server_version=str(version), max_connections=None)
    raise ValueError(f"pooltender cannot read connection limits from a {name!r} server")


def _read_mysql(connection: Connection) -> ServerLimits:
    variables = name_value_pairs(
        connection, "SHOW VARIABLES WHERE Variable_name IN :names", _MYSQL_VARIABLES
    )
    status = name_value_pairs(
        connection, "SHOW GLOBAL STATUS WHERE Variable_name IN :names", _MYSQL_STATUS
    )
    user_limit = _int_or_none(variables.get("max_user_connections"))
    return ServerLimits(
        backend="mysql",
        server_version=variables.get("version", ""),
        max_connections=int(variables["max_connections"]),
        reserved_connections=MYSQL_RESERVED_BEYOND_MAX,
        reserved_within_max=False,
        wait_timeout=_int_or_none(variables.get("wait_timeout")),
        current_connections=_int_or_none(status.get("Threads_connected")),
        max_used_connections=_int_or_none(status.get("Max_used_connections")),
        max_user_connections=user_limit or None,
    )


def _read_postgresql(connection: Connection) -> ServerLimits:
    settings = name_value_pairs(
        connection, "SELECT name, setting FROM pg_settings WHERE name IN :names", _PG_SETTINGS
    )
    version = connection.execute(text("SELECT current_setting(:name)"), {"name": "server_version"})
    current = connection.execute(
        text("SELECT count(*) FROM pg_stat_activity WHERE backend_type = :kind"),
        {"kind": "client backend"},
    ).scalar_one()
    role_limit = connection.execute(
        text("SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user")
    ).scalar_one_or_none()
    reserved = int(settings["superuser_reserved_connections"]) + int(
        settings.get("reserved_connections", "0")  # PostgreSQL 16+
    )
    return ServerLimits(
        backend="postgresql",
        server_version=str(version.scalar_one()),
        max_connections=int(settings["max_connections"]),
        reserved_connections=reserved,
        reserved_within_max=True,
        wait_timeout=None,
        current_connections=int(current),
        max_used_connections=None,
        max_user_connections=int(role_limit)
        if role_limit is not None and role_limit >= 0
        else None,
    )


def _int_or_none(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    return int(value)
