"""Auth: login, throttling, refresh rotation and reuse detection, logout, me, user creation.

Every test using ``app`` runs on SQLite, MariaDB and PostgreSQL. Hashing runs with cheap
argon2 parameters (the ``fast_hasher`` fixture) except in the test that pins the
production parameters.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher, Type
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from coupons.config import Settings
from coupons.db import db
from coupons.errors import Conflict, Unprocessable
from coupons.models import LoginThrottle, RefreshToken, Role, User, utcnow
from coupons.services import auth
from coupons.services.auth import Principal, decode_access_token, issue_access_token
from pooltender.settings import PoolSettings
from tests.conftest import make_settings

TEST_SECRET = "test-secret-key-that-is-long-enough-for-hs256"  # as in conftest.py
PASSWORD = "correct horse battery staple"
WRONG = "not the right password"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/auth/me"
USERS = "/api/v1/users"

# Captured at import, before any fixture replaces it: the module's real default.
PRODUCTION_HASHER = auth.hasher


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Admission control off and a long shed wait: the concurrency tests here count outcomes
    of a burst larger than the admission limit and the pool (8 logins at once against 4 + 2
    connections) on one hot row, where production would rightly shed some, and a loaded
    machine can make the queued ones wait past the 0.5 s default (admission and shedding
    are tested in tests/pooltender/)."""
    return make_settings(
        database_url,
        pool=PoolSettings(shed_wait=20.0),
        pooltender_config={"POOLTENDER_ADMISSION": "false"},
    )


Rows = Callable[[Any], int]


def cheap_hasher(cls: type[PasswordHasher] = PasswordHasher, time_cost: int = 1) -> Any:
    return cls(time_cost=time_cost, memory_cost=8, parallelism=1, hash_len=16, salt_len=16)


@pytest.fixture(autouse=True)
def fast_hasher(monkeypatch: pytest.MonkeyPatch) -> PasswordHasher:
    hasher: PasswordHasher = cheap_hasher()
    monkeypatch.setattr(auth, "hasher", hasher)
    return hasher


@pytest.fixture
def create_user(app: Flask) -> Callable[..., auth.UserInfo]:
    """Create a user through the service (real hashing, with the current hasher)."""

    def _create(
        email: str = "alice@example.test", password: str = PASSWORD, role: Role = Role.SERVICE
    ) -> auth.UserInfo:
        with app.app_context():
            return auth.create_user(email, password, role.value)

    return _create


@pytest.fixture
def user(create_user: Callable[..., auth.UserInfo]) -> auth.UserInfo:
    return create_user()


def post(client: FlaskClient, path: str, body: Any, address: str = "192.0.2.1", **kw: Any) -> Any:
    return client.post(path, json=body, environ_base={"REMOTE_ADDR": address}, **kw)


def login(
    client: FlaskClient,
    email: str = "alice@example.test",
    password: str = PASSWORD,
    address: str = "192.0.2.1",
) -> Any:
    return post(client, LOGIN, {"email": email, "password": password}, address)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_code(response: Any) -> str:
    return str(response.get_json()["error"]["code"])


def execute(app: Flask, statement: Any) -> None:
    """Run one write statement in its own transaction (test set-up)."""
    with app.app_context():
        db.session.execute(statement)
        db.session.commit()


def fetch(app: Flask, statement: Any) -> list[Any]:
    with app.app_context():
        result = list(db.session.execute(statement).all())
        db.session.rollback()
    return result


def throttle(app: Flask, key: str) -> Any:
    found = fetch(
        app,
        select(LoginThrottle.failures, LoginThrottle.locked_until).where(
            LoginThrottle.scope_key == key
        ),
    )
    return found[0] if found else None


def token_rows(app: Flask) -> list[Any]:
    return fetch(
        app,
        select(RefreshToken.token_hash, RefreshToken.family_id, RefreshToken.revoked_at).order_by(
            RefreshToken.id
        ),
    )


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------ password hashing


def test_production_hasher_uses_owasp_argon2id_parameters() -> None:
    assert PRODUCTION_HASHER.memory_cost == 19456
    assert PRODUCTION_HASHER.time_cost == 2
    assert PRODUCTION_HASHER.parallelism == 1
    assert PRODUCTION_HASHER.type is Type.ID
    encoded = PRODUCTION_HASHER.hash(PASSWORD)
    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PRODUCTION_HASHER.verify(encoded, PASSWORD)
    assert not PRODUCTION_HASHER.check_needs_rehash(encoded)


def test_user_is_stored_with_a_normalized_email_and_an_argon2id_hash(
    app: Flask, create_user: Callable[..., auth.UserInfo]
) -> None:
    info = create_user(email="  Alice@Example.TEST ")
    assert info.email == "alice@example.test"
    (stored,) = fetch(app, select(User.email, User.password_hash, User.role))
    assert stored.email == "alice@example.test"
    assert stored.password_hash.startswith("$argon2id$")
    assert PASSWORD not in stored.password_hash
    assert stored.role == "service"


