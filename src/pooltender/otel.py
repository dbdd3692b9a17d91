"""OpenTelemetry metrics of watched pools: the ``db.client.connection.*`` semantic conventions.

Implements the database client connection-pool metrics of the OpenTelemetry semantic
conventions **v1.44.0** (checked against the definitions in opentelemetry-semantic-conventions
0.66b2; https://opentelemetry.io/docs/specs/semconv/database/database-metrics/, schema URL
:data:`SCHEMA_URL`); the names, units and attributes below have been unchanged since v1.26.0
renamed ``db.client.connections.*`` (ms) to ``db.client.connection.*`` (s). Only
``opentelemetry-api`` is imported (``pip install 'pooltender[otel]'``); the application picks the
SDK and exporter and sets the meter provider, as the OpenTelemetry library guidelines ask.

=====================================  ======================  ==============  =================
instrument                             kind                    unit            from
=====================================  ======================  ==============  =================
db.client.connection.count             async up-down counter   {connection}    checked_out
                                       (state=used|idle)                       / QueuePool idle
db.client.connection.idle.max          async up-down counter   {connection}    pool_size
db.client.connection.idle.min          async up-down counter   {connection}    0 (see below)
db.client.connection.max               async up-down counter   {connection}    size + overflow
db.client.connection.pending_requests  async up-down counter   {request}       checkouts waiting
db.client.connection.timeouts          async counter           {timeout}       checkout_timeouts
db.client.connection.create_time       histogram               s               each new DBAPI
                                                                               connection
db.client.connection.wait_time         histogram               s               each checkout's
                                                                               wait (timeouts too)
db.client.connection.use_time          histogram               s               each checkout's
                                                                               hold, at checkin
=====================================  ======================  ==============  =================

Every point carries ``db.client.connection.pool.name`` (the Flask-SQLAlchemy bind key,
``default`` for the main engine, under :func:`instrument_app`; :func:`pool_name_of` builds the
conventions' ``server.address:server.port/db.namespace`` for a bare engine).

QueuePool's notions: it keeps at most ``pool_size`` connections idle (a connection returned
beyond that, an overflow one, is closed), so ``idle.max = pool_size``; it never opens
connections ahead of demand nor keeps a floor, so ``idle.min = 0``; it opens at most
``pool_size + max_overflow`` at once, so that is ``max`` (not reported when ``max_overflow``
is -1, unlimited). Pools that are not QueuePools report ``count{state=used}`` and the
histograms only.

Counts, limits and timeouts are read from :meth:`PoolWatch.stats` when the reader collects
(nothing on the hot path). The histograms need each event's value, so :class:`PoolMetrics`
adds an observer to the watch (:meth:`PoolWatch.add_observer`): the watch calls it with the
wait it measured itself (``WatchedQueuePool``: queueing, connecting, pre-ping -- the figure
SQLAlchemy's events cannot give, and why opentelemetry-instrumentation-sqlalchemy has no
``wait_time``), the hold at checkin, and the connect time. ``wait_time`` and
``pending_requests`` therefore need a :class:`~pooltender.watch.WatchedQueuePool` (what
:class:`~pooltender.settings.PoolSettings` builds); on other pools they stay empty / absent.

Usage::

    from pooltender.otel import instrument_app
    instrument_app(app)               # after Pooltender(app, db); global meter provider

    from pooltender.otel import PoolMetrics, pool_name_of
    PoolMetrics().add(watch_of(engine), pool_name_of(engine))   # plain SQLAlchemy
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from pooltender.stats import CHECKOUT_WAIT_BUCKETS, HOLD_TIME_BUCKETS

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from pooltender.stats import PoolStats
    from pooltender.watch import PoolWatch

__all__ = [
    "POOL_NAME",
    "SCHEMA_URL",
    "SEMCONV_VERSION",
    "STATE",
    "PoolMetrics",
    "instrument_app",
    "pool_name_of",
]

#: The semantic conventions version implemented (module docstring).
SEMCONV_VERSION: Final = "1.44.0"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
POOL_NAME: Final = "db.client.connection.pool.name"
STATE: Final = "db.client.connection.state"

#: Bounds for connection-open times: sub-millisecond on a local socket, seconds over TLS.
CREATE_TIME_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def pool_name_of(engine: Engine) -> str:
    """``server.address:server.port/db.namespace`` of ``engine``, as the conventions suggest
    for a pool without a name of its own (never the user name or password)."""
    url = engine.url
    host = url.host or ""
    where = f"{host}:{url.port}" if url.port else host
    return f"{where}/{url.database or ''}" if where else f"{url.drivername}/{url.database or ''}"


@dataclass
class _Pool:
    """One instrumented pool: its watch, its attributes, and the checkouts waiting now."""

    watch: PoolWatch
    attributes: dict[str, str]
    observer: Any = None
    pending: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class PoolMetrics:
    """The nine ``db.client.connection.*`` instruments over any number of watched pools.

    ``meter_provider``: where the instruments live (default: the global one, which is a
    no-op until the application installs an SDK). Thread-safe; :meth:`close` removes the
    observers from the watches (the asynchronous instruments then report nothing).
    """

    def __init__(self, *, meter_provider: MeterProvider | None = None) -> None:
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        meter = provider.get_meter("pooltender", schema_url=SCHEMA_URL)  # the instrumentation scope
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()
        for name, callback, unit, description in (
            ("count", self._count, "{connection}", "The number of connections that are "
             "currently in state described by the `state` attribute."),
            ("idle.max", self._idle_max, "{connection}",
             "The maximum number of idle open connections allowed."),
            ("idle.min", self._idle_min, "{connection}",
             "The minimum number of idle open connections allowed."),
            ("max", self._max, "{connection}", "The maximum number of open connections allowed."),
            ("pending_requests", self._pending, "{request}",
             "The number of current pending requests for an open connection."),
        ):  # fmt: skip
            meter.create_observable_up_down_counter(
                f"db.client.connection.{name}",
                callbacks=[callback],
                unit=unit,
                description=description,
            )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            callbacks=[self._timeouts],
            unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to obtain "
            "a connection from the pool.",
        )
        self._create_time = meter.create_histogram(
            "db.client.connection.create_time",
            unit="s",
            description="The time it took to create a new connection.",
            explicit_bucket_boundaries_advisory=CREATE_TIME_BUCKETS,
        )
        self._wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="The time it took to obtain an open connection from the pool.",
            explicit_bucket_boundaries_advisory=CHECKOUT_WAIT_BUCKETS,
        )
        self._use_time = meter.create_histogram(
            "db.client.connection.use_time",
            unit="s",
            description="The time between borrowing a connection and returning it to the pool.",
            explicit_bucket_boundaries_advisory=HOLD_TIME_BUCKETS,
        )

    # ---- pools ------------------------------------------------------------------------

    def add(self, watch: PoolWatch, pool_name: str) -> None:
        """Instrument ``watch``'s pool under ``pool_name`` (unique within the application)."""
        pool = _Pool(watch, {POOL_NAME: pool_name})
        with self._lock:
            if pool_name in self._pools:
                raise ValueError(
                    f"pool name {pool_name!r} is already instrumented; pool names must be "
                    "unique within the application (db.client.connection.pool.name)"
                )
            self._pools[pool_name] = pool
        pool.observer = self._observer(pool)
        watch.add_observer(pool.observer)

    def remove(self, pool_name: str) -> None:
        """Stop instrumenting ``pool_name`` (no error if it is not instrumented)."""
        with self._lock:
            pool = self._pools.pop(pool_name, None)
        if pool is not None:
            pool.watch.remove_observer(pool.observer)

    def close(self) -> None:
        """Remove every pool (tests; an application keeps its instruments for its lifetime)."""
        for name in list(self._pools):
            self.remove(name)

    @property
    def pool_names(self) -> tuple[str, ...]:
        return tuple(self._pools)

    def _observer(self, pool: _Pool) -> Any:
        attributes = pool.attributes
        wait_time = self._wait_time.record
        use_time = self._use_time.record
        create_time = self._create_time.record
        lock = pool.lock

        def observe(kind: str, seconds: float) -> None:
            if kind == "use":
                use_time(seconds, attributes)
            elif kind == "wait_start":
                with lock:
                    pool.pending += 1
            elif kind == "create":
                create_time(seconds, attributes)
            else:  # "wait", "timeout", "wait_error": the wait is over
                with lock:
                    pool.pending = max(0, pool.pending - 1)
                if kind != "wait_error":
                    wait_time(seconds, attributes)

        return observe

    # ---- asynchronous instruments -------------------------------------------------------

    def _stats(self) -> Iterator[tuple[_Pool, PoolStats]]:
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            yield pool, pool.watch.stats()

    def _count(self, _options: CallbackOptions) -> Iterable[Observation]:
        for pool, stats in self._stats():
            yield Observation(stats.checked_out, {**pool.attributes, STATE: "used"})
            if stats.idle is not None:
                yield Observation(stats.idle, {**pool.attributes, STATE: "idle"})

    def _idle_max(self, _options: CallbackOptions) -> Iterable[Observation]:
        for pool, stats in self._stats():
            if stats.pool_size is not None:
                yield Observation(stats.pool_size, pool.attributes)

    def _idle_min(self, _options: CallbackOptions) -> Iterable[Observation]:
        for pool, stats in self._stats():
            if stats.pool_size is not None:  # a QueuePool: no floor of idle connections
                yield Observation(0, pool.attributes)

    def _max(self, _options: CallbackOptions) -> Iterable[Observation]:
        for pool, stats in self._stats():
            overflow = stats.max_overflow
            if stats.pool_size is not None and overflow is not None and overflow >= 0:
                yield Observation(stats.pool_size + overflow, pool.attributes)  # -1: unlimited

    def _pending(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            if pool.watch.stats().wait_measured:
                yield Observation(pool.pending, pool.attributes)

    def _timeouts(self, _options: CallbackOptions) -> Iterable[Observation]:
        for pool, stats in self._stats():
            yield Observation(stats.checkout_timeouts, pool.attributes)


def instrument_app(app: Any, *, meter_provider: MeterProvider | None = None) -> PoolMetrics:
    """Instrument every pool the app's :class:`~pooltender.flask.Pooltender` watches, named by
    bind key (``default`` for the main engine), the ``engine`` label of ``/metrics``.

    Call after ``Pooltender(app, db)`` (or ``init_app``); ``app`` is a Flask app (not imported
    here, so this module needs only ``opentelemetry-api``).
    """
    state = app.extensions.get("pooltender")
    if state is None:
        raise RuntimeError(
            "instrument_app(app) needs the pooltender extension: call Pooltender(app, db) first"
        )
    instruments = PoolMetrics(meter_provider=meter_provider)
    with app.app_context():
        watches: Mapping[str, PoolWatch] = state.watches()
    for name, watch in watches.items():
        instruments.add(watch, name)
    return instruments
