"""``pooltender budget``: the fleet's connection arithmetic from a file, the environment and flags.

:func:`budget` is the command and the API: it takes typed arguments and returns a
:class:`BudgetOutcome`; the click command only parses flags, calls it and prints. The fleet
comes from ``--config FILE`` (TOML, see :func:`pooltender.budget.flatten_fleet_file`), then
``POOLTENDER_*`` environment variables key by key, then the flags given on the command line.
The fleet flags are derived from :class:`~pooltender.budget.FleetShape`'s fields. Exit codes:
0 the fleet fits (or no server figure was given), 1 it does not fit, 2 usage or connection
error. A server URL is only ever shown with its password masked.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click

from pooltender.budget import (
    FLEET_PREFIX,
    LOAD_PREFIX,
    PROXY_PREFIX,
    SERVER_PREFIX,
    BudgetReport,
    BudgetTerm,
    ConnectionBudget,
    FleetShape,
    PoolRecommendation,
    ProxyMode,
    ProxyShape,
    read_fleet_file,
    recommend_pool,
    shape_from_mapping,
    shape_keys,
)
from pooltender.queueing import MMcQueue, simulate_open, smallest_pool
from pooltender.server.limits import Backend, ServerLimits
from pooltender.settings import DEFAULT_PREFIX, PoolSettings, SettingsError
from pooltender.text import first_line, one_line, scrub
from pooltender.text import mask_url as mask_url  # re-exported: the old home of mask_url

EXIT_FITS, EXIT_DOES_NOT_FIT, EXIT_ERROR = 0, 1, 2
WAIT_QUANTILE = 0.99


class BudgetCommandError(click.ClickException):
    """A usage or connection problem; its message never contains a password."""

    exit_code = EXIT_ERROR


def _param(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


#: CLI parameter name -> (config key, field); derived from the dataclasses' fields.
FLEET_PARAMS: dict[str, tuple[str, str]] = {
    _param(k.option): (f"{FLEET_PREFIX}{k.key}", name) for name, k in shape_keys(FleetShape).items()
}
PROXY_PARAMS: dict[str, tuple[str, str]] = {
    _param(k.option): (f"{PROXY_PREFIX}{k.key}", name) for name, k in shape_keys(ProxyShape).items()
}


@dataclass(frozen=True, kw_only=True)
class WaitAnswer:
    """How often, and how long, a checkout waits at one pool: ``where`` (a process's pool, a
    proxy instance's server pool), from ``model`` (Erlang C, or a simulation of measured
    holds)."""

    where: str
    model: str
    arrival_rate: float
    hold_time: float
    servers: int
    p_wait: float
    mean_wait: float
    p99_wait: float

    def explain(self) -> str:
        return (
            f"{self.where}: {self.arrival_rate:g} checkouts/s x {self.hold_time:g} s on "
            f"{self.servers} connection(s) ({self.model}): P(wait) {self.p_wait:.3g}, "
            f"mean wait {_ms(self.mean_wait)}, p99 wait {_ms(self.p99_wait)}"
        )


def _ms(seconds: float) -> str:
    return "unbounded (load >= pool)" if seconds == float("inf") else f"{seconds * 1000:.3g} ms"


def _erlang(where: str, rate: float, hold: float, servers: int) -> WaitAnswer:
    q = MMcQueue(arrival_rate=rate, hold_time=hold, servers=servers)
    return WaitAnswer(
        where=where,
        model="Erlang C, M/M/c",
        arrival_rate=rate,
        hold_time=hold,
        servers=servers,
        p_wait=q.p_wait,
        mean_wait=q.mean_wait,
        p99_wait=q.wait_percentile(WAIT_QUANTILE),
    )


def _simulated(where: str, rate: float, holds: list[float], servers: int) -> WaitAnswer:
    mean = sum(holds) / len(holds)
    if rate * mean >= servers:
        return _erlang(where, rate, mean, servers)  # unstable: the closed form says so
    sim = simulate_open(rate, holds, servers, checkouts=50_000, seed=0)
    return WaitAnswer(
        where=where,
        model=f"simulation of {len(holds)} measured holds",
        arrival_rate=rate,
        hold_time=mean,
        servers=servers,
        p_wait=sim.p_wait,
        mean_wait=sim.mean_wait,
        p99_wait=sim.wait_percentile(WAIT_QUANTILE),
    )


@dataclass(frozen=True, kw_only=True)
class BudgetOutcome:
    """What :func:`budget` found: the report, where the server figure came from, and (with
    throughput and hold time) a Little's-law recommendation, the budget under it, and the
    queueing answers (P(wait), p99 wait) for the pools as configured and as recommended."""

    report: BudgetReport
    server_source: str
    recommendation: PoolRecommendation | None = None
    recommended_report: BudgetReport | None = None
    waits: tuple[WaitAnswer, ...] = ()
    proxy_pool_for_target: int | None = None
    target_wait: float | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_FITS if self.report.ok else EXIT_DOES_NOT_FIT

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"server": self.server_source, "report": self.report.to_dict()}
        if self.recommendation is not None and self.recommended_report is not None:
            data["recommendation"] = {
                "pool_size": self.recommendation.pool_size,
                "max_overflow": self.recommendation.max_overflow,
                "busy_mean": self.recommendation.basis.busy_mean,
                "explanation": self.recommendation.explain(),
                "fleet_demand": self.recommended_report.total_demand,
                "required_max_connections": self.recommended_report.required_max_connections,
                "fits": self.recommended_report.fits,
            }
        if self.waits:
            data["waits"] = [
                {
                    "where": w.where,
                    "model": w.model,
                    "arrival_rate": w.arrival_rate,
                    "hold_time": w.hold_time,
                    "servers": w.servers,
                    "p_wait": w.p_wait,
                    "mean_wait_s": w.mean_wait,
                    "p99_wait_s": w.p99_wait,
                }
                for w in self.waits
            ]
        if self.proxy_pool_for_target is not None:
            data["proxy_server_pool_for_target"] = {
                "server_pool_size": self.proxy_pool_for_target,
                "p99_wait_target_s": self.target_wait,
            }
        return data


def read_limits_from_url(url: str) -> ServerLimits:
    """The server's limits over one connection (no pool kept); errors masked and clean."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from pooltender.server.limits import read_server_limits

    try:
        engine = create_engine(url, poolclass=NullPool)
    except Exception as exc:  # bad URL, unknown driver
        raise BudgetCommandError(
            f"cannot use --url {mask_url(url)}: {scrub(first_line(exc), url)}"
        ) from None
    try:
        return read_server_limits(engine)
    except Exception as exc:  # connection refused, authentication, permissions
        raise BudgetCommandError(
            f"cannot read limits from {mask_url(url)}: {scrub(first_line(exc), url)}"
        ) from None
    finally:
        engine.dispose()


