"""``pooltender budget``: exit codes, output, JSON, the Python API, and masked URLs."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pooltender.budget import FleetShape, ProxyShape, fleet_config_keys, shape_keys
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
    # issue 13: the server has 151, so nothing that would lower it to 129 is printed
    assert "no change needed" in result.output
    assert "SET GLOBAL" not in result.output
    assert "max_connections = 129" not in result.output


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
    assert "ALTER SYSTEM" not in result.output  # fits: lowering 100 to 5 would hurt
    result = runner.invoke(
        main,
        [
            "budget",
            "--processes",
            "20",
            "--worker-model",
            "gevent",
            "--max-connections",
            "100",
            "--backend",
            "postgresql",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "ALTER SYSTEM SET max_connections = 123;" in result.output  # 20 x 6 + 3 reserved
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


# ------------------------------------------------- issue 13: SQL only ever raises


@settings(max_examples=60, deadline=None)
@given(
    processes=st.integers(1, 40),
    model=st.sampled_from(["sync", "gevent"]),
    server=st.integers(1, 400),
    backend=st.sampled_from(["mysql", "postgresql"]),
)
def test_printed_sql_only_ever_raises_max_connections(
    processes: int, model: str, server: int, backend: str
) -> None:
    """Every ``max_connections = N`` printed has N above the server's figure, and appears
    only when the fleet does not fit (on today's code it also printed lowering lines)."""
    result = CliRunner().invoke(
        main,
        [
            "budget",
            "--processes",
            str(processes),
            "--worker-model",
            model,
            "--max-connections",
            str(server),
            "--backend",
            backend,
        ],
        env={k: None for k in os.environ if k.startswith("POOLTENDER_")},
    )
    printed = [int(n) for n in re.findall(r"max_connections = (\d+)", result.output)]
    assert all(n > server for n in printed), result.output
    assert bool(printed) == ("DOES NOT FIT" in result.output), result.output


def test_no_sql_without_a_server_figure(runner: CliRunner) -> None:
    result = runner.invoke(main, ["budget", "--processes", "4"])
    assert result.exit_code == 0, result.output
    assert "max_connections = " not in result.output
    data = json.loads(runner.invoke(main, ["budget", "--processes", "4", "--json"]).output)
    assert data["report"]["set_global_sql"] is None


# ----------------------------------------------------------- the fleet in a file

FLEET_TOML = """
[pool]
pool_size = 1
max_overflow = 1

[fleet]
hosts = 50
processes_per_host = 8
worker_model = "threads"
concurrency = 4
consumers = 8
other_clients = 4
reserved = 3

[fleet.proxy]
kind = "pgbouncer"
mode = "transaction"
placement = "central"
server_pool_size = 50
max_client_conn = 1000

[server]
backend = "postgresql"
max_connections = 100
"""


@pytest.fixture
def fleet_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET_TOML)
    return path


