"""``pooltender doctor``: read the server once, rank what is wrong, and say what to change.

:func:`diagnose` is pure (a :class:`~pooltender.server.snapshot.ServerSnapshot` in, ranked
:class:`Finding` s out) so every rule is testable without a server; :func:`doctor` connects,
takes the snapshot, adds the fleet budget when a :class:`~pooltender.budget.FleetShape` is
given, and returns a :class:`DoctorReport`. The CLI (``pooltender.cli.doctor``) only parses
flags, calls :func:`doctor` and prints.

The checks (thresholds in :class:`Thresholds`):

``near-limit``
    Connections at or above ``near_limit`` (80 %) of ``max_connections`` (warning), or the
    server refused connections (``Connection_errors_max_connections > 0``) or its high-water
    mark reached the limit (``Max_used_connections >= max_connections``) (critical). Remedy:
    the ``max_connections`` to set -- now (``SET GLOBAL``) and in ``my.cnf`` (PostgreSQL:
    ``ALTER SYSTEM`` + restart) -- sized so the peak seen sits at ``near_limit`` of it, or what
    the fleet budget needs if that is more; and first, smaller pools.
``idle-pileup``
    More than ``idle_per_group`` (10) connections idle for over ``idle_after`` (60 s) from one
    account on one host: a pool larger than its load (``pool_size``) or a leak.
``idle-in-transaction``
    Connections idle inside an open transaction for over ``idle_in_transaction_after`` (60 s),
    listed by id: a request or job that never committed or rolled back.
``pool-recycle``
    ``pool_recycle`` (given, or ``POOLTENDER_POOL_RECYCLE``) not below the server's
    ``wait_timeout`` (PostgreSQL: ``idle_session_timeout`` when set): the server closes
    pooled connections before the pool replaces them.
``privileged-account``
    Client connections from an account with SUPER / CONNECTION ADMIN (MySQL) or superuser
    (PostgreSQL): they take the slot the server keeps for an operator in an incident.
    If only the inspecting account itself is privileged that is an ``info``: fine for an
    operator, wrong if this is the application's URL.
``budget``
    With a fleet shape: the fleet can open more connections than the server accepts.
``proxy-waiting`` / ``proxy-bypass``
    With ``pgbouncer`` (PgBouncer's admin console): clients queued in PgBouncer for a server
    connection, or more backends on the server than PgBouncer's server connections (clients
    that bypass the proxy); see :mod:`pooltender.server.pgbouncer`, which lines up the app's
    pools, PgBouncer's ``SHOW POOLS`` and ``pg_stat_activity``.
``long-wait-timeout`` (info)
    ``wait_timeout`` of an hour or more while more than ``idle_per_group`` connections sleep.
``partial-view`` (info)
    A figure could not be read (missing privilege); the other checks may undercount.

Cumulative counters (``Connection_errors_max_connections``, ``Max_used_connections``) count
since the server started (``Uptime``); after a fix they keep reporting the old incident
until the server restarts or an operator runs ``FLUSH STATUS``.

Exit codes: 0 healthy (no finding worse than info), 1 findings, 2 cannot connect.
"""

from __future__ import annotations

import enum
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pooltender.budget import BudgetReport, ConnectionBudget, FleetShape
from pooltender.server.pgbouncer import ProxyLine, read_lineup
from pooltender.server.snapshot import (
    ServerConnection,
    ServerSnapshot,
    connect_for_inspection,
    take_snapshot,
)
from pooltender.settings import PoolSettings

__all__ = [
    "EXIT_CANNOT_CONNECT",
    "EXIT_FINDINGS",
    "EXIT_HEALTHY",
    "DoctorReport",
    "Finding",
    "Severity",
    "Thresholds",
    "diagnose",
    "doctor",
    "pool_recycle_from_env",
]

