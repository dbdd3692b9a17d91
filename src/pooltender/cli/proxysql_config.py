"""``pooltender proxysql-config``: a ``proxysql.cnf`` from the fleet's connection budget.

:func:`proxysql_config_command` takes ``pooltender budget``'s fleet options (``--config``, the
fleet flags, ``--pool-size`` ... ``--max-connections``), computes the budget with ProxySQL in
front (``--proxy proxysql`` is implied when no proxy is configured), refuses a fleet that
does not fit (exit 1, one line per limit exceeded), and prints the configuration
(:func:`pooltender.proxysql.proxysql_config`) or writes it to ``--output``. Exit 2 on usage
errors. No password is ever taken or written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from pooltender.budget import PROXY_PREFIX, read_fleet_file
from pooltender.cli.budget import (
    EXIT_DOES_NOT_FIT,
    EXIT_ERROR,
    FLEET_PARAMS,
    PROXY_PARAMS,
    budget,
    budget_command,
)
from pooltender.proxysql import Backend, ProxySQLConfigError, proxysql_config
from pooltender.settings import SettingsError

_BUDGET_PARAMS = (
    "config",
    *FLEET_PARAMS,
    *PROXY_PARAMS,
    "pool_size",
    "max_overflow",
    "url",
    "max_connections",
)


class ProxySQLCommandError(click.ClickException):
    exit_code = EXIT_ERROR


@click.command("proxysql-config")
@click.option(
    "--server",
    "servers",
    multiple=True,
    metavar="HOST[:PORT]",
    help="A MySQL / MariaDB backend (repeatable) [default: the host of --url].",
)
@click.option(
    "--user", "users", multiple=True, required=True, help="Application user (repeatable)."
)
@click.option("--schema", default=None, help="default_schema of the users.")
@click.option("--hostgroup", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--listen", default="0.0.0.0:6033", show_default=True, help="ProxySQL's MySQL interface."
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the file here instead of printing it.",
)
def proxysql_config_command(
    servers: tuple[str, ...],
    users: tuple[str, ...],
    schema: str | None,
    hostgroup: int,
    listen: str,
    output: str | None,
    **options: Any,
) -> None:
    """Generate ProxySQL's configuration from the fleet's connection budget.

    mysql_servers.max_connections is the proxy's server pool per backend, mysql-max_connections
    its client limit, mysql_users.max_connections what the fleet opens to one instance;
    multiplexing on, transactions persistent, backend connections retired before the server
    would time them out. Passwords are CHANGE_ME placeholders.
    """
    ctx = click.get_current_context()
    for name in (*FLEET_PARAMS, *PROXY_PARAMS):
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.COMMANDLINE:
            options[name] = None
    if options.get("proxy") is None and _configured_proxy_kind(options.get("config")) is None:
        options["proxy"] = "proxysql"  # implied; a configured kind is kept (and checked)
    report = budget(**options).report
    if report.proxy_side is not None and not report.fits:
        for line in report.refusals:
            click.echo(f"refused: {line}", err=True)
        raise click.exceptions.Exit(EXIT_DOES_NOT_FIT)
    try:
        backends = [Backend.parse(s) for s in servers]
        if not backends and options.get("url"):
            from sqlalchemy.engine import make_url

            url = make_url(options["url"])
            backends = [Backend(url.host or "127.0.0.1", url.port or 3306)]
        text = proxysql_config(
            report,
            backends=backends,
            users=users,
            hostgroup=hostgroup,
            schema=schema,
            listen=listen,
        )
    except ProxySQLConfigError as exc:
        raise ProxySQLCommandError(str(exc)) from None
    if output is None:
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


for _param in budget_command.params:
    if _param.name in _BUDGET_PARAMS:
        proxysql_config_command.params.append(_param)


def _configured_proxy_kind(config: str | None) -> object:
    """The proxy kind the file or the environment sets, if any (errors are left for
    :func:`budget` to report)."""
    kind: object = os.environ.get(f"{PROXY_PREFIX}KIND") or None
    if kind is None and config is not None:
        try:
            kind = read_fleet_file(config).get(f"{PROXY_PREFIX}KIND")
        except (SettingsError, ValueError, OSError):
            return None
    return kind


def register(main: click.Group) -> None:
    """Add ``proxysql-config`` to the ``pooltender`` command group."""
    main.add_command(proxysql_config_command)
