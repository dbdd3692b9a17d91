"""``coupons db``: schema migrations."""

from __future__ import annotations

import click

from coupons.cli.common import load_settings
from coupons.migrate import downgrade, upgrade


@click.group()
def db() -> None:
    """Database schema migrations (Alembic)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade_command(revision: str) -> None:
    """Migrate the database of DATABASE_URL up to REVISION."""
    settings = load_settings()
    upgrade(settings.database_url, revision)
    click.echo(f"database {settings.masked_database_url} is at revision {revision}")


@db.command("downgrade")
@click.argument("revision")
def downgrade_command(revision: str) -> None:
    """Migrate the database of DATABASE_URL down to REVISION (e.g. base)."""
    settings = load_settings()
    downgrade(settings.database_url, revision)
    click.echo(f"database {settings.masked_database_url} is at revision {revision}")
