"""PgBouncer's pools lined up with the server's backends and the app's pools (``pooltender
doctor --pgbouncer URL``).

A transaction-mode PgBouncer serves many client connections (the app's pools) with few server
connections. Three figures per (database, user) say whether that holds:

* the app's side: client connections the fleet may open (``FleetShape`` x pool cap, from the
  budget, when fleet flags are given), against PgBouncer's ``cl_active + cl_waiting``;
* PgBouncer's ``SHOW POOLS``: clients (``cl_active``, ``cl_waiting``), server connections
  (``sv_active``, ``sv_idle``, ``sv_used``) and ``maxwait`` (read by
  :func:`pooltender.proxy.read_pgbouncer_pools`);
* the server's ``pg_stat_activity`` (the doctor's snapshot): backends of that database and
  user. More backends than PgBouncer's server connections means clients that bypass the
  proxy (or another proxy), which spends the server's ``max_connections`` the proxy was
  there to save.

Findings: ``proxy-waiting`` (clients queue in PgBouncer for a server connection: its
``default_pool_size`` is too small for the load, or transactions are held open) and
``proxy-bypass`` (backends beyond the proxy's). PgBouncer's column meanings are those of
its ``SHOW POOLS`` documentation (https://www.pgbouncer.org/usage.html#show-pools).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pooltender.proxy import PgBouncerPool, read_pgbouncer_pools
from pooltender.server.snapshot import InspectionError, ServerSnapshot
from pooltender.text import first_line, scrub

__all__ = ["ProxyLine", "lineup", "read_lineup"]


@dataclass(frozen=True, kw_only=True)
class ProxyLine:
    """One PgBouncer pool (database, user) seen from the app, from PgBouncer and from the
    server."""

    pool: PgBouncerPool
    app_client_connections: int | None
    """Client connections the fleet may open (None: no fleet shape given)."""
    server_backends: int
    """Backends of this database and user in pg_stat_activity (the doctor's own excluded)."""

    @property
    def bypassing(self) -> int:
        """Backends beyond the proxy's server connections (0 when none)."""
        return max(self.server_backends - self.pool.servers, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self.pool),
            "app_client_connections": self.app_client_connections,
            "server_backends": self.server_backends,
            "proxy_clients": self.pool.clients,
            "proxy_servers": self.pool.servers,
            "bypassing": self.bypassing,
        }


def lineup(
    pools: Iterable[PgBouncerPool],
    snapshot: ServerSnapshot,
    *,
    app_client_connections: int | None = None,
    users: Sequence[str] = (),
) -> tuple[ProxyLine, ...]:
    """Each PgBouncer pool beside the server's backends of the same database and user."""
    backends = Counter(
        (c.database or "", c.user or "") for c in snapshot.client_connections() if not c.is_self
    )
    return tuple(
        ProxyLine(
            pool=p,
            app_client_connections=app_client_connections,
            server_backends=backends[(p.database, p.user)],
        )
        for p in pools
        if not users or p.user in users
    )


def read_lineup(
    admin_dsn: str,
    snapshot: ServerSnapshot,
    *,
    app_client_connections: int | None = None,
    users: Sequence[str] = (),
) -> tuple[ProxyLine, ...]:
    """:func:`lineup` of PgBouncer's ``SHOW POOLS`` read from its admin console at
    ``admin_dsn``; :class:`InspectionError` (one line, no secret) when it cannot be read."""
    try:
        pools = read_pgbouncer_pools(admin_dsn)
    except Exception as exc:  # a driver error of any kind is one line for the operator
        raise InspectionError(
            "cannot read SHOW POOLS from PgBouncer's admin console: "
            + scrub(first_line(exc), admin_dsn)
        ) from None
    return lineup(pools, snapshot, app_client_connections=app_client_connections, users=users)
