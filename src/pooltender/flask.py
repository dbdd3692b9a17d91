"""``Pooltender``: the Flask extension that applies the post-mortem's practices to an app.

Adopting it in a Flask-SQLAlchemy app is one line in place of ``db.init_app(app)``::

    db = SQLAlchemy()
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "mysql+mysqldb://app:...@db/app"
    Pooltender(app, db)        # sizes, watches and guards the pool; calls db.init_app(app)

What ``init_app(app, db)`` does, in order:

1. reads :class:`~pooltender.settings.PoolSettings` from the ``POOLTENDER_*`` config keys
   (typos fail loudly) and writes them into ``SQLALCHEMY_ENGINE_OPTIONS``, with
   :class:`~pooltender.shedding.SheddingQueuePool` as the pool class; a pool option set in
   both places is refused, so there is one source of truth;
2. registers its teardown *before* ``db.init_app(app)`` (Flask runs teardowns in reverse), so
   its safety net runs after Flask-SQLAlchemy has removed the request's session;
3. calls ``db.init_app(app)`` and installs the watch (leak detection, second-checkout
   reports) and the idle-window liveness ping on every engine;
4. when a fleet shape is configured, runs the budget check against the live server
   (``POOLTENDER_BUDGET_CHECK``: ``fail`` refuses to start, ``warn`` logs, ``off``);
5. serves ``/pooltender/stats`` and ``/pooltender/health`` (JSON) and ``/metrics``
   (Prometheus text; multiprocess mode under gunicorn).

Config keys besides PoolSettings' own (all optional):

``POOLTENDER_BUDGET_CHECK``       ``fail`` | ``warn`` | ``off``; default ``warn`` when a fleet
                                  shape is given, else ``off``
``POOLTENDER_FLEET_HOSTS``, ``POOLTENDER_FLEET_PROCESSES``, ``POOLTENDER_FLEET_WORKER_MODEL``,
``POOLTENDER_FLEET_CONCURRENCY``, ``POOLTENDER_FLEET_CONNECTIONS_PER_REQUEST``,
``POOLTENDER_FLEET_CONSUMERS``, ``POOLTENDER_FLEET_CONNECTIONS_PER_CONSUMER``,
``POOLTENDER_FLEET_OTHER_CLIENTS``, ``POOLTENDER_FLEET_RESERVED``
                                  the fleet shape (see :class:`~pooltender.budget.FleetShape`)
``POOLTENDER_SHED``               shed requests that wait longer than ``shed_wait``; default on
``POOLTENDER_RETRY_AFTER``        seconds in the 503's ``Retry-After``; default 1
``POOLTENDER_ENDPOINTS``          URL prefix of the JSON endpoints; default ``/pooltender``,
                                  empty to disable
``POOLTENDER_METRICS_PATH``       default ``/metrics``, empty to disable
``POOLTENDER_DASHBOARD``          serve the live dashboard; default off
``POOLTENDER_DASHBOARD_PATH``     default ``/pooltender/dashboard``
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, current_app, g, jsonify
from sqlalchemy.engine import Engine, make_url

from pooltender.budget import (
    ENFORCE_MODES,
    BudgetReport,
    EnforceMode,
    FleetShape,
    check_startup,
    recommend_pool,
)
from pooltender.failures import register_error_handlers
from pooltender.hooks import register_engine
from pooltender.liveness import install_idle_ping
from pooltender.metrics import MultiprocessMirror, PoolCollector, multiprocess_enabled
from pooltender.settings import DEFAULT_PREFIX, PoolSettings, SettingsError, SettingsProblem
from pooltender.shedding import PoolExhausted, SheddingQueuePool, begin_shed_wait, end_shed_wait
from pooltender.watch import PoolStats, PoolWatch, install_watch, watch_of

__all__ = ["EXTENSION_KEYS", "Pooltender", "settings_from_config", "shape_from_config"]

log = logging.getLogger("pooltender.flask")

_FLEET_KEYS: dict[str, str] = {
    "POOLTENDER_FLEET_HOSTS": "hosts",
    "POOLTENDER_FLEET_PROCESSES": "processes_per_host",
    "POOLTENDER_FLEET_WORKER_MODEL": "worker_model",
    "POOLTENDER_FLEET_CONCURRENCY": "concurrency",
    "POOLTENDER_FLEET_CONNECTIONS_PER_REQUEST": "connections_per_request",
    "POOLTENDER_FLEET_CONSUMERS": "consumers",
    "POOLTENDER_FLEET_CONNECTIONS_PER_CONSUMER": "connections_per_consumer",
    "POOLTENDER_FLEET_OTHER_CLIENTS": "other_clients",
    "POOLTENDER_FLEET_RESERVED": "reserved",
}
EXTENSION_KEYS = _OWN_KEYS = frozenset(
    {
        "POOLTENDER_BUDGET_CHECK",
        "POOLTENDER_SHED",
        "POOLTENDER_RETRY_AFTER",
        "POOLTENDER_ENDPOINTS",
        "POOLTENDER_METRICS_PATH",
        "POOLTENDER_DASHBOARD",
        "POOLTENDER_DASHBOARD_PATH",
        *_FLEET_KEYS,
    }
)
_POOL_OPTIONS = ("pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping")
_TRUE = {"1", "true", "yes", "on"}


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in _TRUE


#: The liveness window used where pooltender installs its idle-window ping (this extension):
#: bench/watch_overhead.py measured checkout + checkin at 1.58x a bare pool with
#: SQLAlchemy's pre-ping on every checkout and 1.08x with a ping only after 0.5 s idle
#: (docs/benchmarks.md), while tests/pooltender/test_liveness.py shows killed, timed-out and
#: restarted-server connections still caught. PoolSettings alone keeps 0 (pre-ping every
#: checkout), the safe choice for an engine built without the watch.
WATCHED_PING_AFTER_IDLE = 0.5


def settings_from_config(config: Mapping[str, Any]) -> PoolSettings:
    """PoolSettings from a Flask config's ``POOLTENDER_*`` keys (the extension's own skipped).

    Without ``POOLTENDER_PING_AFTER_IDLE`` the liveness check is the idle-window ping of
    :data:`WATCHED_PING_AFTER_IDLE` seconds, which this extension installs.
    """
    pool_keys = {k: v for k, v in config.items() if k not in _OWN_KEYS}
    settings = PoolSettings.from_mapping(pool_keys, DEFAULT_PREFIX)
    if f"{DEFAULT_PREFIX}PING_AFTER_IDLE" not in pool_keys and settings.pool_pre_ping:
        settings = settings.with_values(ping_after_idle=WATCHED_PING_AFTER_IDLE)
    return settings


def shape_from_config(config: Mapping[str, Any]) -> FleetShape | None:
    """The fleet shape from ``POOLTENDER_FLEET_*`` keys, or None if none is set."""
    values: dict[str, Any] = {}
    for key, field_name in _FLEET_KEYS.items():
        raw = config.get(key)
        if raw is None or raw == "":
            continue
        if field_name == "worker_model":
            values[field_name] = str(raw).strip().lower()
            continue
        try:
            values[field_name] = int(raw)
        except (TypeError, ValueError):
            raise SettingsError([SettingsProblem(key, raw, "must be a whole number")]) from None
    if not values:
        return None
    try:
        return FleetShape(**values)
    except ValueError as exc:
        raise SettingsError([SettingsProblem("POOLTENDER_FLEET_*", values, str(exc))]) from None


@dataclasses.dataclass
class _State:
    """What the extension keeps per app (``app.extensions["pooltender"]``)."""

    settings: PoolSettings
    db: Any
    shed: bool
    retry_after: int
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


class Pooltender:
    """The extension. ``Pooltender(app, db)`` or ``Pooltender()`` then ``init_app(app, db)``.

    ``settings`` overrides the ``POOLTENDER_*`` config; ``shape`` the ``POOLTENDER_FLEET_*``
    config. ``protect`` is called before the JSON endpoints and the dashboard answer (raise
    or abort there to refuse, e.g. an admin check); ``/metrics`` is left to network policy,
    as is the convention for Prometheus targets.
    """

    def __init__(
        self,
        app: Flask | None = None,
        db: Any = None,
        *,
        settings: PoolSettings | None = None,
        shape: FleetShape | None = None,
        protect: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._shape = shape
        self._protect = protect
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
        settings = self._settings or settings_from_config(app.config)
        shape = self._shape or shape_from_config(app.config)
        mode = str(app.config.get("POOLTENDER_BUDGET_CHECK", "warn" if shape else "off")).lower()
        if mode not in ENFORCE_MODES:
            raise SettingsError(
                [SettingsProblem("POOLTENDER_BUDGET_CHECK", mode, "must be fail, warn or off")]
            )
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = self._engine_options(app, settings)
        state = _State(
            settings=settings,
            db=db,
            shed=_flag(app.config.get("POOLTENDER_SHED", True)),
            retry_after=max(1, math.ceil(float(app.config.get("POOLTENDER_RETRY_AFTER", 1)))),
        )
        app.extensions["pooltender"] = state
        # Registered before db.init_app so that it runs after Flask-SQLAlchemy's own teardown.
        app.teardown_appcontext(self._teardown)
        db.init_app(app)
        with app.app_context():
            for engine in db.engines.values():
                self._watch(engine, settings)
            if shape is not None and mode != "off":
                engine = db.engine
                if engine.dialect.name != "sqlite":
                    try:
                        state.budget = check_startup(engine, settings, shape, _mode(mode))
                    except Exception:
                        for each in db.engines.values():
                            each.dispose()  # a refused app must not leave connections behind
                        raise
        if state.shed:
            app.before_request(self._before_request)
            app.teardown_request(self._teardown_request)
        app.register_error_handler(PoolExhausted, self._shed_response)
        # failures.py: an unreachable database (or a dry pool outside shedding) is 503 too.
        register_error_handlers(
            app,
            retry_after=state.retry_after,
            on_unavailable=state.count_unavailable,
            reset_session=db.session.rollback,
        )
        self._add_routes(app, state)

    def _engine_options(self, app: Flask, settings: PoolSettings) -> dict[str, Any]:
        uri = app.config.get("SQLALCHEMY_DATABASE_URI")
        options = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
        ours = settings.engine_options(uri)
        clashes = [k for k in _POOL_OPTIONS if k in options and k in ours and options[k] != ours[k]]
        if clashes:
            raise SettingsError(
                [
                    SettingsProblem(
                        f"SQLALCHEMY_ENGINE_OPTIONS[{k!r}]",
                        options[k],
                        f"clashes with {settings.key(k)}={ours[k]!r}; set pool options only "
                        "through POOLTENDER_* keys",
                    )
                    for k in clashes
                ]
            )
        # Driver timeouts (pooltender.settings) under the app's own connect_args, which win.
        ours["connect_args"] = {**ours.get("connect_args", {}), **options.get("connect_args", {})}
        options.update(ours)
        memory = uri is None or (
            make_url(uri).get_backend_name() == "sqlite"
            and make_url(uri).database in (None, "", ":memory:")
        )
        if not memory:
            options.setdefault("poolclass", SheddingQueuePool)
        return options

    def _watch(self, engine: Engine, settings: PoolSettings) -> PoolWatch:
        register_engine(engine)
        watch = install_watch(engine, leak_threshold=settings.leak_threshold)
        if settings.pool_pre_ping and settings.ping_after_idle > 0:
            install_idle_ping(engine, settings.ping_after_idle)
        return watch

    # ------------------------------------------------------------------ request path

    @staticmethod
    def _state() -> _State:
        state: _State = current_app.extensions["pooltender"]
        return state

    def _before_request(self) -> None:
        g._pooltender_shed_token = begin_shed_wait(self._state().settings.shed_wait)

    def _teardown_request(self, _exc: BaseException | None) -> None:
        token = g.pop("_pooltender_shed_token", None)
        if token is not None:
            end_shed_wait(token)

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
        response.headers["Retry-After"] = str(state.retry_after)
        return response

    def _teardown(self, _exc: BaseException | None) -> None:
        """Safety net: a connection still held by this thread after the session was removed
        was checked out outside the scoped session (a second Session, a raw
        ``engine.connect()`` never closed) and would leak; log it with its stack and count it.
        """
        state = current_app.extensions.get("pooltender")
        if state is None:
            return
        for name, watch in state.watches().items():
            held = watch.held_by_current_owner()
            if held:
                with state.lock:
                    state.requests_leaked += 1
                where = "; ".join(c.where for c in watch.open_checkouts_of_current_owner())
                log.warning(
                    "request ended with %d connection(s) of engine %r still checked out outside "
                    "db.session (checked out at: %s)",
                    held,
                    name,
                    where or "unknown",
                )
        if state.mirror is not None:
            state.mirror.sync()

    # ------------------------------------------------------------------ endpoints

    def _add_routes(self, app: Flask, state: _State) -> None:
        prefix = str(app.config.get("POOLTENDER_ENDPOINTS", "/pooltender")).rstrip("/")
        if prefix:
            app.add_url_rule(f"{prefix}/stats", "pooltender_stats", self._stats_view)
            app.add_url_rule(f"{prefix}/health", "pooltender_health", self._health_view)
        metrics_path = str(app.config.get("POOLTENDER_METRICS_PATH", "/metrics"))
        if metrics_path:
            if multiprocess_enabled():
                state.mirror = MultiprocessMirror(state.stats, state.extra)
            app.add_url_rule(metrics_path, "pooltender_metrics", self._metrics_view)
        if _flag(app.config.get("POOLTENDER_DASHBOARD", False)):
            from pooltender.dashboard import (
                DEFAULT_DASHBOARD_PATH,
                inspection_snapshots,
                register_dashboard,
            )

            register_dashboard(
                app,
                path=str(app.config.get("POOLTENDER_DASHBOARD_PATH") or DEFAULT_DASHBOARD_PATH),
                pool_stats=state.stats,
                snapshot=inspection_snapshots(lambda: state.db.engine, ttl=1.0),
                protect=self._protect,
            )

    def _guard(self) -> None:
        if self._protect is not None:
            self._protect()

    def _stats_view(self) -> Response:
        self._guard()
        state = self._state()
        snapshot = state.stats()
        body: dict[str, Any] = {
            "engines": {name: stats_json(s) for name, s in snapshot.items()},
            "recommendation": {
                name: _recommend(s) for name, s in snapshot.items() if s.checkins > 0
            },
            "requests_shed": state.requests_shed,
            "requests_leaked_connection": state.requests_leaked,
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
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        state = self._state()
        registry = CollectorRegistry()
        if state.mirror is not None:
            from prometheus_client import multiprocess

            state.mirror.sync(force=True)
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry.register(PoolCollector(state.stats, state.extra))
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def _mode(mode: str) -> EnforceMode:
    for known in ENFORCE_MODES:
        if known == mode:
            return known
    raise ValueError(mode)  # pragma: no cover - validated by the caller


def _recommend(stats: PoolStats) -> dict[str, Any]:
    """Little's law on what this process measured: checkouts/s x mean hold time."""
    advice = recommend_pool(stats.checkouts_per_second, stats.hold_time_mean)
    return {
        "pool_size": advice.pool_size,
        "max_overflow": advice.max_overflow,
        "busy_connections_mean": advice.basis.busy_mean,
        "checkouts_per_second": stats.checkouts_per_second,
        "hold_time_mean_s": stats.hold_time_mean,
    }


def stats_json(stats: PoolStats) -> dict[str, Any]:
    """A JSON-ready dict of a PoolStats snapshot (histograms as p50/p99/mean, stacks as text)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(stats):
        value = getattr(stats, f.name)
        if hasattr(value, "p50") and hasattr(value, "bounds"):
            out[f.name] = {
                "count": value.count,
                "mean_s": value.mean,
                "p50_s": value.p50,
                "p99_s": value.p99,
            }
        elif isinstance(value, tuple):
            out[f.name] = [str(item) for item in value]
        else:
            out[f.name] = value
    out["hold_time_mean"] = stats.hold_time_mean
    out["checkouts_per_second"] = stats.checkouts_per_second
    return out
