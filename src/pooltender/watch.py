"""Pool watch: what an engine's connection pool is doing, per engine, read through one getter.

Install once per engine::

    engine = create_engine(url, poolclass=WatchedQueuePool, ...)   # recommended, see below
    watch = install_watch(engine, leak_threshold=60)               # idempotent per engine
    watch_of(engine).stats()                                       # frozen PoolStats snapshot

**Hooks.** Nothing is monkeypatched. Cold-path figures come from SQLAlchemy's pool events
(``sqlalchemy.pool.events.PoolEvents``): ``connect`` (connects), ``invalidate`` and
``soft_invalidate`` (invalidations; a ``DisconnectionError`` -- how ``pool_pre_ping`` and
:mod:`pooltender.liveness` discard a dead connection at checkout -- also counts as a *ping
failure*), ``close`` (closes; the close of a connection older than ``pool_recycle`` counts as
a *recycle*, the only reason the pool closes such a connection by itself) and ``detach``.

The hot path -- checkout and checkin -- is where a choice was needed:

* No event fires *before* a checkout starts waiting, so checkout wait time and
  ``sqlalchemy.exc.TimeoutError`` cannot be seen from events at all. :class:`WatchedQueuePool`
  is a ``QueuePool`` that fills in the two steps of SQLAlchemy's pool template (as the
  strategies in ``sqlalchemy/pool/impl.py`` do): the public ``connect()`` step is timed with
  ``perf_counter_ns`` (timeouts counted) and records the checkout, and the return step
  ``_do_return_conn`` records the checkin before the connection goes back to the queue. The
  measured wait is what the caller was blocked for -- queueing, opening a new connection when
  one was needed, any pre-ping -- like HikariCP's ``connectionAcquire`` timer.
* With that subclass the watch registers **no** ``checkout`` / ``checkin`` listeners: merely
  having them makes SQLAlchemy take its slow checkout path (the pre-ping / retry loop) and
  dispatch two events per checkout + checkin, which by itself cost about as much as the
  watch's own bookkeeping when measured. The wait time and the checkout are recorded under
  one lock acquisition, the checkin under another. Figures: ``bench/watch_overhead.py``
  (``--breakdown`` prints the CPU cost of each operation), ``docs/benchmarks.md``.
* The bookkeeping is written inline in those two steps (no method calls), on a ``__slots__``
  object (``_Hot``) the pool holds directly; histogram values within the first four buckets
  -- the usual checkout wait and hold -- are placed by comparisons instead of ``bisect``;
  the owner is read with one ``ContextVar.get`` (``current_owner`` is called only outside a
  unit of work); leak tracking adds one :func:`pooltender.leaks.new_tracked` call and
  registers its record in the same critical section;
  ``checkouts`` and ``checkins`` are not counted separately (``checkins`` is the hold-time
  histogram's count, ``checkouts = checkins + checked_out``); ``connect()`` calls
  ``_ConnectionFairy._checkout`` (what ``Pool.connect`` does) and ``_do_return_conn`` does
  ``QueuePool``'s queue ``put`` itself, so the subclass adds no Python frame. A lock-free
  variant (per-thread shards merged by :meth:`PoolWatch.stats`) was considered and not
  built: the high-water mark and the per-owner counts must be exact under real threads,
  which needs one atomic read-modify-write per step anyway, and the uncontended lock is
  about 0.14 us of the ~2.4 us the watch costs (``--breakdown``).
* On any other pool (an engine you did not create, SQLite's defaults) the watch falls back to
  the ``checkout`` / ``checkin`` events, feeding the same code; ``stats().wait_measured`` is
  False and the wait histogram and the timeout counter stay empty. Swapping ``engine.pool``
  behind the user's back was rejected: connections already checked out would be orphaned.

Per-checkout state lives in the connection record's public ``record_info`` dict (key
``"pooltender.watch"``), so a checkin finds its checkout without a registry lookup.

**Units of work.** The owner of a checkout is the unit of work (:mod:`pooltender.units`): the
request under the Flask extension, :func:`pooltender.session.unit_of_work` or
:func:`unit_scope`, else the running asyncio task, else the thread (``threading.get_ident()``,
per greenlet under gevent/eventlet monkeypatching); reading it is one ``ContextVar.get`` on
the checkout path. An owner that checks out a second connection while holding one -- the
post-mortem's ``Session(bind=db.engine)`` beside ``db.session`` -- is counted
(``second_checkouts``) and logged on ``pooltender.watch`` with the ``file:line`` stack of the
second checkout (and of the first when stacks are captured), once per call site. When a unit
ends (:func:`end_unit_of_work`) with connections still out, they are reported once and then
owned by nobody: a later unit on the same reused thread is never blamed for them.

**Leaks** are :mod:`pooltender.leaks`'s job (a do-nothing tracker when detection is off).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypedDict, Unpack, cast

from sqlalchemy import event, exc
from sqlalchemy.pool import Pool, QueuePool
from sqlalchemy.pool.base import _ConnectionFairy
from sqlalchemy.util import queue as sqla_queue

from pooltender.leaks import (
    NO_TRACKING,
    GcReturnReport,
    LeakReport,
    OpenCheckout,
    StackTracker,
    TrackedCheckout,
    Tracker,
    capture_stack,
    format_stack,
    new_tracked,
    stack_where,
)
from pooltender.stats import (
    CHECKOUT_WAIT_BUCKETS,
    HOLD_TIME_BUCKETS,
    HistogramSnapshot,
    PoolStats,
    SecondCheckoutReport,
)
from pooltender.units import (
    NOBODY,
    UnitOfWork,
    begin_unit,
    current_owner,
    current_unit,
    reset_unit,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

__all__ = [
    "CHECKOUT_WAIT_BUCKETS",
    "HOLD_TIME_BUCKETS",
    "GcReturnReport",
    "HistogramSnapshot",
    "LeakReport",
    "OpenCheckout",
    "PoolStats",
    "PoolWatch",
    "SecondCheckoutReport",
    "UnitLeak",
    "WatchedQueuePool",
    "end_unit_of_work",
    "install_watch",
    "release_everywhere",
    "task_owner",
    "unit_scope",
    "watch_of",
]

logger = logging.getLogger("pooltender.watch")

_now_ns = time.perf_counter_ns
#: ``observer(kind, seconds)``: see :meth:`PoolWatch.add_observer` (issue 13).
Observer = Callable[[str, float], None]
#: How many distinct second-checkout call sites a watch remembers (each logged once); past
#: it, one summary line is logged and new sites are only counted.
MAX_SECOND_CHECKOUT_SITES: Final = 1000
#: ``record_info`` key of the open checkout: (started ns, owner, seq, tracked or None).
_KEY: Final = "pooltender.watch"


def task_owner() -> Hashable:
    """Owner key for asyncio code: the running task, else the thread. The default owner
    (:func:`pooltender.units.current_owner`) already prefers the task; kept for callers that
    pass ``owner=task_owner`` and want units of work ignored."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return task if task is not None else threading.get_ident()


