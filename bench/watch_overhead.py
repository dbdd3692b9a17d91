"""Watch and liveness-check overhead: checkout + checkin of a pooled MariaDB connection.

    .venv/bin/python bench/watch_overhead.py [--url URL] [--iterations 20000] [--repeat 5]
                                             [--block 500] [--level pool|engine|both]
    .venv/bin/python bench/watch_overhead.py --breakdown    # no server needed

One thread, one pooled connection (mysqlclient). Two levels: ``pool`` --
``engine.raw_connection()`` then ``close()``, the pool's checkout and checkin alone, including
the rollback the pool issues on return (a round trip); ``engine`` -- ``with
engine.connect():``, the same through a ``Connection`` as a Session uses it. Each
configuration gets its own engine. A round runs
``--iterations`` per configuration in interleaved blocks of ``--block`` iterations, so load
drift on a shared machine hits every configuration alike; ``--repeat`` rounds. Reported per
configuration: the best block (the least disturbed measurement, used for the ratio) and the
median block, in microseconds per iteration, and the ratio to the bare pool.

``--breakdown`` prints where the watch's time goes instead: the CPU time
(``time.thread_time``, immune to the other processes of a shared machine) of each primitive
operation the watched checkout + checkin performs, then of the whole watched and bare
``raw_connection().close()`` on an in-memory SQLite engine (no round trip).

Configurations:
  bare QueuePool                  create_engine(url)
  watch (leaks off)               poolclass=WatchedQueuePool + install_watch(engine)
  watch + leak detection          ... + leak_threshold=60 (a stack captured per checkout)
  pool_pre_ping=True              SQLAlchemy's ping on every checkout
  idle ping (after_idle=0.5 s)    install_idle_ping(engine, 0.5): no ping when used recently
  watch + idle ping               what pooltender installs with ping_after_idle=0.5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
import timeit
from bisect import bisect_left
from collections.abc import Callable

import MySQLdb
import sqlalchemy
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import QueuePool

from pooltender.leaks import new_tracked
from pooltender.liveness import install_idle_ping
from pooltender.watch import _KEY, WatchedQueuePool, install_watch

DEFAULT_URL = os.environ.get("TEST_MARIADB_URL", "mysql+mysqldb://root@127.0.0.1:3306/test")


def _bare(url: str) -> Engine:
    return create_engine(url, pool_size=1, max_overflow=0)


def _watch(url: str) -> Engine:
    engine = create_engine(url, pool_size=1, max_overflow=0, poolclass=WatchedQueuePool)
    install_watch(engine)
    return engine


def _watch_leaks(url: str) -> Engine:
    engine = create_engine(url, pool_size=1, max_overflow=0, poolclass=WatchedQueuePool)
    install_watch(engine, leak_threshold=60)
    return engine


def _pre_ping(url: str) -> Engine:
    return create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)


def _idle_ping(url: str) -> Engine:
    engine = create_engine(url, pool_size=1, max_overflow=0)
    install_idle_ping(engine, 0.5)
    return engine


def _watch_idle_ping(url: str) -> Engine:
    engine = create_engine(url, pool_size=1, max_overflow=0, poolclass=WatchedQueuePool)
    install_watch(engine)
    install_idle_ping(engine, 0.5)
    return engine


CONFIGS: list[tuple[str, Callable[[str], Engine]]] = [
    ("bare QueuePool", _bare),
    ("watch (leaks off)", _watch),
    ("watch + leak detection", _watch_leaks),
    ("pool_pre_ping=True", _pre_ping),
    ("idle ping (after_idle=0.5 s)", _idle_ping),
    ("watch + idle ping", _watch_idle_ping),
]


def run_once(engine: Engine, iterations: int, level: str = "pool") -> float:
    """Seconds per checkout + checkin, over ``iterations``.

    ``pool``: ``engine.raw_connection()`` + ``close()`` -- the pool alone.
    ``engine``: ``with engine.connect():`` -- a ``Connection``, what a Session or
    Flask-SQLAlchemy's ``db.session`` does per unit of work (no statement executed).
    """
    started = time.perf_counter()
    if level == "pool":
        connect = engine.raw_connection
        for _ in range(iterations):
            connect().close()
    else:
        connect_engine = engine.connect
        for _ in range(iterations):
            with connect_engine():
                pass
    return (time.perf_counter() - started) / iterations


def breakdown(rounds: int = 300, block: int = 300) -> None:
    """CPU ns of the watch's primitive operations and of the whole checkout + checkin."""
    sqlite = create_engine("sqlite://", poolclass=WatchedQueuePool, pool_size=1, max_overflow=0)
    hot = install_watch(sqlite)._hot
    proxy = sqlite.raw_connection()
    record = proxy._connection_record
    proxy.close()
    assert record is not None
    env = {
        "hot": hot,
        "record": record,
        "info": {},
        "now": time.perf_counter_ns,
        "_KEY": _KEY,
        "bisect_left": bisect_left,
        "get_ident": threading.get_ident,
        "new_tracked": new_tracked,
        "proxy": proxy,
    }

    def cpu_ns(stmt: str, number: int = 200_000) -> float:
        timer = timeit.Timer(stmt, globals=env, timer=time.thread_time)
        return min(timer.repeat(repeat=7, number=number)) / number * 1e9

    empty = cpu_ns("pass")
    print("CPU ns per operation (timeit, thread_time, best of 7, loop overhead subtracted)")
    ops = [
        ("clock read (3 per checkout + checkin)", "now()"),
        ("owner = threading.get_ident() (1)", "hot.owner()"),
        ("lock acquire + release (2)", "hot.acquire(); hot.release()"),
        ("slot counter += 1 (out, sums: 6)", "hot.out += 1"),
        ("histogram bucket += 1 (2)", "hot.wait_counts[0] += 1"),
        ("histogram bisect_left (when above bucket 0)", "bisect_left(hot.hold_bounds, 3000000)"),
        ("held-by-owner get/set + del (1)", "h = hot.held; h[1] = h.get(1, 0) + 1; del h[1]"),
        (
            "record_info entry set + get + del (1)",
            "info[_KEY] = (1, 2, None); info[_KEY]; del info[_KEY]",
        ),
        ("record.record_info (3)", "record.record_info"),
        ("new_tracked: stack + record (leak tracking only)", "new_tracked(1, 2, proxy)"),
    ]
    width = max(len(name) for name, _ in ops)
    for name, stmt in ops:
        print(f"  {name:<{width}} {cpu_ns(stmt) - empty:7.1f}")
    bare = create_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=0)
    unwatched = create_engine("sqlite://", poolclass=WatchedQueuePool, pool_size=1, max_overflow=0)
    engines = [("bare QueuePool", bare), ("WatchedQueuePool, no watch", unwatched)]
    engines.append(("WatchedQueuePool + install_watch", sqlite))
    samples: dict[str, list[float]] = {name: [] for name, _ in engines}
    for _ in range(rounds):
        for name, engine in engines:
            connect = engine.raw_connection
            started = time.thread_time_ns()
            for _ in range(block):
                connect().close()
            samples[name].append((time.thread_time_ns() - started) / block)
    print(
        f"\nCPU ns per raw_connection().close(), in-memory SQLite, best of {rounds} "
        f"interleaved blocks of {block}:"
    )
    base = min(samples[engines[0][0]])
    for name, _ in engines:
        best = min(samples[name])
        print(f"  {name:<32} {best:8.0f}  (+{best - base:5.0f})")
    for engine in (bare, unwatched, sqlite):
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--block", type=int, default=500)
    parser.add_argument("--level", choices=["pool", "engine", "both"], default="both")
    parser.add_argument("--breakdown", action="store_true", help="CPU cost per operation")
    args = parser.parse_args(argv)
    if args.breakdown:
        breakdown()
        return 0
    blocks = max(1, args.iterations // args.block)

    engines = [(name, make(args.url)) for name, make in CONFIGS]
    for _, engine in engines:  # open the pooled connection; warm up
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        run_once(engine, min(2000, args.iterations))
    print(
        f"{args.repeat} rounds x {blocks * args.block} checkout+checkin per configuration, "
        f"interleaved blocks of {args.block}, 1 thread; Python {platform.python_version()}, "
        f"SQLAlchemy {sqlalchemy.__version__}, "
        f"mysqlclient {'.'.join(map(str, MySQLdb.version_info[:3]))}, {os.cpu_count()} CPUs"
    )
    levels = ["pool", "engine"] if args.level == "both" else [args.level]
    for level in levels:
        samples: dict[str, list[float]] = {name: [] for name, _ in engines}
        for _ in range(args.repeat):
            for _ in range(blocks):
                for name, engine in engines:
                    samples[name].append(run_once(engine, args.block, level))
        print_table(level, samples)
    for _, engine in engines:
        engine.dispose()
    return 0


def print_table(level: str, samples: dict[str, list[float]]) -> None:
    best = {name: min(times) for name, times in samples.items()}
    median = {name: statistics.median(times) for name, times in samples.items()}
    bare, bare_median = best[CONFIGS[0][0]], median[CONFIGS[0][0]]
    what = "engine.raw_connection().close()" if level == "pool" else "with engine.connect():"
    print(f"\n{level} level: {what}")
    width = max(len(name) for name, _ in CONFIGS)
    print(
        f"| {'configuration':<{width}} | best us/iter | ratio (best) "
        "| median us/iter | ratio (median) |"
    )
    print(f"| {'-' * width} | -----------: | -----------: | -------------: | -------------: |")
    for name, _ in CONFIGS:
        print(
            f"| {name:<{width}} | {best[name] * 1e6:12.1f} | {best[name] / bare:11.3f}x "
            f"| {median[name] * 1e6:14.1f} | {median[name] / bare_median:13.3f}x |"
        )


if __name__ == "__main__":
    sys.exit(main())
