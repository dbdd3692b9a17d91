"""Settings of the coupon service, read from the environment once, at start-up.

The post-mortem's ``app/config.py`` held a pool of 200/500 connections per process and its
fix lowered that to 20/50/30/1800/pre_ping. Pool settings here are pooltender's
:class:`~pooltender.settings.PoolSettings`, read from ``POOLTENDER_*`` variables and
validated at start-up, so a typo fails loudly instead of as ``(1040, 'Too many
connections')`` at peak traffic. Their defaults follow the budget's Little's-law sizing
(4 + 2 per process), not the post-mortem's 20/50: measured on 2 cores with gunicorn
4 workers x 32 threads, 20/50 held 129 connections for 451 req/s, 4 per worker held 17 for
633 req/s (docs/budget.md, docs/fleet.md). ``POOLTENDER_POOL_SIZE=20
POOLTENDER_MAX_OVERFLOW=50`` restores the post-mortem's figures.

Environment variables (all optional in development):

``DATABASE_URL``            SQLAlchemy URL; default ``sqlite:///<cwd>/var/coupons.db``
``COUPONS_ENV``             ``development`` (default), ``production`` or ``test``
``SECRET_KEY``              signs tokens; required in production, generated otherwise
``POOLTENDER_POOL_SIZE``    4; and ``POOLTENDER_MAX_OVERFLOW`` 2, ``POOLTENDER_POOL_TIMEOUT``
                            30, ``POOLTENDER_POOL_RECYCLE`` 1800, ``POOLTENDER_POOL_PRE_PING``
                            true, ``POOLTENDER_SHED_WAIT``, ``POOLTENDER_LEAK_THRESHOLD`` ...
                            (every PoolSettings field; see pooltender.settings)
``SQLALCHEMY_ECHO``         false (log every statement; debugging only)
``SQLALCHEMY_ECHO_POOL``    false (log pool checkouts and checkins; debugging only)
``ACCESS_TOKEN_TTL``        900 seconds
``REFRESH_TOKEN_TTL``       1209600 seconds (14 days)
``LOGIN_MAX_FAILURES``      5 failed logins of one account (any address) ...
``LOGIN_FAILURE_WINDOW``    ... within 900 seconds lock that account out for the window
``LOGIN_MAX_FAILURES_PER_ADDRESS``  20 failed logins from one address within the window slow
                            that address: it may then only try accounts with no failures
``COUPONS_TRUSTED_PROXIES`` 0: how many proxies in front set X-Forwarded-For (Werkzeug's
                            ProxyFix); the client address is taken that many hops back
``IDEMPOTENCY_TTL``         86400 seconds (Stripe's 24 h)
``BROKER_URL``              kombu URL of the order-event broker; default an embedded one
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from pooltender.settings import (
    ADMISSION_PREFIX,
    ADMISSION_SWITCH,
    EXTENSION_SETTING_KEYS,
    FLEET_PREFIX,
    PoolSettings,
    SettingsError,
    settings_from_config,
)

if TYPE_CHECKING:
    pass

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


_RENAMED = {
    "DB_POOL_SIZE": "POOLTENDER_POOL_SIZE",
    "DB_MAX_OVERFLOW": "POOLTENDER_MAX_OVERFLOW",
    "DB_POOL_TIMEOUT": "POOLTENDER_POOL_TIMEOUT",
    "DB_POOL_RECYCLE": "POOLTENDER_POOL_RECYCLE",
    "DB_POOL_PRE_PING": "POOLTENDER_POOL_PRE_PING",
}


def _pool_settings(env: Mapping[str, str]) -> PoolSettings:
    """PoolSettings from ``POOLTENDER_*``, with SQLAlchemy's echo switches on top."""
    old = [f"{k} (now {v})" for k, v in _RENAMED.items() if k in env]
    if old:
        raise ConfigError(f"renamed settings: {', '.join(old)}")
    try:
        pool = settings_from_config(env)
        return pool.with_values(
            echo=_bool(env, "SQLALCHEMY_ECHO", pool.echo),
            echo_pool=_bool(env, "SQLALCHEMY_ECHO_POOL", pool.echo_pool),
        )
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None


