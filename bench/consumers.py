"""Competing consumers: ``coupons consume --processes P`` on one RabbitMQ queue, P = 1, 2, 4.

``python bench/consumers.py [--processes 1,2,4] [--events N] [--repeat R] [--quick]``

What it measures, per (workload, processes) configuration:

* **events/s** -- ``--events`` order.paid events are published to a queue of this run's own
  topology (a random prefix: no other run's queue is touched; deleted at the end), *then*
  ``coupons consume`` starts (the production command, as tests/test_consumer_processes.py
  runs it); the rate is the events applied between the first and the last one seen in
  ``processed_messages`` (polled every 50 ms) over that window, so the processes' start-up
  is not counted.
* **connections** -- every 250 ms, from a connection of its own (on no database, so it is
  not counted), the service database's server connections (rows of
  ``information_schema.PROCESSLIST`` with ``DB`` = the database): the peak in total, and
  the peak divided by the processes, against the bound ``pool_size + max_overflow`` (1 + 0)
  per process. A peak above ``processes x 1`` is reported as a violation.
* **load average** before and after each configuration.

Two workloads: *hot* (every event redeems one of the codes of **one** campaign: every unit of
work updates that campaign's row, so the consumers queue on its row lock) and *spread*
(the events cycle over ``--campaigns`` campaigns of one code each). Neither has a cap, so
every event is applied. Repeats are interleaved (hot/1, hot/2, ..., spread/4, hot/1, ...).

The database is a fresh one on the local MariaDB (``--mariadb-url``, default root on
127.0.0.1:3306), migrated with ``coupons db upgrade``'s code and dropped at the end; the
broker is ``--broker-url`` (the local RabbitMQ). Every process started is stopped at exit
(its process group: SIGTERM, then SIGKILL), on an error or Ctrl-C too.

Refuses to start above a 1-minute load average of ``--max-load`` (1.0) unless
``--allow-busy``: a figure from a loaded machine is not a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests._paths

from _quiet import LoadAverage, check_quiet, fmt_load, load_avg
from _service import ROOT, ProcessGroup, log_tail
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool
from tests._paths import pythonpath, use_source_trees

use_source_trees()  # this checkout's pooltender and coupons, before any installed copy

COUPONS = str(Path(sys.executable).with_name("coupons"))
POOL_SIZE, MAX_OVERFLOW = 1, 0
PREFETCH = 20
HOT_CODES = 50
#: ~10-15 s per configuration for one process on an idle 2-core machine: a guess from smoke
#: runs on the busy machine (~150-170 events/s with one process at a load average of 20+);
#: 6 configurations then stay under 3 minutes. To be checked on the first quiet run.
DEFAULT_EVENTS = 3000
QUICK_EVENTS = 100


@dataclass
class Result:
    workload: str
    processes: int
    round: int
    events: int
    seconds: float
    events_per_s: float
    peak_connections: int
    peak_per_process: float
    bound_per_process: int
    within_bound: bool
    samples: int
    load_before: LoadAverage
    load_after: LoadAverage


def admin_engine(url: str) -> Engine:
    """On the server without a default database (so its own connection is not counted)."""
    return create_engine(make_url(url).set(database=None), poolclass=NullPool)


def scalar(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


class ConnectionSampler:
    """Counts the PROCESSLIST rows of database ``name`` every ``interval`` s; keeps the peak."""

    def __init__(self, engine: Engine, name: str, interval: float = 0.25) -> None:
        self.engine, self.name, self.interval = engine, name, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="processlist", daemon=True)

    def _run(self) -> None:
        query = text("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = :db")
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                self.samples.append(int(conn.execute(query, {"db": self.name}).scalar_one()))
                conn.commit()
                self._stop.wait(self.interval)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


@contextlib.contextmanager
def database(admin_url: str) -> Iterator[str]:
    """A fresh, migrated database on the server of ``admin_url``; dropped at the end."""
    from coupons.migrate import upgrade

    name = f"coupons_bench_cons_{os.getpid()}_{secrets.token_hex(3)}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with engine.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        engine.dispose()


def seed(url: str, secret: str, campaigns: int) -> dict[str, list[str]]:
    """The codes of each workload: ``hot`` -- HOT_CODES codes of one campaign; ``spread`` --
    one code in each of ``campaigns`` campaigns. No cap anywhere: every event is applied."""
    from coupons import create_app
    from coupons.config import Settings
    from coupons.db import db
    from coupons.services.coupon import create_campaign, create_code

    app = create_app(Settings(database_url=url, environment="test", secret_key=secret))
    codes: dict[str, list[str]] = {"hot": [], "spread": []}

    def campaign(name: str) -> int:
        return create_campaign(
            name=name, discount_type="percent", discount_value=Decimal("10"), currency="EUR"
        ).id

    with app.app_context():
        hot = campaign("hot")
        for i in range(HOT_CODES):
            codes["hot"].append(create_code(hot, code=f"HOT-{i:03d}").code)
        for i in range(campaigns):
            codes["spread"].append(
                create_code(campaign(f"spread {i}"), code=f"SPREAD-{i:03d}").code
            )
        db.session.remove()
        db.engine.dispose()
    return codes


@contextlib.contextmanager
def topology_on(broker_url: str) -> Iterator[Any]:
    """This run's topology (random prefix); its queues and exchanges deleted at the end."""
    from coupons.consumers import Topology, open_broker

    topology = Topology(f"coupons-bench-{secrets.token_hex(4)}")
    try:
        yield topology
    finally:
        with open_broker(broker_url) as conn:
            channel = conn.channel()
            for queue in topology.queues():
                with contextlib.suppress(Exception):
                    queue(channel).delete()
            for exchange in (topology.exchange, topology.dead_letter_exchange):
                with contextlib.suppress(Exception):
                    exchange(channel).delete()


