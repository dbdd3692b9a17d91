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

import difflib
import enum
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pooltender.server.limits import ServerLimits, read_server_limits
from pooltender.settings import PoolSettings, SettingsError, SettingsProblem

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


FLEET_PREFIX = "POOLTENDER_FLEET_"
"""Prefix of the fleet's configuration keys (a Flask config, the environment)."""
PROXY_PREFIX = f"{FLEET_PREFIX}PROXY_"
"""Prefix of the proxy's keys: ``POOLTENDER_FLEET_PROXY_KIND`` and so on."""


class ProxyKind(enum.StrEnum):
    """The connection proxy in front of the database server."""

    PGBOUNCER = "pgbouncer"
    PROXYSQL = "proxysql"


class ProxyMode(enum.StrEnum):
    """``transaction``: a server connection is lent per transaction (multiplexing);
    ``session``: per client connection, for as long as the client stays connected."""

    TRANSACTION = "transaction"
    SESSION = "session"


class ProxyPlacement(enum.StrEnum):
    """One proxy for the whole fleet, or one on every app host (each with its own pools)."""

    CENTRAL = "central"
    PER_HOST = "per-host"


@dataclass(frozen=True)
class ShapeKey:
    """How one field of :class:`FleetShape` / :class:`ProxyShape` is spelt outside Python:
    its configuration key (after the prefix; also the TOML key is the field name), its CLI
    flag and its help. The dataclass is the single source: the CLI options, the
    ``POOLTENDER_FLEET_*`` keys and the TOML file are all derived from these."""

    key: str
    option: str
    help: str
    minimum: int | None = None
    choices: type[enum.StrEnum] | None = None


def _term(
    default: Any,
    help: str,
    *,
    key: str | None = None,
    option: str | None = None,
    minimum: int | None = None,
    choices: type[enum.StrEnum] | None = None,
) -> Any:
    meta = {"shape": (key, option, help, minimum, choices)}
    return field(default=default, metadata=meta)


def shape_keys(cls: type[FleetShape] | type[ProxyShape]) -> dict[str, ShapeKey]:
    """Field name -> :class:`ShapeKey` of every configurable field of ``cls``."""
    prefix_option = "--proxy-" if cls is ProxyShape else "--"
    out: dict[str, ShapeKey] = {}
    for f in fields(cls):
        if "shape" not in f.metadata:
            continue
        key, option, help_text, minimum, choices = f.metadata["shape"]
        out[f.name] = ShapeKey(
            key=key or f.name.upper(),
            option=option or prefix_option + f.name.replace("_", "-"),
            help=help_text,
            minimum=minimum,
            choices=choices,
        )
    return out


def _validate_minimums(obj: FleetShape | ProxyShape) -> list[str]:
    problems = []
    for name, spec in shape_keys(type(obj)).items():
        value = getattr(obj, name)
        if spec.minimum is not None and value is not None and value < spec.minimum:
            problems.append(f"{name} must be at least {spec.minimum}, got {value}")
    return problems


