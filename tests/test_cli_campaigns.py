"""``coupons create-campaign`` against the test database of each backend (issue 13: the README's
``generate-codes --campaign 1`` failed on a fresh database, there being no CLI to create one)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from sqlalchemy import select

from coupons.cli import main
from coupons.config import Settings
from coupons.db import db
from coupons.models import Campaign

Rows = Callable[[Any], int]
BASE = ["--name", "Spring sale", "--type", "percent", "--value", "10", "--currency", "eur"]


@pytest.fixture
def invoke(app: Flask, settings: Settings) -> Callable[..., Result]:
    """Run ``coupons create-campaign ARGS`` with the test database in the environment
    (``app`` empties the tables and checks the pool afterwards)."""

    def _invoke(*args: str) -> Result:
        env = {
            "DATABASE_URL": settings.database_url,
            "SECRET_KEY": settings.secret_key,
            "COUPONS_ENV": "test",
        }
        return CliRunner().invoke(main, ["create-campaign", *args], env=env)

    return _invoke


def stored(app: Flask) -> list[Campaign]:
    with app.app_context():
        found = list(db.session.scalars(select(Campaign).order_by(Campaign.id)))
        db.session.expunge_all()
        db.session.rollback()
    return found


def test_creates_the_campaign_and_prints_only_its_id_on_stdout(
    app: Flask, invoke: Callable[..., Result]
) -> None:
    result = invoke(
        *BASE,
        "--starts",
        "2026-03-01",
        "--ends",
        "2026-04-01T00:00:00+02:00",
        "--max-redemptions",
        "500",
        "--per-customer-limit",
        "1",
        "--min-order",
        "20.00",
    )
    assert result.exit_code == 0, result.output
    (campaign,) = stored(app)
    assert result.stdout == f"{campaign.id}\n"  # capturable: CAMPAIGN=$(coupons create-...)
    assert f"created campaign {campaign.id} (Spring sale: 10% off orders from 20.00 EUR)" in (
        result.stderr
    )
    assert campaign.name == "Spring sale"
    assert campaign.discount_type == "percent"
    assert campaign.discount_value == Decimal("10")
    assert campaign.currency == "EUR"  # the service's normalization
    assert campaign.starts_at == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert campaign.ends_at == dt.datetime(2026, 3, 31, 22, tzinfo=dt.UTC)
    assert (campaign.max_redemptions, campaign.per_customer_limit) == (500, 1)
    assert campaign.min_order_total == Decimal("20.00")
    assert campaign.is_active


def test_a_fixed_inactive_campaign_with_no_limits(
    app: Flask, invoke: Callable[..., Result]
) -> None:
    args = ["--name", "Gift", "--type", "fixed", "--value", "5.00", "--currency", "USD"]
    result = invoke(*args, "--inactive")
    assert result.exit_code == 0, result.output
    (campaign,) = stored(app)
    assert "(Gift: 5.00 USD off)" in result.stderr
    assert campaign.discount_value == Decimal("5.00")
    assert not campaign.is_active
    assert campaign.starts_at is None
    assert campaign.ends_at is None
    assert campaign.max_redemptions is None
    assert campaign.min_order_total is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--value", "101"], "a percent discount cannot exceed 100"),
        (["--value", "0"], "discount_value must be a positive amount"),
        (["--value", "10.005"], "discount_value has more than 2 decimal places"),
        (["--currency", "EURO"], "currency must be an ISO 4217 code"),
        (["--starts", "2026-05-01", "--ends", "2026-04-01"], "ends_at must be after starts_at"),
        (["--max-redemptions", "0"], "max_redemptions must be at least 1"),
        (["--max-redemptions", str(2**40)], "max_redemptions must be at most 2147483647"),
        (["--per-customer-limit", "0"], "per_customer_limit must be at least 1"),
        (["--min-order", "1.234"], "min_order_total has more than 2 decimal places"),
        (["--name", "   "], "name must not be blank"),
        (["--name", "x" * 201], "name must be at most 200 characters"),
    ],
)
def test_a_campaign_rule_broken_is_one_line_exit_1_and_nothing_created(
    app: Flask, invoke: Callable[..., Result], rows: Rows, args: list[str], message: str
) -> None:
    result = invoke(*BASE, *args)  # later options win over BASE's
    assert result.exit_code == 1, result.output
    assert result.stderr == f"Error: {message}\n"
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert rows(Campaign) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--value", "1e2"], "'1e2' is not an amount like 10 or 20.00"),
        (["--value", "NaN"], "'NaN' is not an amount"),
        (["--min-order", "8,00"], "'8,00' is not an amount"),
        (["--starts", "2026-03-01T00:00:00"], "has no UTC offset: add Z or one like +02:00"),
        (["--ends", "next week"], "'next week' is not an ISO 8601 time"),
        (["--type", "bogof"], "'bogof' is not one of 'percent', 'fixed'"),
    ],
)
def test_a_value_that_does_not_parse_is_a_usage_error(
    app: Flask, invoke: Callable[..., Result], rows: Rows, args: list[str], message: str
) -> None:
    result = invoke(*BASE, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert rows(Campaign) == 0


def test_help_names_every_option_and_the_scripting_idiom() -> None:
    result = CliRunner().invoke(main, ["create-campaign", "--help"])
    assert result.exit_code == 0
    for option in (
        "--name",
        "--type [percent|fixed]",
        "--value",
        "--currency",
        "--starts",
        "--ends",
        "--max-redemptions",
        "--per-customer-limit",
        "--min-order",
        "--inactive",
    ):
        assert option in result.output
    assert "CAMPAIGN=$(coupons create-campaign" in result.output
    assert "create-campaign" in CliRunner().invoke(main, ["--help"]).output


def test_an_unreachable_database_is_one_line_naming_it() -> None:
    env = {
        "DATABASE_URL": "mysql+mysqldb://app:s3cret-pw@127.0.0.1:1/coupons",
        "POOLTENDER_CONNECT_TIMEOUT": "1",
        "COUPONS_ENV": "test",
        "SECRET_KEY": "x" * 40,
    }
    result = CliRunner().invoke(main, ["create-campaign", *BASE], env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: DATABASE_URL=mysql+mysqldb://app:***@127.0.0.1:1/")
    assert "database unavailable" in result.stderr
    assert result.stderr.count("\n") == 1
    assert "s3cret-pw" not in result.output
    assert "Traceback" not in result.output
