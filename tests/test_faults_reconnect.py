"""A connection that dies before COMMIT is retried once on a fresh one; COMMIT never is.

The connection is killed server-side (MariaDB ``KILL``, PostgreSQL
``pg_terminate_backend``) while it sits in the pool inside the idle-ping window, so it is
handed out unchecked and its first statement fails: the case the idle ping cannot cover.
Only the test's own connection is killed; the shared servers keep running.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from coupons import create_app
from coupons.db import db, transaction
from coupons.migrate import upgrade
from coupons.models import Campaign, Role
from pooltender.session import is_retryable_disconnect
from pooltender.settings import PoolSettings
from tests.conftest import count_rows, create_database, drop_database, empty_tables, make_settings
from tests.test_faults import user_headers

API = "/api/v1"
CAMPAIGN = {"name": "R", "discount_type": "percent", "discount_value": "10", "currency": "EUR"}


@pytest.fixture(scope="module", params=["mariadb", "postgresql"])
def server_database(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(backend, url) of a migrated database of the test's own on a server backend (SQLite
    has no server that could drop a connection, so it is not a parameter here)."""
    backend: str = request.param
    name = f"coupons_reconnect_{os.getpid()}_{secrets.token_hex(3)}"
    url = create_database(backend, name)
    try:
        upgrade(url)
        yield backend, url
    finally:
        drop_database(backend, name)


@pytest.fixture
def backend(server_database: tuple[str, str]) -> str:
    return server_database[0]


@pytest.fixture
def one_connection_app(server_database: tuple[str, str]) -> Iterator[Flask]:
    # one pooled connection, and a ping window longer than the test: a killed connection is
    # handed out without a ping
    pool = PoolSettings(pool_size=1, max_overflow=0, ping_after_idle=60, pool_recycle=3600)
    app = create_app(make_settings(server_database[1], pool=pool))
    yield app
    with app.app_context():
        db.session.remove()
        empty_tables()
        db.engine.dispose()


def _kill_pooled_connection(app: Flask, backend: str) -> None:
    with app.app_context():
        query = "SELECT CONNECTION_ID()" if backend == "mariadb" else "SELECT pg_backend_pid()"
        server_id = int(db.session.execute(text(query)).scalar_one())
        db.session.remove()
        url = db.engine.url
    killer = create_engine(url, poolclass=NullPool)
    with killer.connect() as conn:
        if backend == "mariadb":
            conn.execute(text(f"KILL {server_id}"))
        else:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": server_id})
            conn.commit()
    killer.dispose()


def _admin(app: Flask) -> dict[str, str]:
    return user_headers(app, Role.ADMIN)


@pytest.mark.fault
def test_a_write_on_a_killed_connection_is_retried_once(
    one_connection_app: Flask, backend: str
) -> None:
    app = one_connection_app
    client = app.test_client()
    admin = _admin(app)
    _kill_pooled_connection(app, backend)
    response = client.post(f"{API}/campaigns", json=CAMPAIGN, headers=admin)
    assert response.status_code == 201, response.get_json()
    assert count_rows(app, Campaign) == 1


@pytest.mark.fault
def test_without_the_retry_the_same_kill_fails_the_transaction(
    one_connection_app: Flask, backend: str
) -> None:
    """The control: the kill really breaks the first statement (so the test above can fail)."""
    app = one_connection_app
    _kill_pooled_connection(app, backend)
    seen: list[BaseException] = []
    with app.app_context():
        try:
            db.session.execute(text("SELECT 1"))
        except OperationalError as err:
            seen.append(err)
        db.session.remove()
    assert seen, "the killed connection still answered"
    assert is_retryable_disconnect(seen[0])


@pytest.mark.fault
def test_a_read_on_a_killed_connection_is_retried_once(
    one_connection_app: Flask, backend: str
) -> None:
    """GET is a safe method: the Flask integration runs its view once more on a fresh
    connection (pooltender.failures.register_error_handlers, reset_session)."""
    app = one_connection_app
    client = app.test_client()
    admin = _admin(app)
    assert client.post(f"{API}/campaigns", json=CAMPAIGN, headers=admin).status_code == 201
    _kill_pooled_connection(app, backend)
    first = client.get(f"{API}/campaigns", headers=admin)
    assert first.status_code == 200, first.get_json()
    assert len(first.get_json()["items"]) == 1


@pytest.mark.fault
def test_an_unsafe_request_is_not_rerun_by_the_web_layer(
    one_connection_app: Flask, backend: str
) -> None:
    """A POST that only reads (validate) is not re-run by the web layer: 503, never 500."""
    app = one_connection_app
    client = app.test_client()
    admin = _admin(app)
    made = client.post(f"{API}/campaigns", json=CAMPAIGN, headers=admin)
    assert made.status_code == 201
    code = client.post(
        f"{API}/campaigns/{made.get_json()['id']}/codes", json={"code": "RERUN-1"}, headers=admin
    )
    assert code.status_code == 201
    _kill_pooled_connection(app, backend)
    response = client.post(
        f"{API}/coupons/RERUN-1/validate",
        json={"customer_id": "c", "order_total": "10.00"},
        headers=admin,
    )
    assert response.status_code in (200, 503), response.get_json()
    if response.status_code == 503:
        assert response.headers["Retry-After"] == "1"


@pytest.mark.fault
def test_a_second_disconnect_is_not_retried_again(one_connection_app: Flask, backend: str) -> None:
    app = one_connection_app
    calls: list[int] = []

    def work() -> Any:
        calls.append(1)
        if len(calls) <= 2:
            _kill_pooled_connection_inside(app, backend)
        return db.session.execute(text("SELECT 1")).scalar_one()

    with app.app_context():
        with pytest.raises(OperationalError):
            transaction(work)
        db.session.remove()
    assert len(calls) == 2  # the first try and exactly one retry


def _kill_pooled_connection_inside(app: Flask, backend: str) -> None:
    """Kill the connection the current transaction holds (from a second connection)."""
    query = "SELECT CONNECTION_ID()" if backend == "mariadb" else "SELECT pg_backend_pid()"
    server_id = int(db.session.execute(text(query)).scalar_one())
    killer = create_engine(db.engine.url, poolclass=NullPool)
    with killer.connect() as conn:
        if backend == "mariadb":
            conn.execute(text(f"KILL {server_id}"))
        else:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": server_id})
            conn.commit()
    killer.dispose()
