"""Pool settings: read once from a Flask config, a mapping or the environment, validated, and
turned into SQLAlchemy ``create_engine`` keyword arguments.

Two dataclasses hold every ``POOLTENDER_*`` key, each field's default and reason written once,
on the field: :class:`PoolSettings` (the pool: ``POOLTENDER_POOL_SIZE`` is ``pool_size``,
and so on) and :class:`ExtensionSettings` (the Flask extension's own keys:
``POOLTENDER_SHED``, ``POOLTENDER_RETRY_AFTER``, ``POOLTENDER_ENDPOINTS``,
``POOLTENDER_METRICS_PATH``, ``POOLTENDER_DASHBOARD``, ``POOLTENDER_DASHBOARD_PATH``,
``POOLTENDER_BUDGET_CHECK``). The fleet shape (``POOLTENDER_FLEET_*``) is read by
:func:`pooltender.flask.shape_from_config`. :func:`settings_from_config` and
:func:`extension_settings_from_config` read a Flask config.

Values may be typed (a Flask config) or strings (the environment). One strict parser,
:func:`parse_value`, reads both, for these dataclasses and for any other
(:func:`from_mapping`): whole numbers, decimal numbers, text, one of a fixed set of words,
and booleans spelled true/false, 1/0, yes/no, on/off -- anything else (``ture``) is an error,
never false. An empty string is an error (unset the key to get the default). An unknown key
with the prefix is an error that lists the valid keys and suggests the closest, so a typo
fails at start-up instead of silently leaving a default in force. Nothing is ever clamped: a
value that cannot be used raises :class:`SettingsError` naming the key, the value, and what
is valid.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Final,
    Literal,
    TypeVar,
    get_args,
    get_origin,
    get_type_hints,
)

from pooltender.proxy import ProxyKind, proxy_engine_options
from pooltender.text import MASK

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from pooltender.server.limits import ServerLimits

DEFAULT_PREFIX = "POOLTENDER_"

#: ``POOLTENDER_RESET_ON_RETURN``: ``if-needed`` (no ROLLBACK for a connection whose
#: transaction already ended: :mod:`pooltender.reset`) or ``always`` (SQLAlchemy's default).
ResetMode = Literal["if-needed", "always"]

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

    ``reset_on_return`` defaults to ``if-needed``: a connection whose transaction ended with
    a COMMIT or ROLLBACK goes back to the pool without SQLAlchemy's extra ROLLBACK, a round
    trip that does nothing (:mod:`pooltender.reset`; the Flask extension installs it).
    ``always`` keeps SQLAlchemy's reset on every return, for an application that sends
    statements on the driver's own connection after SQLAlchemy's last COMMIT.

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
    proxy: ProxyKind = "none"
    reset_on_return: ResetMode = "if-needed"
    source_prefix: str = field(default=DEFAULT_PREFIX, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ naming

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """The setting names (dataclass fields), without prefix, in declaration order."""
        return tuple(f.name for f in fields(cls) if f.name != "source_prefix")

    @classmethod
    def given_in(cls, config: Mapping[str, Any], prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
        """The settings that ``config`` holds a key for (``prefix`` + NAME), parsed by the one
        parser, by field name; a value that does not parse is a :class:`SettingsError`."""
        return {
            name: parse_value(kind, config[key], key)
            for name, kind in _pool_kinds().items()
            if (key := f"{prefix}{name.upper()}") in config
        }

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

        for name, kind in _pool_kinds().items():
            why = _problem_with_type(kind, getattr(self, name))
            if why is not None:
                bad(name, why)
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
        if not is_sqlite_memory(url):
            options.update(
                pool_size=self.pool_size,
                max_overflow=self.max_overflow,
                pool_timeout=self.pool_timeout,
                pool_use_lifo=self.pool_use_lifo,
            )
        connect_args = self.driver_timeouts(url)
        proxied = proxy_engine_options(self.proxy, url)
        connect_args.update(proxied.pop("connect_args", {}))
        options.update(proxied)
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

        Keys without the prefix are ignored (a Flask config holds many), and so are the
        extension's own keys and the fleet shape's (read by their own readers). Any other
        prefixed key that is not a setting raises :class:`SettingsError` listing the valid
        keys.
        """
        return from_mapping(
            cls,
            mapping,
            prefix,
            other_keys=EXTENSION_SETTING_KEYS | {ADMISSION_SWITCH},
            other_prefixes=(FLEET_PREFIX, ADMISSION_PREFIX),
            source_prefix=prefix,
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, prefix: str = DEFAULT_PREFIX
    ) -> PoolSettings:
        """Settings from the environment (``os.environ`` unless ``environ`` is given)."""
        return cls.from_mapping(os.environ if environ is None else environ, prefix)