def _bounds_ns(bounds: tuple[float, ...]) -> list[int]:
    return [round(b * 1e9) for b in bounds]


def _snapshot(bounds: tuple[float, ...], counts: list[int], total_ns: int) -> HistogramSnapshot:
    """Freeze a histogram kept as ``counts[bisect_left(bounds_ns, v)] += 1`` plus a sum."""
    return HistogramSnapshot(bounds, tuple(counts), sum(counts), total_ns / 1e9)


# --------------------------------------------------------------------------- records


# --------------------------------------------------------------------------- the pool class

#: The checkout step proper. ``Pool.connect`` is exactly ``_ConnectionFairy._checkout(pool)``
#: in SQLAlchemy 2.x; calling it directly saves ``WatchedQueuePool.connect`` one Python
#: frame, so that overriding ``connect`` costs no frame at all. Should a SQLAlchemy
#: version's ``QueuePool`` define its own ``connect``, that one is called instead.
_pool_checkout: Callable[[QueuePool], PoolProxiedConnection] = (
    _ConnectionFairy._checkout if QueuePool.connect is Pool.connect else QueuePool.connect
)


class _Hot:
    """The state the checkout and checkin steps update, in slots (the cheapest attribute
    access CPython has), all guarded by ``lock``. :class:`WatchedQueuePool` holds it
    directly; the watch owns it.

    Leak detection: ``live`` is the tracker's registry of open tracked checkouts (None when
    detection is off), filled and emptied in the same critical section as the counts;
    ``seq`` numbers tracked checkouts (under the lock); ``sweeper`` is the tracker until its
    sweeper thread is started on the first tracked checkout, then None.

    ``wait_bounds`` / ``hold_bounds`` are the histogram bounds in ns: a value within the
    first four buckets (the usual checkout wait on a pool with idle connections, and the
    usual hold) is placed by comparisons, without a ``bisect`` call.
    """

    __slots__ = (
        "acquire",
        "held",
        "high",
        "hold_bounds",
        "hold_counts",
        "hold_total",
        "live",
        "lock",
        "observers",
        "out",
        "owner",
        "release",
        "report_second",
        "seq",
        "sweeper",
        "tracker",
        "unit_first",
        "wait_bounds",
        "wait_counts",
        "wait_total",
        "watch",
    )

    def __init__(
        self, watch: PoolWatch, owner: Callable[[], Hashable], report_second: bool
    ) -> None:
        self.watch = watch
        self.owner = owner
        # the default owner: the checkout path reads the unit itself (one C call) and calls
        # current_owner only outside a unit of work
        self.unit_first = owner is current_owner
        self.report_second = report_second
        self.observers: list[Observer] = []  # PoolWatch.add_observer; empty = one truth test
        self.wait_bounds = _bounds_ns(CHECKOUT_WAIT_BUCKETS)
        self.hold_bounds = _bounds_ns(HOLD_TIME_BUCKETS)
        self.start()

    def start(self) -> None:
        """A new lock and every count at zero (at creation, and in a forked child, where the
        parent's lock may be held by a thread that does not exist and its counts are not
        this process's)."""
        self.lock = threading.Lock()
        # bound once: acquire() / try / finally release() costs half a `with lock:` in CPython
        self.acquire = self.lock.acquire
        self.release = self.lock.release
        self.held: dict[Hashable, int] = {}  # owner -> connections it holds now
        self.seq = 0  # the last tracked checkout's number
        self.set_tracker(NO_TRACKING)
        self.out = 0
        self.high = 0
        # histograms: counts per bucket (last = +Inf) and a sum in ns
        self.wait_counts = [0] * (len(CHECKOUT_WAIT_BUCKETS) + 1)
        self.wait_total = 0
        self.hold_counts = [0] * (len(HOLD_TIME_BUCKETS) + 1)
        self.hold_total = 0

    def set_tracker(self, tracker: Tracker) -> None:
        """Leak detection by ``tracker`` from the next checkout on (:data:`NO_TRACKING`:
        off). Three attribute stores; a checkout in flight sees the old or the new registry
        (it reads ``live`` again under the lock before it registers)."""
        self.tracker = tracker
        self.sweeper = tracker if tracker.needs_sweeper() else None
        self.live = tracker.live

    def checkins(self) -> int:
        """Checkins so far: each one is an observation of the hold-time histogram. (Under
        the lock; ``checkouts = out + checkins``, so neither is counted separately.)"""
        return sum(self.hold_counts)