#: Query parameters that carry credentials in database and broker URLs (libpq's
#: ``password`` / ``sslpassword``, MySQL drivers' ``passwd``, cloud brokers' keys).
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;](?:[A-Za-z_]*(?:pass|pwd|secret|token|key)[A-Za-z_]*))=(?P<value>[^&;#]*)",
    re.IGNORECASE,
)


def mask_url(url: str) -> str:
    """``url`` with every credential hidden: the password of ``user:password@`` and the value
    of any query parameter named like a credential (``?password=``, ``?passwd=``,
    ``&sslpassword=``, ``?secret_key=``...). Used for every URL a log line, an error or a
    CLI prints."""
    scheme, sep, rest = url.partition("://")
    if sep:
        authority, qmark, query = rest.partition("?")
        credentials, at, host = authority.rpartition("@")  # a password may hold '@' or '/'
        if at and ":" in credentials:
            user = credentials.split(":", 1)[0]
            url = f"{scheme}://{user}:***@{host}{qmark}{query}"
    return _SECRET_PARAM.sub(lambda m: f"{m.group('name')}=***", url)


def _broker_problem(url: str) -> str | None:
    """Why kombu cannot use ``url`` (unknown scheme, transport library not installed), or None.

    Resolving the transport imports its module, which is where a missing library shows
    (``redis://`` without redis-py raises AttributeError, ``sqs://`` ModuleNotFoundError);
    nothing is connected.
    """
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        return "is not a URL (expected e.g. amqp://user:pass@host:5672//)"
    from kombu.transport import resolve_transport

    try:
        resolve_transport(scheme.split("+", 1)[0] if scheme.startswith("sqla+") else scheme)
    except KeyError:
        return f"names an unknown transport {scheme!r} (use amqp://, memory:// or sqla+...)"
    except Exception as exc:  # the transport's module failed to import its library
        return (
            f"names the transport {scheme!r}, whose library is not installed "
            f"({type(exc).__name__}: {exc})"
        )
    return None


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
    pool: PoolSettings = field(default_factory=PoolSettings)
    #: the Pooltender extension's own keys (fleet shape, budget check, ...), as given
    pooltender_config: Mapping[str, str] = field(default_factory=dict)
    access_token_ttl: int = 900
    refresh_token_ttl: int = 14 * 24 * 3600
    login_max_failures: int = 5
    login_failure_window: int = 900
    login_max_failures_per_address: int = 20
    trusted_proxies: int = 0
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
        if self.environment == "production" and len(self.secret_key) < 32:
            raise ConfigError(
                f"SECRET_KEY is required in production and must be at least 32 characters "
                f"({_SECRET_HINT})"
            )
        if self.access_token_ttl < 1 or self.refresh_token_ttl <= self.access_token_ttl:
            raise ConfigError("REFRESH_TOKEN_TTL must be longer than ACCESS_TOKEN_TTL (both > 0)")
        if self.login_max_failures < 1 or self.login_failure_window < 1:
            raise ConfigError("LOGIN_MAX_FAILURES and LOGIN_FAILURE_WINDOW must be at least 1")
        if self.login_max_failures_per_address < 1:
            raise ConfigError("LOGIN_MAX_FAILURES_PER_ADDRESS must be at least 1")
        if not 0 <= self.trusted_proxies <= 10:
            raise ConfigError(
                f"COUPONS_TRUSTED_PROXIES must be from 0 to 10, got {self.trusted_proxies}"
            )
        if self.broker_url != "memory://":
            problem = _broker_problem(self.broker_url)
            if problem is not None:
                raise ConfigError(f"BROKER_URL={mask_url(self.broker_url)} {problem}")

    @property
    def backend(self) -> str:
        """``sqlite``, ``mysql`` (MariaDB included) or ``postgresql``."""
        name = make_url(self.database_url).get_backend_name()
        return "mysql" if name == "mariadb" else name

    @property
    def masked_database_url(self) -> str:
        """The database URL with its credentials hidden, for logs and CLI output."""
        return mask_url(self.database_url)

    @property
    def masked_broker_url(self) -> str:
        """The broker URL with its credentials hidden, for logs and CLI output."""
        return mask_url(self.broker_url)

    @property
    def echo(self) -> bool:
        return self.pool.echo

    def connect_options(self) -> dict[str, Any]:
        """Engine options that are not about the pool (those come from :attr:`pool`)."""
        if self.backend == "mysql":
            return {"connect_args": {"charset": "utf8mb4"}}
        if self.backend == "sqlite":
            return {"connect_args": {"timeout": 30, "check_same_thread": False}}
        return {}

    def engine_options(self) -> dict[str, Any]:
        """Every ``create_engine`` keyword argument: the pool's and the driver's."""
        pool = self.pool.engine_options(self.database_url)
        own = self.connect_options()
        connect_args = {**pool.get("connect_args", {}), **own.get("connect_args", {})}
        return {**pool, **own, "connect_args": connect_args}

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
            pool=_pool_settings(env),
            pooltender_config={
                k: v
                for k, v in env.items()
                if k in EXTENSION_SETTING_KEYS
                or k == ADMISSION_SWITCH
                or k.startswith((FLEET_PREFIX, ADMISSION_PREFIX))
            },
            access_token_ttl=_int(env, "ACCESS_TOKEN_TTL", 900, minimum=1),
            refresh_token_ttl=_int(env, "REFRESH_TOKEN_TTL", 14 * 24 * 3600, minimum=1),
            login_max_failures=_int(env, "LOGIN_MAX_FAILURES", 5, minimum=1),
            login_failure_window=_int(env, "LOGIN_FAILURE_WINDOW", 900, minimum=1),
            login_max_failures_per_address=_int(
                env, "LOGIN_MAX_FAILURES_PER_ADDRESS", 20, minimum=1
            ),
            trusted_proxies=_int(env, "COUPONS_TRUSTED_PROXIES", 0),
            idempotency_ttl=_int(env, "IDEMPOTENCY_TTL", 24 * 3600, minimum=1),
            broker_url=env.get("BROKER_URL") or "memory://",
        )
        values.update(overrides)
        return cls(**values)
