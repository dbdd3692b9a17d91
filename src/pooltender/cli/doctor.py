"""``pooltender doctor [URL]``: who holds the server's connections, what is wrong, what to change.

The command only parses flags, calls :func:`pooltender.server.doctor.doctor` and prints (rich
tables, or ``--json``). The fleet-shape flags are ``pooltender budget``'s own options; giving
any of them adds the fleet budget. Exit codes: 0 healthy, 1 findings (warning or worse),
2 no URL or cannot connect. URLs are printed with the password masked, errors included.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from pooltender.budget import FleetShape, WorkerModel
from pooltender.cli.budget import budget_command
from pooltender.cli.report_output import emit_report
from pooltender.server.doctor import (
    EXIT_CANNOT_CONNECT,
    DoctorReport,
    Severity,
    Thresholds,
    doctor,
)
from pooltender.server.snapshot import InspectionError, ServerSnapshot
from pooltender.settings import PoolSettings, SettingsError

#: The option defaults are the library's (written once, in Thresholds).
_DEFAULT_THRESHOLDS = Thresholds()

FLEET_OPTIONS = (
    "hosts",
    "processes",
    "worker_model",
    "concurrency",
    "connections_per_request",
    "consumers",
    "consumer_connections",
    "other_clients",
    "reserved",
    "pool_size",
    "max_overflow",
)

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


class DoctorCommandError(click.ClickException):
    """No URL, or the server cannot be reached; the message never contains a password."""

    exit_code = EXIT_CANNOT_CONNECT


def _table(title: str, counts: dict[str, int], label: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column(label)
    table.add_column("connections", justify="right")
    for key, value in counts.items():
        table.add_row(key, str(value))
    return table


def _summary(s: ServerSnapshot) -> Any:
    from rich.table import Table

    table = Table(title="Server", title_justify="left", show_header=False)
    table.add_column("figure")
    table.add_column("value", overflow="fold")
    usage = f" ({s.usage:.0%})" if s.usage is not None else ""
    rows: list[tuple[str, str]] = [
        ("url", s.url),
        ("server", f"{s.backend} {s.server_version}"),
        ("connected", f"{s.connected} of max_connections={s.max_connections}{usage}"),
        ("client connections seen", str(len(s.client_connections()))),
        ("reserved", str(s.reserved_connections)),
    ]
    for key in (
        "Threads_running",
        "Max_used_connections",
        "Connection_errors_max_connections",
        "Aborted_connects",
    ):
        if key in s.status:
            rows.append((key, f"{s.status[key]:g}"))
    for key in ("wait_timeout", "interactive_timeout", "idle_in_transaction_session_timeout"):
        if key in s.variables:
            rows.append((key, s.variables[key]))
    if s.memory_per_connection_bytes is not None:
        rows.append(
            ("session buffers / connection", f"~{s.memory_per_connection_bytes / 2**20:.1f} MiB")
        )
    rows.append(("inspecting as", f"{s.current_user} (privileged: {s.privileged})"))
    for key, value in rows:
        table.add_row(key, value)
    return table


def _proxy_table(report: DoctorReport) -> Any:
    """PgBouncer's pools beside the app's client connections and the server's backends."""
    from rich.table import Table

    table = Table(title="PgBouncer (SHOW POOLS) and the server", title_justify="left")
    for column in (
        "database/user",
        "mode",
        "app clients",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "maxwait s",
        "server backends",
    ):
        table.add_column(column, justify="left" if column in ("database/user", "mode") else "right")
    for line in report.proxy or ():
        p = line.pool
        app = "-" if line.app_client_connections is None else str(line.app_client_connections)
        table.add_row(
            f"{p.database}/{p.user}",
            p.pool_mode,
            app,
            *(str(n) for n in (p.cl_active, p.cl_waiting, p.sv_active, p.sv_idle, p.sv_used)),
            f"{p.maxwait:g}",
            str(line.server_backends),
        )
    return table


def render(report: DoctorReport) -> None:
    """Print the report with rich: summary, groupings, budget verdict, ranked findings."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    s = report.snapshot
    console.print(_summary(s))
    console.print(_table("By user", s.by_user(), "user"))
    console.print(_table("By host", s.by_host(), "host"))
    console.print(_table("By state", s.by_state(), "state"))
    if report.proxy is not None:
        console.print(_proxy_table(report))
    if report.budget is not None:
        verdict = "FITS" if report.budget.ok else "DOES NOT FIT"
        console.print(f"fleet budget: {verdict}: {report.budget.summary()}", markup=False)
    if not report.findings:
        console.print("[bold green]healthy[/bold green]: no findings")
        return
    console.print(f"\n[bold]Findings[/bold] ({len(report.findings)}, worst first)")
    for number, f in enumerate(report.findings, 1):
        style = _SEVERITY_STYLE[str(f.severity)]
        console.print(
            f"\n{number}. [{style}]{str(f.severity).upper()}[/{style}] "
            f"{escape(f'[{f.code}]')} {escape(f.title)}",
            soft_wrap=True,
        )
        for line in f.evidence:
            console.print(f"   evidence: {line}", markup=False, soft_wrap=True)
        for line in f.remedy:
            if "\n" in line:
                console.print("   remedy:", markup=False)
                for sub in line.splitlines():
                    console.print(f"     {sub}", markup=False, soft_wrap=True)
            else:
                console.print(f"   remedy: {line}", markup=False, soft_wrap=True)
    verdict = (
        "[bold green]healthy[/bold green] (info only)"
        if report.healthy
        else "[bold red]needs attention[/bold red]"
    )
    console.print(f"\nverdict: {verdict}")


#: The Thresholds fields a flag sets: (flag, parameter, type, help); defaults from Thresholds.
_THRESHOLD_FLAGS: tuple[tuple[str, str, click.ParamType[Any], str], ...] = (
    ("--near-limit", "near_limit", click.FloatRange(0, 1, min_open=True),
     "Fraction of max_connections that is a finding."),
    ("--idle-after", "idle_after", click.FloatRange(0),
     "Seconds idle before a connection counts as long-idle."),
    ("--idle-per-host", "idle_per_group", click.IntRange(0),
     "Long-idle connections from one account on one host that are a finding."),
    ("--idle-in-transaction-after", "idle_in_transaction_after", click.FloatRange(0),
     "Seconds idle inside a transaction that are a finding."),
)  # fmt: skip


def _threshold_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add one option per :data:`_THRESHOLD_FLAGS` entry, in that order in ``--help``."""
    for flag, name, kind, help_text in reversed(_THRESHOLD_FLAGS):
        command = click.option(
            flag,
            name,
            type=kind,
            default=getattr(_DEFAULT_THRESHOLDS, name),
            show_default=True,
            help=help_text,
        )(command)
    return command


