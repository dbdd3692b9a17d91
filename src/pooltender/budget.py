"""The fleet-wide connection budget: can every process at once stay within max_connections?

Every process has its own pool, so the post-mortem's per-process fix (20/50) says nothing
about the fleet. The arithmetic::

    per-process cap     = pool_size + max_overflow
    per-process demand  = min(cap, concurrency x connections_per_request)
    fleet demand        = hosts x processes_per_host x per-process demand
                        + consumers x connections_per_consumer
                        + other_clients + reserved
    fits                <=> fleet demand <= connections the server gives clients

The worker model decides ``concurrency``: a sync worker serves one request at a time; a
threaded worker as many as it has threads, so threads *hide* an oversized pool (32 threads
never reach a cap of 70); greenlets (gevent, eventlet) and asyncio tasks are effectively
unbounded (gunicorn's default worker_connections is 1000), so their demand *is* the pool cap.
Measured in issue 3: 4 gevent workers with 20/50 drew 551 "Too many connections" errors
against max_connections=151, because each process really reaches 70.

:func:`littles_law` sizes a pool from measured figures instead: connections busy on average
= throughput x hold time.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pooltender.server.limits import ServerLimits, read_server_limits
from pooltender.settings import PoolSettings, SettingsProblem

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

logger = logging.getLogger("pooltender.budget")

EnforceMode = Literal["fail", "warn", "off"]
ENFORCE_MODES: tuple[EnforceMode, ...] = ("fail", "warn", "off")


class WorkerModel(enum.StrEnum):
    """How a web process serves concurrent requests."""

    SYNC = "sync"
    THREADS = "threads"
    GEVENT = "gevent"
    EVENTLET = "eventlet"
    ASYNCIO = "asyncio"

    @property
    def bounded_by_concurrency(self) -> bool:
        """True when a known, small concurrency caps demand below the pool cap."""
        return self in (WorkerModel.SYNC, WorkerModel.THREADS)


class BudgetError(RuntimeError):
    """The fleet can open more connections than the server accepts (or settings clash with
    the server). The message names the setting to change and to what; ``report`` has the
    figures. ``code`` is stable across releases."""

    code: ClassVar[str] = "pooltender-budget"

    def __init__(self, report: BudgetReport) -> None:
        self.report = report
        super().__init__(f"[{self.code}] {report.summary()}")


@dataclass(frozen=True, kw_only=True)
class FleetShape:
    """Everything that holds connections to one database server.

    ``concurrency`` is threads per process (threads), greenlets per process (gevent,
    eventlet) or tasks per process (asyncio); ``None`` means unbounded or unknown, and the
    budget then assumes each process reaches its pool cap. A sync worker's concurrency is 1.
    ``reserved`` are slots *we* keep free (monitoring, an admin shell), on top of what the
    server itself reserves.
    """

    hosts: int = 1
    processes_per_host: int = 1
    worker_model: WorkerModel = WorkerModel.SYNC
    concurrency: int | None = None
    connections_per_request: int = 1
    consumers: int = 0
    connections_per_consumer: int = 1
    other_clients: int = 0
    reserved: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "worker_model", WorkerModel(self.worker_model))
        problems = [
            f"{name} must be at least {low}, got {getattr(self, name)}"
            for name, low in (
                ("hosts", 1),
                ("processes_per_host", 1),
                ("connections_per_request", 1),
                ("consumers", 0),
                ("connections_per_consumer", 0),
                ("other_clients", 0),
                ("reserved", 0),
            )
            if getattr(self, name) < low
        ]
        if self.concurrency is not None and self.concurrency < 1:
            problems.append(f"concurrency must be at least 1, got {self.concurrency}")
        if self.worker_model is WorkerModel.SYNC and self.concurrency not in (None, 1):
            problems.append(
                f"a sync worker serves one request at a time; concurrency must be 1, got "
                f"{self.concurrency} (use worker_model 'threads' for threaded workers)"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def processes(self) -> int:
        """Web processes in the fleet: ``hosts x processes_per_host``."""
        return self.hosts * self.processes_per_host

    @property
    def effective_concurrency(self) -> int | None:
        """Requests one process serves at once; ``None`` when unbounded."""
        if self.worker_model is WorkerModel.SYNC:
            return 1
        return self.concurrency


@dataclass(frozen=True)
class BudgetTerm:
    """One named term of the fleet's demand, with the formula that produced it."""

    name: str
    formula: str
    connections: int


