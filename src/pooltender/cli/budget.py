"""``pooltender budget``: the fleet's connection arithmetic from flags, with or without a server.

:func:`budget` is the command and the API: it takes typed arguments and returns a
:class:`BudgetOutcome`; the click command only parses flags, calls it and prints. Exit codes:
0 the fleet fits (or no server figure was given), 1 it does not fit, 2 usage or connection
error. A server URL is only ever shown with its password masked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import click

from pooltender.budget import (
    BudgetReport,
    ConnectionBudget,
    FleetShape,
    PoolRecommendation,
    WorkerModel,
    recommend_pool,
)
from pooltender.limits import Backend, ServerLimits
from pooltender.settings import PoolSettings, SettingsError

EXIT_FITS, EXIT_DOES_NOT_FIT, EXIT_ERROR = 0, 1, 2


class BudgetCommandError(click.ClickException):
    """A usage or connection problem; its message never contains a password."""

    exit_code = EXIT_ERROR


@dataclass(frozen=True, kw_only=True)
class BudgetOutcome:
    """What :func:`budget` found: the report, where the server figure came from, and (with
    throughput and hold time) a Little's-law recommendation and the budget under it."""

    report: BudgetReport
    server_source: str
    recommendation: PoolRecommendation | None = None
    recommended_report: BudgetReport | None = None

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
        return data


#: Query parameters that carry a credential (libpq ``password``/``sslpassword``, MySQL
#: drivers' ``passwd``/``password``, cloud keys and tokens).
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key", re.IGNORECASE)


def _secret_params(url: str) -> dict[str, str]:
    from sqlalchemy.engine import make_url

    try:
        query = make_url(url).query
    except Exception:
        return {}
    found: dict[str, str] = {}
    for name, value in query.items():
        for each in (value,) if isinstance(value, str) else value:
            if _SECRET_PARAM.search(name) and each:
                found[name] = each
    return found


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: the ``user:password@`` form and query
    parameters named like a credential (``?password=``, ``?passwd=``); unparsable URLs are not
    echoed."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # ArgumentError, or ValueError for a bad port
        return "<unparsable URL>"
    secrets_in_query = _secret_params(url)
    if secrets_in_query:
        parsed = parsed.update_query_dict({name: "***" for name in secrets_in_query})
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


_USERINFO_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def _scrub(message: str, url: str) -> str:
    """Remove the URL and its password from an error message, parsable URL or not."""
    from sqlalchemy.engine import make_url

    message = message.replace(url, mask_url(url))
    try:
        password = make_url(url).password
    except Exception:
        password = None
    if password:
        message = message.replace(str(password), "***")
    for value in _secret_params(url).values():
        message = message.replace(value, "***")
    return _USERINFO_PASSWORD.sub(r"\1***@", message)