class SpyHasher(PasswordHasher):
    """Records how many pool connections are checked out whenever it hashes or verifies."""

    checkouts: list[int]

    def _record(self) -> None:
        self.checkouts.append(db.engine.pool.checkedout())  # type: ignore[attr-defined]

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self._record()
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> Any:
        self._record()
        return super().verify(hash, password)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> SpyHasher:
    hasher: SpyHasher = cheap_hasher(SpyHasher)
    hasher.checkouts = []
    monkeypatch.setattr(auth, "hasher", hasher)
    return hasher


def test_login_verifies_passwords_while_no_connection_is_checked_out(
    client: FlaskClient, create_user: Callable[..., auth.UserInfo], spy: SpyHasher
) -> None:
    create_user()
    spy.checkouts.clear()
    assert login(client).status_code == 200
    assert login(client, password=WRONG).status_code == 401
    assert login(client, email="nobody@example.test").status_code == 401  # dummy verify
    assert len(spy.checkouts) >= 3
    assert spy.checkouts == [0] * len(spy.checkouts)


def test_rehash_on_login_happens_while_no_connection_is_checked_out(
    app: Flask, client: FlaskClient, create_user: Callable[..., auth.UserInfo], spy: SpyHasher
) -> None:
    with app.app_context():  # a hash made with older, weaker parameters
        auth.create_user("old@example.test", PASSWORD, "admin")
    execute(
        app,
        update(User).values(password_hash=cheap_hasher(time_cost=3).hash(PASSWORD)),
    )
    spy.checkouts.clear()
    assert login(client, email="old@example.test").status_code == 200
    assert len(spy.checkouts) == 2  # verify, then the new hash
    assert spy.checkouts == [0, 0]


def test_create_user_hashes_while_no_connection_is_checked_out(
    app: Flask, client: FlaskClient, admin: dict[str, str], spy: SpyHasher
) -> None:
    response = client.post(
        USERS,
        json={"email": "new@example.test", "password": PASSWORD, "role": "service"},
        headers=admin,
    )
    assert response.status_code == 201
    with app.app_context():
        auth.create_user("direct@example.test", PASSWORD, "admin")
    assert spy.checkouts == [0, 0]


def test_login_upgrades_a_hash_made_with_old_parameters(
    app: Flask, client: FlaskClient, user: auth.UserInfo, fast_hasher: PasswordHasher
) -> None:
    old = cheap_hasher(time_cost=3).hash(PASSWORD)
    execute(app, update(User).values(password_hash=old))
    assert login(client).status_code == 200
    ((stored,),) = fetch(app, select(User.password_hash))
    assert stored != old
    assert not fast_hasher.check_needs_rehash(stored)
    assert login(client).status_code == 200  # the new hash verifies


# ------------------------------------------------------------------------ login


def test_login_returns_an_access_token_and_a_hashed_refresh_token(
    app: Flask, client: FlaskClient, user: auth.UserInfo
) -> None:
    response = login(client, email=" ALICE@example.test ")
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    principal = decode_access_token(body["access_token"], TEST_SECRET)
    (row,) = token_rows(app)
    assert principal == Principal(
        user_id=user.id, email=user.email, role="service", family=row.family_id
    )
    assert row.token_hash == sha256(body["refresh_token"])
    assert len(row.family_id) == 32
    assert row.revoked_at is None
    (expires_at,) = fetch(app, select(RefreshToken.expires_at))[0]
    remaining = (expires_at - utcnow()).total_seconds()
    assert 14 * 24 * 3600 - 60 < remaining <= 14 * 24 * 3600


@pytest.mark.parametrize(
    ("email", "password"),
    [("alice@example.test", WRONG), ("nobody@example.test", PASSWORD)],
    ids=["wrong-password", "unknown-email"],
)
def test_bad_credentials_are_401_with_one_message(
    client: FlaskClient, user: auth.UserInfo, rows: Rows, email: str, password: str
) -> None:
    response = login(client, email=email, password=password)
    assert response.status_code == 401
    assert response.get_json()["error"] == {
        "code": "invalid_credentials",
        "message": "the email or password is not correct",
    }
    assert rows(RefreshToken) == 0
    assert rows(User) == 1


def test_inactive_user_cannot_log_in(
    app: Flask, client: FlaskClient, user: auth.UserInfo, rows: Rows
) -> None:
    execute(app, update(User).values(is_active=False))
    response = login(client)
    assert response.status_code == 401
    assert error_code(response) == "invalid_credentials"
    assert rows(RefreshToken) == 0


