"""Fixtures: every database-backed test runs on SQLite, MariaDB and PostgreSQL.

Each backend gets a fresh database for the whole session (created here, migrated with
Alembic, dropped at the end); tables are emptied after each test. Server addresses come
from TEST_MARIADB_URL / TEST_POSTGRES_URL (defaults: the local servers). When a server
is missing its tests are skipped locally and fail under CI=true.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from coupons import create_app
from coupons.config import Settings
from coupons.db import db
from coupons.migrate import upgrade
from coupons.models import Campaign, Role, User
from coupons.services.auth import Principal, issue_access_token

if TYPE_CHECKING:  # imported by pytest as a plugin below; importing it first blocks rewriting
    from pooltender.pytest_plugin import PoolGuard

#: The project's own leak check: a test that leaves a connection checked out fails, with the
#: stack of the checkout (see the app fixture).
pytest_plugins = ["pooltender.pytest_plugin"]

BACKENDS = ("sqlite", "mariadb", "postgresql")
MARIADB_ADMIN_URL = os.environ.get("TEST_MARIADB_URL", "mysql+mysqldb://root@127.0.0.1:3306/")
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_SECRET = "test-secret-key-that-is-long-enough-for-hs256"


def server_missing(what: str, exc: BaseException) -> None:
    """Skip locally, fail in CI: a real-database test must never silently vanish there."""
    message = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if IN_CI:
        pytest.fail(f"{message}; CI requires it", pytrace=False)
    pytest.skip(message)


def admin_url(backend: str) -> str:
    return MARIADB_ADMIN_URL if backend == "mariadb" else POSTGRES_ADMIN_URL


def create_database(backend: str, name: str) -> str:
    """CREATE DATABASE ``name`` on the backend's server; return its URL."""
    base = make_url(admin_url(backend))
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if backend == "mariadb":
                conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
            else:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        server_missing(backend, exc)
    finally:
        engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def drop_database(backend: str, name: str) -> None:
    engine = create_engine(admin_url(backend), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if backend == "mariadb":
                conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            else:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated, empty database on one backend, for the whole test session."""
    backend: str = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'coupons.db'}"
        upgrade(url)
        yield url
        return
    name = f"coupons_test_{os.getpid()}_{secrets.token_hex(3)}"
    url = create_database(backend, name)
    try:
        upgrade(url)
        yield url
    finally:
        drop_database(backend, name)


@pytest.fixture
def backend(database_url: str) -> str:
    name = make_url(database_url).get_backend_name()
    return {"mysql": "mariadb"}.get(name, name)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "environment": "test",
        "secret_key": TEST_SECRET,
    }
    values.update(overrides)
    return Settings(**values)


def empty_tables() -> None:
    with db.engine.begin() as conn:
        for table in reversed(db.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def app(settings: Settings, pool_guard: PoolGuard) -> Iterator[Flask]:
    """The app on the test's backend; tables emptied afterwards.

    Its engine is guarded by pooltender's pytest plugin: a connection the test leaves
    checked out (or leaves to the garbage collector) fails the test at teardown, with the
    stack of the code that checked it out.
    """
    application = create_app(settings)
    with application.app_context():
        pool_guard.watch(db.engine)
    yield application
    with application.app_context():
        db.session.remove()
        empty_tables()
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def make_user(app: Flask) -> Callable[..., Principal]:
    """Insert a user directly (no password hashing) and return its principal."""

    def _make(role: Role = Role.ADMIN, email: str | None = None) -> Principal:
        email = email or f"{role.value}-{secrets.token_hex(4)}@example.test"
        with app.app_context():
            user = User(email=email, password_hash="!unusable", role=role.value, is_active=True)
            db.session.add(user)
            db.session.commit()
            principal = Principal(user_id=user.id, email=email, role=role.value)
            db.session.remove()
        return principal

    return _make


@pytest.fixture
def auth_header(app: Flask, make_user: Callable[..., Principal]) -> Callable[..., dict[str, str]]:
    """``auth_header(Role.SERVICE)`` -> an Authorization header for a new user of that role."""

    def _header(role: Role = Role.ADMIN) -> dict[str, str]:
        principal = make_user(role)
        token = issue_access_token(principal, TEST_SECRET, 900)
        return {"Authorization": f"Bearer {token}"}

    return _header


@pytest.fixture
def admin(auth_header: Callable[..., dict[str, str]]) -> dict[str, str]:
    return auth_header(Role.ADMIN)


@pytest.fixture
def service(auth_header: Callable[..., dict[str, str]]) -> dict[str, str]:
    return auth_header(Role.SERVICE)


def make_campaign(app: Flask, **overrides: Any) -> int:
    """Insert a campaign row directly (no API, no auth); return its id."""
    values: dict[str, Any] = {
        "name": "Spring",
        "discount_type": "percent",
        "discount_value": Decimal("10"),
        "currency": "EUR",
    }
    values.update(overrides)
    with app.app_context():
        campaign = Campaign(**values)
        db.session.add(campaign)
        db.session.commit()
        campaign_id = int(campaign.id)
        db.session.remove()
    return campaign_id


def count_rows(app: Flask, model: Any) -> int:
    """Rows in ``model``'s table, read on a fresh connection."""
    with app.app_context():
        n = db.session.query(model).count()
        db.session.remove()
    return int(n)


@pytest.fixture
def rows(app: Flask) -> Callable[[Any], int]:
    return lambda model: count_rows(app, model)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true a skipped test is a failure: nothing may silently drop out of the run."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {report.longrepr}"