EXIT_HEALTHY, EXIT_FINDINGS, EXIT_CANNOT_CONNECT = 0, 1, 2


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"critical": 0, "warning": 1, "info": 2}[self.value]


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """When a figure becomes a finding. Small values make tests fast."""

    near_limit: float = 0.8
    idle_after: float = 60.0
    idle_per_group: int = 10
    idle_in_transaction_after: float = 60.0
    long_wait_timeout: int = 3600

    def __post_init__(self) -> None:
        if not 0 < self.near_limit <= 1:
            raise ValueError(f"near_limit must be in (0, 1], got {self.near_limit}")
        for name in ("idle_after", "idle_in_transaction_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")
        if self.idle_per_group < 0:
            raise ValueError(f"idle_per_group must be >= 0, got {self.idle_per_group}")


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One problem: how bad, what was seen (evidence), and what to do (remedy lines)."""

    code: str
    severity: Severity
    title: str
    evidence: tuple[str, ...]
    remedy: tuple[str, ...]
    connection_ids: tuple[int, ...] = ()
    figures: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = str(self.severity)
        data["figures"] = dict(self.figures)
        return data


@dataclass(frozen=True, kw_only=True)
class DoctorReport:
    """The snapshot, the budget (when a fleet shape was given) and the ranked findings."""

    snapshot: ServerSnapshot
    findings: tuple[Finding, ...]
    thresholds: Thresholds
    budget: BudgetReport | None = None
    users: tuple[str, ...] = ()
    proxy: tuple[ProxyLine, ...] | None = None
    """PgBouncer's pools lined up with the server (None: no PgBouncer URL given)."""

    @property
    def healthy(self) -> bool:
        return all(f.severity is Severity.INFO for f in self.findings)

    @property
    def exit_code(self) -> int:
        return EXIT_HEALTHY if self.healthy else EXIT_FINDINGS

    def finding(self, code: str) -> Finding | None:
        """The first finding with ``code``, if any."""
        return next((f for f in self.findings if f.code == code), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "exit_code": self.exit_code,
            "users": list(self.users),
            "thresholds": asdict(self.thresholds),
            "findings": [f.to_json() for f in self.findings],
            "budget": None if self.budget is None else self.budget.to_dict(),
            "pgbouncer": None if self.proxy is None else [p.to_json() for p in self.proxy],
            "snapshot": self.snapshot.to_json(),
        }


# ---------------------------------------------------------------------- the rules


def diagnose(
    snapshot: ServerSnapshot,
    *,
    thresholds: Thresholds | None = None,
    pool_recycle: int | None = None,
    budget: BudgetReport | None = None,
    users: Sequence[str] = (),
    proxy: Sequence[ProxyLine] = (),
) -> tuple[Finding, ...]:
    """Rank what is wrong with ``snapshot``: critical first, then by how much it matters.

    ``users`` limits the per-connection checks (idle, idle in transaction, privileged) to
    those accounts; server-wide checks (near the limit) always look at the whole server.
    """
    t = thresholds or Thresholds()
    clients = [
        c for c in snapshot.client_connections() if not c.is_self and (not users or c.user in users)
    ]
    findings: list[Finding] = []
    findings.extend(_near_limit(snapshot, t, budget))
    findings.extend(_idle_pileup(snapshot, clients, t))
    findings.extend(_idle_in_transaction(snapshot, clients, t))
    findings.extend(_pool_recycle(snapshot, pool_recycle))
    findings.extend(_privileged(snapshot, clients))
    if budget is not None and not budget.ok:
        findings.append(_budget_finding(budget))
    findings.extend(_proxy(proxy))
    findings.extend(_long_wait_timeout(snapshot, clients, t))
    if snapshot.unreadable:
        findings.append(
            Finding(
                code="partial-view",
                severity=Severity.INFO,
                title="some figures could not be read",
                evidence=tuple(f"{k}: {v}" for k, v in snapshot.unreadable.items()),
                remedy=(
                    "run doctor as an account with PROCESS (MySQL) or pg_read_all_stats "
                    "(PostgreSQL) for the full picture",
                ),
            )
        )
    ranked = sorted(enumerate(findings), key=lambda item: (item[1].severity.rank, item[0]))
    return tuple(f for _, f in ranked)


def _max_connections_lines(backend: str, n: int) -> tuple[str, ...]:
    if backend == "postgresql":
        return (
            f"ALTER SYSTEM SET max_connections = {n};  -- then restart PostgreSQL",
            f"# postgresql.conf\nmax_connections = {n}",
        )
    return (
        f"SET GLOBAL max_connections = {n};  -- now, until the next restart",
        f"# my.cnf, to keep it across restarts\n[mysqld]\nmax_connections = {n}",
    )


