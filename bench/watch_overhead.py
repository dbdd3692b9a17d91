"""Watch and liveness-check overhead: checkout + checkin of a pooled MariaDB connection.

    .venv/bin/python bench/watch_overhead.py [--url URL] [--iterations 20000] [--repeat 5]
                                             [--block 500] [--level pool|engine|both]

One thread, one pooled connection (mysqlclient). Two levels: ``pool`` --
``engine.raw_connection()`` then ``close()``, the pool's checkout and checkin alone, including
the rollback the pool issues on return (a round trip); ``engine`` -- ``with
engine.connect():``, the same through a ``Connection`` as a Session uses it. Each
configuration gets its own engine. A round runs
``--iterations`` per configuration in interleaved blocks of ``--block`` iterations, so load
drift on a shared machine hits every configuration alike; ``--repeat`` rounds. Reported per
configuration: the best block (the least disturbed measurement, used for the ratio) and the
median block, in microseconds per iteration, and the ratio to the bare pool.

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
import time
from collections.abc import Callable

import MySQLdb
import sqlalchemy
from sqlalchemy import Engine, create_engine, text

from pooltender.liveness import install_idle_ping
from pooltender.watch import WatchedQueuePool, install_watch

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--block", type=int, default=500)
    parser.add_argument("--level", choices=["pool", "engine", "both"], default="both")
    args = parser.parse_args(argv)
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