def test_user_without_a_usable_hash_cannot_log_in(
    client: FlaskClient, make_user: Callable[..., Principal], rows: Rows
) -> None:
    make_user(Role.ADMIN, email="fixture@example.test")  # password_hash "!unusable"
    response = login(client, email="fixture@example.test", password="!unusable")
    assert response.status_code == 401
    assert error_code(response) == "invalid_credentials"
    assert rows(RefreshToken) == 0


@pytest.mark.parametrize(
    "body",
    [{}, {"email": "alice@example.test"}, {"password": PASSWORD}, {"email": 1, "password": 2}],
)
def test_malformed_login_is_422_and_writes_nothing(
    client: FlaskClient, user: auth.UserInfo, rows: Rows, body: dict[str, Any]
) -> None:
    response = post(client, LOGIN, body)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    assert rows(LoginThrottle) == 0
    assert rows(RefreshToken) == 0


# ------------------------------------------------------------------------ throttling


def test_account_is_locked_after_too_many_failures(
    app: Flask, client: FlaskClient, user: auth.UserInfo, rows: Rows
) -> None:
    for i in range(5):  # settings.login_max_failures, each from another address
        response = login(client, password=WRONG, address=f"198.51.100.{i}")
        assert response.status_code == 401
    assert throttle(app, "account:alice@example.test").failures == 5

    response = login(client, address="203.0.113.9")  # right password, fresh address
    assert response.status_code == 429
    assert error_code(response) == "too_many_attempts"
    retry_after = int(response.headers["Retry-After"])
    assert 0 < retry_after <= 900
    # nothing written by the refused attempt
    assert throttle(app, "account:alice@example.test").failures == 5
    assert throttle(app, "address:203.0.113.9") is None
    assert rows(RefreshToken) == 0


def test_an_address_over_its_limit_never_locks_other_accounts_out(
    app: Flask,
    client: FlaskClient,
    create_user: Callable[..., auth.UserInfo],
    settings: Settings,
    rows: Rows,
) -> None:
    create_user(email="victim@example.test")
    create_user(email="admin@example.test", role=Role.ADMIN)
    limit = settings.login_max_failures_per_address
    for i in range(limit):  # a sprayer: one guess at each of many accounts, one address
        assert login(client, email=f"guess{i}@example.test", address="10.0.0.7").status_code == 401
    assert throttle(app, "address:10.0.0.7").failures == limit
    assert throttle(app, "address:10.0.0.7").locked_until is not None

    # accounts without failures still log in from that address (a NAT's other users)
    assert login(client, email="victim@example.test", address="10.0.0.7").status_code == 200
    assert login(client, email="admin@example.test", address="10.0.0.7").status_code == 200
    # the sprayer cannot retry the accounts it already tried from there
    response = login(client, email="guess0@example.test", address="10.0.0.7")
    assert response.status_code == 429
    assert error_code(response) == "too_many_attempts"
    assert int(response.headers["Retry-After"]) > 0
    # ... while from another address that account is merely a wrong password
    assert login(client, email="guess0@example.test", address="10.0.0.8").status_code == 401
    assert rows(RefreshToken) == 2


def test_unlock_lifts_an_account_and_an_address(
    app: Flask, client: FlaskClient, user: auth.UserInfo, settings: Settings
) -> None:
    for _ in range(settings.login_max_failures):
        assert login(client, password=WRONG, address="10.9.0.1").status_code == 401
    assert login(client, address="10.9.0.2").status_code == 429
    with app.app_context():
        assert auth.unlock(email=" Alice@Example.test", address="10.9.0.1") == 2
        assert auth.unlock(email="alice@example.test") == 0
        db.session.remove()
    assert throttle(app, "address:10.9.0.1") is None
    assert login(client, address="10.9.0.2").status_code == 200


def test_the_unlock_command(
    app: Flask, client: FlaskClient, user: auth.UserInfo, settings: Settings
) -> None:
    from click.testing import CliRunner

    from coupons.cli import main

    for _ in range(settings.login_max_failures):
        login(client, password=WRONG, address="10.9.1.1")
    env = {"DATABASE_URL": settings.database_url, "COUPONS_ENV": "test", "SECRET_KEY": TEST_SECRET}
    done = CliRunner().invoke(main, ["unlock", "--email", "alice@example.test"], env=env)
    assert done.exit_code == 0, done.output
    assert "unlocked account alice@example.test (1 throttle row(s) cleared)" in done.output
    assert login(client, address="10.9.1.2").status_code == 200
    refused = CliRunner().invoke(main, ["unlock"], env=env)
    assert refused.exit_code == 2