def _thresholds(options: dict[str, Any]) -> Thresholds:
    """The :class:`Thresholds` the :data:`_THRESHOLD_FLAGS` options set (by parameter name)."""
    return Thresholds(**{name: options[name] for _, name, _, _ in _THRESHOLD_FLAGS})


_EPILOG = """\b
Examples:
  pooltender doctor mysql+mysqldb://ops@db/app
  DATABASE_URL=postgresql+psycopg://ops@db/app pooltender doctor --json
  # line up PgBouncer's pools (its admin console) with the server's backends
  pooltender doctor postgresql+psycopg://ops@db/app \\
      --pgbouncer 'host=pgb port=6432 dbname=pgbouncer user=ops'
  # add the fleet budget (the flags of `pooltender budget`)
  pooltender doctor mysql+mysqldb://ops@db/app --processes 4 --worker-model gevent \\
      --pool-size 20 --max-overflow 50
Exit status: 0 healthy, 1 findings (warning or worse), 2 no URL or cannot connect.
"""


@click.command("doctor", epilog=_EPILOG)
@click.argument("url", required=False, metavar="[URL]")
@click.option(
    "--json", "as_json", is_flag=True, help="Print findings, snapshot and budget as JSON."
)
@click.option(
    "--pool-recycle",
    type=int,
    default=None,
    help="The application's pool_recycle, checked against wait_timeout "
    "[default: POOLTENDER_POOL_RECYCLE if set].",
)
@click.option(
    "--pgbouncer",
    metavar="DSN",
    default=None,
    help="PgBouncer's admin console (libpq DSN or postgresql:// URL, dbname=pgbouncer): line "
    "up its SHOW POOLS with the server's backends and the fleet's client connections.",
)
@click.option(
    "--user",
    "users",
    multiple=True,
    metavar="USER",
    help="Only look at this account's connections (repeatable); server-wide checks still apply.",
)
@_threshold_options
def doctor_command(
    url: str | None,
    as_json: bool,
    pool_recycle: int | None,
    pgbouncer: str | None,
    users: tuple[str, ...],
    **options: Any,
) -> None:
    """Diagnose a database server's connections: ranked findings with evidence and remedy.

    URL defaults to DATABASE_URL. Reads the process list, status counters and connection
    settings (MySQL / MariaDB or PostgreSQL) over one short, read-only connection, groups the
    connections by user, host and state, and reports: connections near max_connections (with
    the max_connections to set now and in my.cnf), long-idle piles from one host (a pool too
    large, or a leak), transactions left idle, pool_recycle not below wait_timeout, and
    applications using privileged accounts. With --pgbouncer, PgBouncer's pools beside the
    server's backends (clients waiting in the proxy, backends that bypass it). Give fleet
    flags (--processes, --pool-size, ...) to add the fleet budget.
    """
    url = url or os.environ.get("DATABASE_URL")
    if not url:
        raise DoctorCommandError("no database URL: give one or set DATABASE_URL")
    ctx = click.get_current_context()
    given = {
        name
        for name in FLEET_OPTIONS
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    }
    fleet: FleetShape | None = None
    settings: PoolSettings | None = None
    try:
        if given:
            fleet = FleetShape(
                hosts=options["hosts"],
                processes_per_host=options["processes"],
                worker_model=WorkerModel(options["worker_model"]),
                concurrency=options["concurrency"],
                connections_per_request=options["connections_per_request"],
                consumers=options["consumers"],
                connections_per_consumer=options["consumer_connections"],
                other_clients=options["other_clients"],
                reserved=options["reserved"],
            )
            changes = {
                k: options[k] for k in ("pool_size", "max_overflow") if options[k] is not None
            }
            settings = PoolSettings.from_env().with_values(**changes)
        report = doctor(
            url,
            thresholds=_thresholds(options),
            pool_recycle=pool_recycle,
            fleet=fleet,
            settings=settings,
            users=users,
            pgbouncer=pgbouncer,
        )
    except (InspectionError, SettingsError, ValueError) as exc:
        raise DoctorCommandError(str(exc)) from None
    emit_report(report, as_json=as_json, render=render)
    raise click.exceptions.Exit(report.exit_code)


for _param in budget_command.params:
    if _param.name in FLEET_OPTIONS:
        doctor_command.params.append(_param)


def register(main: click.Group) -> None:
    """Add ``doctor`` to the ``pooltender`` command group."""
    main.add_command(doctor_command)


__all__ = ["Severity", "doctor_command", "register"]