def read_limits_from_url(url: str) -> ServerLimits:
    """The server's limits over one connection (no pool kept); errors masked and clean."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from pooltender.limits import read_server_limits

    try:
        engine = create_engine(url, poolclass=NullPool)
    except Exception as exc:  # bad URL, unknown driver
        raise BudgetCommandError(
            f"cannot use --url {mask_url(url)}: {_scrub(_first_line(exc), url)}"
        ) from None
    try:
        return read_server_limits(engine)
    except Exception as exc:  # connection refused, authentication, permissions
        raise BudgetCommandError(
            f"cannot read limits from {mask_url(url)}: {_scrub(_first_line(exc), url)}"
        ) from None
    finally:
        engine.dispose()


def budget(
    *,
    hosts: int = 1,
    processes: int = 1,
    worker_model: WorkerModel | str = WorkerModel.SYNC,
    concurrency: int | None = None,
    connections_per_request: int = 1,
    consumers: int = 0,
    consumer_connections: int = 1,
    other_clients: int = 0,
    reserved: int = 0,
    settings: PoolSettings | None = None,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    url: str | None = None,
    max_connections: int | None = None,
    backend: Backend = "mysql",
    throughput: float | None = None,
    hold_time: float | None = None,
) -> BudgetOutcome:
    """Compute the fleet's connection budget.

    ``settings`` default to ``PoolSettings.from_env()``; ``pool_size`` / ``max_overflow``
    override them. The server's limit comes from ``url`` (read live) or ``max_connections``
    (given by hand for ``backend``), or is unknown. ``throughput`` (requests/s across the
    whole web fleet) and ``hold_time`` (mean seconds a connection is held) add a
    Little's-law recommendation. Raises :class:`BudgetCommandError` on bad input or when the
    server cannot be read.
    """
    if url is not None and max_connections is not None:
        raise BudgetCommandError("give either --url or --max-connections, not both")
    if (throughput is None) != (hold_time is None):
        raise BudgetCommandError("--throughput and --hold-time go together; give both")
    try:
        base = settings if settings is not None else PoolSettings.from_env()
        changes = {
            k: v
            for k, v in (("pool_size", pool_size), ("max_overflow", max_overflow))
            if v is not None
        }
        pool = base.with_values(**changes) if changes else base
        shape = FleetShape(
            hosts=hosts,
            processes_per_host=processes,
            worker_model=WorkerModel(worker_model),
            concurrency=concurrency,
            connections_per_request=connections_per_request,
            consumers=consumers,
            connections_per_consumer=consumer_connections,
            other_clients=other_clients,
            reserved=reserved,
        )
        limits: ServerLimits | None
        if url is not None:
            limits, source = read_limits_from_url(url), f"{mask_url(url)} (read live)"
        elif max_connections is not None:
            limits = ServerLimits.declared(max_connections, backend)
            source = f"declared max_connections={max_connections} ({backend})"
        else:
            limits, source = None, "none (give --url or --max-connections for a verdict)"
    except (SettingsError, ValueError) as exc:
        message = str(exc) if url is None else _scrub(str(exc), url)
        raise BudgetCommandError(message) from None

    problems = pool.check_against_server(limits) if limits is not None else ()
    report = ConnectionBudget(shape, pool).report(limits, problems, backend=backend)
    if throughput is None or hold_time is None:
        return BudgetOutcome(report=report, server_source=source)

    rate = throughput * connections_per_request / shape.processes
    bound = shape.effective_concurrency
    try:
        rec = recommend_pool(
            rate,
            hold_time,
            concurrency=None if bound is None else bound * connections_per_request,
        )
        recommended = pool.with_values(pool_size=rec.pool_size, max_overflow=rec.max_overflow)
    except (SettingsError, ValueError) as exc:
        raise BudgetCommandError(str(exc)) from None
    rec_report = ConnectionBudget(shape, recommended).report(limits, backend=backend)
    return BudgetOutcome(
        report=report, server_source=source, recommendation=rec, recommended_report=rec_report
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def render(outcome: BudgetOutcome) -> None:
    """Print the outcome as rich tables and text."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    r = outcome.report
    table = Table(title="Connection budget", title_justify="left")
    table.add_column("term")
    table.add_column("formula")
    table.add_column("connections", justify="right")
    for term in r.terms:
        table.add_row(term.name, term.formula, str(term.connections))
    table.add_row("[b]fleet demand[/b]", "", f"[b]{r.total_demand}[/b]")
    console.print(table)
    console.print(
        f"pool: {r.settings.key('pool_size')}={r.settings.pool_size} "
        f"{r.settings.key('max_overflow')}={r.settings.max_overflow} "
        f"(per-process cap {r.per_process_cap}, demand {r.per_process_demand}, "
        f"limited by {r.demand_limited_by})"
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
        console.print(
            f"[b red]verdict: DOES NOT FIT[/b red] (over by {-(r.headroom or 0)}); remedies:"
        )
        for remedy in r.remedies:
            console.print(f"  - {remedy.action}")
    for problem in r.settings_problems:
        console.print(f"[red]setting:[/red] {problem}")
    needed = f"\nmax_connections this fleet needs: {r.required_max_connections}"
    if r.max_connections is not None and r.fits:
        needed += f" (the server has {r.max_connections}: no change needed)"
    console.print(needed)
    console.print(r.set_global_sql, markup=False)
    console.print(r.config_file_lines, markup=False)
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


_EPILOG = """\b
Examples:
  # issue 3's fleet: 4 gunicorn workers x 32 threads, the post-mortem's 20/50
  pooltender budget --processes 4 --worker-model threads --concurrency 32 \\
      --pool-size 20 --max-overflow 50 --other-clients 1 --max-connections 151
  # the same settings under gevent: each worker reaches its cap of 70
  pooltender budget --processes 4 --worker-model gevent \\
      --pool-size 20 --max-overflow 50 --max-connections 151
  # read max_connections from the live server; size the pool by Little's law
  pooltender budget --url mysql+mysqldb://app@db/app --processes 4 \\
      --worker-model threads --concurrency 32 --throughput 633 --hold-time 0.0016
Exit status: 0 fits (or no server figure), 1 does not fit, 2 usage or connection error.
"""


@click.command("budget", epilog=_EPILOG)
@click.option(
    "--hosts",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="App hosts sharing the database server.",
)
@click.option(
    "--processes",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Web processes (e.g. gunicorn workers) per host.",
)
@click.option(
    "--worker-model",
    type=click.Choice([m.value for m in WorkerModel]),
    default="sync",
    show_default=True,
    help="sync: 1 request at a time; threads: --concurrency threads; gevent, "
    "eventlet, asyncio: unbounded unless --concurrency is given.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=None,
    help="Threads / greenlets / tasks per process.",
)
@click.option(
    "--connections-per-request",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Connections one request holds at once.",
)
@click.option(
    "--consumers",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Queue consumer processes.",
)
@click.option(
    "--consumer-connections",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="Connections per consumer process.",
)
@click.option(
    "--other-clients",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Cron jobs, admin tools, migrations.",
)
@click.option(
    "--reserved",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Slots we keep free (monitoring, an admin shell).",
)
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
    default="mysql",
    show_default=True,
    help="Server kind for --max-connections (reserve rules).",
)
@click.option(
    "--throughput",
    type=float,
    default=None,
    help="Requests/s across the web fleet, for a Little's-law recommendation.",
)
@click.option(
    "--hold-time", type=float, default=None, help="Mean seconds a connection is held per checkout."
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def budget_command(as_json: bool, **options: Any) -> None:
    """Can the whole fleet stay within the server's max_connections?

    Every process has its own pool, so the fleet can open hosts x processes x
    min(pool cap, concurrency x connections per request) + consumers + other clients +
    reserved connections. This prints each term, the verdict, the remedies, and the
    SET GLOBAL / my.cnf lines (ALTER SYSTEM / postgresql.conf) for the max_connections
    the fleet needs.
    """
    outcome = budget(**options)
    if as_json:
        click.echo(json.dumps(outcome.to_dict(), indent=2, default=str))
    else:
        render(outcome)
    raise click.exceptions.Exit(outcome.exit_code)


def register(main: click.Group) -> None:
    """Add ``budget`` to the ``pooltender`` command group."""
    main.add_command(budget_command)