def queue_depth(broker_url: str, queue: Any) -> int:
    from coupons.consumers import open_broker

    with open_broker(broker_url) as conn:
        declared = queue(conn.channel()).queue_declare()
        return int(declared.message_count) if declared is not None else 0


def publish(broker_url: str, topology: Any, tag: str, codes: list[str], events: int) -> None:
    from coupons.consumers import OrderEventPublisher, open_broker, paid

    with open_broker(broker_url, confirm_publish=False) as conn:
        publisher = OrderEventPublisher(conn, topology)
        for i in range(events):
            publisher.publish(
                paid(
                    f"{tag}-{i}",
                    customer_id=f"{tag}-c{i}",
                    code=codes[i % len(codes)],
                    order_total="25.00",
                )
            )


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def run_one(
    *,
    workload: str,
    processes: int,
    round_: int,
    events: int,
    codes: list[str],
    url: str,
    broker_url: str,
    secret: str,
    topology: Any,
    admin: Engine,
    log: Path,
    timeout: float,
    groups: list[ProcessGroup],
) -> Result:
    db_name = make_url(url).database
    assert db_name
    processed_sql = f"SELECT COUNT(*) FROM `{db_name}`.processed_messages"
    base = scalar(admin, processed_sql)
    publish(broker_url, topology, f"{workload}-p{processes}-r{round_}", codes, events)
    wait_for(lambda: queue_depth(broker_url, topology.queue) >= events, 60, "every publish")
    load_before = load_avg()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=url,
        BROKER_URL=broker_url,
        COUPONS_ENV="test",
        SECRET_KEY=secret,
        PYTHONPATH=pythonpath(env.get("PYTHONPATH")),
    )
    argv = [
        COUPONS,
        "consume",
        f"--processes={processes}",
        f"--pool-size={POOL_SIZE}",
        f"--max-overflow={MAX_OVERFLOW}",
        f"--prefetch={PREFETCH}",
        f"--topology={topology.prefix}",
        "--stats-interval=60",
    ]
    with ConnectionSampler(admin, db_name) as sampler:
        group = ProcessGroup(argv, env=env, log=log)
        groups.append(group)
        try:
            deadline = time.monotonic() + timeout
            first_t, first_n = 0.0, 0
            while True:
                done = scalar(admin, processed_sql) - base
                now = time.monotonic()
                if done and not first_t:
                    first_t, first_n = now, done
                if done >= events:
                    break
                if not group.alive():
                    raise RuntimeError(f"coupons consume exited early:\n{log_tail(log)}")
                if now > deadline:
                    raise RuntimeError(f"timed out: {done}/{events} events after {timeout:.0f} s")
                time.sleep(0.05)
        finally:
            group.stop()
            groups.remove(group)
    seconds = max(now - first_t, 1e-6)
    rate = (events - first_n) / seconds if events > first_n else events / seconds
    bound = POOL_SIZE + MAX_OVERFLOW
    return Result(
        workload=workload,
        processes=processes,
        round=round_,
        events=events,
        seconds=round(seconds, 2),
        events_per_s=round(rate, 1),
        peak_connections=sampler.peak,
        peak_per_process=round(sampler.peak / processes, 2),
        bound_per_process=bound,
        within_bound=sampler.peak <= processes * bound,
        samples=len(sampler.samples),
        load_before=load_before,
        load_after=load_avg(),
    )