def _pool_kinds() -> dict[str, Any]:
    """Each PoolSettings field's kind, from its annotation (computed once)."""
    global _POOL_KINDS
    if _POOL_KINDS is None:
        hints = get_type_hints(PoolSettings)
        _POOL_KINDS = {name: hints[name] for name in PoolSettings.setting_names()}
    return _POOL_KINDS


_POOL_KINDS: dict[str, Any] | None = None

_TYPE_MESSAGES: dict[type, str] = {
    bool: "must be true or false (also 1/0, yes/no, on/off)",
    int: "must be a whole number",
    float: "must be a finite number of seconds (e.g. 0.5)",
    str: "must be text",
}


def _problem_with_type(kind: Any, value: object) -> str | None:
    """Why a typed ``value`` is not of ``kind`` (None when it is)."""
    choices = _choices(kind)
    if choices is not None:
        return None if value in choices else f"must be one of {', '.join(map(str, choices))}"
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a dataclass field of a kind this parser does not read
        raise TypeError(f"pooltender.settings cannot read settings of type {kind!r}")
    return None if ok else _TYPE_MESSAGES[kind]


def _choices(kind: Any) -> tuple[Any, ...] | None:
    return tuple(get_args(kind)) if get_origin(kind) is Literal else None


def _parse(kind: Any, raw: object) -> object:
    """``raw`` as ``kind``, or ValueError saying what is valid (see :func:`parse_value`)."""
    if isinstance(raw, str):
        text = raw.strip()
        if text == "":
            raise ValueError("is empty; unset it to use the default, or give a value")
        choices = _choices(kind)
        if choices is not None:
            lowered = text.lower()
            for choice in choices:
                if str(choice).lower() == lowered:
                    return choice
            raise ValueError(f"must be one of {', '.join(map(str, choices))}")
        if kind is bool:
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(_TYPE_MESSAGES[bool])
        if kind is int:
            try:
                return int(text)
            except ValueError:
                raise ValueError(_TYPE_MESSAGES[int]) from None
        if kind is float:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(_TYPE_MESSAGES[float]) from None
            if not math.isfinite(value):
                raise ValueError(_TYPE_MESSAGES[float])
            return value
        if kind is str:
            return text
    # typed values (a Flask config): the lossless conversions, else the type must match
    if kind is bool and isinstance(raw, int) and not isinstance(raw, bool) and raw in (0, 1):
        return bool(raw)
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    why = _problem_with_type(kind, raw)
    if why is not None:
        raise ValueError(why)
    return raw


def parse_value(kind: Any, raw: object, key: str) -> Any:
    """``raw`` (a string from the environment, or a typed Flask config value) read as
    ``kind`` -- ``bool``, ``int``, ``float``, ``str`` or a ``Literal[...]`` of allowed words
    -- or :class:`SettingsError` naming ``key``, the value and what is valid.

    Strings are stripped; ``""`` is an error; booleans are true/false, 1/0, yes/no, on/off in
    any case and nothing else; words of a ``Literal`` match case-insensitively. Typed values
    must already be of the kind (an ``int`` 0 or 1 is a boolean, an ``int`` is a float).
    """
    try:
        return _parse(kind, raw)
    except ValueError as exc:
        raise SettingsError([SettingsProblem(key, raw, str(exc))]) from None


D = TypeVar("D")