def _near_limit(s: ServerSnapshot, t: Thresholds, budget: BudgetReport | None) -> Iterable[Finding]:
    limit = s.max_connections
    if not limit:
        return
    connected = s.connected
    peak_figure = s.status.get("Max_used_connections")
    peak = max(connected, int(peak_figure) if peak_figure is not None else 0)
    refused = int(s.status.get("Connection_errors_max_connections", 0))
    usage = connected / limit
    critical = refused > 0 or peak >= limit
    if not critical and usage < t.near_limit:
        return
    evidence = [f"{connected} of max_connections={limit} in use ({usage:.0%})"]
    if peak_figure is not None:
        evidence.append(f"Max_used_connections={int(peak_figure)} (peak since start)")
    if refused:
        evidence.append(
            f"Connection_errors_max_connections={refused}: the server refused {refused} "
            f"connection(s) with 'Too many connections'"
        )
    if peak >= limit and not refused and s.backend != "postgresql":
        evidence.append(
            "at the peak, clients without SUPER got 'Too many connections' (MariaDB counts "
            f"those under Aborted_connects={int(s.status.get('Aborted_connects', 0))}, not "
            "always under Connection_errors_max_connections)"
        )
    if "Uptime" in s.status:
        evidence.append(f"counters since server start {int(s.status['Uptime'])} s ago")
    by_user = s.by_user()
    if by_user:
        top = ", ".join(f"{u}={n}" for u, n in list(by_user.items())[:5])
        evidence.append(f"client connections by user: {top}")
    # size the limit so the peak seen sits at near_limit of it; more if the budget needs it
    target = max(math.ceil((peak + 1) / t.near_limit), limit + 1)
    if budget is not None:
        target = max(target, budget.required_max_connections)
    memory = s.memory_per_connection_bytes
    remedy = [
        "first find who holds the connections (by user / host below): pools larger than "
        "their load or leaks; size the fleet with `pooltender budget` and lower "
        "POOLTENDER_POOL_SIZE / POOLTENDER_MAX_OVERFLOW",
        f"then, for headroom, raise max_connections from {limit} to {target}:",
        *_max_connections_lines(s.backend, target),
    ]
    if memory:
        remedy.append(
            f"each connection may take up to ~{memory / 2**20:.1f} MiB of session buffers: "
            f"{target} connections ~ {target * memory / 2**30:.2f} GiB worst case"
        )
    if critical and s.backend != "postgresql":
        remedy.append(
            "Connection_errors_max_connections and Max_used_connections count since start: "
            "after the fix, `FLUSH STATUS` resets them"
        )
    yield Finding(
        code="near-limit",
        severity=Severity.CRITICAL if critical else Severity.WARNING,
        title=(
            f"connections were refused: the server reached max_connections={limit}"
            if refused
            else f"the server reached max_connections={limit} (peak {peak})"
            if peak >= limit
            else f"connections at {usage:.0%} of max_connections={limit}"
        ),
        evidence=tuple(evidence),
        remedy=tuple(remedy),
        figures={
            "connected": connected,
            "max_connections": limit,
            "peak": peak,
            "refused": refused,
            "recommended_max_connections": target,
        },
    )