def budget(
    *,
    config: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    hosts: int | None = None,
    processes: int | None = None,
    worker_model: str | None = None,
    concurrency: int | None = None,
    connections_per_request: int | None = None,
    consumers: int | None = None,
    consumer_connections: int | None = None,
    other_clients: int | None = None,
    reserved: int | None = None,
    proxy: str | None = None,
    proxy_mode: str | None = None,
    proxy_placement: str | None = None,
    proxy_server_pool_size: int | None = None,
    proxy_max_client_conn: int | None = None,
    settings: PoolSettings | None = None,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    url: str | None = None,
    max_connections: int | None = None,
    backend: Backend | None = None,
    throughput: float | None = None,
    hold_time: float | None = None,
    hold_samples: list[float] | None = None,
    target_wait: float | None = None,
) -> BudgetOutcome:
    """Compute the fleet's connection budget.

    Sources, later ones winning key by key: the TOML file ``config``, the ``POOLTENDER_*``
    variables of ``environ`` (default ``os.environ``), then the arguments (``None`` = not
    given; fleet arguments are named like the flags, ``processes`` for
    ``processes_per_host``). ``settings`` replaces the pool settings of file and
    environment. The server's limit comes from ``url`` (read live) or ``max_connections``
    (for ``backend``), or is unknown. ``throughput`` (requests/s across the web fleet) and
    ``hold_time`` (mean seconds a connection is held) add a Little's-law recommendation and
    the queueing answers; ``hold_samples`` (measured holds, seconds) answers by simulation
    instead of Erlang C; ``target_wait`` (seconds) sizes a transaction-mode proxy's server
    pool for that p99 wait. Raises :class:`BudgetCommandError` on bad input or when the
    server cannot be read.
    """
    flags: dict[str, Any] = {
        "hosts": hosts,
        "processes": processes,
        "worker_model": worker_model,
        "concurrency": concurrency,
        "connections_per_request": connections_per_request,
        "consumers": consumers,
        "consumer_connections": consumer_connections,
        "other_clients": other_clients,
        "reserved": reserved,
        "proxy": proxy,
        "proxy_mode": proxy_mode,
        "proxy_placement": proxy_placement,
        "proxy_server_pool_size": proxy_server_pool_size,
        "proxy_max_client_conn": proxy_max_client_conn,
    }
    clean: Callable[[str], str] = (lambda m: m) if url is None else (lambda m: scrub(m, url))
    try:
        merged: dict[str, Any] = {}
        if config is not None:
            merged.update(read_fleet_file(config))
        env = os.environ if environ is None else environ
        merged.update({k: v for k, v in env.items() if k.startswith(DEFAULT_PREFIX)})
        for param, value in flags.items():
            if value is not None:
                key = (FLEET_PARAMS | PROXY_PARAMS)[param][0]
                merged[key] = value
        for key, value in (
            (f"{SERVER_PREFIX}MAX_CONNECTIONS", max_connections),
            (f"{SERVER_PREFIX}BACKEND", backend),
            (f"{SERVER_PREFIX}URL", url),
            (f"{LOAD_PREFIX}THROUGHPUT", throughput),
            (f"{LOAD_PREFIX}HOLD_TIME", hold_time),
            (f"{LOAD_PREFIX}TARGET_WAIT", target_wait),
        ):
            if value is not None:
                merged[key] = value
        fleet_part = {k: v for k, v in merged.items() if k.startswith(FLEET_PREFIX)}
        shape = shape_from_mapping(fleet_part) or FleetShape()
        pool_part = {
            k: v
            for k, v in merged.items()
            if not k.startswith((FLEET_PREFIX, SERVER_PREFIX, LOAD_PREFIX))
        }
        base = settings if settings is not None else PoolSettings.from_mapping(pool_part)
        changes = {
            k: v
            for k, v in (("pool_size", pool_size), ("max_overflow", max_overflow))
            if v is not None
        }
        pool = base.with_values(**changes) if changes else base
        server_url = merged.get(f"{SERVER_PREFIX}URL")
        declared = merged.get(f"{SERVER_PREFIX}MAX_CONNECTIONS")
        kind = str(merged.get(f"{SERVER_PREFIX}BACKEND", "mysql"))
        if kind not in ("mysql", "postgresql"):
            raise ValueError(f"{SERVER_PREFIX}BACKEND must be mysql or postgresql, got {kind!r}")
        rate_raw = merged.get(f"{LOAD_PREFIX}THROUGHPUT")
        hold_raw = merged.get(f"{LOAD_PREFIX}HOLD_TIME")
        target_raw = merged.get(f"{LOAD_PREFIX}TARGET_WAIT")
        rate = None if rate_raw is None else float(rate_raw)
        hold = None if hold_raw is None else float(hold_raw)
        target = None if target_raw is None else float(target_raw)
        if hold is None and hold_samples:
            hold = sum(hold_samples) / len(hold_samples)
        if server_url is not None and declared is not None:
            raise BudgetCommandError("give either --url or --max-connections, not both")
        if (rate is None) != (hold is None):
            raise BudgetCommandError("--throughput and --hold-time go together; give both")
        limits: ServerLimits | None
        if server_url is not None:
            server_url = str(server_url)
            clean = lambda m: scrub(m, server_url)  # noqa: E731
            limits = read_limits_from_url(server_url)
            source = f"{mask_url(server_url)} (read live)"
        elif declared is not None:
            n = int(declared)
            backend_kind: Backend = "postgresql" if kind == "postgresql" else "mysql"
            limits = ServerLimits.declared(n, backend_kind)
            source = f"declared max_connections={n} ({kind})"
        else:
            limits, source = None, "none (give --url or --max-connections for a verdict)"
    except (SettingsError, ValueError, OSError) as exc:
        raise BudgetCommandError(clean(one_line(exc))) from None

    problems = pool.check_against_server(limits) if limits is not None else ()
    report = ConnectionBudget(shape, pool).report(limits, problems, backend=kind)
    if rate is None or hold is None:
        return BudgetOutcome(report=report, server_source=source)
    return _with_load(report, source, shape, pool, limits, kind, rate, hold, hold_samples, target)


