"""``Pooltender``: the Flask extension that applies the post-mortem's practices to an app.

Adopting it in a Flask-SQLAlchemy app is one line in place of ``db.init_app(app)``::

    db = SQLAlchemy()
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "mysql+mysqldb://app:...@db/app"
    Pooltender(app, db)        # sizes, watches and guards the pool; calls db.init_app(app)

What ``init_app(app, db)`` does, in order:

1. reads :class:`~pooltender.settings.PoolSettings` and the extension's own keys, each key
   from the first of: the ``settings=`` (``shape=``) argument, ``app.config``, the
   environment (``os.environ``), the default -- every source through the one strict parser of
   :mod:`pooltender.settings` (typos and empty values fail loudly); the app's own pool
   options in ``SQLALCHEMY_ENGINE_OPTIONS`` (``pool_size``, ``max_overflow``,
   ``pool_timeout``, ``pool_recycle``, ``pool_pre_ping``, ``pool_use_lifo``, ``echo_pool``)
   are adopted, with an info log saying so, and refused only when they conflict with a value
   the user set (a ``POOLTENDER_*`` key, or the ``settings=`` argument); then writes them
   into ``SQLALCHEMY_ENGINE_OPTIONS``, with :class:`~pooltender.shedding.SheddingQueuePool`
   as the pool class;
2. registers its teardown *before* ``db.init_app(app)`` (Flask runs teardowns in reverse), so
   its safety net runs after Flask-SQLAlchemy has removed the request's session; a request's
   unit of work (and its shed wait) is begun by :class:`RequestScope`, a WSGI wrapper around
   ``app.wsgi_app``, and ended by that teardown: one begin and one end per request, with no
   ``flask.g`` and no proxy lookups on the way;
3. calls ``db.init_app(app)`` and installs the watch (leak detection, second-checkout
   reports) and the idle-window liveness ping on every engine;
4. when a fleet shape is configured, runs the budget check against the live server
   (``POOLTENDER_BUDGET_CHECK``: ``fail`` refuses to start, ``warn`` logs, ``off``);
5. serves ``/pooltender/stats`` and ``/pooltender/health`` (JSON), ``/metrics``
   (Prometheus text; multiprocess mode under gunicorn; only with prometheus-client, the
   ``prometheus`` extra) and the dashboard (``POOLTENDER_DASHBOARD``), each through the
   guard, and only given ``protect=`` or ``public=True`` (see :class:`Pooltender`).

Config keys besides PoolSettings' own (all optional): the extension's, read strictly into
:class:`~pooltender.settings.ExtensionSettings` (each key's default and meaning are written
there, once), and the fleet shape, ``POOLTENDER_FLEET_HOSTS``, ``POOLTENDER_FLEET_PROCESSES``,
``POOLTENDER_FLEET_WORKER_MODEL``, ``POOLTENDER_FLEET_CONCURRENCY``,
``POOLTENDER_FLEET_CONNECTIONS_PER_REQUEST``, ``POOLTENDER_FLEET_CONSUMERS``,
``POOLTENDER_FLEET_CONNECTIONS_PER_CONSUMER``, ``POOLTENDER_FLEET_OTHER_CLIENTS``,
``POOLTENDER_FLEET_RESERVED`` and the proxy in front of the server,
``POOLTENDER_FLEET_PROXY_KIND``, ``POOLTENDER_FLEET_PROXY_MODE``,
``POOLTENDER_FLEET_PROXY_PLACEMENT``, ``POOLTENDER_FLEET_PROXY_SERVER_POOL_SIZE``,
``POOLTENDER_FLEET_PROXY_MAX_CLIENT_CONN`` (see :class:`~pooltender.budget.FleetShape`).
``POOLTENDER_PROXY`` (a PoolSettings key, :mod:`pooltender.proxy`) says what this process
connects through: with ``pgbouncer-transaction`` the driver's prepared statements are turned
off and every engine gets the session-state guard
(:func:`~pooltender.proxy.install_session_state_guard`), which refuses ``SET``, ``LISTEN``,
session advisory locks and the like before they reach the proxy.
``POOLTENDER_ADMISSION*`` configure admission control, on by default: a concurrency limit
applied before Flask sees the request (see :mod:`pooltender.admission.settings`).
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, abort, current_app, has_request_context, jsonify, request
from sqlalchemy.engine import Engine

from pooltender.admission import (  # admission control (issue 10)
    ADMISSION_KEYS,
    admission_json,
    admission_of,
    install_admission,
    metrics_for_scrape,
    settings_for_app,
)
from pooltender.budget import (
    LOAD_PREFIX,
    SERVER_PREFIX,
    BudgetReport,
    FleetShape,
    check_startup,
    fleet_config_keys,
    recommend_pool,
    shape_from_mapping,
)
from pooltender.failures import register_error_handlers
from pooltender.hooks import register_engine
from pooltender.liveness import install_idle_ping
from pooltender.proxy import install_session_state_guard, is_transaction_pooling
from pooltender.queueing import MMcQueue
from pooltender.reset import install_clean_reset
from pooltender.settings import (
    DEFAULT_PREFIX,
    EXTENSION_SETTING_KEYS,
    WATCHED_PING_AFTER_IDLE,
    ExtensionSettings,
    PoolSettings,
    SettingsError,
    SettingsProblem,
    is_sqlite_memory,
    settings_from_config,
)
from pooltender.shedding import PoolExhausted, SheddingQueuePool, begin_shed_wait, end_shed_wait
from pooltender.stats import PoolStats, pool_stats_json
from pooltender.units import ScopedUnit, current_unit, enter_unit, leave_unit
from pooltender.watch import PoolWatch, install_watch, release_everywhere, watch_of

if TYPE_CHECKING:  # prometheus-client is the optional `prometheus` extra: imported lazily
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from pooltender.metrics import MultiprocessMirror

__all__ = [
    "EXTENSION_KEYS",
    "WATCHED_PING_AFTER_IDLE",
    "Pooltender",
    "RequestScope",
    "adopt_engine_options",
    "configured_keys",
    "settings_from_config",
    "shape_from_config",
    "stats_json",
]

#: The JSON shape of a PoolStats (kept under its old name; see pooltender.stats).
stats_json = pool_stats_json

log = logging.getLogger("pooltender.flask")

_FLEET_KEYS: dict[str, str] = fleet_config_keys()  # derived from FleetShape's fields
#: Every key the extension reads besides PoolSettings': its own, the fleet shape's and
#: admission control's.
EXTENSION_KEYS: frozenset[str] = EXTENSION_SETTING_KEYS | frozenset(_FLEET_KEYS) | ADMISSION_KEYS
#: SQLALCHEMY_ENGINE_OPTIONS keys that are PoolSettings fields of the same name and meaning.
_POOL_OPTIONS = (
    "pool_size",
    "max_overflow",
    "pool_timeout",
    "pool_recycle",
    "pool_pre_ping",
    "pool_use_lifo",
    "echo_pool",
)


#: Environment keys that are ``pooltender budget``'s, not the extension's.
_CLI_ONLY_PREFIXES = (SERVER_PREFIX, LOAD_PREFIX)


def configured_keys(
    config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Every ``POOLTENDER_*`` key the extension reads: the environment's (``os.environ``
    unless ``environ`` is given; ``pooltender budget``'s ``POOLTENDER_SERVER_*`` and
    ``POOLTENDER_LOAD_*`` left out), overridden key by key by ``config``'s (app.config)."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {
        k: v
        for k, v in environ.items()
        if k.startswith(DEFAULT_PREFIX) and not k.startswith(_CLI_ONLY_PREFIXES)
    }
    merged.update(
        (k, v) for k, v in config.items() if isinstance(k, str) and k.startswith(DEFAULT_PREFIX)
    )
    return merged


def warn_overridden_pool_keys(config: Mapping[str, Any], settings: PoolSettings) -> None:
    """Log a warning for each pool key in app.config that an explicit
    ``settings=PoolSettings(...)`` overrides with another value (the documented precedence:
    the argument wins), so that a key set in the config is never ignored without a word
    (the environment is not checked: an app that passes ``settings=`` usually read them
    from it). A value that does not parse is a :class:`SettingsError`, as everywhere."""
    for name, value in PoolSettings.given_in(config).items():
        current = getattr(settings, name)
        if value != current:
            log.warning(
                "app.config %s=%r is overridden by settings=PoolSettings(%s=%r) passed to "
                "Pooltender; set it in one place",
                settings.key(name),
                config[settings.key(name)],
                name,
                current,
            )


def adopt_engine_options(
    engine_options: Mapping[str, Any],
    settings: PoolSettings,
    *,
    set_by_user: Mapping[str, Any] | None,
) -> PoolSettings:
    """``settings`` with the pool options of the app's own ``SQLALCHEMY_ENGINE_OPTIONS``
    adopted, logging each one adopted.

    An option is refused (:class:`SettingsError` naming both) only when it conflicts with a
    value the user set: a ``POOLTENDER_*`` key present in ``set_by_user`` (app.config and
    the environment) with another value, or any other value than ``settings``' when
    ``set_by_user`` is None (an explicit ``settings=`` argument sets every field). A value
    that cannot be used is refused by PoolSettings' own validation, under the option's name.
    """
    adopted: dict[str, Any] = {}
    problems: list[SettingsProblem] = []
    for name in _POOL_OPTIONS:
        if name not in engine_options:
            continue
        value, current = engine_options[name], getattr(settings, name)
        if value == current:
            continue
        key = settings.key(name)
        if set_by_user is None:
            why = f"clashes with settings=PoolSettings({name}={current!r}) passed to Pooltender"
        elif key in set_by_user:
            why = f"clashes with {key}={set_by_user[key]!r}"
        else:
            adopted[name] = value
            continue
        problems.append(
            SettingsProblem(
                f"SQLALCHEMY_ENGINE_OPTIONS[{name!r}]",
                value,
                f"{why}; set it in one place (remove one of them)",
            )
        )
    if problems:
        raise SettingsError(problems)
    if not adopted:
        return settings
    try:
        settings = settings.with_values(**adopted)
    except SettingsError as exc:
        raise SettingsError(
            [
                SettingsProblem(
                    f"SQLALCHEMY_ENGINE_OPTIONS[{p.key.removeprefix(DEFAULT_PREFIX).lower()!r}]"
                    if p.key.removeprefix(DEFAULT_PREFIX).lower() in adopted
                    else p.key,
                    p.value,
                    p.message,
                )
                for p in exc.problems
            ]
        ) from None
    for name, value in adopted.items():
        log.info(
            "adopted SQLALCHEMY_ENGINE_OPTIONS[%r]=%r as %s (not set otherwise)",
            name,
            value,
            settings.key(name),
        )
    return settings


def shape_from_config(config: Mapping[str, Any]) -> FleetShape | None:
    """The fleet shape from ``POOLTENDER_FLEET_*`` keys, or None if none is set."""
    return shape_from_mapping(config)


@dataclasses.dataclass
class _State:
    """What the extension keeps per app (``app.extensions["pooltender"]``)."""

    settings: PoolSettings
    options: ExtensionSettings
    db: Any
    budget: BudgetReport | None = None
    requests_shed: int = 0
    requests_leaked: int = 0
    requests_unavailable: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    mirror: MultiprocessMirror | None = None

    def watches(self) -> dict[str, PoolWatch]:
        out: dict[str, PoolWatch] = {}
        for key, engine in self.db.engines.items():
            watch = watch_of(engine)
            if watch is not None:
                out["default" if key is None else str(key)] = watch
        return out

    def stats(self) -> dict[str, PoolStats]:
        return {name: watch.stats() for name, watch in self.watches().items()}

    def extra(self) -> dict[str, float]:
        return {
            "requests_shed": float(self.requests_shed),
            "requests_leaked_connection": float(self.requests_leaked),
            "requests_unavailable": float(self.requests_unavailable),
        }

    def count_unavailable(self, _kind: object) -> None:
        with self.lock:
            self.requests_unavailable += 1

    def teardown(self, _exc: BaseException | None) -> None:
        """The app-context teardown (registered before Flask-SQLAlchemy's, so it runs after
        the session was removed): the end of a request begun by :class:`RequestScope`, or
        the safety net of an app context without a request.

        A connection still held by the request's unit of work was checked out outside the
        scoped session (a second Session, a raw ``engine.connect()`` never closed) and would
        leak: it is logged once with where it was checked out and counted; from then on it
        belongs to nobody, so later requests on the same thread are not blamed. The usual
        request (nothing held) costs two context-variable resets and a membership test per
        engine. An app context without a request (a CLI command, a consumer) checks what its
        owner (task or thread) holds, without disowning it. An app context pushed *inside* a
        request (while the request context is still active) is neither: it is left alone.
        """
        unit = current_unit()
        if type(unit) is ScopedUnit and unit.scope is self:
            if has_request_context():  # an app context nested in the request: not its end
                return
            leave_unit(unit.token)
            if unit.shed_token is not None:
                end_shed_wait(unit.shed_token)
            ended = release_everywhere(unit)
            if ended:
                self._report([(leak.engine, leak.held, leak.where) for leak in ended])
        elif not has_request_context():
            self._report(
                [
                    (name, held, tuple(c.where for c in watch.open_checkouts_of_current_owner()))
                    for name, watch in self.watches().items()
                    if (held := watch.held_by_current_owner())
                ]
            )
        if self.mirror is not None:
            self.mirror.sync()

    def _report(self, leaks: list[tuple[str, int, tuple[str, ...]]]) -> None:
        if not leaks:
            return
        with self.lock:
            self.requests_leaked += 1
        for engine, held, where in leaks:
            log.warning(
                "request ended with %d connection(s) of engine %s still checked out outside "
                "db.session (checked out at: %s)",
                held,
                engine,
                "; ".join(where) or "unknown",
            )


_new_unit = object.__new__


class RequestScope:
    """The WSGI wrapper that begins each request's unit of work (and its shed wait) before
    Flask sees the request; :meth:`_State.teardown` ends both.

    Begun here, not in a ``before_request`` hook, so the begin costs no Flask hook dispatch
    and no proxy lookup (``request``, ``g``): the unit's name comes from the WSGI environ,
    and the unit itself (:class:`~pooltender.units.ScopedUnit`) carries the tokens the
    teardown resets. The context variables are set in the calling context, which Flask runs
    the request in (it copies no context), so the request's checkouts see them, and so does
    its teardown, also when a streamed response tears down later on the same thread.
    Admission control, when on, wraps this wrapper: a request waiting for admission has
    not begun a unit.
    """

    __slots__ = ("app", "shed", "shed_wait", "state")

    def __init__(self, app: WSGIApplication, state: _State, shed_wait: float | None) -> None:
        self.app = app
        self.state = state
        self.shed = state.options.shed
        self.shed_wait = shed_wait

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        # ScopedUnit(name, state) with its slots set here: no __init__ frame per request
        unit = _new_unit(ScopedUnit)
        unit.name = f"request {environ['REQUEST_METHOD']} {environ.get('PATH_INFO') or '/'}"
        unit.scope = self.state
        unit.shed_token = begin_shed_wait(self.shed_wait) if self.shed else None
        unit.token = enter_unit(unit)
        return self.app(environ, start_response)


class Pooltender:
    """The extension. ``Pooltender(app, db)`` or ``Pooltender()`` then ``init_app(app, db)``.

    ``settings`` overrides the ``POOLTENDER_*`` pool keys of app.config and the environment;
    ``shape`` the ``POOLTENDER_FLEET_*`` ones.

    The pages (``/pooltender/stats``, ``/pooltender/health``, ``/metrics``, the dashboard)
    show leak reports with source lines and who holds the server's connections, so they are
    served only after an explicit choice: ``protect`` is called before each of them answers
    (raise or abort there to refuse, e.g. an admin check), or ``public=True`` serves them to
    anyone (behind a trusted network). Without either they are not registered and one warning
    says why. A scraper can authenticate to ``/metrics`` with ``POOLTENDER_METRICS_TOKEN``
    (``Authorization: Bearer <token>``), which serves ``/metrics`` even without ``protect``;
    a request without the token then goes to ``protect`` (401 when there is none).
    """

    def __init__(
        self,
        app: Flask | None = None,
        db: Any = None,
        *,
        settings: PoolSettings | None = None,
        shape: FleetShape | None = None,
        protect: Callable[[], None] | None = None,
        public: bool = False,
    ) -> None:
        if protect is not None and public:
            raise TypeError("Pooltender(..., protect=..., public=True): give one of them")
        self._settings = settings
        self._shape = shape
        self._protect = protect
        self._public = public
        if app is not None:
            if db is None:
                raise TypeError("Pooltender(app, db): pass the Flask-SQLAlchemy object too")
            self.init_app(app, db)

    # ------------------------------------------------------------------ set-up

    def init_app(self, app: Flask, db: Any) -> None:
        """Configure ``db``'s engines for ``app``, watch them, check the budget, add routes."""
        if "pooltender" in app.extensions:
            raise RuntimeError(
                "Pooltender is already registered on this app; call init_app once per app "
                "(create one Pooltender() and call init_app(app, db) in your factory)"
            )
        if "sqlalchemy" in app.extensions:
            raise RuntimeError(
                "db.init_app(app) ran before Pooltender: its engines are built already, so the "
                "pool settings cannot apply; call Pooltender(app, db) instead of db.init_app(app)"
            )
        # precedence: settings= / shape= arguments, then app.config, then the environment,
        # then the defaults; one strict parser (pooltender.settings) for every source
        config = configured_keys(app.config)
        if self._settings is not None:
            warn_overridden_pool_keys(app.config, self._settings)
        settings = self._settings or settings_from_config(config)
        settings = adopt_engine_options(
            app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {},
            settings,
            set_by_user=None if self._settings is not None else config,
        )
        options = ExtensionSettings.from_mapping(config)
        shape = self._shape or shape_from_config(config)
        mode = options.budget_mode(has_fleet_shape=shape is not None)
        # admission control (issue 10): validated before any engine is built
        admission = settings_for_app(config, pool_cap=settings.per_process_cap)
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = self._engine_options(app, settings)
        state = _State(settings=settings, options=options, db=db)
        app.extensions["pooltender"] = state
        # Registered before db.init_app so that it runs after Flask-SQLAlchemy's own teardown.
        app.teardown_appcontext(state.teardown)
        db.init_app(app)
        with app.app_context():
            for engine in db.engines.values():
                self._watch(engine, settings)
            if shape is not None and mode != "off":
                engine = db.engine
                if engine.dialect.name != "sqlite":
                    try:
                        state.budget = check_startup(engine, settings, shape, mode)
                    except Exception:
                        for each in db.engines.values():
                            each.dispose()  # a refused app must not leave connections behind
                        raise
        app.register_error_handler(PoolExhausted, self._shed_response)
        # failures.py: an unreachable database (or a dry pool outside shedding) is 503 too.
        register_error_handlers(
            app,
            retry_after=state.options.retry_after,
            on_unavailable=state.count_unavailable,
            reset_session=db.session.rollback,
        )
        self._add_routes(app, state)
        # the request's unit of work and shed wait: begun around Flask, ended by the teardown
        app.wsgi_app = RequestScope(app.wsgi_app, state, settings.shed_wait)  # type: ignore[method-assign]
        # admission control (issue 10): wraps app.wsgi_app, so it runs before Flask's request
        install_admission(
            app,
            admission,
            retry_after=state.options.retry_after,
            multiprocess=state.mirror is not None,
        )

    def _engine_options(self, app: Flask, settings: PoolSettings) -> dict[str, Any]:
        uri = app.config.get("SQLALCHEMY_DATABASE_URI")
        options = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
        ours = settings.engine_options(uri)  # the user's pool options were adopted above
        # Driver timeouts (pooltender.settings) under the app's own connect_args, which win.
        ours["connect_args"] = {**ours.get("connect_args", {}), **options.get("connect_args", {})}
        options.update(ours)
        if uri is not None and not is_sqlite_memory(uri):
            options.setdefault("poolclass", SheddingQueuePool)
        return options

    def _watch(self, engine: Engine, settings: PoolSettings) -> PoolWatch:
        register_engine(engine)
        watch = install_watch(engine, leak_threshold=settings.leak_threshold)
        if is_transaction_pooling(settings.proxy):  # nothing may outlive a transaction
            install_session_state_guard(engine)
        if settings.pool_pre_ping and settings.ping_after_idle > 0:
            install_idle_ping(engine, settings.ping_after_idle)
        if settings.reset_on_return == "if-needed":
            install_clean_reset(engine)  # not over a reset_on_return the app chose itself
        return watch

    # ------------------------------------------------------------------ request path

    @staticmethod
    def _state() -> _State:
        state: _State = current_app.extensions["pooltender"]
        return state

    def _shed_response(self, error: PoolExhausted) -> Response:
        state = self._state()
        with state.lock:
            state.requests_shed += 1
        log.warning("request shed: %s", error)
        response = jsonify(
            {
                "error": {
                    "code": "service_unavailable",
                    "message": "the service is busy (no database connection free); retry shortly",
                }
            }
        )
        response.status_code = 503
        response.headers["Retry-After"] = str(state.options.retry_after)
        return response

    # ------------------------------------------------------------------ endpoints

    def _add_routes(self, app: Flask, state: _State) -> None:
        """Register the pages that are guarded: all of them with ``protect`` or
        ``public=True``; without either, only ``/metrics`` when a metrics token is set, and
        one warning lists the pages left out and why."""
        options = state.options
        guarded = self._protect is not None or self._public
        left_out: list[str] = []
        prefix = options.path("endpoints")
        if prefix is not None:
            if guarded:
                app.add_url_rule(f"{prefix}/stats", "pooltender_stats", self._stats_view)
                app.add_url_rule(f"{prefix}/health", "pooltender_health", self._health_view)
            else:
                left_out += [f"{prefix}/stats", f"{prefix}/health"]
        metrics_path = options.path("metrics_path")
        if metrics_path is not None:
            if guarded or options.metrics_token:
                self._add_metrics(app, state, metrics_path)
            else:
                left_out.append(metrics_path)
        dashboard_path = options.path("dashboard_path")
        if options.dashboard and dashboard_path is not None:
            if not guarded:
                left_out.append(f"{dashboard_path}/")
            else:
                from pooltender.dashboard import inspection_snapshots, register_dashboard

                register_dashboard(
                    app,
                    path=dashboard_path,
                    pool_stats=state.stats,
                    snapshot=inspection_snapshots(lambda: state.db.engine, ttl=1.0),
                    protect=self._protect,
                    admission=lambda: admission_json(admission_of(app)),  # issue 10
                )
        if left_out:
            log.warning(
                "pooltender pages not served: %s. They show leak reports with source files and "
                "lines, pool figures and who holds the server's connections, so they need an "
                "explicit choice: Pooltender(app, db, protect=<callable that refuses "
                "outsiders>) or Pooltender(app, db, public=True) behind a trusted network; "
                "POOLTENDER_METRICS_TOKEN serves %s to a scraper sending that bearer token",
                ", ".join(left_out),
                metrics_path or "/metrics",
            )

    def _add_metrics(self, app: Flask, state: _State, path: str) -> None:
        try:  # the `prometheus` extra; `pip install 'pooltender[flask]'` alone must work
            from pooltender.metrics import MultiprocessMirror, multiprocess_enabled
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] != "prometheus_client":
                raise
            log.warning(
                "%s not served: prometheus-client is not installed; "
                "pip install 'pooltender[prometheus]' (or set POOLTENDER_METRICS_PATH=off)",
                path,
            )
            return
        if multiprocess_enabled():
            state.mirror = MultiprocessMirror(state.stats, state.extra)
        app.add_url_rule(path, "pooltender_metrics", self._metrics_view)

    def _guard(self) -> None:
        if self._protect is not None:
            self._protect()

    def _metrics_guard(self) -> None:
        """The scraper's bearer token when one is set (constant-time comparison), else the
        ``protect`` callable; without either a token is required (401)."""
        token = self._state().options.metrics_token
        if not token:
            self._guard()
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return
        if self._protect is not None:
            self._protect()
            return
        response = jsonify(
            {
                "error": {
                    "code": "unauthorized",
                    "message": "send the metrics token: Authorization: Bearer <token>",
                }
            }
        )
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        abort(response)

    def _stats_view(self) -> Response:
        self._guard()
        state = self._state()
        snapshot = state.stats()
        body: dict[str, Any] = {
            "engines": {name: pool_stats_json(s) for name, s in snapshot.items()},
            "recommendation": {
                name: _recommend(s) for name, s in snapshot.items() if s.checkins > 0
            },
            "requests_shed": state.requests_shed,
            "requests_leaked_connection": state.requests_leaked,
            "admission": admission_json(admission_of(current_app)),  # issue 10
            "settings": {
                k: v for k, v in dataclasses.asdict(state.settings).items() if k != "source_prefix"
            },
        }
        if state.budget is not None:
            body["budget"] = {
                "fits": state.budget.fits,
                "total_demand": state.budget.total_demand,
                "max_connections": state.budget.max_connections,
                "required_max_connections": state.budget.required_max_connections,
            }
        return jsonify(body)

    def _health_view(self) -> tuple[Response, int]:
        self._guard()
        state = self._state()
        engines = {}
        healthy = True
        for name, s in state.stats().items():
            cap = (s.pool_size or 0) + max(s.max_overflow or 0, 0)
            saturated = bool(cap) and s.checked_out >= cap
            healthy = healthy and not saturated
            engines[name] = {"checked_out": s.checked_out, "cap": cap, "saturated": saturated}
        status = "ok" if healthy else "saturated"
        return jsonify({"status": status, "engines": engines}), 200 if healthy else 503

    def _metrics_view(self) -> Response:
        self._metrics_guard()
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from pooltender.metrics import PoolCollector

        state = self._state()
        registry = CollectorRegistry()
        if state.mirror is not None:
            from prometheus_client import multiprocess

            state.mirror.sync(force=True)
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry.register(PoolCollector(state.stats, state.extra))
        metrics_for_scrape(current_app, registry, multiprocess=state.mirror is not None)  # issue 10
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def _recommend(stats: PoolStats) -> dict[str, Any]:
    """Little's law on what this process measured: checkouts/s x mean hold time."""
    advice = recommend_pool(stats.checkouts_per_second, stats.hold_time_mean)
    out: dict[str, Any] = {
        "pool_size": advice.pool_size,
        "max_overflow": advice.max_overflow,
        "busy_connections_mean": advice.basis.busy_mean,
        "checkouts_per_second": stats.checkouts_per_second,
        "hold_time_mean_s": stats.hold_time_mean,
    }
    if stats.hold_time_mean > 0:  # Erlang C (pooltender.queueing) beside the measured wait
        rate, hold = stats.checkouts_per_second, stats.hold_time_mean
        for label, cap in (("recommended", advice.cap), ("current", _cap(stats))):
            if cap:
                q = MMcQueue(arrival_rate=rate, hold_time=hold, servers=cap)
                out[f"p_wait_{label}_cap"] = q.p_wait
                p99 = q.wait_percentile(0.99)
                out[f"p99_wait_s_{label}_cap"] = p99 if math.isfinite(p99) else None
        out["p99_wait_s_measured"] = stats.checkout_wait.p99
    return out


def _cap(stats: PoolStats) -> int | None:
    if stats.pool_size is None or stats.max_overflow is None:
        return None
    return stats.pool_size + max(stats.max_overflow, 0)