def _idle_pileup(
    s: ServerSnapshot, clients: list[ServerConnection], t: Thresholds
) -> Iterable[Finding]:
    groups: dict[tuple[str, str], list[ServerConnection]] = defaultdict(list)
    for c in clients:
        if c.is_idle and c.seconds_in_state > t.idle_after:
            groups[(c.user or "(none)", c.host or "(none)")].append(c)
    wait_timeout = s.variables.get("wait_timeout")
    for (user, host), idle in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        if len(idle) <= t.idle_per_group:
            continue
        longest = max(c.seconds_in_state for c in idle)
        remedy = [
            f"a pool larger than its load: lower POOLTENDER_POOL_SIZE (pool_size) of the "
            f"processes on {host} connecting as {user} -- `pooltender budget --throughput R "
            f"--hold-time H` sizes it by Little's law; pool_size connections stay open per "
            f"process even when idle",
            "or a leak: if the count keeps growing, set POOLTENDER_LEAK_THRESHOLD and read "
            "the leak reports (connections checked out and never returned)",
        ]
        if wait_timeout:
            remedy.append(
                f"the server closes connections idle for wait_timeout={wait_timeout} s; "
                f"`pooltender kill-idle URL --older-than {int(t.idle_after)} --user {user} "
                f"--host {host}` lists (and with --apply ends) them now"
            )
        yield Finding(
            code="idle-pileup",
            severity=Severity.WARNING,
            title=f"{len(idle)} connections from {user}@{host} idle for over {t.idle_after:g} s",
            evidence=(
                f"{len(idle)} idle connections (no open transaction) from user {user} on host "
                f"{host}, longest idle {longest:.0f} s; threshold {t.idle_per_group} per "
                f"account and host",
            ),
            remedy=tuple(remedy),
            connection_ids=tuple(sorted(c.id for c in idle)),
            figures={"user": user, "host": host, "idle": len(idle), "longest": longest},
        )


def _idle_in_transaction(
    s: ServerSnapshot, clients: list[ServerConnection], t: Thresholds
) -> Iterable[Finding]:
    stuck = sorted(
        (
            c
            for c in clients
            if c.is_idle_in_transaction and c.seconds_in_state > t.idle_in_transaction_after
        ),
        key=lambda c: c.id,
    )
    if not stuck:
        return
    evidence = tuple(
        f"id {c.id}: {c.user}@{c.host} db={c.database} idle {c.seconds_in_state:.0f} s"
        + (f", transaction open {c.transaction_age:.0f} s" if c.transaction_age is not None else "")
        + (f", last query: {c.query}" if c.query else "")
        for c in stuck
    )
    ids = " ".join(str(c.id) for c in stuck)
    remedy = [
        "code that began a transaction and never committed or rolled back: end every "
        "request / job with commit or rollback (Flask-SQLAlchemy removes the session at "
        "teardown; consumers and cron jobs must do it themselves)",
        f"they hold locks and old row versions; to end them now: "
        f"`pooltender kill-idle URL --older-than {int(t.idle_in_transaction_after)} "
        f"--include-idle-in-transaction --apply` (ids {ids})",
    ]
    if s.backend == "postgresql":
        remedy.append(
            "let the server end them: ALTER SYSTEM SET idle_in_transaction_session_timeout "
            "= '60s'; SELECT pg_reload_conf();"
            f" (now {s.variables.get('idle_in_transaction_session_timeout', '?')} ms, 0 = off)"
        )
    yield Finding(
        code="idle-in-transaction",
        severity=Severity.WARNING,
        title=f"{len(stuck)} connection(s) idle in a transaction for over "
        f"{t.idle_in_transaction_after:g} s",
        evidence=evidence,
        remedy=tuple(remedy),
        connection_ids=tuple(c.id for c in stuck),
        figures={"count": len(stuck)},
    )