def from_mapping(
    cls: type[D],
    mapping: Mapping[str, Any],
    prefix: str,
    *,
    other_keys: Collection[str] = (),
    other_prefixes: Sequence[str] = (),
    unknown: Literal["error", "ignore"] = "error",
    **extra: Any,
) -> D:
    """An instance of the dataclass ``cls`` from the ``prefix``-ed keys of ``mapping``.

    Each init field ``name`` is read from the key ``prefix + NAME`` with :func:`parse_value`
    and the field's annotation as its kind; a missing key leaves the field's default. Keys
    without the prefix are ignored, and so are ``other_keys`` and keys starting with one of
    ``other_prefixes`` (settings read elsewhere). Another prefixed key is an error naming the
    valid keys and the closest match (``unknown="ignore"`` skips it, for a prefix shared with
    other readers). Every problem is collected and raised together as :class:`SettingsError`;
    ``cls``'s own validation (``__post_init__``) then runs. ``extra`` goes to ``cls`` as is.
    """
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.init and f.name not in extra]  # type: ignore[arg-type]
    valid_keys = [f"{prefix}{name.upper()}" for name in names]
    ignored = frozenset(other_keys)
    values: dict[str, Any] = {}
    problems: list[SettingsProblem] = []
    for key, raw in mapping.items():
        if not isinstance(key, str) or not key.startswith(prefix):
            continue
        if key in ignored or any(key.startswith(p) for p in other_prefixes):
            continue
        name = key[len(prefix) :].lower()
        if name not in names:
            if unknown == "ignore":
                continue
            close = difflib.get_close_matches(key, [*valid_keys, *sorted(ignored)], n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            listed = ", ".join([*valid_keys, *sorted(ignored)])
            problems.append(
                SettingsProblem(key, raw, f"is not a setting; {hint}valid keys: {listed}")
            )
            continue
        try:
            values[name] = _parse(hints[name], raw)
        except ValueError as exc:
            problems.append(SettingsProblem(key, raw, str(exc)))
    if problems:
        raise SettingsError(problems)
    return cls(**values, **extra)


# ---------------------------------------------------------------------- the extension's keys

#: Keys under this prefix describe the fleet (``pooltender.flask.shape_from_config``).
FLEET_PREFIX = f"{DEFAULT_PREFIX}FLEET_"
#: Admission control's switch and keys, read by :mod:`pooltender.admission.settings` (which
#: refuses an unknown key under the prefix).
ADMISSION_SWITCH = f"{DEFAULT_PREFIX}ADMISSION"
ADMISSION_PREFIX = f"{ADMISSION_SWITCH}_"

BudgetCheck = Literal["fail", "warn", "off", "auto"]


@dataclass(frozen=True, kw_only=True)
class ExtensionSettings:
    """The Flask extension's own keys (``POOLTENDER_<FIELD>``), validated like the pool's.

    ``shed``: shed a request that waited the pool's ``shed_wait`` with 503 + Retry-After
    (``PoolSettings.shed_wait`` says how long); on by default.

    ``retry_after``: the whole seconds of that 503's ``Retry-After`` header (RFC 9110 allows
    only whole seconds); 1 by default: a shed is a burst, and the client should come back
    soon, to a worker that has a connection free.

    ``endpoints``: URL prefix of ``<prefix>/stats`` and ``<prefix>/health``;
    ``metrics_path``: the Prometheus page; ``dashboard_path``: the dashboard. Each is a path
    starting with ``/``, or ``off`` (any case) to serve nothing there.

    ``dashboard``: serve the live dashboard; off by default (it shows who holds the
    server's connections, so an app opts in, behind its ``protect`` callable).

    ``metrics_token``: a bearer token a scraper sends to ``metrics_path``
    (``Authorization: Bearer <token>``, compared in constant time); unset by default. When
    set, ``/metrics`` is served to that token (or to whoever passes the ``protect``
    callable) even without ``protect`` or ``public=True``, and ``public=True`` no longer
    opens it. At least 16 characters (e.g. ``python -c 'import secrets;
    print(secrets.token_urlsafe(32))'``); never logged, never in a repr or a message.

    ``budget_check``: what the start-up budget check does when the fleet does not fit:
    ``fail`` refuses to start, ``warn`` logs, ``off`` skips it; ``auto`` (the default) is
    ``warn`` when a fleet shape is configured and ``off`` otherwise (nothing to check).
    """

    shed: bool = True
    retry_after: int = 1
    endpoints: str = "/pooltender"
    metrics_path: str = "/metrics"
    dashboard: bool = False
    dashboard_path: str = "/pooltender/dashboard"
    budget_check: BudgetCheck = "auto"
    metrics_token: str = field(default="", repr=False)

    #: Fields whose value is a secret: shown as ``***`` in a problem.
    SECRETS: ClassVar[frozenset[str]] = frozenset({"metrics_token"})
    #: The shortest metrics token accepted (16 characters, ~96 bits as token_urlsafe).
    MIN_TOKEN_LENGTH: ClassVar[int] = 16

    def __post_init__(self) -> None:
        problems: list[SettingsProblem] = []
        for name, kind in get_type_hints(type(self)).items():
            if get_origin(kind) is ClassVar:
                continue
            value = getattr(self, name)
            why = _problem_with_type(kind, value)
            if why is not None:
                shown = MASK if name in self.SECRETS else value
                problems.append(SettingsProblem(_key(name), shown, why))
        if (
            not problems
            and self.metrics_token
            and (
                len(self.metrics_token) < self.MIN_TOKEN_LENGTH or self.metrics_token.strip() == ""
            )
        ):
            problems.append(
                SettingsProblem(
                    _key("metrics_token"),
                    MASK,
                    f"must be at least {self.MIN_TOKEN_LENGTH} characters (e.g. "
                    "secrets.token_urlsafe(32))",
                )
            )
        if not problems:
            if self.retry_after < 1:
                problems.append(
                    SettingsProblem(
                        _key("retry_after"), self.retry_after, "must be at least 1 second"
                    )
                )
            for name in ("endpoints", "metrics_path", "dashboard_path"):
                value = getattr(self, name)
                if not _is_off(value) and (not value.startswith("/") or value.strip("/") == ""):
                    problems.append(
                        SettingsProblem(
                            _key(name),
                            value,
                            f"must be a path below / (e.g. {getattr(type(self), name)!r}), or "
                            f"{OFF!r} to serve nothing there",
                        )
                    )
        if problems:
            raise SettingsError(problems)

    def path(self, name: Literal["endpoints", "metrics_path", "dashboard_path"]) -> str | None:
        """The path of ``name`` without a trailing ``/``, or None when it is ``off``."""
        value: str = getattr(self, name)
        return None if _is_off(value) else "/" + value.strip("/")

    def budget_mode(self, has_fleet_shape: bool) -> Literal["fail", "warn", "off"]:
        """``budget_check`` with ``auto`` resolved."""
        if self.budget_check == "auto":
            return "warn" if has_fleet_shape else "off"
        return self.budget_check

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ExtensionSettings:
        """The extension's keys from ``mapping`` (other keys are left to their readers)."""
        return from_mapping(cls, mapping, DEFAULT_PREFIX, unknown="ignore")


#: The value of a path key that turns the page off.
OFF: Final = "off"


def _is_off(value: str) -> bool:
    return value.strip().lower() == OFF


def _key(name: str) -> str:
    return f"{DEFAULT_PREFIX}{name.upper()}"


#: Every key :class:`ExtensionSettings` reads.
EXTENSION_SETTING_KEYS: Final = frozenset(_key(f.name) for f in fields(ExtensionSettings))

#: The liveness window used where pooltender installs its idle-window ping (the Flask
#: extension): bench/watch_overhead.py measured checkout + checkin at 1.58x a bare pool with
#: SQLAlchemy's pre-ping on every checkout and 1.08x with a ping only after 0.5 s idle
#: (docs/benchmarks.md), while tests/pooltender/test_liveness.py shows killed, timed-out and
#: restarted-server connections still caught. PoolSettings alone keeps 0 (pre-ping every
#: checkout), the safe choice for an engine built without the watch.
WATCHED_PING_AFTER_IDLE: Final = 0.5


def settings_from_config(config: Mapping[str, Any]) -> PoolSettings:
    """PoolSettings from a Flask config's (or the environment's) ``POOLTENDER_*`` keys.

    Without ``POOLTENDER_PING_AFTER_IDLE`` the liveness check is the idle-window ping of
    :data:`WATCHED_PING_AFTER_IDLE` seconds, which the Flask extension installs.
    """
    settings = PoolSettings.from_mapping(config, DEFAULT_PREFIX)
    if f"{DEFAULT_PREFIX}PING_AFTER_IDLE" not in config and settings.pool_pre_ping:
        settings = settings.with_values(ping_after_idle=WATCHED_PING_AFTER_IDLE)
    return settings


def extension_settings_from_config(config: Mapping[str, Any]) -> ExtensionSettings:
    """:class:`ExtensionSettings` from a Flask config's keys."""
    return ExtensionSettings.from_mapping(config)


def is_sqlite_memory(url: str | URL | None) -> bool:
    """True for a SQLite in-memory database URL (one connection, no pool to size); False
    for any other URL and for None (no URL known)."""
    if url is None:
        return False
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