@dataclass(frozen=True, kw_only=True)
class ProxyShape:
    """A connection proxy between the fleet and the server (PgBouncer, ProxySQL).

    With a proxy the budget has two sides: the fleet's pools open *client* connections to
    the proxy (bounded by ``max_client_conn``, PgBouncer's name; ProxySQL's
    ``mysql-max_connections``), and the proxy opens at most ``server_pool_size`` *server*
    connections per instance (PgBouncer's ``default_pool_size`` for the one database/user
    pair; ProxySQL's ``mysql_servers.max_connections``). ``placement`` ``per-host`` runs
    one proxy per app host, so the server side is ``hosts x server_pool_size``. Defaults are
    PgBouncer's own (``default_pool_size=20``, ``max_client_conn=100``).
    """

    kind: ProxyKind = _term(  # noqa: RUF009 (field() with metadata; the default is an enum member, immutable)
        ProxyKind.PGBOUNCER, "Proxy in front of the server.", option="--proxy", choices=ProxyKind
    )
    mode: ProxyMode = _term(  # noqa: RUF009 (field() with metadata; the default is an enum member, immutable)
        ProxyMode.TRANSACTION,
        "transaction: server connections lent per transaction; session: per client.",
        choices=ProxyMode,
    )
    placement: ProxyPlacement = _term(  # noqa: RUF009 (field() with metadata; the default is an enum member, immutable)
        ProxyPlacement.CENTRAL,
        "central: one proxy; per-host: one on every app host.",
        choices=ProxyPlacement,
    )
    server_pool_size: int = _term(
        20, "Server connections per proxy instance (PgBouncer default_pool_size).", minimum=1
    )
    max_client_conn: int = _term(
        100, "Client connections one proxy instance accepts (PgBouncer max_client_conn).", minimum=1
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ProxyKind(self.kind))
        object.__setattr__(self, "mode", ProxyMode(self.mode))
        object.__setattr__(self, "placement", ProxyPlacement(self.placement))
        problems = _validate_minimums(self)
        if problems:
            raise ValueError("; ".join(f"proxy {p}" for p in problems))

    def instances(self, hosts: int) -> int:
        """Proxy processes in the fleet: 1 central, or one per host."""
        return hosts if self.placement is ProxyPlacement.PER_HOST else 1


@dataclass(frozen=True, kw_only=True)
class FleetShape:
    """Everything that holds connections to one database server.

    ``concurrency`` is threads per process (threads), greenlets per process (gevent,
    eventlet) or tasks per process (asyncio); ``None`` means unbounded or unknown, and the
    budget then assumes each process reaches its pool cap. A sync worker's concurrency is 1.
    ``reserved`` are slots *we* keep free (monitoring, an admin shell), on top of what the
    server itself reserves. ``proxy``: a connection proxy in front of the server; web
    processes and consumers go through it, ``other_clients`` and ``reserved`` connect to the
    server directly (migrations and admin shells want a real session).

    This dataclass is the one description of a fleet: the CLI flags, the
    ``POOLTENDER_FLEET_*`` keys and the ``[fleet]`` table of a TOML file are derived from
    its fields (:func:`shape_keys`, :func:`shape_from_mapping`).
    """

    hosts: int = _term(1, "App hosts sharing the database server.", minimum=1)
    processes_per_host: int = _term(
        1,
        "Web processes (e.g. gunicorn workers) per host.",
        key="PROCESSES",
        option="--processes",
        minimum=1,
    )
    worker_model: WorkerModel = _term(  # noqa: RUF009 (field() with metadata; the default is an enum member, immutable)
        WorkerModel.SYNC,
        "sync: 1 request at a time; threads: --concurrency threads; gevent, "
        "eventlet, asyncio: unbounded unless --concurrency is given.",
        choices=WorkerModel,
    )
    concurrency: int | None = _term(None, "Threads / greenlets / tasks per process.", minimum=1)
    connections_per_request: int = _term(1, "Connections one request holds at once.", minimum=1)
    consumers: int = _term(0, "Queue consumer processes.", minimum=0)
    connections_per_consumer: int = _term(
        1, "Connections per consumer process.", option="--consumer-connections", minimum=0
    )
    other_clients: int = _term(0, "Cron jobs, admin tools, migrations.", minimum=0)
    reserved: int = _term(0, "Slots we keep free (monitoring, an admin shell).", minimum=0)
    proxy: ProxyShape | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "worker_model", WorkerModel(self.worker_model))
        problems = _validate_minimums(self)
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


def fleet_config_keys() -> dict[str, str]:
    """Every ``POOLTENDER_FLEET_*`` key -> the field it sets (``proxy.<field>`` for the
    proxy's)."""
    keys = {f"{FLEET_PREFIX}{k.key}": name for name, k in shape_keys(FleetShape).items()}
    keys.update({f"{PROXY_PREFIX}{k.key}": f"proxy.{n}" for n, k in shape_keys(ProxyShape).items()})
    return keys


