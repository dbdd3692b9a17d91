"""``coupons create-user``: create an admin or service user from the command line.

The password comes, in order of preference, from a hidden prompt with confirmation, the
``COUPONS_PASSWORD`` environment variable (for scripts), or ``--password`` (visible in
the process list and shell history: avoid outside throwaway setups). It is never echoed.
"""

from __future__ import annotations

import click

from coupons.app import create_app
from coupons.cli.common import load_settings
from coupons.db import db
from coupons.errors import ServiceError
from coupons.models import Role
from coupons.services.auth import create_user


@click.command("create-user")
@click.option("--email", required=True, help="The user's email address (login name).")
@click.option(
    "--role",
    required=True,
    type=click.Choice([role.value for role in Role]),
    help="admin manages campaigns, codes and users; service is a checkout backend.",
)
@click.option(
    "--password",
    envvar="COUPONS_PASSWORD",
    default=None,
    show_envvar=True,
    help="Prefer the prompt (asked when omitted) or COUPONS_PASSWORD.",
)
def create_user_command(email: str, role: str, password: str | None) -> None:
    """Create a user in the database of DATABASE_URL; exit 1 if the email is taken."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, type=str)
    assert password is not None
    settings = load_settings()
    app = create_app(settings)
    try:
        with app.app_context():
            try:
                user = create_user(email, password, role)
            except ServiceError as exc:
                raise click.ClickException(exc.message) from None
    finally:
        with app.app_context():
            db.engine.dispose()  # a one-shot command keeps no connections open
    click.echo(f"created user id={user.id} email={user.email} role={user.role}")


@click.command("unlock")
@click.option("--email", default=None, help="Lift the lockout of this account.")
@click.option("--address", default=None, help="Lift the throttle of this client address.")
def unlock_command(email: str | None, address: str | None) -> None:
    """Lift a login lockout: clear the failures of an account (--email) and/or a client
    address (--address) in the database of DATABASE_URL."""
    from coupons.services.auth import unlock

    if not email and not address:
        raise click.UsageError("give --email, --address or both")
    app = create_app(load_settings())
    try:
        with app.app_context():
            removed = unlock(email=email, address=address)
    finally:
        with app.app_context():
            db.engine.dispose()
    what = " and ".join(
        f"{kind} {value}" for kind, value in (("account", email), ("address", address)) if value
    )
    click.echo(f"unlocked {what} ({removed} throttle row(s) cleared)")


def register(main: click.Group) -> None:
    """Add ``create-user`` and ``unlock`` to the ``coupons`` command group."""
    main.add_command(create_user_command)
    main.add_command(unlock_command)