class WatchedQueuePool(QueuePool):
    """``QueuePool`` whose checkout and return steps report to the watch (module docstring).

    Without an installed watch it behaves exactly as ``QueuePool`` (one attribute test).
    The bookkeeping is written inline here, not called: on this path every Python call
    and every attribute lookup shows in the benchmark.
    """

    _pooltender_hot: _Hot | None = None

    def connect(self) -> PoolProxiedConnection:
        hot = self._pooltender_hot
        if hot is None:
            return QueuePool.connect(self)
        observed = hot.observers  # issue 13: per-event observers (pooltender.otel)
        if observed:
            hot.watch._observe("wait_start", 0)
        started = _now_ns()
        try:
            proxy = _pool_checkout(self)
        except exc.TimeoutError:
            hot.watch._timed_out(_now_ns() - started)
            raise
        except BaseException:
            if observed:
                hot.watch._observe("wait_error", _now_ns() - started)
            raise
        now = _now_ns()
        record = proxy._connection_record
        if record is None:  # pragma: no cover - a fresh checkout always has its record
            return proxy
        owner: Hashable | None = current_unit() if hot.unit_first else None
        if owner is None:
            owner = hot.owner()
        waited = now - started
        bounds = hot.wait_bounds
        if waited <= bounds[0]:
            bucket = 0
        elif waited <= bounds[1]:
            bucket = 1
        elif waited <= bounds[2]:
            bucket = 2
        elif waited <= bounds[3]:
            bucket = 3
        else:
            bucket = bisect_left(bounds, waited)
        # leak detection: the stack is captured outside the lock; None when detection is off
        tracked = None if hot.live is None else new_tracked(now, owner, proxy)
        # same bookkeeping as PoolWatch._begin, inlined
        hot.acquire()
        try:
            out = hot.out = hot.out + 1
            if out > hot.high:
                hot.high = out
            held_by = hot.held
            held = held_by[owner] = (held_by[owner] + 1) if owner in held_by else 1
            hot.wait_counts[bucket] += 1
            hot.wait_total += waited
            if tracked is not None:
                live = hot.live  # read again: detection may have been reconfigured meanwhile
                if live is not None:
                    seq = tracked.seq = hot.seq = hot.seq + 1
                    live[seq] = tracked
        finally:
            hot.release()
        if observed:
            hot.watch._observe("wait", waited)
        if hot.sweeper is not None:  # the first tracked checkout starts the leak sweeper
            hot.watch._start_sweeper()
        # record_info belongs to this checkout alone until the caller gets the connection
        record.record_info[_KEY] = (now, owner, tracked)
        if held > 1 and hot.report_second:
            hot.watch._second_checkout(owner, tracked, held)
        return proxy

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        # record the checkin *before* the record is back in the queue, where another thread
        # could check it out at once
        hot = self._pooltender_hot
        if hot is not None:
            info = record.record_info
            if info is not None and _KEY in info:  # else checked out before the install
                now = _now_ns()
                started, owner, tracked = info[_KEY]
                del info[_KEY]
                held_for = now - started
                bounds = hot.hold_bounds
                if held_for <= bounds[0]:
                    bucket = 0
                elif held_for <= bounds[1]:
                    bucket = 1
                elif held_for <= bounds[2]:
                    bucket = 2
                elif held_for <= bounds[3]:
                    bucket = 3
                else:
                    bucket = bisect_left(bounds, held_for)
                # same bookkeeping as PoolWatch._end, inlined
                hot.acquire()
                try:
                    hot.out -= 1
                    hot.hold_counts[bucket] += 1
                    hot.hold_total += held_for
                    held_by = hot.held
                    held = (held_by[owner] - 1) if owner in held_by else -1
                    if held > 0:
                        held_by[owner] = held
                    elif held == 0:
                        del held_by[owner]
                    # else its unit of work ended with it out: disowned, held by nobody
                    if tracked is not None:
                        tracked.open = False  # under the lock: the sweeper tests it there
                        live = hot.live
                        if live is not None and tracked.seq in live:
                            del live[tracked.seq]
                finally:
                    hot.release()
                if hot.observers:
                    hot.watch._observe("use", held_for)
                # the usual checkin has nothing to tell: a weakref call and a flag test
                if tracked is not None and (tracked.reported or tracked.proxy_ref() is None):
                    hot.tracker.returned(tracked, now)
        # QueuePool._do_return_conn, inlined (one Python frame less per checkin)
        try:
            self._pool.put(record, False)
        except sqla_queue.Full:
            try:
                record.close()
            finally:
                self._dec_overflow()

    def recreate(self) -> WatchedQueuePool:
        # engine.dispose() replaces the pool with pool.recreate(); keep the watch attached.
        new = cast(WatchedQueuePool, super().recreate())
        new._pooltender_hot = self._pooltender_hot
        return new


