"""``pooltender`` command line: each subcommand lives in its own module of this package.

A module named in ``_SUBCOMMANDS`` exposes ``register(main)``; a module not written yet is
skipped, so commands are added without editing this file.
"""

from __future__ import annotations

import click

_SUBCOMMANDS = ("budget", "doctor", "top", "lint", "kill_idle", "proxysql_config")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Keep a SQLAlchemy / Flask-SQLAlchemy fleet inside its database's connection budget.

    Pool settings come from POOLTENDER_* environment variables (see pooltender.settings).
    """


for _module in _SUBCOMMANDS:
    try:
        _mod = __import__(f"pooltender.cli.{_module}", fromlist=["register"])
    except ModuleNotFoundError as _exc:  # a subcommand module not written yet
        if _exc.name != f"pooltender.cli.{_module}":
            raise
        continue
    _mod.register(main)