def _with_load(
    report: BudgetReport,
    source: str,
    shape: FleetShape,
    pool: PoolSettings,
    limits: ServerLimits | None,
    kind: str,
    throughput: float,
    hold: float,
    hold_samples: list[float] | None,
    target: float | None,
) -> BudgetOutcome:
    """Little's law, the queueing answers and (with a proxy) its server pool's waits."""
    cpr = shape.connections_per_request
    rate = throughput * cpr / shape.processes
    bound = shape.effective_concurrency
    try:
        rec = recommend_pool(rate, hold, concurrency=None if bound is None else bound * cpr)
        recommended = pool.with_values(pool_size=rec.pool_size, max_overflow=rec.max_overflow)
        rec_report = ConnectionBudget(shape, recommended).report(limits, backend=kind)

        def answer(where: str, r: float, servers: int) -> WaitAnswer:
            if hold_samples:
                return _simulated(where, r, hold_samples, servers)
            return _erlang(where, r, hold, servers)

        waits = [
            answer(f"per process, cap {pool.per_process_cap}", rate, pool.per_process_cap),
            answer(f"per process, recommended cap {rec.cap}", rate, rec.cap),
        ]
        proxy_pool: int | None = None
        proxy = shape.proxy
        if proxy is not None and proxy.mode is ProxyMode.TRANSACTION:
            instances = proxy.instances(shape.hosts)
            per_proxy = throughput * cpr / instances
            waits.append(
                answer(
                    f"{proxy.kind} server pool (each of {instances})"
                    if instances > 1
                    else f"{proxy.kind} server pool",
                    per_proxy,
                    proxy.server_pool_size,
                )
            )
            if target is not None:
                proxy_pool = smallest_pool(per_proxy, hold, max_wait=target).servers
    except (SettingsError, ValueError) as exc:
        raise BudgetCommandError(one_line(exc)) from None
    return BudgetOutcome(
        report=report,
        server_source=source,
        recommendation=rec,
        recommended_report=rec_report,
        waits=tuple(waits),
        proxy_pool_for_target=proxy_pool,
        target_wait=target,
    )