@dataclass(frozen=True)
class Remedy:
    """One way to make the fleet fit, with concrete numbers."""

    action: str
    setting: str | None = None
    current: int | None = None
    proposed: int | None = None


@dataclass(frozen=True, kw_only=True)
class BudgetReport:
    """The budget's verdict: each demand term, the server's side, and remedies if needed.

    ``max_connections`` is ``None`` when no server figure is known (SQLite, or the CLI run
    without one); the report then ``fits`` and only says what the fleet needs.
    """

    shape: FleetShape
    settings: PoolSettings
    per_process_cap: int
    per_process_demand: int
    demand_limited_by: str
    terms: tuple[BudgetTerm, ...]
    total_demand: int
    backend: str
    max_connections: int | None
    server_reserved: int
    server_reserved_within_max: bool
    client_connection_limit: int | None
    required_max_connections: int
    fits: bool
    headroom: int | None
    remedies: tuple[Remedy, ...] = ()
    settings_problems: tuple[SettingsProblem, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """Fits, and no setting clashes with the server."""
        return self.fits and not self.settings_problems

    @property
    def set_global_sql(self) -> str:
        """The SQL that gives the server the max_connections this fleet needs."""
        n = self.required_max_connections
        if self.backend == "postgresql":
            return f"ALTER SYSTEM SET max_connections = {n};  -- takes effect after a restart"
        return f"SET GLOBAL max_connections = {n};"

    @property
    def config_file_lines(self) -> str:
        """The server configuration that keeps that max_connections across restarts."""
        n = self.required_max_connections
        if self.backend == "postgresql":
            return f"# postgresql.conf (restart required)\nmax_connections = {n}"
        return f"[mysqld]\nmax_connections = {n}"

    def summary(self) -> str:
        """One paragraph: verdict, figures, and the first remedies."""
        if self.max_connections is None:
            head = (
                f"fleet demand {self.total_demand} connections; no server limit known "
                f"(the fleet needs max_connections >= {self.required_max_connections})"
            )
        elif self.fits:
            head = (
                f"fleet demand {self.total_demand} fits the server's "
                f"{self.client_connection_limit} client connections "
                f"(max_connections={self.max_connections}; headroom {self.headroom})"
            )
        else:
            head = (
                f"fleet demand {self.total_demand} exceeds the server's "
                f"{self.client_connection_limit} client connections "
                f"(max_connections={self.max_connections}) by {-(self.headroom or 0)}: "
                + "; or ".join(r.action for r in self.remedies)
            )
        parts = [head]
        parts.extend(str(p) for p in self.settings_problems)
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (the CLI's ``--json``)."""
        data = asdict(self)
        data["shape"]["worker_model"] = str(self.shape.worker_model)
        data["settings"] = self.settings.as_mapping()
        data["settings_problems"] = [asdict(p) for p in self.settings_problems]
        data.update(
            ok=self.ok, set_global_sql=self.set_global_sql, config_file=self.config_file_lines
        )
        return data


class ConnectionBudget:
    """The connection arithmetic for one fleet shape and one set of pool settings."""

    def __init__(self, shape: FleetShape, settings: PoolSettings) -> None:
        self.shape = shape
        self.settings = settings

    @property
    def per_process_cap(self) -> int:
        return self.settings.per_process_cap

    @property
    def per_process_demand(self) -> int:
        """``min(cap, concurrency x connections_per_request)``; the cap when unbounded."""
        concurrency = self.shape.effective_concurrency
        if concurrency is None:
            return self.per_process_cap
        return min(self.per_process_cap, concurrency * self.shape.connections_per_request)

    @property
    def demand_limited_by(self) -> str:
        concurrency = self.shape.effective_concurrency
        if concurrency is None:
            return "pool cap (unbounded concurrency)"
        if concurrency * self.shape.connections_per_request < self.per_process_cap:
            return "concurrency"
        return "pool cap"

    def terms(self) -> tuple[BudgetTerm, ...]:
        """Each term of the fleet's demand; they sum to :attr:`total_demand`."""
        s, cap = self.shape, self.per_process_cap
        concurrency = s.effective_concurrency
        if concurrency is None:
            per = f"cap {cap} ({self.settings.pool_size}+{self.settings.max_overflow})"
        else:
            per = (
                f"min(cap {cap}, {concurrency} x {s.connections_per_request})"
                f" = {self.per_process_demand}"
            )
        return (
            BudgetTerm(
                f"web processes ({s.worker_model})",
                f"{s.hosts} host(s) x {s.processes_per_host} process(es) x {per}",
                s.processes * self.per_process_demand,
            ),
            BudgetTerm(
                "consumers",
                f"{s.consumers} x {s.connections_per_consumer}",
                s.consumers * s.connections_per_consumer,
            ),
            BudgetTerm("other clients", "cron, admin tools", s.other_clients),
            BudgetTerm("reserved by us", "monitoring / admin slots kept free", s.reserved),
        )

    @property
    def total_demand(self) -> int:
        return sum(t.connections for t in self.terms())

    def report(
        self,
        limits: ServerLimits | None,
        settings_problems: tuple[SettingsProblem, ...] = (),
        *,
        backend: str = "mysql",
    ) -> BudgetReport:
        """Compare the demand with ``limits``; ``None`` means no server figure is known, and
        ``backend`` then picks the dialect of the printed SQL."""
        total = self.total_demand
        usable = limits.client_connection_limit if limits is not None else None
        backend = limits.backend if limits is not None else backend
        required = limits.max_connections_for(total) if limits is not None else total
        fits = usable is None or total <= usable
        headroom = None if usable is None else usable - total
        remedies = () if fits or usable is None else self._remedies(usable, required, limits)
        return BudgetReport(
            shape=self.shape,
            settings=self.settings,
            per_process_cap=self.per_process_cap,
            per_process_demand=self.per_process_demand,
            demand_limited_by=self.demand_limited_by,
            terms=self.terms(),
            total_demand=total,
            backend=backend,
            max_connections=limits.max_connections if limits is not None else None,
            server_reserved=limits.reserved_connections if limits is not None else 0,
            server_reserved_within_max=bool(limits and limits.reserved_within_max),
            client_connection_limit=usable,
            required_max_connections=required,
            fits=fits,
            headroom=headroom,
            remedies=remedies,
            settings_problems=settings_problems,
            notes=self._notes(),
        )

    def _remedies(
        self, usable: int, required: int, limits: ServerLimits | None
    ) -> tuple[Remedy, ...]:
        s, cfg = self.shape, self.settings
        remedies: list[Remedy] = []
        others = self.total_demand - s.processes * self.per_process_demand
        per_process_room = (usable - others) // s.processes
        if per_process_room >= 1:
            size_key, overflow_key = cfg.key("pool_size"), cfg.key("max_overflow")
            if cfg.pool_size <= per_process_room:
                overflow = per_process_room - cfg.pool_size
                remedies.append(
                    Remedy(
                        f"lower {overflow_key} from {cfg.max_overflow} to {overflow} "
                        f"(per-process cap {per_process_room})",
                        overflow_key,
                        cfg.max_overflow,
                        overflow,
                    )
                )
            else:
                remedies.append(
                    Remedy(
                        f"lower {size_key} from {cfg.pool_size} to {per_process_room} and "
                        f"{overflow_key} from {cfg.max_overflow} to 0 "
                        f"(per-process cap {per_process_room})",
                        size_key,
                        cfg.pool_size,
                        per_process_room,
                    )
                )
            fewer = (usable - others) // (s.hosts * self.per_process_demand)
            if 1 <= fewer < s.processes_per_host:
                remedies.append(
                    Remedy(
                        f"run {fewer} process(es) per host instead of {s.processes_per_host}",
                        "processes_per_host",
                        s.processes_per_host,
                        fewer,
                    )
                )
        if s.connections_per_request > 1:
            remedies.append(
                Remedy(
                    f"hold one connection per request instead of {s.connections_per_request} "
                    "(a second Session beside db.session doubles demand)",
                    "connections_per_request",
                    s.connections_per_request,
                    1,
                )
            )
        current = limits.max_connections if limits is not None else None
        remedies.append(
            Remedy(
                f"raise max_connections from {current} to {required}",
                "max_connections",
                current,
                required,
            )
        )
        return tuple(remedies)

    def _notes(self) -> tuple[str, ...]:
        s = self.shape
        if not s.worker_model.bounded_by_concurrency and s.concurrency is None:
            return (
                f"{s.worker_model} workers are not bounded by threads: each process can reach "
                f"its pool cap ({self.per_process_cap}), so the cap is the demand",
            )
        if s.worker_model is WorkerModel.THREADS and self.demand_limited_by == "concurrency":
            return (
                f"threads hide the pool cap: {s.concurrency} threads x "
                f"{s.connections_per_request} never reach the cap of {self.per_process_cap}; "
                "under gevent/asyncio the same settings would demand the full cap",
            )
        return ()


def enforce(report: BudgetReport, mode: EnforceMode = "fail") -> None:
    """Act on a report: ``fail`` raises :class:`BudgetError`, ``warn`` logs a warning on the
    ``pooltender.budget`` logger, ``off`` does nothing. A fitting report never acts."""
    if mode not in ENFORCE_MODES:
        raise ValueError(f"budget mode must be one of {', '.join(ENFORCE_MODES)}, got {mode!r}")
    if mode == "off" or report.ok:
        return
    if mode == "fail":
        raise BudgetError(report)
    logger.warning("[%s] %s", BudgetError.code, report.summary())


def check_startup(
    bind: Engine | Connection,
    settings: PoolSettings,
    shape: FleetShape,
    mode: EnforceMode = "fail",
) -> BudgetReport:
    """Read the live server's limits, compute the budget, and :func:`enforce` it.

    Settings that clash with the server (``pool_recycle`` not below ``wait_timeout``) count
    as failures too. Returns the report (also when it was only warned about).
    """
    limits = read_server_limits(bind)
    problems = settings.check_against_server(limits)
    report = ConnectionBudget(shape, settings).report(limits, problems)
    enforce(report, mode)
    return report


# ---------------------------------------------------------------------- Little's law


@dataclass(frozen=True, kw_only=True)
class Recommendation:
    """Connections for one process by Little's law, with the figures that produced them.

    ``busy_mean = throughput x hold_time`` is the average number of connections in use;
    ``connections = ceil(busy_mean x headroom)``, at least 1.
    """

    throughput_per_s: float
    hold_time_s: float
    headroom: float
    busy_mean: float
    connections: int

    def explain(self) -> str:
        return (
            f"{self.throughput_per_s:g} checkouts/s x {self.hold_time_s:g} s held = "
            f"{self.busy_mean:.3g} connections busy on average; x {self.headroom:g} headroom "
            f"-> {self.connections}"
        )


@dataclass(frozen=True, kw_only=True)
class PoolRecommendation:
    """Recommended ``pool_size`` / ``max_overflow`` for one process, and why.

    ``pool_size`` covers the mean with headroom (Little's law). The cap covers bursts: if
    checkouts arrive at random, the number in use is roughly Poisson with mean ``busy_mean``,
    so ``busy_mean + 3 x sqrt(busy_mean)`` (three standard deviations) is rarely exceeded;
    ``max_overflow`` is what that needs beyond ``pool_size`` (at least 1), never more than the
    process's concurrency can use.
    """

    pool_size: int
    max_overflow: int
    basis: Recommendation

    @property
    def cap(self) -> int:
        return self.pool_size + self.max_overflow

    def explain(self) -> str:
        return (
            f"{self.basis.explain()}; pool_size {self.pool_size}, max_overflow "
            f"{self.max_overflow} (cap {self.cap} covers mean + 3 sd of Poisson occupancy)"
        )


def littles_law(
    throughput_per_s: float, hold_time_s: float, headroom: float = 2.0
) -> Recommendation:
    """Connections one process needs: ``ceil(throughput x hold_time x headroom)``, >= 1.

    ``throughput_per_s`` is connection checkouts per second in that process (requests/s x
    connections per request); ``hold_time_s`` the mean time a connection is held.
    """
    for name, value in (("throughput_per_s", throughput_per_s), ("hold_time_s", hold_time_s)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not math.isfinite(headroom) or headroom < 1:
        raise ValueError(f"headroom must be at least 1, got {headroom!r}")
    busy = throughput_per_s * hold_time_s
    return Recommendation(
        throughput_per_s=throughput_per_s,
        hold_time_s=hold_time_s,
        headroom=headroom,
        busy_mean=busy,
        connections=max(1, math.ceil(busy * headroom - 1e-9)),
    )


def recommend_pool(
    checkout_rate_per_s: float,
    hold_time_mean_s: float,
    *,
    headroom: float = 2.0,
    concurrency: int | None = None,
) -> PoolRecommendation:
    """``pool_size`` / ``max_overflow`` for one process from measured figures (the watch's
    checkout rate and ``hold_time_mean``). ``concurrency`` (threads) bounds the cap."""
    basis = littles_law(checkout_rate_per_s, hold_time_mean_s, headroom)
    busy = basis.busy_mean
    cap = max(basis.connections + 1, math.ceil(busy + 3 * math.sqrt(busy) - 1e-9))
    pool_size = basis.connections
    if concurrency is not None:
        cap = max(1, min(cap, concurrency))
        pool_size = min(pool_size, cap)
    return PoolRecommendation(pool_size=pool_size, max_overflow=cap - pool_size, basis=basis)