def _pool_recycle(s: ServerSnapshot, pool_recycle: int | None) -> Iterable[Finding]:
    if pool_recycle is None:
        return
    if s.backend == "postgresql":
        name, raw = "idle_session_timeout", s.variables.get("idle_session_timeout")
        timeout = int(raw) // 1000 if raw and raw.isdigit() else 0  # ms; 0 = off
    else:
        name, raw = "wait_timeout", s.variables.get("wait_timeout")
        timeout = int(raw) if raw and raw.isdigit() else 0
    if timeout <= 0 or (0 <= pool_recycle < timeout):
        return
    suggested = max(timeout - max(60, timeout // 10), 1)
    shown = "-1 (never)" if pool_recycle < 0 else str(pool_recycle)
    yield Finding(
        code="pool-recycle",
        severity=Severity.WARNING,
        title=f"pool_recycle={shown} is not below the server's {name}={timeout} s",
        evidence=(
            f"the server closes a connection idle for {timeout} s; the pool replaces it only "
            f"after pool_recycle={shown} s, so a checkout can get a dead connection "
            f"('MySQL server has gone away' / 'server closed the connection')",
        ),
        remedy=(f"POOLTENDER_POOL_RECYCLE={suggested}  (below {name} with a margin)",),
        figures={"pool_recycle": pool_recycle, name: timeout, "suggested": suggested},
    )


def _privileged(s: ServerSnapshot, clients: list[ServerConnection]) -> Iterable[Finding]:
    admins = s.privileged_users or frozenset()
    holders = [c for c in clients if c.user in admins]
    reserve = (
        "the one connection MySQL keeps beyond max_connections for SUPER / CONNECTION ADMIN"
        if s.backend != "postgresql"
        else f"the {s.reserved_connections} connection(s) PostgreSQL reserves for superusers"
    )
    if holders:
        users = sorted({c.user or "" for c in holders})
        yield Finding(
            code="privileged-account",
            severity=Severity.WARNING,
            title=f"{len(holders)} client connection(s) use privileged account(s) "
            f"{', '.join(users)}",
            evidence=(
                f"accounts {', '.join(users)} have SUPER / CONNECTION ADMIN / superuser; "
                f"connection ids {' '.join(str(c.id) for c in holders)}",
                f"an application using them can take {reserve}: when the server is full, "
                f"the operator cannot log in to fix it",
            ),
            remedy=(
                "give the application its own account with only the rights it needs, e.g. "
                "CREATE USER 'app'@'%' IDENTIFIED BY '...'; GRANT SELECT, INSERT, UPDATE, "
                "DELETE ON app.* TO 'app'@'%';"
                if s.backend != "postgresql"
                else "give the application its own role: CREATE ROLE app LOGIN PASSWORD "
                "'...'; GRANT CONNECT ON DATABASE app TO app; (no SUPERUSER)",
            ),
            connection_ids=tuple(c.id for c in holders),
            figures={"users": users},
        )
    if s.privileged:
        yield Finding(
            code="privileged-inspector",
            severity=Severity.INFO,
            title=f"doctor ran as privileged account {s.current_user}",
            evidence=(s.privilege_evidence or "",),
            remedy=(
                f"fine for an operator; if this is the application's URL, it can take {reserve}",
            ),
        )


def _budget_finding(b: BudgetReport) -> Finding:
    return Finding(
        code="budget",
        severity=Severity.CRITICAL if not b.fits else Severity.WARNING,
        title=f"the fleet can open {b.total_demand} connections; the server accepts "
        f"{b.client_connection_limit}",
        evidence=(b.summary(), *(f"{t.name}: {t.formula} = {t.connections}" for t in b.terms)),
        # raise_lines is empty unless the fleet needs more than the server has: a fleet that
        # fits (shown here for a settings problem) must never be told to lower the limit
        remedy=(
            *(r.action for r in b.remedies),
            *(str(p) for p in b.settings_problems),
            *b.raise_lines,
        ),
        figures={
            "total_demand": b.total_demand,
            "required_max_connections": b.required_max_connections,
        },
    )


def _proxy(lines: Sequence[ProxyLine]) -> Iterable[Finding]:
    for line in lines:
        p = line.pool
        pool = f"PgBouncer pool {p.database}/{p.user}"
        if p.cl_waiting:
            yield Finding(
                code="proxy-waiting",
                severity=Severity.WARNING,
                title=f"{p.cl_waiting} client(s) wait in {pool} for a server connection",
                evidence=(
                    f"cl_active={p.cl_active} cl_waiting={p.cl_waiting} "
                    f"sv_active={p.sv_active} sv_idle={p.sv_idle} maxwait={p.maxwait:g} s",
                ),
                remedy=(
                    "look for transactions held open (idle in transaction) first; then raise "
                    "PgBouncer's default_pool_size (the proxy's server pool, within the "
                    "server's max_connections: `pooltender budget --config` checks both)",
                ),
                figures={"cl_waiting": p.cl_waiting, "maxwait": p.maxwait},
            )
        if line.bypassing:
            yield Finding(
                code="proxy-bypass",
                severity=Severity.WARNING,
                title=f"{line.bypassing} backend(s) of {p.database}/{p.user} do not come "
                f"through {pool}",
                evidence=(
                    f"pg_stat_activity has {line.server_backends} backend(s) of database "
                    f"{p.database} user {p.user}; PgBouncer holds {p.servers}",
                ),
                remedy=(
                    "point every client of this database at PgBouncer (or count the direct "
                    "ones as other_clients in the fleet budget)",
                ),
                figures={"server_backends": line.server_backends, "proxy_servers": p.servers},
            )


def _long_wait_timeout(
    s: ServerSnapshot, clients: list[ServerConnection], t: Thresholds
) -> Iterable[Finding]:
    raw = s.variables.get("wait_timeout")
    if not raw or not raw.isdigit() or int(raw) < t.long_wait_timeout:
        return
    sleepers = [c for c in clients if c.is_idle and c.seconds_in_state > t.idle_after]
    if len(sleepers) <= t.idle_per_group:
        return
    yield Finding(
        code="long-wait-timeout",
        severity=Severity.INFO,
        title=f"wait_timeout={raw} s lets {len(sleepers)} idle connections linger",
        evidence=(f"{len(sleepers)} connections idle for over {t.idle_after:g} s",),
        remedy=(
            "fix the pools first; a shorter wait_timeout (e.g. 600) then ends what leaks, "
            "with pool_recycle and pre-ping below it",
        ),
    )


# ---------------------------------------------------------------------- the command


def pool_recycle_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """``POOLTENDER_POOL_RECYCLE`` from the environment, validated; ``None`` when unset."""
    env = os.environ if env is None else env
    raw = env.get("POOLTENDER_POOL_RECYCLE")
    if raw is None or raw == "":
        return None
    return PoolSettings.from_mapping({"POOLTENDER_POOL_RECYCLE": raw}).pool_recycle


def doctor(
    url: str | None = None,
    *,
    thresholds: Thresholds | None = None,
    pool_recycle: int | None = None,
    fleet: FleetShape | None = None,
    settings: PoolSettings | None = None,
    users: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    pgbouncer: str | None = None,
) -> DoctorReport:
    """Inspect the server at ``url`` (default: ``DATABASE_URL``) and diagnose it.

    ``pool_recycle`` defaults to ``POOLTENDER_POOL_RECYCLE`` when set. With ``fleet``, the
    budget of that fleet (pool ``settings``, default ``PoolSettings.from_env()``) is computed
    against the server's live limits. With ``pgbouncer`` (a libpq DSN or ``postgresql://`` URL
    of PgBouncer's admin console) PgBouncer's pools are lined up with the server's backends
    and the fleet's client connections (:mod:`pooltender.server.pgbouncer`). Raises
    :class:`~pooltender.server.snapshot.InspectionError` (message masked) when the server or
    PgBouncer cannot be reached, ``ValueError`` when no URL is known.
    """
    env = os.environ if env is None else env
    url = url or env.get("DATABASE_URL")
    if not url:
        raise ValueError("no database URL: give one or set DATABASE_URL")
    if pool_recycle is None:
        pool_recycle = pool_recycle_from_env(env)
    engine = connect_for_inspection(url)
    try:
        snapshot = take_snapshot(engine, url=url)
    finally:
        engine.dispose()
    budget: BudgetReport | None = None
    if fleet is not None:
        pool = settings if settings is not None else PoolSettings.from_env(environ=env)
        limits = snapshot.limits
        problems = pool.check_against_server(limits) if limits is not None else ()
        budget = ConnectionBudget(fleet, pool).report(limits, problems, backend=snapshot.backend)
    proxy: tuple[ProxyLine, ...] | None = None
    if pgbouncer is not None:
        app_clients = budget.total_demand if budget is not None else None
        proxy = read_lineup(pgbouncer, snapshot, app_client_connections=app_clients, users=users)
    t = thresholds or Thresholds()
    findings = diagnose(
        snapshot,
        thresholds=t,
        pool_recycle=pool_recycle,
        budget=budget,
        users=users,
        proxy=proxy or (),
    )
    return DoctorReport(
        snapshot=snapshot,
        findings=findings,
        thresholds=t,
        budget=budget,
        users=tuple(users),
        proxy=proxy,
    )