def _parse_value(spec: ShapeKey, raw: Any) -> Any:
    if spec.choices is not None:
        text = str(raw).strip().lower()
        valid = [m.value for m in spec.choices]
        if text not in valid:
            raise ValueError(f"must be one of {', '.join(valid)}")
        return spec.choices(text)
    if isinstance(raw, bool):
        raise ValueError("must be a whole number")
    if isinstance(raw, int):
        return raw
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ValueError("must be a whole number") from None


def shape_from_mapping(mapping: Mapping[str, Any], prefix: str = FLEET_PREFIX) -> FleetShape | None:
    """The fleet shape from ``prefix``-ed keys (``POOLTENDER_FLEET_HOSTS``, ...,
    ``POOLTENDER_FLEET_PROXY_KIND``), or ``None`` when none is set. Empty values count as
    unset. Every problem is collected into one :class:`SettingsError`, each naming its key;
    a misspelt key gets a suggestion."""
    proxy_prefix = f"{prefix}PROXY_"
    fleet_specs = {f"{prefix}{k.key}": (n, k) for n, k in shape_keys(FleetShape).items()}
    proxy_specs = {f"{proxy_prefix}{k.key}": (n, k) for n, k in shape_keys(ProxyShape).items()}
    valid = [*fleet_specs, *proxy_specs]
    fleet: dict[str, Any] = {}
    proxy: dict[str, Any] = {}
    problems: list[SettingsProblem] = []
    for key, raw in mapping.items():
        if not isinstance(key, str) or not key.startswith(prefix):
            continue
        if raw is None or raw == "":
            continue
        target, spec_of = (proxy, proxy_specs) if key in proxy_specs else (fleet, fleet_specs)
        if key not in spec_of:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            problems.append(
                SettingsProblem(
                    key, raw, f"is not a fleet key; {hint}valid keys: {', '.join(valid)}"
                )
            )
            continue
        name, spec = spec_of[key]
        try:
            target[name] = _parse_value(spec, raw)
        except ValueError as exc:
            problems.append(SettingsProblem(key, raw, str(exc)))
    if problems:
        raise SettingsError(problems)
    if not fleet and not proxy:
        return None
    try:
        if proxy:
            if "kind" not in proxy:
                raise ValueError(
                    f"a proxy setting was given without {proxy_prefix}KIND "
                    f"({', '.join(m.value for m in ProxyKind)})"
                )
            fleet["proxy"] = ProxyShape(**proxy)
        return FleetShape(**fleet)
    except ValueError as exc:
        raise SettingsError([SettingsProblem(f"{prefix}*", {**fleet, **proxy}, str(exc))]) from None


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


def _raise_max_connections(limits: ServerLimits | None, required: int) -> Remedy:
    """The last remedy of every refusal: the server's limit raised to what the fleet needs."""
    current = limits.max_connections if limits is not None else None
    return Remedy(
        f"raise max_connections from {current} to {required}", "max_connections", current, required
    )