def test_config_file_with_a_proxy_checks_both_sides(runner: CliRunner, fleet_file: Path) -> None:
    result = runner.invoke(main, ["budget", "--config", str(fleet_file), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)["report"]
    assert data["total_demand"] == 815  # 400 x 2 + 8 + 4 + 3
    side = data["proxy_side"]
    assert side["client_demand_per_instance"] == 808  # web and consumers go through it
    assert side["server_demand"] == 57  # 50 server connections + 4 direct + 3 reserved
    assert data["required_max_connections"] == 60  # + PostgreSQL's 3 superuser slots
    assert data["set_global_sql"] is None


def test_per_term_arithmetic_is_printed(runner: CliRunner, fleet_file: Path) -> None:
    result = runner.invoke(main, ["budget", "--config", str(fleet_file)])
    assert result.exit_code == 0, result.output
    assert "50 host(s) x 8 process(es) x min(cap 2, 4 x 1) = 2" in result.output
    assert "1 instance(s) x server_pool_size 50" in result.output
    assert "808 client connections per instance, max_client_conn 1000" in result.output


def test_env_overrides_the_file_key_by_key_and_flags_override_env(
    runner: CliRunner, fleet_file: Path
) -> None:
    env = {"POOLTENDER_FLEET_HOSTS": "10", "POOLTENDER_POOL_SIZE": "2"}
    data = json.loads(
        runner.invoke(main, ["budget", "--config", str(fleet_file), "--json"], env=env).output
    )["report"]
    assert data["shape"]["hosts"] == 10
    assert data["shape"]["processes_per_host"] == 8  # still the file's
    assert data["per_process_cap"] == 3  # 2 + the file's overflow 1
    args = ["budget", "--config", str(fleet_file), "--hosts", "3", "--json"]
    data = json.loads(runner.invoke(main, args, env=env).output)["report"]
    assert data["shape"]["hosts"] == 3


def test_proxy_client_limit_exceeded_is_refused_naming_the_term(
    runner: CliRunner, fleet_file: Path
) -> None:
    args = ["budget", "--config", str(fleet_file), "--proxy-max-client-conn", "500"]
    result = runner.invoke(main, args)
    assert result.exit_code == 1, result.output
    refused = [line for line in result.output.splitlines() if line.startswith("refused:")]
    assert len(refused) == 1, result.output
    assert "max_client_conn is 500" in refused[0]
    assert (
        "raise fleet.proxy.max_client_conn (POOLTENDER_FLEET_PROXY_MAX_CLIENT_CONN) to 808"
        in (refused[0])
    )


def test_server_side_exceeded_is_refused_naming_the_term(
    runner: CliRunner, fleet_file: Path
) -> None:
    env = {
        "POOLTENDER_FLEET_PROXY_PLACEMENT": "per-host",
        "POOLTENDER_FLEET_PROXY_MAX_CLIENT_CONN": "10",
    }
    result = runner.invoke(main, ["budget", "--config", str(fleet_file)], env=env)
    assert result.exit_code == 1, result.output
    refused = [line for line in result.output.splitlines() if line.startswith("refused:")]
    assert len(refused) == 2, result.output  # each proxy: 17 > 10 clients; server: 2507 > 97
    assert "client side: 17 client connections reach each proxy" in refused[0]
    assert refused[1].startswith("refused: server side: 2507 connections exceed the server's 97")
    assert (
        "lower fleet.proxy.server_pool_size (POOLTENDER_FLEET_PROXY_SERVER_POOL_SIZE) from 50 to 1"
        in refused[1]
    )
    assert "ALTER SYSTEM SET max_connections = 2510;" in result.output  # raising only


def test_session_mode_without_room_is_refused(runner: CliRunner, fleet_file: Path) -> None:
    result = runner.invoke(main, ["budget", "--config", str(fleet_file), "--proxy-mode", "session"])
    assert result.exit_code == 1, result.output
    assert "session mode does not multiplex" in result.output
    assert "set fleet.proxy.mode (POOLTENDER_FLEET_PROXY_MODE) to transaction" in result.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[fleet]\nhostz = 3\n", "did you mean POOLTENDER_FLEET_HOSTS?"),
        ("[fleet]\nhosts = 'many'\n", "POOLTENDER_FLEET_HOSTS"),
        ("[fleets]\nhosts = 3\n", "is not a table of a fleet file"),
        ("[fleet.proxy]\nmode = 'session'\n", "without POOLTENDER_FLEET_PROXY_KIND"),
        ("[fleet.proxy]\nkind = 'haproxy'\n", "must be one of pgbouncer, proxysql"),
        ("[server]\nmax_conections = 3\n", "POOLTENDER_SERVER_MAX_CONECTIONS"),
        ("not toml [", "bad.toml: Expected '='"),
    ],
)
def test_bad_config_file_is_one_clean_line(
    runner: CliRunner, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = runner.invoke(main, ["budget", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_fleet_flags_and_keys_are_derived_from_the_dataclass(runner: CliRunner) -> None:
    """One source: every FleetShape / ProxyShape field has its flag and its key, and the
    Flask extension reads the same keys."""
    from pooltender import flask as pt_flask

    help_text = runner.invoke(main, ["budget", "--help"], env={"COLUMNS": "200"}).output
    for cls in (FleetShape, ProxyShape):
        for name, spec in shape_keys(cls).items():
            assert spec.option in help_text, name
    keys = fleet_config_keys()
    assert keys == pt_flask._FLEET_KEYS
    configurable = {f.name for f in dataclasses.fields(FleetShape)} - {"proxy"}
    assert {v for v in keys.values() if "." not in v} == configurable
    assert {v for v in keys.values() if "." in v} == {
        f"proxy.{f.name}" for f in dataclasses.fields(ProxyShape)
    }


def test_queueing_answer_for_rate_hold_and_pool(runner: CliRunner) -> None:
    """P(wait) and the p99 wait for R, H and the pool, by Erlang C."""
    args = [
        "budget",
        "--processes",
        "1",
        "--worker-model",
        "gevent",
        "--pool-size",
        "3",
        "--max-overflow",
        "0",
        "--throughput",
        "200",
        "--hold-time",
        "0.01",
        "--json",
    ]
    data = json.loads(runner.invoke(main, args).output)
    first = data["waits"][0]
    assert first["servers"] == 3
    assert first["p_wait"] == pytest.approx(4 / 9)  # M/M/3 at a = 2 Erlangs
    assert first["p99_wait_s"] == pytest.approx(math.log((4 / 9) / 0.01) / 100)


def test_measured_hold_samples_answer_by_simulation(runner: CliRunner, tmp_path: Path) -> None:
    samples = tmp_path / "holds.txt"
    samples.write_text("# seconds\n" + "\n".join(["0.01"] * 50) + "\n")
    args = [
        "budget",
        "--pool-size",
        "3",
        "--max-overflow",
        "0",
        "--worker-model",
        "gevent",
        "--throughput",
        "200",
        "--hold-samples",
        str(samples),
        "--json",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    first = json.loads(result.output)["waits"][0]
    assert first["model"] == "simulation of 50 measured holds"
    assert first["hold_time"] == pytest.approx(0.01)
    assert first["p_wait"] < 4 / 9  # constant holds wait less than exponential ones