# --------------------------------------------------------------------------- the watch


class PoolWatch:
    """Counters, histograms and reports for one engine's pool. Build with :func:`install_watch`.

    Thread-safe: the checkout and checkin paths each take one short, uncontended-in-practice
    lock for a few integer and dict operations; :meth:`stats` copies under the same lock, so a
    snapshot is consistent (``checkouts - checkins == checked_out``).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        leak_threshold: float = 0.0,
        capture_stacks: bool = False,
        report_second_checkouts: bool = True,
        owner: Callable[[], Hashable] = current_owner,
        max_reports: int = 100,
    ) -> None:
        self._engine_ref = weakref.ref(engine)
        self._name = engine.url.render_as_string(hide_password=True)
        self._hot = _Hot(self, owner, report_second_checkouts)
        self._owner = owner
        self._max_reports = max_reports
        self._leak_threshold = 0.0
        self._capture_stacks = False
        self._listeners: list[tuple[str, Callable[..., None]]] = []
        self._start()
        self.configure(leak_threshold=leak_threshold, capture_stacks=capture_stacks)

    def _start(self) -> None:
        """Every count, report and the rate window from zero (``_hot`` already started)."""
        self._lock = self._hot.lock
        self._detaches = 0
        self._connects = 0
        self._closes = 0
        self._invalidations = 0
        self._soft_invalidations = 0
        self._ping_failures = 0
        self._recycles = 0
        self._timeouts = 0
        self._second = 0
        self._leaks = 0
        self._leaks_returned = 0
        self._gc_returns = 0
        self._installed = self._since = time.monotonic()
        self._checkouts_at_reset = 0
        self._second_reports: deque[SecondCheckoutReport] = deque(maxlen=self._max_reports)
        self._second_sites: set[str] = set()
        self._second_sites_full = False
        self._leak_reports: deque[LeakReport] = deque(maxlen=self._max_reports)
        self._gc_reports: deque[GcReturnReport] = deque(maxlen=self._max_reports)

    def _after_fork_in_child(self) -> None:
        """In a forked child: this process's own state. The parent's counts, open checkouts
        and held-by-owner figures are not the child's; its lock may have been held by a
        parent thread at the fork; its leak sweeper thread does not exist here. So: a new
        lock and zero counts (the pool keeps this same ``_Hot``, also across
        ``engine.dispose()``), and a new tracker whose sweeper starts on the child's first
        checkout."""
        self._hot.start()
        self._start()
        self._tracker = NO_TRACKING  # the parent's: its checkouts and sweeper are not ours
        self.configure()

    # ---- configuration ------------------------------------------------------------------

    @property
    def _tracker(self) -> Tracker:
        """The leak tracker: :data:`~pooltender.leaks.NO_TRACKING` when detection is off (the
        one representation of "off"); the hot path reads the same object from ``_hot``."""
        return self._hot.tracker

    @_tracker.setter
    def _tracker(self, tracker: Tracker) -> None:
        self._hot.set_tracker(tracker)

    def _start_sweeper(self) -> None:
        """The first tracked checkout: start the tracker's sweeper thread (once)."""
        hot = self._hot
        tracker = hot.sweeper
        if tracker is not None:
            hot.sweeper = None
            tracker.start_sweeper()

    @property
    def leak_threshold(self) -> float:
        return self._leak_threshold

    @property
    def capture_stacks(self) -> bool:
        """True when each checkout's stack is captured (leak detection on, or asked for)."""
        return self._tracker is not NO_TRACKING

    def configure(
        self, *, leak_threshold: float | None = None, capture_stacks: bool | None = None
    ) -> None:
        """Change leak detection: ``leak_threshold`` seconds (0 = off), ``capture_stacks``
        (keep each checkout's stack even with no threshold, e.g. for the pytest plugin).

        Checkouts already open keep what they captured; only new checkouts see the change.
        """
        threshold = self._leak_threshold if leak_threshold is None else float(leak_threshold)
        if not threshold >= 0:
            raise ValueError(f"leak_threshold must be >= 0 seconds (0 = off), got {threshold!r}")
        stacks = self._capture_stacks if capture_stacks is None else capture_stacks
        old = self._tracker
        if threshold > 0 or stacks:
            new = StackTracker(
                threshold=threshold if threshold > 0 else float("inf"),
                lock=self._lock,
                sink=self,
                name=self._name,
            )
            new.adopt(old)
            self._tracker = new
        else:
            self._tracker = NO_TRACKING
        self._leak_threshold = threshold
        self._capture_stacks = stacks
        old.stop()

    def _attach(self, engine: Engine) -> None:
        listeners: list[tuple[str, Callable[..., None]]] = [
            ("connect", self._on_connect),
            ("detach", self._on_detach),
            ("invalidate", self._on_invalidate),
            ("soft_invalidate", self._on_soft_invalidate),
            ("close", self._on_close),
        ]
        pool = engine.pool
        if isinstance(pool, WatchedQueuePool):
            pool._pooltender_hot = self._hot
        else:
            listeners += [("checkout", self._on_checkout), ("checkin", self._on_checkin)]
        for name, fn in listeners:
            event.listen(engine, name, fn)
        self._listeners = listeners

    def remove(self) -> None:
        """Uninstall: remove the listeners, stop the sweeper, forget the engine (for tests)."""
        engine = self._engine_ref()
        if engine is not None:
            for name, fn in self._listeners:
                event.remove(engine, name, fn)
            pool = engine.pool
            if isinstance(pool, WatchedQueuePool) and pool._pooltender_hot is self._hot:
                pool._pooltender_hot = None
            with _REGISTRY_LOCK:
                if _WATCHES.get(engine) is self:
                    del _WATCHES[engine]
                _rebuild_hots()
        self._listeners = []
        self._tracker.stop()
        self._tracker = NO_TRACKING

    def reset_high_water(self) -> None:
        """Start the high-water mark again from the connections checked out now."""
        hot = self._hot
        with self._lock:
            hot.high = hot.out

    def reset(self) -> None:
        """Restart the rate window (``checkouts_per_second``) and the high-water mark."""
        hot = self._hot
        with self._lock:
            self._since = time.monotonic()
            self._checkouts_at_reset = hot.out + hot.checkins()
            hot.high = hot.out

    # ---- hot path: checkout / checkin -----------------------------------------------------

    def _begin(self, info: dict[Any, Any], proxy: PoolProxiedConnection, now: int) -> None:
        """A checkout seen through the ``checkout`` event completed at ``now`` (no wait
        measured). :meth:`WatchedQueuePool.connect` does the same inline, plus the wait."""
        hot = self._hot
        owner = hot.owner()
        tracked = None if hot.live is None else new_tracked(now, owner, proxy)
        with hot.lock:
            out = hot.out = hot.out + 1
            if out > hot.high:
                hot.high = out
            held = hot.held[owner] = hot.held.get(owner, 0) + 1
            live = hot.live
            if tracked is not None and live is not None:
                seq = tracked.seq = hot.seq = hot.seq + 1
                live[seq] = tracked
        if hot.sweeper is not None:
            self._start_sweeper()
        info[_KEY] = (now, owner, tracked)
        if held > 1 and hot.report_second:
            self._second_checkout(owner, tracked, held)

    def _end(self, info: dict[Any, Any], now: int) -> None:
        """The checkout recorded in ``info`` ended at ``now`` (checkin or detach).
        :meth:`WatchedQueuePool._do_return_conn` does the same inline."""
        entry = info.pop(_KEY, None)  # still ours: the record is not back in the queue yet
        if entry is None:
            return
        started, owner, tracked = entry
        held_for = now - started
        hot = self._hot
        with hot.lock:
            hot.out -= 1
            hot.hold_counts[bisect_left(hot.hold_bounds, held_for)] += 1
            hot.hold_total += held_for
            held = hot.held.get(owner, 0) - 1
            if held > 0:
                hot.held[owner] = held
            elif held == 0:
                del hot.held[owner]
            if tracked is not None:
                tracked.open = False
                live = hot.live
                if live is not None:
                    live.pop(tracked.seq, None)
        if hot.observers:
            self._observe("use", held_for)
        if tracked is not None and (tracked.reported or tracked.proxy_ref() is None):
            hot.tracker.returned(tracked, now)

    def _on_checkout(
        self,
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        proxy: PoolProxiedConnection,
    ) -> None:
        info = record.record_info
        if info is not None and _KEY not in info:  # not a retry of the same checkout
            self._begin(info, proxy, _now_ns())

    def _on_checkin(self, dbapi_connection: DBAPIConnection | None, record: Any) -> None:
        info = record.record_info
        if info is not None:
            self._end(info, _now_ns())

    # ---- cold path ------------------------------------------------------------------------

    def _on_detach(self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        with self._lock:
            self._detaches += 1
        # a detached connection never comes back: its checkout ends here, counted as a checkin
        self._on_checkin(dbapi_connection, record)

    def _on_connect(self, dbapi_connection: DBAPIConnection, record: Any) -> None:
        with self._lock:
            self._connects += 1
        started = getattr(record, "starttime", None)  # set just before the DBAPI connect
        if self._hot.observers and started is not None:
            self._observe("create", round((time.time() - started) * 1e9))

    def _on_invalidate(
        self, dbapi_connection: DBAPIConnection, record: Any, exception: BaseException | None
    ) -> None:
        with self._lock:
            self._invalidations += 1
            if isinstance(exception, exc.DisconnectionError):
                self._ping_failures += 1

    def _on_soft_invalidate(
        self, dbapi_connection: DBAPIConnection, record: Any, exception: BaseException | None
    ) -> None:
        with self._lock:
            self._soft_invalidations += 1

    def _on_close(self, dbapi_connection: DBAPIConnection, record: Any) -> None:
        engine = self._engine_ref()
        recycle = getattr(engine.pool, "_recycle", -1) if engine is not None else -1
        started = getattr(record, "starttime", None)  # _ConnectionRecord.last_connect_time
        aged = recycle > -1 and started is not None and time.time() - started > recycle
        with self._lock:
            self._closes += 1
            if aged:
                self._recycles += 1

    def _timed_out(self, ns: int) -> None:
        hot = self._hot
        with self._lock:
            self._timeouts += 1
            hot.wait_counts[bisect_left(hot.wait_bounds, ns)] += 1
            hot.wait_total += ns
        if hot.observers:
            self._observe("timeout", ns)

    def _second_checkout(self, owner: Hashable, tracked: TrackedCheckout | None, held: int) -> None:
        others = [
            t
            for t in self._tracker.open_checkouts()
            if t is not tracked and t.owner == owner and t.open
        ]
        report = SecondCheckoutReport(
            owner=repr(owner),
            thread_name=threading.current_thread().name,
            held=held,
            stack=tracked.stack if tracked is not None else capture_stack(),
            first_stack=others[0].stack if others else (),
            reported_at=time.time(),
        )
        site = report.where
        summary = False
        with self._lock:
            self._second += 1
            self._second_reports.append(report)
            sites = self._second_sites
            first_time = site not in sites and len(sites) < MAX_SECOND_CHECKOUT_SITES
            if first_time:
                sites.add(site)
            elif site not in sites and not self._second_sites_full:
                self._second_sites_full = summary = True
        if first_time:  # log once per call site; the counter and the reports keep counting
            logger.warning(
                "pooltender: second connection checked out in one unit of work (engine %s): %s",
                self._name,
                report,
            )
        elif summary:  # past the cap: one line, then new sites are counted, not logged
            logger.warning(
                "pooltender: second checkouts from more than %d call sites (engine %s); "
                "further new call sites are counted in second_checkouts but not logged "
                "(this one at %s)",
                MAX_SECOND_CHECKOUT_SITES,
                self._name,
                site,
            )

    # ---- observers (issue 13) -------------------------------------------------------------

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(kind, seconds)`` at each pool event, on the thread it happens on.

        Kinds: ``"wait_start"`` (0; a checkout begins waiting), then exactly one of
        ``"wait"`` (the checkout got a connection after ``seconds``), ``"timeout"`` (it gave
        up) or ``"wait_error"`` (it failed, e.g. the server is down) -- these four only on a
        :class:`WatchedQueuePool`; ``"use"`` (a connection came back after being held
        ``seconds``); ``"create"`` (a new DBAPI connection took ``seconds`` to open). An
        observer must be quick and must not raise (an exception is logged and swallowed).
        """
        self._hot.observers.append(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling ``observer`` (no error if it was not added)."""
        if observer in self._hot.observers:
            self._hot.observers.remove(observer)

    def _observe(self, kind: str, ns: int) -> None:
        for observer in tuple(self._hot.observers):
            try:
                observer(kind, ns / 1e9)
            except Exception:
                logger.exception("pooltender: pool observer %r failed on %s", observer, kind)

    # ---- LeakSink -------------------------------------------------------------------------

    def leak_reported(self, report: LeakReport) -> None:
        with self._lock:
            self._leaks += 1
            self._leak_reports.append(report)
        logger.warning("pooltender: possible connection leak (engine %s): %s", self._name, report)

    def leak_returned(self, held_seconds: float, tracked: TrackedCheckout) -> None:
        with self._lock:
            self._leaks_returned += 1
        where = f"{tracked.stack[0]}" if tracked.stack else "?"
        logger.warning(
            "pooltender: previously reported leaked connection (engine %s, checked out at %s) "
            "returned after %.3f s",
            self._name,
            where,
            held_seconds,
        )

    def gc_returned(self, report: GcReturnReport) -> None:
        with self._lock:
            self._gc_returns += 1
            self._gc_reports.append(report)
        logger.warning(
            "pooltender: connection never closed, returned by the garbage collector after "
            "%.3f s (engine %s), checked out at:\n%s",
            report.held_seconds,
            self._name,
            format_stack(report.stack),
        )

    # ---- reading --------------------------------------------------------------------------

    def next_seq(self) -> int:
        """A checkout number no earlier checkout has and every later one exceeds."""
        hot = self._hot
        with hot.lock:
            seq = hot.seq = hot.seq + 1
        return seq

    def open_checkouts(self) -> tuple[OpenCheckout, ...]:
        """Connections checked out now with their stacks, oldest first.

        Only checkouts made while stacks are captured are listed (``capture_stacks`` or a
        leak threshold); ``stats().checked_out`` counts all of them.
        """
        now = _now_ns()
        return tuple(
            OpenCheckout(t.seq, (now - t.started_ns) / 1e9, t.thread_name, t.stack)
            for t in self._tracker.open_checkouts()
        )

    def held_by_current_owner(self) -> int:
        """Connections the calling owner (thread, greenlet or task) holds right now.

        A request teardown uses it as a safety net: after Flask-SQLAlchemy removed the
        session, anything still held was checked out outside the scoped session.
        """
        return self._hot.held.get(self._owner(), 0)

    def open_checkouts_of_current_owner(self) -> tuple[OpenCheckout, ...]:
        """The calling owner's open checkouts with their stacks (when stacks are captured)."""
        owner = self._owner()
        now = _now_ns()
        return tuple(
            OpenCheckout(t.seq, (now - t.started_ns) / 1e9, t.thread_name, t.stack)
            for t in self._tracker.open_checkouts()
            if t.owner == owner
        )

    def release_unit(self, unit: Hashable) -> UnitLeak | None:
        """``unit`` ended: what it still holds is returned (to be reported once) and from now
        on owned by nobody, so no later owner is counted as holding it; None if nothing."""
        hot = self._hot
        if unit not in hot.held:
            # the usual end of a request: nothing out. Only the unit's own context checks
            # out for it and that context is ending, so no entry can appear meanwhile; the
            # membership test is one atomic dict read, and this path takes no lock.
            return None
        with hot.lock:
            held = hot.held.pop(unit, 0)
        if not held:
            return None
        disowned = self._tracker.disown(unit, NOBODY)
        return UnitLeak(
            engine=self._name,
            unit=getattr(unit, "name", repr(unit)),
            held=held,
            where=tuple(stack_where(t.stack) for t in disowned),
        )

    def sweep(self) -> int:
        """Run one leak sweep now (tests; the sweeper thread does this on its own)."""
        tracker = self._tracker
        return tracker.sweep() if isinstance(tracker, StackTracker) else 0

    def stats(self) -> PoolStats:
        """A frozen snapshot of every figure; pool gauges are read from the live pool."""
        engine = self._engine_ref()
        pool: Any = engine.pool if engine is not None else None
        is_queue = isinstance(pool, QueuePool)
        hot = self._hot
        with self._lock:
            now = time.monotonic()
            checkins = hot.checkins()
            return PoolStats(
                pool_class=type(pool).__name__,
                pool_size=pool.size() if is_queue else None,
                max_overflow=pool._max_overflow if is_queue else None,
                checked_out=hot.out,
                idle=pool.checkedin() if is_queue else None,
                overflow_in_use=max(0, pool.overflow()) if is_queue else None,
                high_water_checked_out=hot.high,
                checkouts=hot.out + checkins,
                checkins=checkins,
                detaches=self._detaches,
                connects=self._connects,
                closes=self._closes,
                invalidations=self._invalidations,
                soft_invalidations=self._soft_invalidations,
                ping_failures=self._ping_failures,
                recycles=self._recycles,
                checkout_timeouts=self._timeouts,
                wait_measured=isinstance(pool, WatchedQueuePool),
                checkout_wait=_snapshot(CHECKOUT_WAIT_BUCKETS, hot.wait_counts, hot.wait_total),
                hold_time=_snapshot(HOLD_TIME_BUCKETS, hot.hold_counts, hot.hold_total),
                second_checkouts=self._second,
                second_checkout_reports=tuple(self._second_reports),
                leak_threshold=self._leak_threshold,
                leaks_reported=self._leaks,
                leaks_returned=self._leaks_returned,
                leak_reports=tuple(self._leak_reports),
                gc_returns=self._gc_returns,
                gc_return_reports=tuple(self._gc_reports),
                uptime_seconds=now - self._installed,
                window_seconds=now - self._since,
                window_checkouts=hot.out + checkins - self._checkouts_at_reset,
            )


# --------------------------------------------------------------------------- install / getter

_WATCHES: weakref.WeakKeyDictionary[Engine, PoolWatch] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()
#: The hot state of every installed watch, for the end of a unit of work
#: (:func:`release_everywhere`): a tuple replaced whole under ``_REGISTRY_LOCK`` at install
#: and removal, so a reader iterates one consistent tuple without the lock (reading a module
#: global is atomic).
_HOTS: tuple[_Hot, ...] = ()


def _rebuild_hots() -> None:
    """Under ``_REGISTRY_LOCK``: ``_HOTS`` from the installed watches."""
    global _HOTS
    _HOTS = tuple(watch._hot for watch in _WATCHES.values())


class WatchOptions(TypedDict, total=False):
    """The options fixed when a watch is built (:class:`PoolWatch`'s, passed through by
    :func:`install_watch`).

    ``report_second_checkouts``: log and count an owner's second concurrent checkout (True).
    ``owner``: who a checkout belongs to (default :func:`pooltender.units.current_owner`: the
    unit of work, else the asyncio task, else the thread).
    ``max_reports``: how many of each kind of report are kept, oldest dropped (100).
    """

    report_second_checkouts: bool
    owner: Callable[[], Hashable]
    max_reports: int


def install_watch(
    engine: Engine,
    *,
    leak_threshold: float = 0.0,
    capture_stacks: bool = False,
    **options: Unpack[WatchOptions],
) -> PoolWatch:
    """Install the watch on ``engine`` (idempotent) and return it.

    ``leak_threshold``: seconds a checkout may last before it is reported (0 = off).
    ``capture_stacks``: keep each checkout's stack even without a threshold.
    ``options``: :class:`WatchOptions` (second-checkout reports, the owner, report limits).

    A second call on the same engine returns the existing watch. A non-zero
    ``leak_threshold`` or ``capture_stacks=True`` it asks for is applied to that watch with
    :meth:`PoolWatch.configure`; defaults never turn detection off (call ``configure`` to).
    """
    with _REGISTRY_LOCK:
        watch = _WATCHES.get(engine)
        if watch is None:
            watch = PoolWatch(
                engine, leak_threshold=leak_threshold, capture_stacks=capture_stacks, **options
            )
            watch._attach(engine)
            _WATCHES[engine] = watch
            _rebuild_hots()
            return watch
    if leak_threshold > 0 and leak_threshold != watch.leak_threshold:
        watch.configure(leak_threshold=leak_threshold)
    if capture_stacks and not watch._capture_stacks:
        watch.configure(capture_stacks=True)
    return watch


def watch_of(engine: Engine) -> PoolWatch | None:
    """The watch installed on ``engine``, or None."""
    return _WATCHES.get(engine)


# --------------------------------------------------------------------------- units of work


@dataclass(frozen=True)
class UnitLeak:
    """A unit of work ended with ``held`` connections of ``engine`` still checked out
    (``where``: ``file:line`` of each, when stacks were captured). Reported once; the
    connections then belong to nobody."""

    engine: str
    unit: str
    held: int
    where: tuple[str, ...]

    def __str__(self) -> str:
        places = "; ".join(self.where) or "unknown (enable leak detection for the stack)"
        return (
            f"{self.unit} ended with {self.held} connection(s) of engine {self.engine} still "
            f"checked out (checked out at: {places})"
        )


def end_unit_of_work(token: contextvars.Token[UnitOfWork | None]) -> tuple[UnitLeak, ...]:
    """End the unit begun with :func:`pooltender.units.begin_unit` and release it from every
    watch: what it still holds is returned, for the caller to report once, and owned by
    nobody from now on."""
    unit = reset_unit(token)
    if unit is None:
        return ()
    return release_everywhere(unit)


def release_everywhere(unit: Hashable) -> tuple[UnitLeak, ...]:
    """``unit`` ended: release it from every watch (:meth:`PoolWatch.release_unit`) and
    return what it still held, for the caller to report once.

    The usual end of a unit holds nothing: that case is one dict membership test per watch,
    no lock and no call. It is safe without the lock because only the unit's own context
    checks out for it, and that context is ending, so no entry for it can appear meanwhile.
    """
    hots = _HOTS
    for hot in hots:
        if unit in hot.held:
            break
    else:
        return ()
    return tuple(leak for hot in hots if (leak := hot.watch.release_unit(unit)) is not None)


@contextmanager
def unit_scope(name: str) -> Iterator[None]:
    """A unit of work for the block: its checkouts are its own (a second one is reported),
    and a connection still out at its end is logged once on ``pooltender.watch`` and then
    owned by nobody."""
    token = begin_unit(name)
    try:
        yield
    finally:
        for leak in end_unit_of_work(token):
            logger.warning("pooltender: %s", leak)


# --------------------------------------------------------------------------- fork


def _after_fork_in_child() -> None:
    """``os.register_at_fork(after_in_child=...)``: each watch starts afresh in the child
    (gunicorn ``preload_app``, Celery prefork, ``multiprocessing`` with fork), whether or
    not :func:`pooltender.hooks.dispose_inherited` runs too."""
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()  # a parent thread may have held it at the fork
    for watch in list(_WATCHES.values()):
        watch._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
