"""``pooltender`` command line: each subcommand lives in its own module of this package.

Every module in :data:`SUBCOMMANDS` exposes ``register(main)``. A subcommand whose optional
third-party dependency is not installed (``pooltender lint`` needs libcst) is still listed,
and running it says which extra to install, in one line with exit code 2; every other
subcommand keeps working. A missing module of pooltender itself is a packaging mistake and
fails loudly at start-up instead of hiding the command.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

#: module -> (command name, the extra that provides its third-party dependencies)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "budget": ("budget", "cli"),
    "doctor": ("doctor", "cli"),
    "top": ("top", "cli"),
    "lint": ("lint", "lint"),
    "kill_idle": ("kill-idle", "cli"),
    "proxysql_config": ("proxysql-config", "cli"),
}

EXIT_MISSING_DEPENDENCY = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Keep a SQLAlchemy / Flask-SQLAlchemy fleet inside its database's connection budget.

    Pool settings come from POOLTENDER_* environment variables (see pooltender.settings).
    """


def missing_dependency_command(name: str, extra: str, dependency: str) -> click.Command:
    """A stand-in for subcommand ``name`` whose ``dependency`` is not installed."""
    message = (
        f"pooltender {name} needs {dependency}, which is not installed: "
        f"pip install 'pooltender[{extra}]'"
    )

    def run(**_kwargs: Any) -> None:
        click.echo(f"Error: {message}", err=True)
        raise SystemExit(EXIT_MISSING_DEPENDENCY)

    return click.Command(
        name,
        callback=run,
        help=f"(unavailable: {message})",
        short_help=f"(needs pooltender[{extra}])",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )


def _register_all() -> None:
    for module, (name, extra) in SUBCOMMANDS.items():
        try:
            loaded = importlib.import_module(f"pooltender.cli.{module}")
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if not missing or missing == "pooltender":
                raise  # our own module is missing: a packaging mistake, never hidden
            main.add_command(missing_dependency_command(name, extra, missing))
            continue
        loaded.register(main)


_register_all()
