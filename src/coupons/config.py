"""Settings of the coupon service, read from the environment once, at start-up.

The post-mortem's ``app/config.py`` held a pool of 200/500 connections per process; this one
holds the post-mortem's corrected defaults (20/50/30/1800/pre_ping) and validates every
value when the app is built, so a typo in a deployment fails loudly at start-up instead of
as a ``(1040, 'Too many connections')`` at peak traffic.

Environment variables (all optional in development):

``DATABASE_URL``            SQLAlchemy URL; default ``sqlite:///<cwd>/var/coupons.db``
``COUPONS_ENV``             ``development`` (default), ``production`` or ``test``
``SECRET_KEY``              signs tokens; required in production, generated otherwise
``DB_POOL_SIZE``            20
``DB_MAX_OVERFLOW``         50
``DB_POOL_TIMEOUT``         30 (seconds to wait for a connection)
``DB_POOL_RECYCLE``         1800 (seconds; keep below the server's wait_timeout)
``DB_POOL_PRE_PING``        true
``SQLALCHEMY_ECHO``         false (log every statement; debugging only)
``SQLALCHEMY_ECHO_POOL``    false (log pool checkouts and checkins; debugging only)
``ACCESS_TOKEN_TTL``        900 seconds
``REFRESH_TOKEN_TTL``       1209600 seconds (14 days)
``LOGIN_MAX_FAILURES``      5 failed logins per account or address ...
``LOGIN_FAILURE_WINDOW``    ... within 900 seconds lock that account or address out
``IDEMPOTENCY_TTL``         86400 seconds (Stripe's 24 h)
``BROKER_URL``              kombu URL of the order-event broker; default an embedded one
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENVIRONMENTS = ("development", "production", "test")
_SECRET_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'  # noqa: S105  (a shell hint, not a secret)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting has a value the service cannot run with; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def default_database_url(base: Path | None = None) -> str:
    """The embedded default: a SQLite file under ./var/ of the working directory."""
    root = (base or Path.cwd()) / "var"
    return f"sqlite:///{root / 'coupons.db'}"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Validated settings; build with :meth:`from_env` or construct directly in tests."""

    database_url: str
    environment: str = "development"
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    pool_size: int = 20
    max_overflow: int = 50
    pool_timeout: int = 30
    pool_recycle: int = 1800
    pool_pre_ping: bool = True
    echo: bool = False
    echo_pool: bool = False
    access_token_ttl: int = 900
    refresh_token_ttl: int = 14 * 24 * 3600
    login_max_failures: int = 5
    login_failure_window: int = 900
    idempotency_ttl: int = 24 * 3600
    broker_url: str = "memory://"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check each value and the values against each other; raise ConfigError."""
        if self.environment not in ENVIRONMENTS:
            raise ConfigError(
                f"COUPONS_ENV must be one of {', '.join(ENVIRONMENTS)}, got {self.environment!r}"
            )
        try:
            url = make_url(self.database_url)
        except ArgumentError:
            raise ConfigError(
                "DATABASE_URL is not a SQLAlchemy URL "
                "(expected e.g. mysql+mysqldb://user:pass@host/db)"
            ) from None
        if url.get_backend_name() not in ("sqlite", "mysql", "mariadb", "postgresql"):
            raise ConfigError(
                f"DATABASE_URL names an unsupported database {url.get_backend_name()!r}; "
                "use sqlite, mysql/mariadb or postgresql"
            )
        if self.pool_size < 1:
            raise ConfigError(f"DB_POOL_SIZE must be at least 1, got {self.pool_size}")
        if self.max_overflow < 0:
            raise ConfigError(f"DB_MAX_OVERFLOW must be at least 0, got {self.max_overflow}")
        if self.pool_timeout < 1:
            raise ConfigError(f"DB_POOL_TIMEOUT must be at least 1 second, got {self.pool_timeout}")
        if self.pool_recycle < -1 or self.pool_recycle == 0:
            raise ConfigError(
                f"DB_POOL_RECYCLE must be -1 (never) or a positive number of seconds, "
                f"got {self.pool_recycle}"
            )
        if self.environment == "production" and len(self.secret_key) < 32:
            raise ConfigError(
                f"SECRET_KEY is required in production and must be at least 32 characters "
                f"({_SECRET_HINT})"
            )
        if self.access_token_ttl < 1 or self.refresh_token_ttl <= self.access_token_ttl:
            raise ConfigError("REFRESH_TOKEN_TTL must be longer than ACCESS_TOKEN_TTL (both > 0)")
        if self.login_max_failures < 1 or self.login_failure_window < 1:
            raise ConfigError("LOGIN_MAX_FAILURES and LOGIN_FAILURE_WINDOW must be at least 1")

    @property
    def backend(self) -> str:
        """``sqlite``, ``mysql`` (MariaDB included) or ``postgresql``."""
        name = make_url(self.database_url).get_backend_name()
        return "mysql" if name == "mariadb" else name

    @property
    def masked_database_url(self) -> str:
        """The database URL with its password hidden, for logs and CLI output."""
        return make_url(self.database_url).render_as_string(hide_password=True)

    @property
    def masked_broker_url(self) -> str:
        """The broker URL with its password hidden, for logs and CLI output."""
        scheme, sep, rest = self.broker_url.partition("://")
        if not sep or "@" not in rest:
            return self.broker_url
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in credentials else self.broker_url

    def engine_options(self) -> dict[str, Any]:
        """SQLAlchemy ``create_engine`` keyword arguments for these settings."""
        options: dict[str, Any] = {
            "pool_pre_ping": self.pool_pre_ping,
            "pool_recycle": self.pool_recycle,
            "echo_pool": self.echo_pool,
        }
        url = make_url(self.database_url)
        in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
        if not in_memory:
            options.update(
                pool_size=self.pool_size,
                max_overflow=self.max_overflow,
                pool_timeout=self.pool_timeout,
            )
        if self.backend == "mysql":
            options["connect_args"] = {"charset": "utf8mb4"}
        if self.backend == "sqlite":
            options["connect_args"] = {"timeout": 30, "check_same_thread": False}
        return options

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, base: Path | None = None, **overrides: Any
    ) -> Settings:
        """Read settings from ``env`` (default ``os.environ``); keyword overrides win."""
        env = os.environ if env is None else env
        environment = env.get("COUPONS_ENV", "development").strip() or "development"
        secret = env.get("SECRET_KEY", "")
        if not secret:
            if environment == "production":
                raise ConfigError(f"SECRET_KEY is required in production ({_SECRET_HINT})")
            secret = secrets.token_urlsafe(32)
        values: dict[str, Any] = dict(
            database_url=env.get("DATABASE_URL") or default_database_url(base),
            environment=environment,
            secret_key=secret,
            pool_size=_int(env, "DB_POOL_SIZE", 20, minimum=1),
            max_overflow=_int(env, "DB_MAX_OVERFLOW", 50),
            pool_timeout=_int(env, "DB_POOL_TIMEOUT", 30, minimum=1),
            pool_recycle=_int(env, "DB_POOL_RECYCLE", 1800, minimum=-1),
            pool_pre_ping=_bool(env, "DB_POOL_PRE_PING", True),
            echo=_bool(env, "SQLALCHEMY_ECHO", False),
            echo_pool=_bool(env, "SQLALCHEMY_ECHO_POOL", False),
            access_token_ttl=_int(env, "ACCESS_TOKEN_TTL", 900, minimum=1),
            refresh_token_ttl=_int(env, "REFRESH_TOKEN_TTL", 14 * 24 * 3600, minimum=1),
            login_max_failures=_int(env, "LOGIN_MAX_FAILURES", 5, minimum=1),
            login_failure_window=_int(env, "LOGIN_FAILURE_WINDOW", 900, minimum=1),
            idempotency_ttl=_int(env, "IDEMPOTENCY_TTL", 24 * 3600, minimum=1),
            broker_url=env.get("BROKER_URL") or "memory://",
        )
        values.update(overrides)
        return cls(**values)
