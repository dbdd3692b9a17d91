"""What talks to the database server outside the application's pool.

=====================  =============================================================
``server.limits``      :class:`ServerLimits`, :func:`read_server_limits`: max_connections,
                       the reserve, wait_timeout, current use (one definition per server)
``server.snapshot``    :class:`ServerSnapshot`, :func:`take_snapshot`: who holds the
                       connections (processlist / pg_stat_activity), status, variables
``server.doctor``      :func:`diagnose` / :func:`doctor`: ranked findings with remedies
``server.killer``      :func:`kill_idle`: idle-connection killing, dry run by default
``server._sql``        the read-only SQL helpers they share
=====================  =============================================================

Each opens its own short connection (no pool; see :func:`connect_for_inspection`), issues
only ``SELECT`` / ``SHOW`` (the killer's ``KILL`` / ``pg_terminate_backend`` only when
asked), and shows a URL only masked.

The names of the former ``pooltender.server`` module (the snapshot's) are importable from
here, as before; they and :class:`ServerLimits` are loaded on first use, so importing one
submodule does not load the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pooltender.server.limits import ServerLimits, read_server_limits
    from pooltender.server.snapshot import (
        ACTIVE,
        CLIENT,
        CONNECT_TIMEOUT,
        IDLE,
        IDLE_IN_TRANSACTION,
        IDLE_IN_TRANSACTION_ABORTED,
        MYSQL_SESSION_BUFFERS,
        MYSQL_STATUS,
        MYSQL_VARIABLES,
        PG_SETTINGS,
        QUERY_CHARS,
        REPLICATION,
        SYSTEM,
        SYSTEM_KIND,
        InspectionError,
        ServerConnection,
        ServerSnapshot,
        connect_for_inspection,
        inspect_url,
        mask_url,
        scrub,
        take_snapshot,
    )

_SNAPSHOT = "pooltender.server.snapshot"
_EXPORTS: dict[str, str] = {
    "ServerLimits": "pooltender.server.limits",
    "read_server_limits": "pooltender.server.limits",
    **{
        name: _SNAPSHOT
        for name in (
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
        )
    },
}

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
    "ServerLimits",
    "ServerSnapshot",
    "connect_for_inspection",
    "inspect_url",
    "mask_url",
    "read_server_limits",
    "scrub",
    "take_snapshot",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pooltender.server' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
