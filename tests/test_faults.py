"""Database faults: one classification, 503 + Retry-After on every route, one-line CLI errors.

The failures are real: a closed port (nothing listens), a wrong login on the shared servers,
and a private MariaDB (tests/pooltender/_servers.py) stopped and started mid-run. No shared
server is ever stopped.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import MySQLdb
import psycopg
import pymysql
import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import create_engine, exc, text
from sqlalchemy.pool import NullPool
from werkzeug.test import TestResponse

from coupons import create_app
from coupons.cli import main
from coupons.migrate import upgrade
from coupons.models import Role
from coupons.services.auth import Principal, issue_access_token
from pooltender.failures import Failure, classify, describe, is_unavailable
from pooltender.shedding import PoolExhausted
from tests.conftest import TEST_SECRET, make_settings
from tests.pooltender._servers import PrivateMariaDB, free_port

CLOSED = free_port()  # nothing listens here (bound, then released)


def closed_url(backend: str, tmp_path: Path) -> str:
    if backend == "mariadb":
        return f"mysql+mysqldb://root@127.0.0.1:{CLOSED}/coupons"
    if backend == "pymysql":
        return f"mysql+pymysql://root@127.0.0.1:{CLOSED}/coupons"
    if backend == "postgresql":
        return f"postgresql+psycopg://postgres@127.0.0.1:{CLOSED}/coupons"
    return f"sqlite:///{tmp_path / 'missing-dir' / 'coupons.db'}"  # the directory does not exist


def real_error(url: str) -> BaseException:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as caught:
        return caught
    finally:
        engine.dispose()
    raise AssertionError(f"{url} answered")


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize("backend", ["mariadb", "pymysql", "postgresql", "sqlite"])
def test_a_refused_connection_is_unavailable(backend: str, tmp_path: Path) -> None:
    error = real_error(closed_url(backend, tmp_path))
    assert classify(error) is Failure.UNAVAILABLE, repr(error)
    assert is_unavailable(error)
    line = describe(error)
    assert line
    assert "\n" not in line


def test_the_driver_codes_classify() -> None:
    def wrap(
        orig: BaseException, cls: type[exc.DBAPIError] = exc.OperationalError
    ) -> BaseException:
        return cls("SELECT 1", {}, orig)

    cases: list[tuple[BaseException, Failure | None]] = [
        (wrap(MySQLdb.OperationalError(2006, "MySQL server has gone away")), Failure.UNAVAILABLE),
        (wrap(MySQLdb.OperationalError(2013, "Lost connection")), Failure.UNAVAILABLE),
        (wrap(MySQLdb.OperationalError(1040, "Too many connections")), Failure.UNAVAILABLE),
        (wrap(MySQLdb.OperationalError(1290, "--read-only")), Failure.UNAVAILABLE),
        (wrap(MySQLdb.OperationalError(1836, "read-only mode")), Failure.UNAVAILABLE),
        (wrap(pymysql.err.OperationalError(2003, "Can't connect")), Failure.UNAVAILABLE),
        (wrap(MySQLdb.OperationalError(1213, "Deadlock")), Failure.CONFLICT),
        (wrap(MySQLdb.OperationalError(1205, "Lock wait timeout")), Failure.CONFLICT),
        (wrap(MySQLdb.IntegrityError(1062, "Duplicate"), exc.IntegrityError), Failure.INTEGRITY),
        (wrap(MySQLdb.DataError(1264, "Out of range"), exc.DataError), Failure.DATA),
        (wrap(MySQLdb.OperationalError(1264, "Out of range")), Failure.DATA),
        (wrap(MySQLdb.OperationalError(1146, "no such table")), None),
        (wrap(psycopg.errors.AdminShutdown("terminating")), Failure.UNAVAILABLE),
        (wrap(psycopg.errors.CrashShutdown("crash")), Failure.UNAVAILABLE),
        (wrap(psycopg.errors.CannotConnectNow("starting up")), Failure.UNAVAILABLE),
        (wrap(psycopg.errors.TooManyConnections("too many")), Failure.UNAVAILABLE),
        (wrap(psycopg.errors.ReadOnlySqlTransaction("read only")), Failure.UNAVAILABLE),
        (wrap(psycopg.OperationalError("server closed the connection")), Failure.UNAVAILABLE),
        (wrap(psycopg.errors.SerializationFailure("x")), Failure.CONFLICT),
        (wrap(psycopg.errors.DeadlockDetected("x")), Failure.CONFLICT),
        (wrap(psycopg.errors.LockNotAvailable("x")), Failure.CONFLICT),
        (wrap(psycopg.errors.UniqueViolation("x"), exc.IntegrityError), Failure.INTEGRITY),
        (wrap(psycopg.errors.NumericValueOutOfRange("x"), exc.DataError), Failure.DATA),
        (wrap(psycopg.errors.UndefinedTable("x"), exc.ProgrammingError), None),
        (PoolExhausted(0.5, 6, 4, 2), Failure.POOL_EXHAUSTED),
        (exc.TimeoutError("QueuePool limit"), Failure.POOL_EXHAUSTED),
        (exc.DisconnectionError("gone"), Failure.UNAVAILABLE),
        (ValueError("not a database error"), None),
    ]
    for error, expected in cases:
        assert classify(error) is expected, repr(error)


def test_a_wrapped_error_keeps_its_kind() -> None:
    gone = exc.OperationalError("SELECT 1", {}, MySQLdb.OperationalError(2006, "gone away"))
    outer = RuntimeError("the service failed")
    outer.__cause__ = gone
    assert classify(outer) is Failure.UNAVAILABLE


# --------------------------------------------------------------------------- the API


def _token(role: Role = Role.SERVICE) -> dict[str, str]:
    """A token for a user that need not exist (the database is down before it is checked)."""
    principal = Principal(user_id=1, email="svc@example.test", role=role.value)
    return {"Authorization": f"Bearer {issue_access_token(principal, TEST_SECRET, 900)}"}


def user_headers(app: Flask, role: Role) -> dict[str, str]:
    """Insert a user of ``role`` (no usable password) and return a bearer header for it: the
    account cache checks every token against the users table."""
    from coupons.db import db
    from coupons.models import User

    with app.app_context():
        user = User(
            email=f"{role.value}-{os.urandom(4).hex()}@example.test",
            password_hash="!unusable",
            role=role.value,
            is_active=True,
        )
        db.session.add(user)
        db.session.commit()
        principal = Principal(user_id=int(user.id), email=user.email, role=role.value)
        db.session.remove()
    return {"Authorization": f"Bearer {issue_access_token(principal, TEST_SECRET, 900)}"}


ROUTES: list[tuple[str, str, dict[str, object] | None, Role | None]] = [
    ("POST", "/api/v1/auth/login", {"email": "a@example.test", "password": "x" * 12}, None),
    ("POST", "/api/v1/auth/refresh", {"refresh_token": "r" * 40}, None),
    ("GET", "/api/v1/auth/me", None, Role.SERVICE),
    ("GET", "/api/v1/campaigns", None, Role.ADMIN),
    (
        "POST",
        "/api/v1/campaigns",
        {"name": "S", "discount_type": "percent", "discount_value": "10", "currency": "EUR"},
        Role.ADMIN,
    ),
    ("GET", "/api/v1/campaigns/1", None, Role.ADMIN),
    (
        "POST",
        "/api/v1/redemptions",
        {"code": "ABC-123", "customer_id": "c", "order_id": "o", "order_total": "10.00"},
        Role.SERVICE,
    ),
    (
        "POST",
        "/api/v1/coupons/ABC-123/validate",
        {"customer_id": "c", "order_total": "10.00"},
        Role.SERVICE,
    ),
    ("GET", "/api/v1/redemptions/1", None, Role.SERVICE),
]


def assert_unavailable(response: TestResponse, records: list[logging.LogRecord]) -> None:
    body = response.get_json()
    assert response.status_code == 503, body
    assert response.headers["Retry-After"] == "1"
    assert body["error"]["code"] == "database_unavailable", body
    assert set(body["error"]) == {"code", "message"}
    loud = [r for r in records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert loud[0].exc_info is None, "an outage is logged without a traceback"
    assert "503" in loud[0].getMessage()


@pytest.mark.parametrize("backend", ["mariadb", "postgresql", "sqlite"])
def test_every_route_answers_503_when_the_database_is_down(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scraper = "a-scraper-token-for-the-outage-test"
    app = create_app(
        make_settings(
            closed_url(backend, tmp_path),
            pooltender_config={"POOLTENDER_METRICS_TOKEN": scraper},
        )
    )
    client = app.test_client()
    for method, path, body, role in ROUTES:
        headers = _token(role) if role is not None else {}
        caplog.clear()
        with caplog.at_level(logging.INFO):
            response = client.open(path, method=method, json=body, headers=headers)
        assert_unavailable(response, caplog.records)
    # the scraper's token needs no database (an admin token is checked against the accounts,
    # which are down too): metrics stay readable through the outage
    scrape = client.get("/metrics", headers={"Authorization": f"Bearer {scraper}"})
    assert scrape.status_code == 200, scrape.get_data(as_text=True)
    metrics = scrape.get_data(as_text=True)
    assert f"pooltender_requests_unavailable_total {float(len(ROUTES))}" in metrics


def test_an_error_that_is_not_an_outage_is_still_a_500(tmp_path: Path) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'empty.db'}"))  # no tables
    response = app.test_client().get("/api/v1/campaigns", headers=_token(Role.ADMIN))
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"


@pytest.fixture(scope="module")
def private_mariadb() -> Iterator[PrivateMariaDB]:
    with PrivateMariaDB() as server:
        upgrade(server.url)
        yield server


@pytest.mark.fault
@pytest.mark.slow
def test_a_database_stopped_mid_run_answers_503_then_recovers(
    private_mariadb: PrivateMariaDB, caplog: pytest.LogCaptureFixture
) -> None:
    app: Flask = create_app(make_settings(private_mariadb.url))
    client = app.test_client()
    tokens = {role: user_headers(app, role) for role in Role}
    headers = tokens[Role.ADMIN]
    assert client.get("/api/v1/campaigns", headers=headers).status_code == 200  # pool warm
    private_mariadb.stop()
    try:
        for method, path, body, role in ROUTES:
            caplog.clear()
            with caplog.at_level(logging.INFO):
                response = client.open(
                    path, method=method, json=body, headers=tokens[role] if role else {}
                )
            assert_unavailable(response, caplog.records)
    finally:
        private_mariadb.start()
    assert client.get("/api/v1/campaigns", headers=headers).status_code == 200
    with app.app_context():
        from coupons.db import db

        db.engine.dispose()


# --------------------------------------------------------------------------- the CLIs


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL")}
    full.update(COUPONS_ENV="test", SECRET_KEY=TEST_SECRET, **env)
    return subprocess.run(
        [sys.executable, "-c", "from coupons.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
        check=False,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("backend", ["mariadb", "postgresql"])
def test_db_upgrade_against_a_closed_port_is_one_line(backend: str, tmp_path: Path) -> None:
    url = closed_url(backend, tmp_path).replace("root@", "root:hunter2@")
    done = _run(["db", "upgrade"], DATABASE_URL=url)
    assert_one_line(done, "DATABASE_URL=", "database unavailable", str(CLOSED))
    assert "hunter2" not in done.stderr


def test_create_user_with_a_wrong_password_is_one_line() -> None:
    url = "mysql+mysqldb://nobody_faults:hunter2@127.0.0.1:3306/test"
    done = _run(
        ["create-user", "--email", "a@example.test", "--role", "admin"],
        DATABASE_URL=url,
        COUPONS_PASSWORD="correct horse battery staple",
    )
    assert_one_line(done, "DATABASE_URL=mysql+mysqldb://nobody_faults:***@", "1045")
    assert "hunter2" not in done.stderr


@pytest.mark.parametrize(
    ("broker", "needle"),
    [("foo://bar", "unknown transport 'foo'"), ("redis://localhost:1//", "not installed")],
)
def test_a_bad_broker_url_is_one_line(broker: str, needle: str) -> None:
    result = CliRunner().invoke(
        main,
        ["consume"],
        env={"BROKER_URL": broker, "COUPONS_ENV": "test", "DATABASE_URL": "sqlite://"},
    )
    assert result.exit_code != 0
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "BROKER_URL=" in lines[0]
    assert needle in lines[0]


def test_an_unreachable_broker_is_one_line() -> None:
    done = _run(
        ["publish-demo-orders", "1", "--code", "ABC-123"],
        BROKER_URL=f"amqp://guest:hunter2@127.0.0.1:{CLOSED}//",
        DATABASE_URL="sqlite://",
    )
    assert_one_line(done, "BROKER_URL=amqp://guest:***@", "broker unavailable")
    assert "hunter2" not in done.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql+mysqldb://app:s3cret@db:3306/x", "mysql+mysqldb://app:***@db:3306/x"),
        ("mysql://app:p@ss/w@db/x", "mysql://app:***@db/x"),
        ("mysql://app@db/x?passwd=s3cret&charset=utf8", "mysql://app@db/x?passwd=***&charset=utf8"),
        (
            "postgresql://u@h/d?sslmode=require&password=s3cret",
            "postgresql://u@h/d?sslmode=require&password=***",
        ),
        ("amqp://guest:s3cret@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
        ("sqs://?secret_key=s3cret", "sqs://?secret_key=***"),
        ("sqlite:////var/a@b/coupons.db", "sqlite:////var/a@b/coupons.db"),
    ],
)
def test_every_credential_form_is_masked(url: str, shown: str) -> None:
    from coupons.config import mask_url

    assert mask_url(url) == shown


def test_bulk_commands_raise_the_read_bound_and_keep_the_connect_bound() -> None:
    from coupons.cli.common import LONG_WORK_TIMEOUT, long_work_settings

    settings = make_settings("mysql+mysqldb://root@127.0.0.1/x")
    long = long_work_settings(settings)
    args = long.engine_options()["connect_args"]
    assert args["read_timeout"] == args["write_timeout"] == LONG_WORK_TIMEOUT
    assert args["connect_timeout"] == settings.pool.connect_timeout == 10
    assert args["charset"] == "utf8mb4"  # the app's own connect_args survive the merge
    off = make_settings(
        "mysql+mysqldb://root@127.0.0.1/x", pool=settings.pool.with_values(read_timeout=0)
    )
    assert "read_timeout" not in long_work_settings(off).engine_options()["connect_args"]


def test_pooltender_masks_query_string_passwords_too() -> None:
    """``pooltender doctor`` and ``top`` print URLs through this helper."""
    from pooltender.server import mask_url as pooltender_mask
    from pooltender.server import scrub

    url = "mysql+mysqldb://root:pw1@127.0.0.1:3306/test?passwd=hunter2&charset=utf8mb4"
    shown = pooltender_mask(url)
    assert "hunter2" not in shown
    assert "pw1" not in shown
    assert "passwd=***" in shown
    assert "charset=utf8mb4" in shown
    assert "hunter2" not in scrub(f"cannot connect to {url}: hunter2 refused", url)
    pg = pooltender_mask("postgresql+psycopg://u@h/d?password=abc&sslmode=require")
    assert "abc" not in pg
    assert "sslmode=require" in pg
