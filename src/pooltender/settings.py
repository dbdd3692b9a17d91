"""Pool settings: read once from a Flask config, a mapping or the environment, validated, and
turned into SQLAlchemy ``create_engine`` keyword arguments.

Every key carries one prefix (``POOLTENDER_`` by default)::

    POOLTENDER_POOL_SIZE          4      connections kept open per process
    POOLTENDER_MAX_OVERFLOW       2      extra connections opened under bursts, closed after use
    POOLTENDER_POOL_TIMEOUT       30     seconds a non-web caller waits for a connection
    POOLTENDER_POOL_RECYCLE       1800   seconds before a connection is replaced (-1 = never)
    POOLTENDER_POOL_PRE_PING      true   check a connection is alive before handing it out
    POOLTENDER_PING_AFTER_IDLE    0      ... only if it sat idle longer than this (0 = always)
    POOLTENDER_POOL_USE_LIFO      true   hand out the most recently returned connection
    POOLTENDER_ECHO               false  log every statement (debugging only)
    POOLTENDER_ECHO_POOL          false  log checkouts and checkins (debugging only)
    POOLTENDER_LEAK_THRESHOLD     60     seconds a checkout may last before it is reported (0 = off)
    POOLTENDER_SHED_WAIT          0.5    seconds a web request waits for a connection before a 503
    POOLTENDER_CONNECT_TIMEOUT    10     seconds to open a connection (MySQL drivers, libpq; 0 off)
    POOLTENDER_READ_TIMEOUT       10     seconds one read from the server may block (MySQL drivers)
    POOLTENDER_WRITE_TIMEOUT      10     seconds one write to the server may block (MySQL drivers)

Values may be typed (a Flask config) or strings (the environment). Strings are parsed:
whole numbers, decimal numbers, and booleans spelled true/false, 1/0, yes/no, on/off. An
unknown key with the prefix is an error that lists the valid keys, so a typo fails at start-up
instead of silently leaving a default in force. Nothing is ever clamped: a value the pool
cannot run with raises :class:`SettingsError` naming the key, the value, and what is valid.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from pooltender.limits import ServerLimits

DEFAULT_PREFIX = "POOLTENDER_"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class SettingsProblem:
    """One thing wrong with one setting: the key as the user spells it, its value, and why."""

    key: str
    value: object
    message: str

    def __str__(self) -> str:
        return f"{self.key}={self.value!r}: {self.message}"


class SettingsError(ValueError):
    """Settings the pool cannot run with. ``problems`` lists each one; ``key`` is the first.

    ``code`` is stable across releases so logs and docs can refer to it.
    """

    code: ClassVar[str] = "pooltender-settings"

    def __init__(self, problems: list[SettingsProblem] | tuple[SettingsProblem, ...]) -> None:
        self.problems: tuple[SettingsProblem, ...] = tuple(problems)
        self.key = self.problems[0].key if self.problems else ""
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            text = "invalid pool settings:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"[{self.code}] {text}")


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """Validated pool settings for one process (one engine).

    Defaults are sized by measurement, not by thread count. On a 2-core machine serving
    gunicorn 4 workers x 32 threads (issue 3), the post-mortem's 20/50 held 129 connections at
    451 req/s; 4 connections per worker held 17 at 633 req/s (the best figure), and even 1 per
    worker (5 in all) served 572 req/s. The CPU, not the database, was the limit: by Little's
    law (connections busy = throughput x hold time) about one connection was busy on average.
    So ``pool_size=4`` keeps the measured best, ``max_overflow=2`` absorbs bursts above it,
    and the per-process cap of 6 lets 25 such processes share MySQL's default
    ``max_connections=151``. Size a real fleet with :mod:`pooltender.budget`.

    ``shed_wait`` defaults to 0.5 s. At the measured figures a connection is held about
    1.6 ms (one busy connection / 633 req/s), so half a second is ~300 hold times: a request
    that cannot get a connection in that long is facing a saturated pool, not a blip, and
    waiting the post-mortem's 30 s only ties up a worker thread while the client gives up.
    Answering 503 + Retry-After quickly keeps the worker free for requests that can be served.
    ``pool_timeout`` (30 s) still governs callers that are not shed (consumers, cron).

    ``ping_after_idle`` defaults to 0 (ping on every checkout, SQLAlchemy's own pre-ping)
    because that is safe without anything else installed; a positive window skips the ping
    for connections used within it, which only pooltender's watch implements, so
    :meth:`engine_options` then leaves SQLAlchemy's pre-ping off.

    ``pool_use_lifo`` defaults to true: the most recently returned connection is handed out
    first, so idle ones age out at the server (wait_timeout) or get recycled, and the hot
    connection was used moments ago, which is what lets ``ping_after_idle`` skip pings.

    ``connect_timeout``, ``read_timeout`` and ``write_timeout`` (whole seconds, 0 = the
    driver's default, i.e. none) bound how long a hung server (frozen, a black-holed network)
    can hold a caller: without them a statement on a SIGSTOPped MariaDB waited the whole
    freeze. They are passed to mysqlclient and PyMySQL as ``connect_timeout`` /
    ``read_timeout`` / ``write_timeout``; to psycopg and psycopg2 as libpq's
    ``connect_timeout`` (libpq has no read or write timeout: see docs/reliability.md). A
    read timeout cuts one statement that waits longer for its first result bytes, so work
    that is legitimately long (a migration, a bulk load, a report) runs on an engine built
    from ``settings.with_values(read_timeout=0)`` or a larger bound: the per-caller override.

    ``source_prefix`` is the prefix keys were read under; messages name keys with it.
    """

    pool_size: int = 4
    max_overflow: int = 2
    pool_timeout: float = 30.0
    pool_recycle: int = 1800
    pool_pre_ping: bool = True
    ping_after_idle: float = 0.0
    pool_use_lifo: bool = True
    echo: bool = False
    echo_pool: bool = False
    leak_threshold: float = 60.0
    shed_wait: float = 0.5
    connect_timeout: int = 10
    read_timeout: int = 10
    write_timeout: int = 10
    source_prefix: str = field(default=DEFAULT_PREFIX, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ naming

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """The setting names (dataclass fields), without prefix, in declaration order."""
        return tuple(f.name for f in fields(cls) if f.name != "source_prefix")

    def key(self, name: str) -> str:
        """The key a user sets for ``name``: ``pool_size`` -> ``POOLTENDER_POOL_SIZE``."""
        return f"{self.source_prefix}{name.upper()}"

    @property
    def per_process_cap(self) -> int:
        """Most connections one process can hold: ``pool_size + max_overflow``."""
        return self.pool_size + self.max_overflow

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Check each value, then the values against each other; raise :class:`SettingsError`.

        All problems are collected and reported together, so one start-up shows every fix.
        """
        problems: list[SettingsProblem] = []

        def bad(name: str, message: str) -> None:
            problems.append(SettingsProblem(self.key(name), getattr(self, name), message))

        for name, kind in _KINDS.items():
            value = getattr(self, name)
            if kind is bool and not isinstance(value, bool):
                bad(name, "must be true or false")
            elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                bad(name, "must be a whole number")
            elif kind is float and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                bad(name, "must be a finite number of seconds")
        if problems:  # the range checks below assume the types are right
            raise SettingsError(problems)

        if self.pool_size < 1:
            bad(
                "pool_size",
                "must be at least 1 (SQLAlchemy's QueuePool treats 0 as 'no limit', "
                "which no connection budget can hold)",
            )
        if self.max_overflow < 0:
            bad(
                "max_overflow",
                "must be 0 or more (SQLAlchemy treats -1 as 'unlimited overflow', "
                "which no connection budget can hold)",
            )
        if self.pool_timeout <= 0:
            bad("pool_timeout", "must be more than 0 seconds")
        if self.pool_recycle != -1 and self.pool_recycle < 1:
            bad("pool_recycle", "must be -1 (never recycle) or a positive number of seconds")
        if self.ping_after_idle < 0:
            bad(
                "ping_after_idle",
                "must be 0 (ping on every checkout) or a positive number of seconds",
            )
        if self.ping_after_idle > 0 and not self.pool_pre_ping:
            bad(
                "ping_after_idle",
                f"only applies when {self.key('pool_pre_ping')} is true; set it to 0 or turn "
                f"{self.key('pool_pre_ping')} on",
            )
        if self.leak_threshold < 0:
            bad("leak_threshold", "must be 0 (leak detection off) or a positive number of seconds")
        if self.shed_wait <= 0:
            bad("shed_wait", "must be more than 0 seconds (e.g. 0.5)")
        elif self.pool_timeout > 0 and self.shed_wait > self.pool_timeout:
            bad(
                "shed_wait",
                f"must not exceed {self.key('pool_timeout')}={self.pool_timeout!r}: the pool "
                f"would time out before the request is shed; lower it to at most "
                f"{self.pool_timeout!r} (0.5 is the default) or raise {self.key('pool_timeout')}",
            )
        for name in ("connect_timeout", "read_timeout", "write_timeout"):
            if getattr(self, name) < 0:
                bad(
                    name,
                    "must be 0 (the driver's default: no timeout) or a positive number of seconds",
                )
        if (
            self.ping_after_idle > 0
            and self.pool_recycle > 0
            and self.ping_after_idle >= self.pool_recycle
        ):
            bad(
                "ping_after_idle",
                f"must be below {self.key('pool_recycle')}={self.pool_recycle}, or no "
                "connection would ever be pinged before it is recycled",
            )
        if problems:
            raise SettingsError(problems)

    def check_against_server(self, limits: ServerLimits) -> tuple[SettingsProblem, ...]:
        """Problems these settings have with the live server described by ``limits``.

        Returned, not raised: the caller decides (the start-up check fails or warns). Checks:
        ``pool_recycle`` below the server's ``wait_timeout`` (MySQL/MariaDB close connections
        idle longer than that, and a pool handing them out yields "MySQL server has gone
        away"); one process's cap within the connections the server accepts from clients.
        """
        problems: list[SettingsProblem] = []
        if limits.wait_timeout is not None and (
            self.pool_recycle == -1 or self.pool_recycle >= limits.wait_timeout
        ):
            suggestion = max(1, min(1800, limits.wait_timeout - 60, limits.wait_timeout // 2))
            problems.append(
                SettingsProblem(
                    self.key("pool_recycle"),
                    self.pool_recycle,
                    f"must be below the server's wait_timeout={limits.wait_timeout} s "
                    f"(the server closes connections idle that long); set it to "
                    f"{suggestion}",
                )
            )
        usable = limits.client_connection_limit
        if usable is not None and self.per_process_cap > usable:
            problems.append(
                SettingsProblem(
                    self.key("max_overflow"),
                    self.max_overflow,
                    f"one process alone may open {self.per_process_cap} connections "
                    f"({self.key('pool_size')}={self.pool_size} + "
                    f"{self.key('max_overflow')}={self.max_overflow}) but the server accepts "
                    f"{usable} from clients; lower the cap to at most {usable}",
                )
            )
        return tuple(problems)

    # ------------------------------------------------------------------ engine options

    def engine_options(self, url: str | URL | None = None) -> dict[str, Any]:
        """Keyword arguments for ``sqlalchemy.create_engine`` (or Flask-SQLAlchemy's
        ``SQLALCHEMY_ENGINE_OPTIONS``).

        ``pool_pre_ping=True`` is set only when pre-ping is on and ``ping_after_idle`` is 0;
        a positive window is served by pooltender's watch, not by SQLAlchemy. For a SQLite
        ``:memory:`` database (a single-connection pool, no sizing) the sizing options are
        left out, because its pool class does not take them.
        """
        options: dict[str, Any] = {
            "pool_recycle": self.pool_recycle,
            "pool_pre_ping": self.pool_pre_ping and self.ping_after_idle == 0,
            "echo": self.echo,
            "echo_pool": self.echo_pool,
        }
        if not _is_sqlite_memory(url):
            options.update(
                pool_size=self.pool_size,
                max_overflow=self.max_overflow,
                pool_timeout=self.pool_timeout,
                pool_use_lifo=self.pool_use_lifo,
            )
        connect_args = self.driver_timeouts(url)
        if connect_args:
            options["connect_args"] = connect_args
        return options

    def driver_timeouts(self, url: str | URL | None) -> dict[str, Any]:
        """The driver's ``connect_args`` for the timeouts, for ``url``'s driver ({} if none).

        mysqlclient and PyMySQL take all three; psycopg / psycopg2 (libpq) only
        ``connect_timeout``; other drivers (SQLite's timeout is a lock wait) nothing.
        """
        if url is None:
            return {}
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
        timeouts = {
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "write_timeout": self.write_timeout,
        }
        if backend in ("mysql", "mariadb") and driver in ("mysqldb", "pymysql"):
            return {k: v for k, v in timeouts.items() if v > 0}
        if backend == "postgresql" and driver in ("psycopg", "psycopg2") and self.connect_timeout:
            return {"connect_timeout": self.connect_timeout}
        return {}

    def as_mapping(self) -> dict[str, Any]:
        """These settings as prefixed keys, e.g. for a Flask config or a report."""
        return {self.key(name): getattr(self, name) for name in self.setting_names()}

    def with_values(self, **changes: Any) -> PoolSettings:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ reading

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], prefix: str = DEFAULT_PREFIX) -> PoolSettings:
        """Settings from the ``prefix``-ed keys of ``mapping`` (a Flask config, ``os.environ``).

        Keys without the prefix are ignored (a Flask config holds many). A prefixed key that
        is not a setting raises :class:`SettingsError` listing the valid keys.
        """
        names = cls.setting_names()
        values: dict[str, Any] = {}
        problems: list[SettingsProblem] = []
        valid_keys = [f"{prefix}{n.upper()}" for n in names]
        for key, raw in mapping.items():
            if not isinstance(key, str) or not key.startswith(prefix):
                continue
            name = key[len(prefix) :].lower()
            if name not in names:
                close = difflib.get_close_matches(key, valid_keys, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                problems.append(
                    SettingsProblem(
                        key, raw, f"is not a setting; {hint}valid keys: {', '.join(valid_keys)}"
                    )
                )
                continue
            try:
                values[name] = _parse(_KINDS[name], raw)
            except ValueError as exc:
                problems.append(SettingsProblem(key, raw, str(exc)))
        if problems:
            raise SettingsError(problems)
        return cls(**values, source_prefix=prefix)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, prefix: str = DEFAULT_PREFIX
    ) -> PoolSettings:
        """Settings from the environment (``os.environ`` unless ``environ`` is given)."""
        return cls.from_mapping(os.environ if environ is None else environ, prefix)


_KINDS: dict[str, type] = {
    "pool_size": int,
    "max_overflow": int,
    "pool_timeout": float,
    "pool_recycle": int,
    "pool_pre_ping": bool,
    "ping_after_idle": float,
    "pool_use_lifo": bool,
    "echo": bool,
    "echo_pool": bool,
    "leak_threshold": float,
    "shed_wait": float,
    "connect_timeout": int,
    "read_timeout": int,
    "write_timeout": int,
}


def _parse(kind: type, raw: object) -> object:
    """``raw`` as ``kind``; typed values pass through (checked later), strings are parsed."""
    if not isinstance(raw, str):
        if kind is bool and isinstance(raw, int) and not isinstance(raw, bool) and raw in (0, 1):
            return bool(raw)
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        return raw
    text = raw.strip()
    if text == "":
        raise ValueError("is empty; unset it to use the default, or give a value")
    if kind is bool:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("must be true or false (also 1/0, yes/no, on/off)")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("must be a whole number") from None
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number of seconds (e.g. 0.5)") from None
    if not math.isfinite(value):
        raise ValueError("must be a finite number of seconds")
    return value


def _is_sqlite_memory(url: str | URL | None) -> bool:
    if url is None:
        return False
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
