"""``pooltender kill-idle URL --older-than SECONDS``: list (and with ``--apply`` end) idle
connections, like pt-kill for sleeping connections. See :mod:`pooltender.server.killer` for what is
selected and how. Dry run by default. Exit 0 (the counts are in the output), 2 when the
server cannot be reached. URLs are printed with the password masked.
"""

from __future__ import annotations

import click

from pooltender.cli.report_output import emit_report
from pooltender.server.killer import KillReport, kill_idle
from pooltender.server.snapshot import InspectionError

EXIT_OK, EXIT_ERROR = 0, 2


class KillIdleCommandError(click.ClickException):
    """Cannot connect or bad input; the message never contains a password."""

    exit_code = EXIT_ERROR


def render(report: KillReport) -> None:
    """Print the candidates as a rich table and the counts."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    verb = "killed" if report.applied else "would kill"
    match = report.match
    scope = f"idle >= {match.older_than:g} s"
    if match.user:
        scope += f", user {match.user}"
    if match.host:
        scope += f", host {match.host}"
    if match.include_idle_in_transaction:
        scope += ", including idle in transaction"
    console.print(f"{report.url}: {scope}", markup=False)
    table = Table(title=f"Connections pooltender {verb}", title_justify="left")
    for column in ("id", "user", "host", "db", "state", "idle s", "result"):
        table.add_column(column, justify="right" if column in ("id", "idle s") else "left")
    for c in report.candidates:
        if not report.applied:
            result = "dry run"
        elif c.id in report.killed:
            result = "killed"
        else:
            result = f"not killed: {report.failed.get(c.id, '?')}"
        table.add_row(
            str(c.id),
            c.user or "",
            c.host or "",
            c.database or "",
            c.state,
            f"{c.seconds_in_state:.0f}",
            result,
        )
    console.print(table)
    if report.applied:
        console.print(
            f"{len(report.candidates)} matched, {len(report.killed)} killed, "
            f"{len(report.failed)} not killed"
        )
    else:
        console.print(
            f"{len(report.candidates)} matched; dry run: nothing killed (add --apply to kill)"
        )


@click.command("kill-idle")
@click.argument("url", metavar="URL")
@click.option(
    "--older-than",
    type=click.FloatRange(0),
    required=True,
    metavar="SECONDS",
    help="Only connections idle at least this long.",
)
@click.option("--user", default=None, help="Only this account's connections.")
@click.option("--host", default=None, help="Only connections from this client address.")
@click.option(
    "--include-idle-in-transaction",
    is_flag=True,
    help="Also end connections idle inside an open transaction (rolls it back).",
)
@click.option("--apply", is_flag=True, help="Kill them; without it, only list them.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def kill_idle_command(
    url: str,
    older_than: float,
    user: str | None,
    host: str | None,
    include_idle_in_transaction: bool,
    apply: bool,
    as_json: bool,
) -> None:
    """End idle client connections (dry run unless --apply), like pt-kill --match-command Sleep.

    Never touches its own connection, server threads or replication; only idle ones (MySQL
    Sleep without an open InnoDB transaction, PostgreSQL state 'idle'), unless
    --include-idle-in-transaction. Each is re-checked right before the kill. MySQL uses
    KILL CONNECTION id, PostgreSQL pg_terminate_backend(pid).
    """
    try:
        report = kill_idle(
            url,
            older_than=older_than,
            user=user,
            host=host,
            include_idle_in_transaction=include_idle_in_transaction,
            apply=apply,
        )
    except (InspectionError, ValueError) as exc:
        raise KillIdleCommandError(str(exc)) from None
    emit_report(report, as_json=as_json, render=render)
    raise click.exceptions.Exit(EXIT_OK)


def register(main: click.Group) -> None:
    """Add ``kill-idle`` to the ``pooltender`` command group."""
    main.add_command(kill_idle_command)