@dataclass(frozen=True, kw_only=True)
class ProxySide:
    """The proxy's two limits checked: client connections reaching each instance against
    its ``max_client_conn``, and the server connections all instances open (plus direct
    clients) against the server. ``refusals`` holds one line per proxy-side limit exceeded,
    each naming the term to change."""

    proxy: ProxyShape
    instances: int
    client_demand_per_instance: int
    client_limit_per_instance: int
    server_terms: tuple[BudgetTerm, ...]
    server_demand: int
    refusals: tuple[str, ...] = ()


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
    proxy_side: ProxySide | None = None
    server_demand: int
    """Server connections the fleet opens: ``total_demand`` without a proxy; with one, the
    proxy's server pools plus the clients that connect directly."""

    @property
    def ok(self) -> bool:
        """Fits, and no setting clashes with the server."""
        return self.fits and not self.settings_problems

    @property
    def needs_more_connections(self) -> bool:
        """True only when a server figure is known and the fleet needs more than it has."""
        return self.max_connections is not None and (
            self.required_max_connections > self.max_connections
        )

    @property
    def set_global_sql(self) -> str:
        """The SQL that gives the server the max_connections this fleet needs. Print it only
        when :attr:`needs_more_connections` (:attr:`raise_lines` does): otherwise it would
        *lower* the limit (issue 13)."""
        n = self.required_max_connections
        if self.backend == "postgresql":
            return f"ALTER SYSTEM SET max_connections = {n};  -- takes effect after a restart"
        return f"SET GLOBAL max_connections = {n};"

    @property
    def config_file_lines(self) -> str:
        """The server configuration that keeps that max_connections across restarts (same
        caveat as :attr:`set_global_sql`)."""
        n = self.required_max_connections
        if self.backend == "postgresql":
            return f"# postgresql.conf (restart required)\nmax_connections = {n}"
        return f"[mysqld]\nmax_connections = {n}"

    @property
    def raise_lines(self) -> tuple[str, ...]:
        """The statements to print: the SQL and the config-file lines that *raise*
        max_connections, and only when the fleet needs more than the server has; otherwise
        nothing (no statement ever lowers a limit)."""
        if not self.needs_more_connections:
            return ()
        return (self.set_global_sql, self.config_file_lines)

    @property
    def refusals(self) -> tuple[str, ...]:
        """One line per limit the fleet exceeds, each naming the term to change."""
        lines: list[str] = []
        if self.proxy_side is not None:
            lines.extend(self.proxy_side.refusals)
        if self.headroom is not None and self.headroom < 0:
            side = "server side" if self.proxy_side is not None else "server"
            lines.append(
                f"{side}: {self.server_demand} connections exceed the server's "
                f"{self.client_connection_limit} client connections "
                f"(max_connections={self.max_connections}) by {-self.headroom}: "
                + "; or ".join(r.action for r in self.remedies)
            )
        return tuple(lines)

    def summary(self) -> str:
        """One paragraph: verdict, figures, and the first remedies."""
        demand = (
            f"fleet demand {self.total_demand}"
            if self.proxy_side is None
            else f"fleet demand {self.total_demand} client connections through "
            f"{self.proxy_side.proxy.kind}, {self.server_demand} server connections"
        )
        if self.max_connections is None and not self.refusals:
            head = (
                f"{demand}; no server limit known "
                f"(the fleet needs max_connections >= {self.required_max_connections})"
            )
        elif self.fits:
            head = (
                f"{demand} fits the server's "
                f"{self.client_connection_limit} client connections "
                f"(max_connections={self.max_connections}; headroom {self.headroom})"
            )
        else:
            head = f"{demand}: " + "; ".join(self.refusals)
        parts = [head]
        parts.extend(str(p) for p in self.settings_problems)
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (the CLI's ``--json``); the SQL only when it raises a limit."""
        data = asdict(self)
        data["shape"]["worker_model"] = str(self.shape.worker_model)
        data["settings"] = self.settings.as_mapping()
        data["settings_problems"] = [asdict(p) for p in self.settings_problems]
        raising = self.needs_more_connections
        data.update(
            ok=self.ok,
            set_global_sql=self.set_global_sql if raising else None,
            config_file=self.config_file_lines if raising else None,
            refusals=list(self.refusals),
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
        proxy_side = self.proxy_side()
        server_demand = total if proxy_side is None else proxy_side.server_demand
        required = (
            limits.max_connections_for(server_demand) if limits is not None else server_demand
        )
        server_fits = usable is None or server_demand <= usable
        fits = server_fits and (proxy_side is None or not proxy_side.refusals)
        headroom = None if usable is None else usable - server_demand
        remedies: tuple[Remedy, ...] = ()
        if not server_fits and usable is not None:
            remedies = (
                self._proxy_remedies(usable, required, limits)
                if proxy_side is not None
                else self._remedies(usable, required, limits)
            )
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
            proxy_side=proxy_side,
            server_demand=server_demand,
        )

    def proxy_side(self) -> ProxySide | None:
        """The two-sided arithmetic with a proxy in front, or ``None`` without one.

        Client side: web processes and consumers connect to the proxy; per instance that is
        the fleet's demand (central) or one host's share (per-host, consumers spread evenly).
        Server side: ``instances x server_pool_size`` plus what connects directly
        (``other_clients``, ``reserved``).
        """
        s = self.shape
        proxy = s.proxy
        if proxy is None:
            return None
        instances = proxy.instances(s.hosts)
        web = s.processes * self.per_process_demand
        consumers = s.consumers * s.connections_per_consumer
        through = web + consumers
        per_instance = math.ceil(through / instances)
        pools = instances * proxy.server_pool_size
        server_terms = (
            BudgetTerm(
                f"{proxy.kind} server pools",
                f"{instances} instance(s) x server_pool_size {proxy.server_pool_size}",
                pools,
            ),
            BudgetTerm("other clients (direct)", "cron, admin tools", s.other_clients),
            BudgetTerm("reserved by us (direct)", "monitoring / admin slots", s.reserved),
        )
        refusals: list[str] = []
        where = "each proxy" if instances > 1 else "the proxy"
        if per_instance > proxy.max_client_conn:
            refusals.append(
                f"client side: {per_instance} client connections reach {where} "
                f"(web {web} + consumers {consumers}"
                + (f", over {instances} hosts" if instances > 1 else "")
                + f") but max_client_conn is {proxy.max_client_conn}: raise "
                f"fleet.proxy.max_client_conn ({PROXY_PREFIX}MAX_CLIENT_CONN) to {per_instance}, "
                f"or lower the per-process cap ({self.settings.key('max_overflow')})"
            )
        if proxy.mode is ProxyMode.SESSION and per_instance > proxy.server_pool_size:
            refusals.append(
                f"session mode does not multiplex: {per_instance} client connections at "
                f"{where} each keep a server connection for their whole life, but "
                f"server_pool_size is {proxy.server_pool_size}: set fleet.proxy.mode "
                f"({PROXY_PREFIX}MODE) to transaction, or raise fleet.proxy.server_pool_size "
                f"({PROXY_PREFIX}SERVER_POOL_SIZE) to {per_instance}"
            )
        return ProxySide(
            proxy=proxy,
            instances=instances,
            client_demand_per_instance=per_instance,
            client_limit_per_instance=proxy.max_client_conn,
            server_terms=server_terms,
            server_demand=sum(t.connections for t in server_terms),
            refusals=tuple(refusals),
        )

    def _proxy_remedies(
        self, usable: int, required: int, limits: ServerLimits | None
    ) -> tuple[Remedy, ...]:
        s = self.shape
        assert s.proxy is not None
        instances = s.proxy.instances(s.hosts)
        room = (usable - s.other_clients - s.reserved) // instances
        remedies: list[Remedy] = []
        if room >= 1:
            remedies.append(
                Remedy(
                    f"lower fleet.proxy.server_pool_size ({PROXY_PREFIX}SERVER_POOL_SIZE) from "
                    f"{s.proxy.server_pool_size} to {room}",
                    f"{PROXY_PREFIX}SERVER_POOL_SIZE",
                    s.proxy.server_pool_size,
                    room,
                )
            )
        if instances > 1:
            remedies.append(
                Remedy(
                    "use one central proxy instead of one per host (fleet.proxy.placement)",
                    f"{PROXY_PREFIX}PLACEMENT",
                )
            )
        remedies.append(_raise_max_connections(limits, required))
        return tuple(remedies)

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
        if per_process_room < 1 and s.proxy is None:
            remedies.append(
                Remedy(
                    "put a connection proxy in transaction mode in front of the server "
                    "(fleet.proxy, POOLTENDER_FLEET_PROXY_KIND): the server then sees the "
                    "proxy's server pool, sized by the fleet's busy connections, not "
                    f"{s.processes} pools",
                    f"{PROXY_PREFIX}KIND",
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
        remedies.append(_raise_max_connections(limits, required))
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


# ------------------------------------------------------------------ the fleet file

SERVER_PREFIX = "POOLTENDER_SERVER_"
LOAD_PREFIX = "POOLTENDER_LOAD_"
SERVER_KEYS = ("MAX_CONNECTIONS", "BACKEND", "URL")
LOAD_KEYS = ("THROUGHPUT", "HOLD_TIME", "TARGET_WAIT")
_TOML_TABLES = {
    "pool": "POOLTENDER_",
    "fleet": FLEET_PREFIX,
    "fleet.proxy": PROXY_PREFIX,
    "server": SERVER_PREFIX,
    "load": LOAD_PREFIX,
}


def flatten_fleet_file(data: Mapping[str, Any]) -> dict[str, Any]:
    """A parsed fleet TOML file as ``POOLTENDER_*`` keys, so that the environment can
    override it key by key through the same parsers (the file is the source)::

        [pool]         pool_size = 4            -> POOLTENDER_POOL_SIZE
        [fleet]        hosts = 50               -> POOLTENDER_FLEET_HOSTS
        [fleet.proxy]  kind = "pgbouncer"       -> POOLTENDER_FLEET_PROXY_KIND
        [server]       max_connections = 500    -> POOLTENDER_SERVER_MAX_CONNECTIONS
        [load]         throughput = 20000       -> POOLTENDER_LOAD_THROUGHPUT

    Fleet keys are :class:`FleetShape`'s field names (``processes_per_host``; the short
    ``processes`` of the flags and environment is accepted too). Unknown tables raise
    :class:`SettingsError`.
    """
    out: dict[str, Any] = {}
    problems: list[SettingsProblem] = []
    fleet_fields = {name: k.key for name, k in shape_keys(FleetShape).items()}
    proxy_fields = {name: k.key for name, k in shape_keys(ProxyShape).items()}

    def put(table: str, key: str, value: Any) -> None:
        prefix = _TOML_TABLES[table]
        if table == "fleet":
            key = fleet_fields.get(key, key)
        elif table == "fleet.proxy":
            key = proxy_fields.get(key, key)
        out[f"{prefix}{key.upper()}"] = value

    for table, body in data.items():
        if table not in ("pool", "fleet", "server", "load") or not isinstance(body, Mapping):
            problems.append(
                SettingsProblem(
                    f"[{table}]",
                    body,
                    "is not a table of a fleet file; tables: pool, fleet, "
                    "fleet.proxy, server, load",
                )
            )
            continue
        for key, value in body.items():
            if table == "fleet" and key == "proxy" and isinstance(value, Mapping):
                for pkey, pvalue in value.items():
                    put("fleet.proxy", pkey, pvalue)
            else:
                put(table, key, value)
    for key in out:
        for prefix, known in ((SERVER_PREFIX, SERVER_KEYS), (LOAD_PREFIX, LOAD_KEYS)):
            if key.startswith(prefix) and key[len(prefix) :] not in known:
                problems.append(
                    SettingsProblem(
                        key,
                        out[key],
                        f"is not a key; valid: {', '.join(prefix + k for k in known)}",
                    )
                )
    if problems:
        raise SettingsError(problems)
    return out


def read_fleet_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """:func:`flatten_fleet_file` of the TOML file at ``path`` (``tomllib``)."""
    import tomllib

    with open(path, "rb") as fh:
        try:
            data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None
    return flatten_fleet_file(data)


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
