"""``coupons`` command line: each subcommand lives in its own module of this package."""

from __future__ import annotations

import click

from coupons.cli import campaigns, codes, consume, demo, serve, users
from coupons.cli import db as db_commands
from coupons.cli.common import CouponsGroup


@click.group(cls=CouponsGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run and manage the coupon service.

    Settings come from the environment (DATABASE_URL, SECRET_KEY, ...; see
    coupons.config). With no DATABASE_URL the service uses ./var/coupons.db.
    """


main.add_command(db_commands.db)
for _module in (users, campaigns, codes, demo, serve, consume):
    _module.register(main)