def table(results: list[Result]) -> str:
    head = (
        f"{'workload':<8} {'procs':>5} {'round':>5} {'events':>6} {'s':>6} {'events/s':>9} "
        f"{'peak conn':>9} {'per proc':>8} {'bound':>5}  load before -> after"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        flag = "" if r.within_bound else "  OVER BOUND"
        lines.append(
            f"{r.workload:<8} {r.processes:>5} {r.round:>5} {r.events:>6} {r.seconds:>6.1f} "
            f"{r.events_per_s:>9.1f} {r.peak_connections:>9} {r.peak_per_process:>8.2f} "
            f"{r.bound_per_process:>5}  {fmt_load(r.load_before)} -> {fmt_load(r.load_after)}"
            f"{flag}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2,4", help="comma-separated (1,2,4)")
    parser.add_argument("--events", type=int, default=None, help=f"per run ({DEFAULT_EVENTS})")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, interleaved (1)")
    parser.add_argument("--workloads", default="hot,spread", help="hot,spread")
    parser.add_argument("--campaigns", type=int, default=100, help="of the spread workload")
    parser.add_argument("--quick", action="store_true", help=f"smoke: {QUICK_EVENTS} events")
    parser.add_argument(
        "--mariadb-url",
        default=os.environ.get("BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/"),
    )
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="per run, seconds")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON (docs/benchmarks/consumers.json; var/bench-quick/ with --quick)",
    )
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--allow-busy", action="store_true", help="run above --max-load")
    args = parser.parse_args(argv)
    try:
        args.process_counts = [int(p) for p in args.processes.split(",") if p.strip()]
    except ValueError:
        parser.error(f"--processes: not a list of integers: {args.processes!r}")
    if not args.process_counts or min(args.process_counts) < 1:
        parser.error("--processes: positive integers")
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not set(args.workload_list) <= {"hot", "spread"} or not args.workload_list:
        parser.error("--workloads: of hot, spread")
    if args.events is None:
        args.events = QUICK_EVENTS if args.quick else DEFAULT_EVENTS
    if args.out is None:
        args.out = (
            ROOT / ("var/bench-quick" if args.quick else "docs/benchmarks") / "consumers.json"
        )
    return args


def _interrupt(signum: int, _frame: Any) -> None:
    """SIGTERM as Ctrl-C: the ``finally`` blocks stop the consumers, drop the database and
    delete the topology."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    quiet = check_quiet(args.max_load, args.allow_busy)
    if quiet is None:
        return 1
    load, busy = quiet
    if args.quick:
        print(
            f"SMOKE RUN (--quick): {args.events} events per run; the figures are not measurements\n"
        )
    plan = [
        (round_, workload, processes)
        for round_ in range(1, args.repeat + 1)
        for workload in args.workload_list
        for processes in args.process_counts
    ]
    secret = secrets.token_urlsafe(32)
    tmp = Path(tempfile.mkdtemp(prefix="bench-consumers-"))
    groups: list[ProcessGroup] = []
    results: list[Result] = []
    started = time.monotonic()
    try:
        with database(args.mariadb_url) as url, topology_on(args.broker_url) as topology:
            codes = seed(url, secret, args.campaigns)
            admin = admin_engine(args.mariadb_url)
            try:
                for round_, workload, processes in plan:
                    print(f"{workload} x {processes} process(es), round {round_} ...", flush=True)
                    results.append(
                        run_one(
                            workload=workload,
                            processes=processes,
                            round_=round_,
                            events=args.events,
                            codes=codes[workload],
                            url=url,
                            broker_url=args.broker_url,
                            secret=secret,
                            topology=topology,
                            admin=admin,
                            log=tmp / f"consume-{workload}-{processes}-{round_}.log",
                            timeout=args.timeout,
                            groups=groups,
                        )
                    )
            finally:
                admin.dispose()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for group in list(groups):  # a run interrupted between start and stop
            group.stop(grace=5)
    print()
    print(table(results))
    over = [r for r in results if not r.within_bound]
    report = {
        "benchmark": "consumers",
        "quick": args.quick,
        "busy": busy,
        "valid": not busy and not args.quick,
        "cpus": os.cpu_count(),
        "events_per_run": args.events,
        "pool_size": POOL_SIZE,
        "max_overflow": MAX_OVERFLOW,
        "prefetch": PREFETCH,
        "hot_codes": HOT_CODES,
        "spread_campaigns": args.campaigns,
        "load_before": load,
        "load_after": load_avg(),
        "seconds": round(time.monotonic() - started, 1),
        "results": [asdict(r) for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{len(results)} runs in {report['seconds']:.0f} s; JSON: {args.out}")
    if over:
        print(f"error: {len(over)} run(s) above the connection bound", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
