"""PoolWatch: counters, histograms, second checkouts and leak detection.

Unit-level behaviour runs on SQLite files (no server needed); the concurrency claims run with
real threads against the real MariaDB (skipped locally without it, failing under CI=true).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, exc, text
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from sqlalchemy.pool import QueuePool

from pooltender.watch import (
    CHECKOUT_WAIT_BUCKETS,
    MAX_SECOND_CHECKOUT_SITES,
    HistogramSnapshot,
    WatchedQueuePool,
    install_watch,
    watch_of,
)

try:
    from tests.pooltender._servers import mariadb_url
except ImportError:  # tests/ is not a package here: the module sits beside this file
    from _servers import mariadb_url  # type: ignore[no-redef]

HERE = Path(__file__).name


def line_of(marker: str) -> int:
    """Line number in this file of the line containing ``marker`` (for file:line asserts)."""
    for number, line in enumerate(Path(__file__).read_text().splitlines(), start=1):
        if marker in line and "line_of(" not in line:
            return number
    raise AssertionError(f"marker {marker!r} not found")


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'w.db'}", poolclass=WatchedQueuePool, pool_size=2, max_overflow=1
    )
    yield engine
    watch = watch_of(engine)
    if watch is not None:
        watch.remove()
    engine.dispose()


@pytest.fixture
def maria_engine() -> Iterator[Engine]:
    engine = create_engine(
        mariadb_url(), poolclass=WatchedQueuePool, pool_size=4, max_overflow=2, pool_timeout=60
    )
    yield engine
    watch = watch_of(engine)
    if watch is not None:
        watch.remove()
    engine.dispose()


# ---------------------------------------------------------------------------- basics


def test_install_is_idempotent_and_getter_finds_it(sqlite_engine: Engine) -> None:
    assert watch_of(sqlite_engine) is None
    watch = install_watch(sqlite_engine)
    assert install_watch(sqlite_engine) is watch
    assert watch_of(sqlite_engine) is watch
    watch.remove()
    assert watch_of(sqlite_engine) is None


def _sweepers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pooltender-leaks-")]


def test_install_starts_no_thread(sqlite_engine: Engine) -> None:
    """The sweeper is started by the first checkout, not by the install (nor at import)."""
    install_watch(sqlite_engine, leak_threshold=30)
    name = f"pooltender-leaks-{sqlite_engine.url.render_as_string(hide_password=True)}"
    assert [t for t in _sweepers() if t.name == name] == []
    with sqlite_engine.connect():
        pass
    assert [t.is_alive() for t in _sweepers() if t.name == name] == [True]


def test_counters_gauges_and_histograms(sqlite_engine: Engine) -> None:
    watch = install_watch(sqlite_engine)
    with sqlite_engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        inside = watch.stats()
    after = watch.stats()
    assert inside.checked_out == 1
    assert inside.pool_size == 2
    assert inside.max_overflow == 1
    assert after.checkouts == after.checkins == 1
    assert after.checked_out == 0
    assert after.idle == 1
    assert after.overflow_in_use == 0
    assert after.connects == 1
    assert after.high_water_checked_out == 1
    assert after.wait_measured is True
    assert after.checkout_wait.count == 1
    assert after.hold_time.count == 1
    assert after.hold_time_mean > 0
    assert after.checkouts_per_second > 0


def test_busy_connections_is_the_fraction_of_time_a_connection_was_held(
    sqlite_engine: Engine,
) -> None:
    """Little's law checked against a workload of known shape: one connection held
    0.05 s at a time, back to back, for ~0.25 s, so about one connection was busy."""
    watch = install_watch(sqlite_engine)
    watch.reset()
    started = time.monotonic()
    held = 0.0
    for _ in range(5):
        with sqlite_engine.connect():
            t0 = time.monotonic()
            time.sleep(0.05)
            held += time.monotonic() - t0
    elapsed = time.monotonic() - started
    stats = watch.stats()
    assert stats.window_checkouts == 5
    assert held / elapsed > 0.8  # the workload really kept a connection busy
    assert stats.busy_connections == pytest.approx(held / elapsed, rel=0.1)
    time.sleep(0.25)  # idle as long again: about half as busy on average
    later = watch.stats()
    assert later.busy_connections == pytest.approx(held / (time.monotonic() - started), rel=0.1)
    assert later.busy_connections < 0.75 * stats.busy_connections


def test_overflow_high_water_and_timeouts(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite:///{tmp_path / 't.db'}",
        poolclass=WatchedQueuePool,
        pool_size=1,
        max_overflow=1,
        pool_timeout=0.05,
    )
    watch = install_watch(engine, report_second_checkouts=False)
    first, second = engine.connect(), engine.connect()
    assert watch.stats().overflow_in_use == 1
    with pytest.raises(exc.TimeoutError):
        engine.connect()
    first.close()
    second.close()
    stats = watch.stats()
    assert stats.checkout_timeouts == 1
    assert stats.high_water_checked_out == 2
    assert stats.checkout_wait.count == 3  # the timed-out wait is observed too
    assert stats.checkout_wait.sum >= 0.05
    assert stats.checked_out == 0
    watch.reset_high_water()
    assert watch.stats().high_water_checked_out == 0
    watch.remove()
    engine.dispose()


def test_plain_queuepool_uses_events_without_wait_figures(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'p.db'}", poolclass=QueuePool)
    watch = install_watch(engine)
    for _ in range(3):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    stats = watch.stats()
    assert (stats.checkouts, stats.checkins, stats.checked_out) == (3, 3, 0)
    assert stats.wait_measured is False
    assert stats.checkout_wait.count == 0
    assert stats.hold_time.count == 3
    watch.remove()
    engine.dispose()


def test_dispose_keeps_the_watch_attached(sqlite_engine: Engine) -> None:
    watch = install_watch(sqlite_engine)
    sqlite_engine.dispose()
    with sqlite_engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    stats = watch.stats()
    assert stats.checkouts == 1
    assert stats.checkout_wait.count == 1


def test_invalidation_and_recycle_are_counted(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'r.db'}", poolclass=WatchedQueuePool, pool_recycle=1
    )
    watch = install_watch(engine)
    with engine.connect() as conn:
        conn.invalidate()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    time.sleep(1.1)
    with engine.connect() as conn:  # older than pool_recycle: closed and reopened
        conn.execute(text("SELECT 1"))
    stats = watch.stats()
    assert stats.invalidations == 1
    assert stats.recycles == 1
    assert stats.connects == 3
    assert stats.checked_out == 0
    watch.remove()
    engine.dispose()


def test_detach_ends_the_checkout(sqlite_engine: Engine) -> None:
    watch = install_watch(sqlite_engine)
    raw = sqlite_engine.raw_connection()
    raw.detach()
    raw.close()
    stats = watch.stats()
    assert stats.detaches == 1
    assert stats.checked_out == 0


def test_histogram_quantiles() -> None:
    snap = HistogramSnapshot(bounds=(1.0, 2.0, 4.0), counts=(0, 10, 0, 0), count=10, sum=15.0)
    assert snap.p50 == pytest.approx(1.5)
    assert snap.p99 == pytest.approx(1.99)
    assert snap.mean == 1.5
    assert snap.cumulative() == ((1.0, 0), (2.0, 10), (4.0, 10), (float("inf"), 10))
    overflow = HistogramSnapshot(bounds=(1.0,), counts=(0, 3), count=3, sum=30.0)
    assert overflow.p99 == 1.0  # in the +Inf bucket: the highest finite bound
    empty = HistogramSnapshot(bounds=CHECKOUT_WAIT_BUCKETS, counts=(0,) * 18, count=0, sum=0)
    assert empty.p50 == 0.0
    with pytest.raises(ValueError, match="quantile"):
        snap.quantile(1.5)


# ---------------------------------------------------------------------------- second checkout


def test_second_session_in_one_unit_of_work_is_reported(
    sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    watch = install_watch(sqlite_engine)
    scoped = scoped_session(sessionmaker(bind=sqlite_engine))
    caplog.set_level(logging.WARNING, logger="pooltender.watch")
    scoped.execute(text("SELECT 1"))  # db.session holds a connection for the unit of work
    extra = Session(bind=sqlite_engine)
    extra.execute(text("SELECT 1"))  # second-checkout-here
    extra.close()
    scoped.remove()
    stats = watch.stats()
    assert stats.second_checkouts == 1
    report = stats.second_checkout_reports[0]
    assert report.where == f"{__file__}:{line_of('# second-checkout-here')}"
    assert report.held == 2
    assert "second connection checked out" in caplog.text
    assert f"{HERE}:{line_of('# second-checkout-here')}" in caplog.text


def test_second_checkout_from_another_thread_is_not_reported(sqlite_engine: Engine) -> None:
    watch = install_watch(sqlite_engine)
    with sqlite_engine.connect():
        worker = threading.Thread(target=lambda: sqlite_engine.connect().close())
        worker.start()
        worker.join()
    assert watch.stats().second_checkouts == 0


# ---------------------------------------------------------------------------- leaks


def test_leak_reported_once_and_again_on_return(
    sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    watch = install_watch(sqlite_engine, leak_threshold=0.1)
    caplog.set_level(logging.WARNING, logger="pooltender.watch")
    leaked = sqlite_engine.connect()  # leak-here
    deadline = time.monotonic() + 5
    while watch.stats().leaks_reported == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # several more sweeps: still reported only once
    stats = watch.stats()
    assert stats.leaks_reported == 1
    report = stats.leak_reports[0]
    assert report.where == f"{__file__}:{line_of('# leak-here')}"
    assert report.held_seconds >= 0.1
    assert "possible connection leak" in caplog.text
    leaked.close()
    assert watch.stats().leaks_returned == 1
    assert "returned after" in caplog.text


def test_no_leak_tracking_is_a_do_nothing_object(sqlite_engine: Engine) -> None:
    watch = install_watch(sqlite_engine)
    assert watch.capture_stacks is False
    with sqlite_engine.connect():
        assert watch.open_checkouts() == ()
        assert watch.sweep() == 0
    watch.configure(capture_stacks=True)
    assert watch.capture_stacks is True
    conn = sqlite_engine.connect()  # tracked-here
    (open_checkout,) = watch.open_checkouts()
    assert open_checkout.where == f"{__file__}:{line_of('# tracked-here')}"
    conn.close()
    assert watch.open_checkouts() == ()


def test_connection_never_closed_is_caught_when_collected(sqlite_engine: Engine) -> None:
    watch = install_watch(sqlite_engine, capture_stacks=True)

    def forget() -> None:
        conn = sqlite_engine.connect()  # forgotten-here
        conn.execute(text("SELECT 1"))

    forget()
    gc.collect()
    stats = watch.stats()
    assert stats.gc_returns == 1
    assert stats.gc_return_reports[0].where == f"{__file__}:{line_of('# forgotten-here')}"
    assert stats.checked_out == 0


def test_stack_skips_library_frames(sqlite_engine: Engine) -> None:
    watch = install_watch(sqlite_engine, capture_stacks=True)
    session = Session(bind=sqlite_engine)
    session.execute(text("SELECT 1"))  # via-session
    (checkout,) = watch.open_checkouts()
    assert checkout.stack[0].filename == __file__
    assert checkout.stack[0].lineno == line_of("# via-session")
    session.close()


def test_stacks_stay_right_when_checkout_paths_of_different_depths_alternate(
    sqlite_engine: Engine,
) -> None:
    """The capture learns how many library frames lie between the pool and the user's code
    (pooltender.leaks._entry_hints) and jumps there; a path with another depth must not be
    blamed on the line the hint was learnt from, nor a direct pool checkout."""
    watch = install_watch(sqlite_engine, capture_stacks=True)

    def via_session() -> None:
        session = Session(bind=sqlite_engine)
        session.execute(text("SELECT 1"))  # path-session
        (checkout,) = watch.open_checkouts()
        assert (checkout.stack[0].filename, checkout.stack[0].lineno) == (
            __file__,
            line_of("# path-session"),
        )
        session.close()

    def via_engine() -> None:
        with sqlite_engine.connect() as conn:  # path-engine
            (checkout,) = watch.open_checkouts()
            assert (checkout.stack[0].filename, checkout.stack[0].lineno) == (
                __file__,
                line_of("# path-engine"),
            )
            conn.execute(text("SELECT 1"))

    def via_pool() -> None:
        proxy = sqlite_engine.pool.connect()  # path-pool
        (checkout,) = watch.open_checkouts()
        assert (checkout.stack[0].filename, checkout.stack[0].lineno) == (
            __file__,
            line_of("# path-pool"),
        )
        proxy.close()

    for _ in range(3):
        via_session()
        via_session()  # the hint learnt by the call before holds
        via_engine()
        via_pool()
        via_engine()


# ---------------------------------------------------------------------------- MariaDB threads


@pytest.mark.slow
def test_sixteen_threads_on_mariadb_keep_counters_consistent(maria_engine: Engine) -> None:
    watch = install_watch(maria_engine)
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def worker() -> None:
        try:
            start.wait()
            for _ in range(200):
                with maria_engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
        except BaseException as err:  # collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stats = watch.stats()
    assert stats.checkouts == stats.checkins == 16 * 200
    assert stats.checked_out == 0
    assert 1 <= stats.high_water_checked_out <= 6
    assert stats.connects <= 6 + stats.invalidations
    assert stats.hold_time.count == 16 * 200
    assert stats.checkout_wait.count == 16 * 200
    assert sum(stats.hold_time.counts) == stats.hold_time.count
    assert stats.second_checkouts == 0
    assert stats.idle is not None
    assert stats.idle <= 4


@pytest.mark.slow
def test_mariadb_leak_and_second_session_are_reported_with_file_and_line(
    maria_engine: Engine,
) -> None:
    watch = install_watch(maria_engine, leak_threshold=0.2)
    done = threading.Event()

    def leaky_worker() -> None:
        conn = maria_engine.connect()  # mariadb-leak
        conn.execute(text("SELECT 1"))
        done.wait(10)
        conn.close()

    leaker = threading.Thread(target=leaky_worker)
    leaker.start()
    scoped = scoped_session(sessionmaker(bind=maria_engine))
    scoped.execute(text("SELECT 1"))
    side = Session(bind=maria_engine)
    side.execute(text("SELECT CONNECTION_ID()"))  # mariadb-second
    side.close()
    scoped.remove()
    deadline = time.monotonic() + 5
    while watch.stats().leaks_reported == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    leaker.join()
    stats = watch.stats()
    assert stats.leaks_reported == 1
    assert stats.leak_reports[0].where == f"{__file__}:{line_of('# mariadb-leak')}"
    assert stats.leaks_returned == 1
    assert stats.second_checkouts == 1
    assert stats.second_checkout_reports[0].where == f"{__file__}:{line_of('# mariadb-second')}"
    assert stats.checked_out == 0


# ---------------------------------------------------------------------------- hot path edges


def test_checkout_open_before_install_is_ignored_at_checkin(sqlite_engine: Engine) -> None:
    early = sqlite_engine.connect()
    watch = install_watch(sqlite_engine)
    with sqlite_engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    early.close()  # not seen checked out: must not count as a checkin
    stats = watch.stats()
    assert (stats.checkouts, stats.checkins, stats.checked_out) == (1, 1, 0)
    assert stats.hold_time.count == 1
    assert watch.held_by_current_owner() == 0


def test_tracked_checkouts_are_numbered_after_next_seq(sqlite_engine: Engine) -> None:
    watch = install_watch(sqlite_engine, capture_stacks=True)
    for _ in range(3):
        sqlite_engine.connect().close()
    first = watch.next_seq()
    conn = sqlite_engine.connect()
    (open_checkout,) = watch.open_checkouts()
    assert open_checkout.seq > first
    conn.close()


def test_overflow_connection_returned_to_a_full_pool_is_closed(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'o.db'}", poolclass=WatchedQueuePool, pool_size=1, max_overflow=1
    )
    watch = install_watch(engine, report_second_checkouts=False)
    first, second = engine.connect(), engine.connect()
    first.close()
    second.close()  # the queue holds one: this one is closed, the overflow slot freed
    stats = watch.stats()
    assert (stats.checked_out, stats.idle, stats.overflow_in_use, stats.closes) == (0, 1, 0, 1)
    assert stats.checkins == stats.checkouts == 2
    watch.remove()
    engine.dispose()


def test_second_checkout_sites_past_the_cap_are_not_logged_on_every_call(
    sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Each call site is logged once; past the cap of remembered sites a new site must not
    be logged on every call (one summary line says further sites are only counted)."""
    watch = install_watch(sqlite_engine)
    cap = MAX_SECOND_CHECKOUT_SITES
    # cap + 2 distinct call sites, each a function of its own "file" doing a second checkout
    namespace: dict[str, object] = {}
    for n in range(cap + 2):
        code = compile(
            f"def site_{n}(engine):\n"
            "    with engine.connect() as first, engine.connect() as second:\n"
            "        pass\n",
            f"<second-checkout-site-{n}>",
            "exec",
        )
        exec(code, namespace)  # noqa: S102  (distinct code objects are distinct call sites)
    sites = [namespace[f"site_{n}"] for n in range(cap + 2)]
    caplog.set_level(logging.WARNING, logger="pooltender.watch")
    for site in sites:
        site(sqlite_engine)  # type: ignore[operator]
    for _ in range(3):  # the sites past the cap, called again
        sites[cap](sqlite_engine)  # type: ignore[operator]
        sites[cap + 1](sqlite_engine)  # type: ignore[operator]
    stats = watch.stats()
    assert stats.second_checkouts == cap + 2 + 6  # every one is counted
    per_site = [r for r in caplog.records if "second connection checked out" in r.getMessage()]
    assert len(per_site) == cap
    past_cap = [
        r
        for r in per_site
        for n in (cap, cap + 1)
        if f"<second-checkout-site-{n}>" in r.getMessage()
    ]
    assert past_cap == []
    summary = [r for r in caplog.records if "call sites" in r.getMessage()]
    assert len(summary) == 1