def test_the_client_address_is_the_peer_unless_proxies_are_trusted(
    database_url: str, create_user: Callable[..., auth.UserInfo]
) -> None:
    from coupons import create_app
    from tests.conftest import make_settings

    create_user()
    for hops, expected in ((0, "address:192.0.2.1"), (1, "address:203.0.113.50")):
        app = create_app(make_settings(database_url, trusted_proxies=hops))
        client = app.test_client()
        response = client.post(
            LOGIN,
            json={"email": "alice@example.test", "password": WRONG},
            environ_base={"REMOTE_ADDR": "192.0.2.1"},
            headers={"X-Forwarded-For": "198.51.100.9, 203.0.113.50"},
        )
        assert response.status_code == 401
        assert throttle(app, expected).failures == 1
        with app.app_context():
            db.session.execute(LoginThrottle.__table__.delete())
            db.session.commit()
            db.engine.dispose()


def test_successful_login_resets_the_account_counter_only(
    app: Flask, client: FlaskClient, user: auth.UserInfo
) -> None:
    for _ in range(4):
        assert login(client, password=WRONG, address="10.1.1.1").status_code == 401
    assert login(client, address="10.1.1.2").status_code == 200
    assert throttle(app, "account:alice@example.test") is None
    assert throttle(app, "address:10.1.1.1").failures == 4  # addresses are not laundered
    for _ in range(4):
        assert login(client, password=WRONG, address="10.1.1.3").status_code == 401
    assert login(client, address="10.1.1.4").status_code == 200


def test_lock_expires_and_the_window_restarts(
    app: Flask, client: FlaskClient, user: auth.UserInfo
) -> None:
    for i in range(5):
        login(client, password=WRONG, address=f"10.2.0.{i}")
    assert login(client, address="10.2.1.1").status_code == 429
    past = utcnow() - dt.timedelta(seconds=1)
    execute(
        app,
        update(LoginThrottle).values(
            locked_until=past, window_started_at=past - dt.timedelta(seconds=900)
        ),
    )
    assert login(client, password=WRONG, address="10.2.1.1").status_code == 401
    row = throttle(app, "account:alice@example.test")
    assert row.failures == 1  # a fresh window, not 6
    assert login(client, address="10.2.1.2").status_code == 200


