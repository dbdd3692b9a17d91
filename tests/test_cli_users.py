"""``coupons create-user`` against the test database of each backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner, Result
from flask import Flask
from sqlalchemy import select

from coupons.cli import main
from coupons.config import Settings
from coupons.db import db
from coupons.models import User
from coupons.services import auth

PASSWORD = "correct horse battery staple"
Rows = Callable[[Any], int]


@pytest.fixture(autouse=True)
def fast_hasher(monkeypatch: pytest.MonkeyPatch) -> None:
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16, salt_len=16)
    monkeypatch.setattr(auth, "hasher", cheap)


@pytest.fixture
def invoke(app: Flask, settings: Settings) -> Callable[..., Result]:
    """Run ``coupons`` with the test database's settings in the environment.

    Depends on ``app`` so the tables are emptied and the pool checked after the test.
    """

    def _invoke(*args: str, stdin: str | None = None, password_env: str | None = None) -> Result:
        env = {
            "DATABASE_URL": settings.database_url,
            "SECRET_KEY": settings.secret_key,
            "COUPONS_ENV": "test",
            "COUPONS_PASSWORD": password_env,
        }
        return CliRunner().invoke(main, list(args), input=stdin, env=env)

    return _invoke


def stored_users(app: Flask) -> list[Any]:
    with app.app_context():
        found = list(db.session.execute(select(User.email, User.role, User.password_hash)).all())
        db.session.rollback()
    return found


def test_create_user_with_a_password_option(app: Flask, invoke: Callable[..., Result]) -> None:
    result = invoke(
        "create-user", "--email", " Admin@Example.test", "--role", "admin", "--password", PASSWORD
    )
    assert result.exit_code == 0, result.output
    (user,) = stored_users(app)
    assert user.email == "admin@example.test"
    assert user.role == "admin"
    assert user.password_hash.startswith("$argon2id$")
    assert "email=admin@example.test" in result.output
    assert "role=admin" in result.output
    assert "id=" in result.output
    assert PASSWORD not in result.output
    with app.app_context():  # the password really works
        stored = db.session.execute(select(User.password_hash)).scalar_one()
        db.session.rollback()
    assert auth.hasher.verify(stored, PASSWORD)


def test_create_user_reads_the_password_from_the_environment(
    app: Flask, invoke: Callable[..., Result]
) -> None:
    result = invoke(
        "create-user", "--email", "svc@example.test", "--role", "service", password_env=PASSWORD
    )
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert [u.role for u in stored_users(app)] == ["service"]


def test_create_user_prompts_hidden_with_confirmation(
    app: Flask, invoke: Callable[..., Result]
) -> None:
    result = invoke(
        "create-user",
        "--email",
        "svc@example.test",
        "--role",
        "service",
        stdin=f"{PASSWORD}\nsomething else entirely\n{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output
    assert PASSWORD not in result.output  # hidden input is not echoed
    assert "something else" not in result.output
    assert len(stored_users(app)) == 1


def test_duplicate_email_is_a_clean_error(
    app: Flask, invoke: Callable[..., Result], rows: Rows
) -> None:
    assert (
        invoke(
            "create-user", "--email", "a@example.test", "--role", "admin", password_env=PASSWORD
        ).exit_code
        == 0
    )
    result = invoke(
        "create-user", "--email", "A@example.test", "--role", "service", password_env=PASSWORD
    )
    assert result.exit_code == 1
    assert "Error: a user with this email already exists" in result.output
    assert "Traceback" not in result.output
    assert PASSWORD not in result.output
    assert rows(User) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--email", "a@example.test", "--role", "admin", "--password", "short"), "at least 12"),
        (("--email", "not-an-email", "--role", "admin", "--password", PASSWORD), "email"),
    ],
    ids=["weak-password", "bad-email"],
)
def test_invalid_input_exits_1_and_writes_nothing(
    invoke: Callable[..., Result], rows: Rows, args: tuple[str, ...], message: str
) -> None:
    result = invoke("create-user", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert PASSWORD not in result.output
    assert rows(User) == 0


def test_unknown_role_is_a_usage_error(invoke: Callable[..., Result], rows: Rows) -> None:
    result = invoke(
        "create-user", "--email", "a@example.test", "--role", "root", password_env=PASSWORD
    )
    assert result.exit_code == 2
    assert "root" in result.output
    assert rows(User) == 0