def _terms_table(title: str, terms: Sequence[BudgetTerm], total_label: str, total: int) -> Any:
    """One table of budget terms (name, formula, connections) and their total."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("term")
    table.add_column("formula")
    table.add_column("connections", justify="right")
    for term in terms:
        table.add_row(term.name, term.formula, str(term.connections))
    table.add_row(f"[b]{total_label}[/b]", "", f"[b]{total}[/b]")
    return table


def render(outcome: BudgetOutcome) -> None:
    """Print the outcome as rich tables and text; refusals one line each at the end."""
    from rich.console import Console

    console = Console(highlight=False)
    r = outcome.report
    side = r.proxy_side
    title = (
        "Connection budget"
        if side is None
        else "Fleet demand (web processes and consumers go through the proxy; other "
        "clients and reserved slots connect directly)"
    )
    console.print(_terms_table(title, r.terms, "fleet demand", r.total_demand))
    console.print(
        f"pool: {r.settings.key('pool_size')}={r.settings.pool_size} "
        f"{r.settings.key('max_overflow')}={r.settings.max_overflow} "
        f"(per-process cap {r.per_process_cap}, demand {r.per_process_demand}, "
        f"limited by {r.demand_limited_by})"
    )
    if side is not None:
        p = side.proxy
        console.print(
            f"proxy: {p.kind}, {p.mode} mode, {p.placement} ({side.instances} instance(s)): "
            f"{side.client_demand_per_instance} client connections per instance, "
            f"max_client_conn {side.client_limit_per_instance}"
        )
        console.print(
            _terms_table(
                "Server side (connections to the server)",
                side.server_terms,
                "server demand",
                side.server_demand,
            )
        )
    console.print(f"server: {outcome.server_source}")
    if r.client_connection_limit is not None:
        reserve = (
            f"{r.server_reserved} reserved inside max_connections"
            if r.server_reserved_within_max
            else f"{r.server_reserved} SUPER slot beyond max_connections"
        )
        console.print(
            f"server accepts {r.client_connection_limit} client connections "
            f"(max_connections={r.max_connections}, {reserve})"
        )
    for note in r.notes:
        console.print(f"note: {note}")
    if r.max_connections is None:
        console.print(
            f"[b]verdict:[/b] no server limit known; the fleet needs "
            f"max_connections >= {r.required_max_connections}"
        )
    elif r.fits:
        console.print(f"[b green]verdict: FITS[/b green] (headroom {r.headroom})")
    else:
        over = f" (over by {-r.headroom})" if r.headroom is not None and r.headroom < 0 else ""
        tail = "; remedies:" if r.remedies else " (the refused lines below name the term)"
        console.print(f"[b red]verdict: DOES NOT FIT[/b red]{over}{tail}")
        for remedy in r.remedies:
            console.print(f"  - {remedy.action}")
    for problem in r.settings_problems:
        console.print(f"[red]setting:[/red] {problem}")
    needed = f"\nmax_connections this fleet needs: {r.required_max_connections}"
    if r.max_connections is not None and not r.needs_more_connections:
        needed += f" (the server has {r.max_connections}: no change needed)"
    console.print(needed)
    for line in r.raise_lines:
        console.print(line, markup=False)
    rec, rec_report = outcome.recommendation, outcome.recommended_report
    if rec is not None and rec_report is not None:
        console.print("\n[b]Little's law[/b] (per process):")
        console.print(f"  {rec.explain()}")
        console.print(
            f"  recommended {r.settings.key('pool_size')}={rec.pool_size} "
            f"{r.settings.key('max_overflow')}={rec.max_overflow}: fleet demand "
            f"{rec_report.total_demand}, needs max_connections >= "
            f"{rec_report.required_max_connections}"
        )
    if outcome.waits:
        console.print("\n[b]Waiting for a connection[/b] (Poisson arrivals):")
        for wait in outcome.waits:
            console.print(f"  {wait.explain()}", markup=False)
    if outcome.proxy_pool_for_target is not None and outcome.target_wait is not None:
        console.print(
            f"  smallest proxy server_pool_size for p99 wait <= {_ms(outcome.target_wait)}: "
            f"{outcome.proxy_pool_for_target}"
        )
    for line in r.refusals:
        console.print(f"refused: {line}", markup=False, soft_wrap=True)


_EPILOG = """\b
Examples:
  # issue 3's fleet: 4 gunicorn workers x 32 threads, the post-mortem's 20/50
  pooltender budget --processes 4 --worker-model threads --concurrency 32 \\
      --pool-size 20 --max-overflow 50 --other-clients 1 --max-connections 151
  # the same settings under gevent: each worker reaches its cap of 70
  pooltender budget --processes 4 --worker-model gevent \\
      --pool-size 20 --max-overflow 50 --max-connections 151
  # read max_connections from the live server; size the pool by Little's law and Erlang C
  pooltender budget --url mysql+mysqldb://app@db/app --processes 4 \\
      --worker-model threads --concurrency 32 --throughput 633 --hold-time 0.0016
  # the fleet in a file (tables pool, fleet, fleet.proxy, server, load); env overrides
  POOLTENDER_FLEET_HOSTS=60 pooltender budget --config fleet.toml