def test_concurrent_failures_are_all_counted(app: Flask) -> None:
    """Many first failures for one new scope at once: no lost count, no 500."""
    n = 8
    statuses: list[int] = []
    barrier = threading.Barrier(n)

    def attempt(i: int) -> None:
        local = app.test_client()
        barrier.wait()
        response = login(local, email="race@example.test", address=f"10.3.0.{i}")
        statuses.append(response.status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(statuses) <= {401, 429}, statuses
    assert len(statuses) == n
    assert throttle(app, "account:race@example.test").failures == statuses.count(401)
    assert statuses.count(401) == 5  # exactly the limit: each check reserved its attempt


def test_concurrent_wrong_passwords_get_exactly_the_limit_of_checks(
    app: Flask, user: auth.UserInfo, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[int] = []
    real = auth._verify

    def counting(password_hash: str, password: str) -> bool:
        checks.append(1)
        return real(password_hash, password)

    monkeypatch.setattr(auth, "_verify", counting)
    n = 8
    barrier = threading.Barrier(n)
    statuses: list[int] = []

    def attempt(i: int) -> None:
        local = app.test_client()
        barrier.wait()
        statuses.append(login(local, password=WRONG, address=f"10.4.0.{i}").status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(checks) == settings.login_max_failures, statuses
    assert sorted(statuses) == [401] * 5 + [429] * 3


# ------------------------------------------------------------------------ refresh


@pytest.fixture
def tokens(client: FlaskClient, user: auth.UserInfo) -> dict[str, Any]:
    response = login(client)
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def test_refresh_rotates_the_token(app: Flask, client: FlaskClient, tokens: dict[str, Any]) -> None:
    response = post(client, REFRESH, {"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["refresh_token"] != tokens["refresh_token"]
    assert decode_access_token(body["access_token"], TEST_SECRET).email == "alice@example.test"
    old, new = token_rows(app)
    assert old.token_hash == sha256(tokens["refresh_token"])
    assert old.revoked_at is not None
    assert new.token_hash == sha256(body["refresh_token"])
    assert new.revoked_at is None
    assert new.family_id == old.family_id
    # the new one rotates in turn
    assert post(client, REFRESH, {"refresh_token": body["refresh_token"]}).status_code == 200


def test_reusing_a_rotated_token_revokes_the_whole_family(
    app: Flask, client: FlaskClient, tokens: dict[str, Any], rows: Rows
) -> None:
    second = post(client, REFRESH, {"refresh_token": tokens["refresh_token"]}).get_json()
    other_session = login(client).get_json()  # another family of the same user

    response = post(client, REFRESH, {"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 401
    assert error_code(response) == "refresh_token_reused"
    assert rows(RefreshToken) == 3  # nothing issued
    family = {
        r.family_id for r in token_rows(app) if r.token_hash == sha256(second["refresh_token"])
    }
    assert all(r.revoked_at is not None for r in token_rows(app) if r.family_id in family)

    # the legitimate holder's current token is dead too; the other family is untouched
    response = post(client, REFRESH, {"refresh_token": second["refresh_token"]})
    assert response.status_code == 401
    assert error_code(response) == "refresh_token_reused"
    assert (
        post(client, REFRESH, {"refresh_token": other_session["refresh_token"]}).status_code == 200
    )


def test_unknown_refresh_token_is_401_and_writes_nothing(
    app: Flask, client: FlaskClient, tokens: dict[str, Any], rows: Rows
) -> None:
    response = post(client, REFRESH, {"refresh_token": "not-a-token"})
    assert response.status_code == 401
    assert error_code(response) == "invalid_refresh_token"
    assert rows(RefreshToken) == 1
    assert token_rows(app)[0].revoked_at is None


def test_expired_refresh_token_is_401_and_writes_nothing(
    app: Flask, client: FlaskClient, tokens: dict[str, Any], rows: Rows
) -> None:
    execute(app, update(RefreshToken).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    response = post(client, REFRESH, {"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 401
    assert error_code(response) == "invalid_refresh_token"
    assert rows(RefreshToken) == 1
    assert token_rows(app)[0].revoked_at is None


def test_refresh_for_a_disabled_user_is_401_and_writes_nothing(
    app: Flask, client: FlaskClient, tokens: dict[str, Any], rows: Rows
) -> None:
    execute(app, update(User).values(is_active=False))
    response = post(client, REFRESH, {"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 401
    assert error_code(response) == "invalid_refresh_token"
    assert rows(RefreshToken) == 1
    assert token_rows(app)[0].revoked_at is None


def test_refresh_without_a_token_is_422(client: FlaskClient, rows: Rows) -> None:
    response = post(client, REFRESH, {})
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    assert rows(RefreshToken) == 0


# ------------------------------------------------------------------------ logout


def test_logout_revokes_the_family(app: Flask, client: FlaskClient, tokens: dict[str, Any]) -> None:
    rotated = post(client, REFRESH, {"refresh_token": tokens["refresh_token"]}).get_json()
    response = post(
        client,
        LOGOUT,
        {"refresh_token": rotated["refresh_token"]},
        headers=bearer(rotated["access_token"]),
    )
    assert response.status_code == 204
    assert response.data == b""
    assert all(r.revoked_at is not None for r in token_rows(app))
    response = post(client, REFRESH, {"refresh_token": rotated["refresh_token"]})
    assert response.status_code == 401


def test_logout_needs_an_access_token(
    app: Flask, client: FlaskClient, tokens: dict[str, Any]
) -> None:
    response = post(client, LOGOUT, {"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 401
    assert error_code(response) == "missing_token"
    assert token_rows(app)[0].revoked_at is None


def test_logout_ignores_another_users_token(
    app: Flask,
    client: FlaskClient,
    tokens: dict[str, Any],
    create_user: Callable[..., auth.UserInfo],
) -> None:
    create_user(email="mallory@example.test")
    mallory = login(client, email="mallory@example.test").get_json()
    response = post(
        client,
        LOGOUT,
        {"refresh_token": tokens["refresh_token"]},
        headers=bearer(mallory["access_token"]),
    )
    assert response.status_code == 204
    assert all(r.revoked_at is None for r in token_rows(app))
    assert post(client, REFRESH, {"refresh_token": tokens["refresh_token"]}).status_code == 200


def test_logout_without_a_refresh_token_is_422(
    app: Flask, client: FlaskClient, tokens: dict[str, Any]
) -> None:
    response = post(client, LOGOUT, {}, headers=bearer(tokens["access_token"]))
    assert response.status_code == 422
    assert token_rows(app)[0].revoked_at is None


# ------------------------------------------------------------------------ me / access tokens


def test_me_returns_the_user(
    client: FlaskClient, tokens: dict[str, Any], user: auth.UserInfo
) -> None:
    response = client.get(ME, headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    assert response.get_json() == {"id": user.id, "email": "alice@example.test", "role": "service"}


def test_me_for_a_disabled_or_deleted_user_is_401(
    app: Flask, client: FlaskClient, tokens: dict[str, Any]
) -> None:
    execute(app, update(User).values(is_active=False))
    response = client.get(ME, headers=bearer(tokens["access_token"]))
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"
    ghost = issue_access_token(Principal(10**9, "ghost@example.test", "admin"), TEST_SECRET, 60)
    response = client.get(ME, headers=bearer(ghost))
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"


def test_expired_access_token_is_401_token_expired(
    client: FlaskClient, user: auth.UserInfo
) -> None:
    expired = issue_access_token(Principal(user.id, user.email, user.role), TEST_SECRET, -10)
    response = client.get(ME, headers=bearer(expired))
    assert response.status_code == 401
    assert error_code(response) == "token_expired"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_token"),
        ({"Authorization": "Bearer not.a.jwt"}, "invalid_token"),
        ({"Authorization": "Basic abc"}, "missing_token"),
    ],
)
def test_me_without_a_valid_token_is_401(
    client: FlaskClient, headers: dict[str, str], code: str
) -> None:
    response = client.get(ME, headers=headers)
    assert response.status_code == 401
    assert error_code(response) == code


def test_token_signed_with_another_key_is_401(client: FlaskClient, user: auth.UserInfo) -> None:
    forged = issue_access_token(
        Principal(user.id, user.email, "admin"), "another-secret-key-of-enough-length!!", 60
    )
    response = client.get(ME, headers=bearer(forged))
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"


# ------------------------------------------------------------------------ POST /users


def test_admin_creates_a_user_who_can_log_in(
    app: Flask, client: FlaskClient, admin: dict[str, str]
) -> None:
    response = client.post(
        USERS,
        json={"email": " Bob@Example.test ", "password": PASSWORD, "role": "service"},
        headers=admin,
    )
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"id", "email", "role", "created_at"}
    assert body["email"] == "bob@example.test"
    assert body["role"] == "service"
    assert dt.datetime.fromisoformat(body["created_at"]).tzinfo is not None
    assert login(client, email="bob@example.test").status_code == 200


def test_duplicate_email_is_409_and_writes_nothing(
    client: FlaskClient, admin: dict[str, str], user: auth.UserInfo, rows: Rows
) -> None:
    before = rows(User)
    response = client.post(
        USERS,
        json={"email": "ALICE@example.test", "password": PASSWORD, "role": "admin"},
        headers=admin,
    )
    assert response.status_code == 409
    assert error_code(response) == "email_taken"
    assert rows(User) == before


def test_create_user_race_on_the_unique_email_is_409(
    app: Flask, user: auth.UserInfo, monkeypatch: pytest.MonkeyPatch, rows: Rows
) -> None:
    """The existence check passes, another creator wins: the constraint decides."""
    real_hash = auth.hash_password

    def hash_then_lose_race(password: str) -> str:
        execute(app, update(User).values(email="carol@example.test"))
        return real_hash(password)

    monkeypatch.setattr(auth, "hash_password", hash_then_lose_race)
    with app.app_context(), pytest.raises(Conflict) as caught:
        auth.create_user("carol@example.test", PASSWORD, "service")
    assert caught.value.code == "email_taken"
    assert rows(User) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "bob@example.test", "password": "short-pw", "role": "service"}, "password"),
        ({"email": "bob@example.test", "password": PASSWORD, "role": "root"}, "role"),
        ({"email": "not-an-email", "password": PASSWORD, "role": "service"}, "email"),
        ({"email": "bob@example.test", "role": "service"}, "password"),
        ({"email": "bob@example.test", "password": "x" * 2000, "role": "admin"}, "password"),
    ],
    ids=["weak-password", "bad-role", "bad-email", "no-password", "huge-password"],
)
def test_invalid_user_is_422_and_writes_nothing(
    client: FlaskClient, admin: dict[str, str], rows: Rows, body: dict[str, Any], field: str
) -> None:
    before = rows(User)
    response = client.post(USERS, json=body, headers=admin)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["fields"]
    assert rows(User) == before


def test_service_role_cannot_create_users(
    client: FlaskClient, service: dict[str, str], rows: Rows
) -> None:
    before = rows(User)
    response = client.post(
        USERS,
        json={"email": "bob@example.test", "password": PASSWORD, "role": "admin"},
        headers=service,
    )
    assert response.status_code == 403
    assert error_code(response) == "forbidden"
    assert rows(User) == before


def test_anonymous_cannot_create_users(client: FlaskClient, rows: Rows) -> None:
    response = client.post(
        USERS, json={"email": "bob@example.test", "password": PASSWORD, "role": "admin"}
    )
    assert response.status_code == 401
    assert rows(User) == 0


@pytest.mark.parametrize(
    ("email", "password", "role"),
    [
        ("bad", PASSWORD, "admin"),
        ("bob@example.test", "short", "admin"),
        ("bob@example.test", PASSWORD, "root"),
    ],
)
def test_service_validates_without_the_api(
    app: Flask, rows: Rows, email: str, password: str, role: str
) -> None:
    with app.app_context(), pytest.raises(Unprocessable) as caught:
        auth.create_user(email, password, role)
    assert caught.value.code == "validation_error"
    assert rows(User) == 0


# ------------------------------------------------------------------------ docs and logs


def test_openapi_documents_the_auth_routes(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    paths = spec["paths"]
    for path in ("/auth/login", "/auth/refresh", "/auth/logout", "/auth/me", "/users"):
        assert f"/api/v1{path}" in paths
    schemas = spec["components"]["schemas"]
    login_ref = paths["/api/v1/auth/login"]["post"]["requestBody"]["content"]["application/json"]
    login_schema = schemas[login_ref["schema"]["$ref"].rsplit("/", 1)[1]]
    assert set(login_schema["required"]) == {"email", "password"}
    create = paths["/api/v1/users"]["post"]
    assert create["security"] == [{"bearerAuth": []}]
    user_schema = schemas[
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    ]
    assert user_schema["properties"]["password"]["minLength"] == 12
    assert user_schema["properties"]["role"]["enum"] == ["admin", "service"]
    assert paths["/api/v1/auth/me"]["get"]["security"] == [{"bearerAuth": []}]
    assert "429" in paths["/api/v1/auth/login"]["post"]["responses"]


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def test_no_secret_reaches_the_logs(
    client: FlaskClient, admin: dict[str, str], all_logs: pytest.LogCaptureFixture
) -> None:
    created = client.post(
        USERS,
        json={"email": "bob@example.test", "password": PASSWORD, "role": "admin"},
        headers=admin,
    )
    assert created.status_code == 201
    first = login(client, email="bob@example.test").get_json()
    second = post(client, REFRESH, {"refresh_token": first["refresh_token"]}).get_json()
    reused = post(client, REFRESH, {"refresh_token": first["refresh_token"]})
    assert error_code(reused) == "refresh_token_reused"
    third = login(client, email="bob@example.test").get_json()
    post(
        client,
        LOGOUT,
        {"refresh_token": third["refresh_token"]},
        headers=bearer(third["access_token"]),
    )
    for i in range(6):
        login(client, email="bob@example.test", password=WRONG, address=f"10.9.0.{i}")
    text = all_logs.text
    assert "reuse detected" in text
    assert "throttled" in text
    secrets = [PASSWORD, WRONG]
    for pair in (first, second, third):
        secrets += [pair["access_token"], pair["refresh_token"]]
    for secret in secrets:
        assert secret not in text


def test_token_pair_repr_hides_tokens() -> None:
    pair = auth.TokenPair(access_token="a.b.c", refresh_token="r-secret", expires_in=900)
    assert "r-secret" not in repr(pair)
    assert "a.b.c" not in repr(pair)


# ------------------------------------------------------------------------ tokens follow the account


def _seconds_until_refused(clients: list[FlaskClient], path: str, headers: dict[str, str]) -> float:
    """Poll every client (each its own app: its own cache, as a worker process has) until
    each refuses ``headers`` with 401; the seconds that took for the slowest."""
    started = time.monotonic()
    pending = list(clients)
    while pending and time.monotonic() - started < 10:
        pending = [c for c in pending if c.get(path, headers=headers).status_code != 401]
        time.sleep(0.05)
    assert not pending, "a worker kept accepting the token"
    return time.monotonic() - started


@pytest.fixture
def workers(app: Flask, settings: Settings) -> Iterator[list[FlaskClient]]:
    """Two more apps on the same database: two 'workers' with their own account caches."""
    from coupons import create_app

    apps = [create_app(settings) for _ in range(2)]
    yield [app.test_client()] + [each.test_client() for each in apps]
    for each in apps:
        with each.app_context():
            db.engine.dispose()


@pytest.mark.parametrize("change", ["disable", "delete", "demote"])
def test_a_changed_account_loses_access_within_2_s_in_every_worker(
    app: Flask,
    workers: list[FlaskClient],
    create_user: Callable[..., auth.UserInfo],
    change: str,
) -> None:
    admin = create_user(email="boss@example.test", role=Role.ADMIN)
    token = login(workers[0], email="boss@example.test").get_json()["access_token"]
    for client in workers:  # every worker has a snapshot that admits the token
        assert client.get("/api/v1/campaigns", headers=bearer(token)).status_code == 200
    if change == "disable":
        execute(app, update(User).where(User.id == admin.id).values(is_active=False))
    elif change == "demote":
        execute(app, update(User).where(User.id == admin.id).values(role=Role.SERVICE.value))
    else:
        execute(app, RefreshToken.__table__.delete())
        execute(app, User.__table__.delete().where(User.id == admin.id))
    took = _seconds_until_refused(workers, "/api/v1/campaigns", bearer(token))
    assert took <= 2.0, f"{change}: access lasted {took:.2f} s"


def test_a_logged_out_session_loses_access_within_2_s_and_the_others_keep_it(
    workers: list[FlaskClient], user: auth.UserInfo
) -> None:
    first = login(workers[0]).get_json()
    second = login(workers[0]).get_json()
    for client in workers:
        assert client.get(ME, headers=bearer(first["access_token"])).status_code == 200
    response = post(
        workers[0],
        LOGOUT,
        {"refresh_token": first["refresh_token"]},
        headers=bearer(first["access_token"]),
    )
    assert response.status_code == 204
    took = _seconds_until_refused(workers, "/api/v1/coupons", bearer(first["access_token"]))
    assert took <= 2.0
    for client in workers:
        assert (
            client.get("/api/v1/coupons", headers=bearer(second["access_token"])).status_code == 200
        )


def test_a_new_user_is_admitted_at_once(
    workers: list[FlaskClient], create_user: Callable[..., auth.UserInfo]
) -> None:
    create_user(email="first@example.test")
    assert (
        workers[1]
        .get(
            ME,
            headers=bearer(
                login(workers[1], email="first@example.test").get_json()["access_token"]
            ),
        )
        .status_code
        == 200
    )
    create_user(email="late@example.test")  # the snapshot above does not know this user
    token = login(workers[1], email="late@example.test").get_json()["access_token"]
    assert workers[1].get("/api/v1/coupons", headers=bearer(token)).status_code == 200


@pytest.fixture
def mariadb_database_url() -> Iterator[str]:
    """A migrated database of its own on the shared MariaDB (the processlist test's only)."""
    import os
    import secrets

    from coupons.migrate import upgrade
    from tests.conftest import create_database, drop_database

    name = f"coupons_cache_{os.getpid()}_{secrets.token_hex(3)}"
    url = create_database("mariadb", name)
    try:
        upgrade(url)
        yield url
    finally:
        drop_database("mariadb", name)


def test_the_account_cache_refreshes_on_the_app_pool_so_a_process_stays_within_its_cap(
    mariadb_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2+0 app under 8 threads never has a third server connection, refreshes included
    (issue 10: the cache's own NullPool engine made a 4 x 2 fleet hold 9). Counted from
    MariaDB's processlist, on a connection of another database, every 20 ms; the refresh is
    made to run every 20 ms so that many of them overlap the threads' requests."""
    database_url = mariadb_database_url
    from sqlalchemy import create_engine, event, text
    from sqlalchemy.engine import make_url

    from coupons import create_app
    from pooltender.settings import PoolSettings
    from tests.conftest import MARIADB_ADMIN_URL, empty_tables

    monkeypatch.setattr(auth.AccountCache, "REFRESH_EVERY", 0.02)
    pool = PoolSettings(pool_size=2, max_overflow=0, pool_timeout=60, shed_wait=60)
    settings = make_settings(
        database_url, pool=pool, pooltender_config={"POOLTENDER_ADMISSION": "false"}
    )
    app = create_app(settings)
    name = make_url(database_url).database
    refreshes = 0

    def count_refresh(conn: Any, *_args: Any) -> None:
        nonlocal refreshes
        if conn.get_execution_options().get(auth.ACCOUNT_REFRESH_OPTION):
            refreshes += 1

    with app.app_context():
        user = User(email="svc@example.test", password_hash="!", role="service", is_active=True)
        db.session.add(user)
        db.session.commit()
        principal = Principal(user_id=user.id, email=user.email, role=user.role)
        db.session.remove()
        event.listen(db.engine, "before_cursor_execute", count_refresh)
    headers = {"Authorization": f"Bearer {issue_access_token(principal, TEST_SECRET, 900)}"}
    samples: list[int] = []
    statuses: list[int] = []
    stop = threading.Event()
    sampler_engine = create_engine(MARIADB_ADMIN_URL)

    def sample() -> None:
        query = text("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = :db")
        with sampler_engine.connect() as conn:
            while not stop.is_set():
                samples.append(int(conn.execute(query, {"db": name}).scalar_one()))
                time.sleep(0.02)

    def load() -> None:
        # at least 2 s and 20 refreshes (a loaded machine runs fewer of them per second),
        # at most 30 s
        client = app.test_client()
        start = time.monotonic()
        while True:
            statuses.append(client.get("/api/v1/campaigns", headers=headers).status_code)
            elapsed = time.monotonic() - start
            if elapsed > 30.0 or (elapsed >= 2.0 and refreshes >= 20):
                break

    try:
        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        sampler.join()
    finally:
        stop.set()
        sampler_engine.dispose()
        with app.app_context():
            db.session.remove()
            empty_tables()
            db.engine.dispose()
    assert statuses
    assert set(statuses) == {200}, sorted(set(statuses))
    assert refreshes >= 20, f"only {refreshes} refresh statements ran"
    assert len(samples) >= 20
    assert max(samples) == 2, f"server connections seen: {sorted(set(samples))}"
