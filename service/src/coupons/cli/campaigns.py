"""``coupons create-campaign``: create a campaign from the command line; print its id.

The command only parses text into the values :func:`coupons.services.campaigns.create_campaign`
takes (a decimal, an ISO 8601 time, an integer); every rule of a campaign (discount type,
percent at most 100, whole cents, ISO 4217 currency, window order, caps at least 1) is the
service's, so the API and the CLI refuse the same campaigns with the same messages.

The new id alone goes to standard output, so a script can capture it
(``CAMPAIGN=$(coupons create-campaign ...)``); the human summary goes to standard error.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from coupons.cli.common import load_settings
from coupons.errors import ServiceError
from coupons.models import DiscountType


class DecimalAmount(click.ParamType[Decimal]):
    """An amount written in ASCII digits with a dot (``10``, ``20.00``): a :class:`Decimal`.

    Only the spelling is checked here (``1e2``, ``NaN`` and ``8,00`` are refused); whether the
    amount is allowed (positive, whole cents, in range) is the service's rule.
    """

    name = "amount"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Decimal:
        if isinstance(value, Decimal):
            return value
        text = str(value).strip()
        digits = text.replace(".", "", 1)
        try:
            if not (digits.isascii() and digits.isdigit()):
                raise InvalidOperation(text)
            return Decimal(text)
        except InvalidOperation:
            self.fail(f"{value!r} is not an amount like 10 or 20.00", param, ctx)


class UtcTime(click.ParamType[dt.datetime]):
    """An ISO 8601 time with an offset (``2026-03-01T00:00:00Z``, ``...+02:00``) or a date
    (``2026-03-01``, midnight UTC), converted to UTC. A time without an offset is refused
    rather than guessed: the operator's local zone is not the service's."""

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        text = str(value).strip()
        try:
            if len(text) == 10:
                day = dt.date.fromisoformat(text)
                return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time like 2026-03-01T00:00:00Z", param, ctx)
        if when.tzinfo is None:
            self.fail(f"{value!r} has no UTC offset: add Z or one like +02:00", param, ctx)
        return when.astimezone(dt.UTC)


@click.command("create-campaign")
@click.option("--name", required=True, help="Shown to operators, e.g. 'Spring sale'.")
@click.option(
    "--type",
    "discount_type",
    required=True,
    type=click.Choice([t.value for t in DiscountType]),
    help="percent: VALUE % off the order; fixed: VALUE off, in CURRENCY.",
)
@click.option(
    "--value",
    "discount_value",
    required=True,
    type=DecimalAmount(),
    help="The discount: 10 (percent, at most 100) or 5.00 (fixed amount, whole cents).",
)
@click.option("--currency", required=True, help="ISO 4217 code of the orders, e.g. EUR.")
@click.option(
    "--starts", "starts_at", type=UtcTime(), default=None, help="Valid from (default: at once)."
)
@click.option(
    "--ends",
    "ends_at",
    type=UtcTime(),
    default=None,
    help="Valid until, exclusive (default: no end).",
)
@click.option(
    "--max-redemptions", type=int, default=None, help="Campaign-wide cap (default: none)."
)
@click.option(
    "--per-customer-limit", type=int, default=None, help="Uses per customer (default: none)."
)
@click.option(
    "--min-order",
    "min_order_total",
    type=DecimalAmount(),
    default=None,
    help="Smallest order total the code applies to, e.g. 20.00.",
)
@click.option("--inactive", is_flag=True, help="Create it switched off (PATCH is_active later).")
def create_campaign_command(inactive: bool, **fields: Any) -> None:
    """Create a campaign in the database of DATABASE_URL and print its id.

    Times are ISO 8601 with an offset (2026-03-01T00:00:00Z) or a date (midnight UTC).
    The id goes alone to standard output, for scripts:

    \b
      CAMPAIGN=$(coupons create-campaign --name 'Spring sale' \\
          --type percent --value 10 --currency EUR --min-order 20.00)
      coupons generate-codes --campaign "$CAMPAIGN" --count 1000

    Exits with status 1 and creates nothing when the values break a campaign rule.
    """
    from coupons import create_app
    from coupons.db import db
    from coupons.services.campaigns import create_campaign

    app = create_app(load_settings())
    try:
        with app.app_context():
            try:
                # the options are named like the service's keywords (as the API's body is)
                campaign = create_campaign(**fields, is_active=not inactive)
            except ServiceError as exc:
                raise click.ClickException(exc.message) from None
    finally:
        with app.app_context():
            db.engine.dispose()  # a one-shot command keeps no connections open
    off = (
        f"{campaign.discount_value}% off"
        if campaign.discount_type == DiscountType.PERCENT
        else f"{campaign.discount_value} {campaign.currency} off"
    )
    minimum = (
        f" orders from {campaign.min_order_total} {campaign.currency}"
        if campaign.min_order_total is not None
        else ""
    )
    click.echo(f"created campaign {campaign.id} ({campaign.name}: {off}{minimum})", err=True)
    click.echo(campaign.id)


def register(main: click.Group) -> None:
    """Attach ``create-campaign`` to the ``coupons`` command group."""
    main.add_command(create_campaign_command)
