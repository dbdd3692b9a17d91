"""``coupons generate-codes`` through click's CliRunner, on every database."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from sqlalchemy import select

from coupons.cli import main
from coupons.config import Settings
from coupons.db import db
from coupons.models import Coupon
from tests.conftest import make_campaign


@pytest.fixture
def run(settings: Settings) -> Callable[..., Result]:
    env = {
        "DATABASE_URL": settings.database_url,
        "SECRET_KEY": settings.secret_key,
        "COUPONS_ENV": "test",
    }

    def _run(*args: Any) -> Result:
        return CliRunner().invoke(main, ["generate-codes", *map(str, args)], env=env)

    return _run


def test_generates_codes_with_progress_and_csv(
    app: Flask, run: Callable[..., Result], tmp_path: Path
) -> None:
    campaign_id = make_campaign(app)
    out = tmp_path / "codes.csv"
    result = run(
        "--campaign", campaign_id, "--count", 2500, "--pattern", "cli-####-####",
        "--prefix", "X", "--max-uses", 2, "--csv", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    assert "generated 2,500 codes" in result.stdout
    assert "wrote 2,500 codes" in result.stdout
    assert "2500/2500" in result.stderr  # the progress bar's last state
    with app.app_context():
        stored = set(db.session.scalars(select(Coupon.code)))
    assert len(stored) == 2500
    assert all(code.startswith("XCLI-") for code in stored)
    with out.open(newline="") as fh:
        records = list(csv.DictReader(fh))
    assert {r["code"] for r in records} == stored
    assert {r["max_uses"] for r in records} == {"2"}


def test_csv_holds_only_the_new_batch(
    app: Flask, run: Callable[..., Result], tmp_path: Path
) -> None:
    campaign_id = make_campaign(app)
    assert run("--campaign", campaign_id, "--count", 30).exit_code == 0
    out = tmp_path / "second.csv"
    result = run("--campaign", campaign_id, "--count", 20, "--csv", out)
    assert result.exit_code == 0, result.output
    with out.open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", 10, "--unknown-campaign"], "campaign"),
        (["--count", 10, "--pattern", "NOSLOT"], "no '#'"),
        (["--count", 10, "--pattern", "A_#"], "may contain only"),
        (["--count", 200, "--pattern", "X-##"], "allows only 1,024 codes"),
        (["--count", 0], "count must be between 1 and 1,000,000"),
        (["--count", 1_000_001], "count must be between 1 and 1,000,000"),
        (["--count", 5, "--max-uses", 0], "max_uses must be at least 1"),
    ],
)
def test_bad_input_exits_1_and_writes_nothing(
    app: Flask,
    run: Callable[..., Result],
    rows: Callable[[Any], int],
    tmp_path: Path,
    args: list[Any],
    message: str,
) -> None:
    campaign_id = make_campaign(app)
    if "--unknown-campaign" in args:
        args = [a for a in args if a != "--unknown-campaign"]
        campaign_id += 1000
    out = tmp_path / "codes.csv"
    result = run("--campaign", campaign_id, *args, "--csv", out)
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert rows(Coupon) == 0
    assert not out.exists()


def test_unwritable_csv_path_is_refused_before_generating(
    app: Flask, run: Callable[..., Result], rows: Callable[[Any], int], tmp_path: Path
) -> None:
    campaign_id = make_campaign(app)
    result = run("--campaign", campaign_id, "--count", 5, "--csv", tmp_path / "no" / "x.csv")
    assert result.exit_code == 1
    assert "cannot write the CSV file" in result.stderr
    assert rows(Coupon) == 0