Exit status: 0 fits (or no server figure), 1 does not fit, 2 usage or connection error.
"""


def _fleet_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One click option per FleetShape / ProxyShape field, from the dataclasses' metadata:
    the flag, the help, the minimum, the choices and the default are the field's."""
    defaults = {f.name: f.default for f in dataclasses.fields(FleetShape)}
    proxy_defaults = {f.name: f.default for f in dataclasses.fields(ProxyShape)}
    specs = [(name, k, defaults[name], False) for name, k in shape_keys(FleetShape).items()]
    specs += [(name, k, proxy_defaults[name], True) for name, k in shape_keys(ProxyShape).items()]
    for _name, spec, default, is_proxy in reversed(specs):
        kind: click.ParamType[Any]
        if spec.choices is not None:
            kind = click.Choice([m.value for m in spec.choices])
        else:
            kind = click.IntRange(spec.minimum) if spec.minimum is not None else click.INT
        shown = default.value if hasattr(default, "value") else default
        help_text = spec.help
        if is_proxy:
            help_text += f" [with --proxy; default {shown}]"
            shown = None
        command = click.option(
            spec.option,
            _param(spec.option),
            type=kind,
            default=shown,
            show_default=shown is not None,
            help=help_text,
        )(command)
    return command


@click.command("budget", epilog=_EPILOG)
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="Fleet file (TOML); POOLTENDER_* variables and flags override it key by key.",
)
@_fleet_options
@click.option(
    "--pool-size",
    type=int,
    default=None,
    help="Per-process pool_size [default: POOLTENDER_POOL_SIZE or 4].",
)
@click.option(
    "--max-overflow",
    type=int,
    default=None,
    help="Per-process max_overflow [default: POOLTENDER_MAX_OVERFLOW or 2].",
)
@click.option(
    "--url",
    default=None,
    metavar="URL",
    help="Read max_connections from this server (password never printed).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    default=None,
    help="The server's max_connections, given by hand.",
)
@click.option(
    "--backend",
    type=click.Choice(["mysql", "postgresql"]),
    default=None,
    help="Server kind for --max-connections (reserve rules) [default: mysql].",
)
@click.option(
    "--throughput",
    type=float,
    default=None,
    help="Requests/s across the web fleet, for Little's law and the wait figures.",
)
@click.option(
    "--hold-time", type=float, default=None, help="Mean seconds a connection is held per checkout."
)
@click.option(
    "--hold-samples",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="File of measured hold times (seconds, one per line): waits by simulation.",
)
@click.option(
    "--target-wait",
    type=float,
    default=None,
    help="p99 wait (seconds) to size a transaction-mode proxy's server pool for.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def budget_command(as_json: bool, hold_samples: str | None, **options: Any) -> None:
    """Can the whole fleet stay within the server's (and its proxy's) connection limits?

    Every process has its own pool, so the fleet can open hosts x processes x
    min(pool cap, concurrency x connections per request) + consumers + other clients +
    reserved connections. With a proxy (--proxy), those are client connections to it,
    checked against its max_client_conn, and the server sees the proxy's server pools
    plus the direct clients. This prints each term, the verdict, the remedies, the SQL
    that raises max_connections when (and only when) the fleet needs more, and with
    --throughput / --hold-time the probability and p99 of a wait for a connection.
    """
    ctx = click.get_current_context()
    for name in (*FLEET_PARAMS, *PROXY_PARAMS):
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.COMMANDLINE:
            options[name] = None
    samples = _read_samples(hold_samples) if hold_samples is not None else None
    outcome = budget(**options, hold_samples=samples)
    if as_json:
        click.echo(json.dumps(outcome.to_dict(), indent=2, default=str))
    else:
        render(outcome)
    raise click.exceptions.Exit(outcome.exit_code)


def _read_samples(path: str) -> list[float]:
    values: list[float] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                value = float(text)
            except ValueError:
                raise BudgetCommandError(
                    f"{path}:{number}: {text!r} is not a number of seconds"
                ) from None
            if not value >= 0:
                raise BudgetCommandError(f"{path}:{number}: a hold time must be >= 0")
            values.append(value)
    if not values:
        raise BudgetCommandError(f"{path}: no hold times")
    return values


def register(main: click.Group) -> None:
    """Add ``budget`` to the ``pooltender`` command group."""
    main.add_command(budget_command)
