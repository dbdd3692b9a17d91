"""``pooltender budget``: exit codes, output, JSON, the Python API, and masked URLs."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from pooltender.cli import main
from pooltender.cli.budget import BudgetCommandError, budget, mask_url
from pooltender.settings import PoolSettings

MARIADB_URL = os.environ.get("TEST_MARIADB_URL", "mysql+mysqldb://root@127.0.0.1:3306/")
ISSUE_FLEET = ["--processes", "4", "--worker-model", "threads", "--concurrency", "32"]
POST_MORTEM = ["--pool-size", "20", "--max-overflow", "50"]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for key in list(os.environ):
        if key.startswith("POOLTENDER_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("COLUMNS", "120")
    return CliRunner()


def test_help_has_examples(runner: CliRunner) -> None:
    result = runner.invoke(main, ["budget", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output
    assert "--worker-model" in result.output
    assert "Exit status: 0 fits" in result.output


def test_issue_fleet_fits_151(runner: CliRunner) -> None:
    result = runner.invoke(
        main,
        ["budget", *ISSUE_FLEET, *POST_MORTEM, "--other-clients", "1", "--max-connections", "151"],
    )
    assert result.exit_code == 0, result.output
    assert "129" in result.output
    assert "verdict: FITS (headroom 22)" in result.output
    assert "SET GLOBAL max_connections = 129;" in result.output
    assert "[mysqld]\nmax_connections = 129" in result.output


def test_gevent_fleet_does_not_fit(runner: CliRunner) -> None:
    result = runner.invoke(
        main,
        [
            "budget",
            "--processes",
            "3",
            "--worker-model",
            "gevent",
            *POST_MORTEM,
            "--max-connections",
            "151",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "DOES NOT FIT" in result.output
    assert "lower POOLTENDER_MAX_OVERFLOW from 50 to" in result.output
    assert "SET GLOBAL max_connections = 210;" in result.output


def test_postgres_lines(runner: CliRunner) -> None:
    result = runner.invoke(
        main, ["budget", "--processes", "2", "--max-connections", "100", "--backend", "postgresql"]
    )
    assert result.exit_code == 0, result.output
    assert "ALTER SYSTEM SET max_connections = 5;" in result.output
    assert "postgresql.conf" in result.output


def test_without_server_prints_what_is_needed(runner: CliRunner) -> None:
    result = runner.invoke(main, ["budget", "--processes", "4", "--worker-model", "gevent"])
    assert result.exit_code == 0, result.output
    assert "the fleet needs max_connections >= 24" in result.output


def test_defaults_come_from_env(runner: CliRunner) -> None:
    result = runner.invoke(
        main,
        ["budget", "--worker-model", "gevent", "--json"],
        env={"POOLTENDER_POOL_SIZE": "9", "POOLTENDER_MAX_OVERFLOW": "1"},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["report"]["per_process_cap"] == 10


def test_bad_env_setting_is_a_clean_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["budget"], env={"POOLTENDER_POOL_SIZ": "9"})
    assert result.exit_code == 2
    assert "did you mean POOLTENDER_POOL_SIZE?" in result.output
    assert "Traceback" not in result.output


def test_json_and_littles_law(runner: CliRunner) -> None:
    result = runner.invoke(
        main,
        [
            "budget",
            *ISSUE_FLEET,
            *POST_MORTEM,
            "--max-connections",
            "151",
            "--throughput",
            "633",
            "--hold-time",
            "0.0016",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["report"]["total_demand"] == 128
    assert data["report"]["fits"] is True
    assert data["recommendation"]["pool_size"] == 1
    assert data["recommendation"]["fleet_demand"] == 8
    assert sum(t["connections"] for t in data["report"]["terms"]) == 128


@pytest.mark.parametrize(
    "args",
    [
        ["--url", "sqlite://", "--max-connections", "5"],
        ["--throughput", "10"],
        ["--worker-model", "sync", "--concurrency", "4"],
        ["--pool-size", "0"],
        ["--processes", "0"],
    ],
)
def test_usage_errors_exit_2(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(main, ["budget", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_password_never_printed_on_connection_error(runner: CliRunner) -> None:
    url = "mysql+mysqldb://app:hunter2-secret@127.0.0.1:1/appdb"
    result = runner.invoke(main, ["budget", "--url", url])
    assert result.exit_code == 2
    assert "hunter2-secret" not in result.output
    assert "app:***@127.0.0.1:1/appdb" in result.output


@pytest.mark.parametrize(
    "url",
    [
        "nosuchdb+driver://app:hunter2-secret@host/db",
        "mysql://app:hunter2-secret@host:notaport/db",
        "://app:hunter2-secret@host",
        "mysql+mysqldb://app:hunter2-secret@",
    ],
)
def test_password_never_printed_on_bad_url(runner: CliRunner, url: str) -> None:
    result = runner.invoke(main, ["budget", "--url", url])
    assert result.exit_code == 2
    assert "hunter2-secret" not in result.output


def test_password_never_printed_on_success(runner: CliRunner) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(MARIADB_URL).set(password="ignored-secret")  # root has no password
    rendered = url.render_as_string(hide_password=False)
    result = runner.invoke(main, ["budget", "--url", rendered])
    assert "ignored-secret" not in result.output
    if result.exit_code == 2 and "cannot read limits" in result.output:
        return  # the server refused the password: still masked, which is what we test
    assert result.exit_code == 0, result.output
    assert "***" in result.output


def test_mask_url() -> None:
    assert mask_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert mask_url("not a url") == "<unparsable URL>"


def test_budget_is_a_python_api() -> None:
    outcome = budget(
        processes=4,
        worker_model="gevent",
        settings=PoolSettings(pool_size=20, max_overflow=50),
        max_connections=151,
    )
    assert outcome.exit_code == 1
    assert outcome.report.total_demand == 280
    with pytest.raises(BudgetCommandError):
        budget(url="sqlite://", max_connections=3)
