"""Fleet benchmark: connections held, throughput and server memory, BEFORE vs AFTER vs ours.

One run, one app, one load, one private MariaDB. Each configuration is served by
``gunicorn 'fleet_app:create_app()'`` (``tests/pooltender/fleet_app.py``, the post-mortem's
coupon service) with 4 ``gthread`` workers x 32 threads, and pushed by the same bounded load:
64 client threads with keep-alive on loopback, a short warm-up, then a fixed measured window.

Configurations (``--configs``, comma-separated keys):

``before``   pool 200/500, no recycle, no pre-ping, FIFO, and a second ``Session(bind=db.engine)``
             per request -- the post-mortem's original bug (two connections per request)
``after``    the post-mortem's fix: 20/50, pool_timeout 30, recycle 1800, pre_ping, one session
``pt4``      pooltender-sized: ``PoolSettings()`` defaults (4+2 per worker, LIFO, pre-ping)
``pt1``      1+0 per worker (``PoolSettings(pool_size=1, max_overflow=0)``)

The private server is restarted before every configuration, so ``Max_used_connections``, the
``Connection_errors_max_connections`` counter and mariadbd's ``VmHWM`` all start from scratch.
Reported per configuration: requests/s and p50/p99 latency over the measured window, errors
seen by the clients (and how many carried MySQL's 1040), the server's connection high-water,
mariadbd's RSS (idle after restart, peak sampled every 100 ms during the load, growth), and
the estimate ``high-water x per-connection buffers`` (sort, join, read, read_rnd buffers,
thread stack, net buffer: an upper bound, MariaDB allocates most of them lazily).

A second pass (``--limited``, default ``before``) repeats the named configurations against the
server's default ``max_connections=151`` to show where BEFORE draws ``Too many connections``.

Run: ``.venv/bin/python bench/fleet_connections.py`` (about 2-3 minutes).
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sqlalchemy import text
from tests.pooltender._fleet_servers import (
    REFUSAL_MARKERS,
    GunicornFleet,
    admin_engine,
    mariadb_app_account,
    mariadb_status,
    set_mariadb_max_connections,
    wait_mariadb_idle,
)
from tests.pooltender._servers import PrivateMariaDB
from tests.pooltender.test_fleet import fleet_env

from pooltender.budget import FleetShape, WorkerModel
from pooltender.settings import PoolSettings

WORKERS = 4
THREADS = 32
CLIENTS = 64
HOLD_S = 0.002  # SELECT SLEEP(0.002): a short primary-key-sized hold, CPU is the limit
WARMUP_S = 2.0
MAX_CONNECTIONS = 500  # high enough that BEFORE is measured for what it holds, not refused
DEFAULT_LIMIT = 151  # MySQL / MariaDB default, for the second pass
BUFFER_VARIABLES = (
    "sort_buffer_size",
    "join_buffer_size",
    "read_buffer_size",
    "read_rnd_buffer_size",
    "thread_stack",
    "net_buffer_length",
)


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    settings: PoolSettings
    second_session: bool


CONFIGS = {
    c.key: c
    for c in (
        Config(
            "before",
            "BEFORE 200/500 + 2nd Session",
            PoolSettings(
                pool_size=200,
                max_overflow=500,
                pool_recycle=-1,
                pool_pre_ping=False,
                pool_use_lifo=False,
            ),
            True,
        ),
        Config(
            "after",
            "AFTER 20/50/30/1800/pre_ping",
            PoolSettings(
                pool_size=20,
                max_overflow=50,
                pool_timeout=30,
                pool_recycle=1800,
                pool_pre_ping=True,
                pool_use_lifo=False,
            ),
            False,
        ),
        Config("pt4", "pooltender 4+2 /worker", PoolSettings(), False),
        Config("pt1", "1+0 /worker", PoolSettings(pool_size=1, max_overflow=0), False),
    )
}


# ---------------------------------------------------------------------- load


@dataclass
class Load:
    """What the clients saw during the measured window (warm-up requests are not counted)."""

    elapsed_s: float = 0.0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    refused: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return self.ok + sum(self.errors.values())

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


def run_keepalive_load(port: int, clients: int, warmup_s: float, duration_s: float) -> Load:
    """``clients`` threads, each on one keep-alive HTTP connection (reopened if it drops),
    sending ``GET /redeem`` back to back for ``warmup_s + duration_s``; only requests that
    start inside the measured window are recorded."""
    load = Load()
    lock = threading.Lock()
    gate = threading.Barrier(clients + 1)
    t0 = 0.0

    def client() -> None:
        gate.wait()
        measure_from, stop_at = t0 + warmup_s, t0 + warmup_s + duration_s
        conn: http.client.HTTPConnection | None = None
        lat: list[float] = []
        ok = refused = 0
        errors: Counter[str] = Counter()
        while True:
            start = time.monotonic()
            if start >= stop_at:
                break
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            status: int | None = None
            body = ""
            try:
                conn.request("GET", "/redeem")
                response = conn.getresponse()
                body = response.read().decode(errors="replace")
                status = response.status
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = None
                if start < measure_from:
                    continue
                errors[type(exc).__name__] += 1
                continue
            if start < measure_from:
                continue
            lat.append(time.monotonic() - start)
            if status == 200:
                ok += 1
            else:
                errors[f"HTTP {status}"] += 1
                refused += any(marker in body for marker in REFUSAL_MARKERS)
        if conn is not None:
            conn.close()
        with lock:
            load.ok += ok
            load.refused += refused
            load.errors.update(errors)
            load.latencies.extend(lat)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    t0 = time.monotonic()
    gate.wait()
    for thread in threads:
        thread.join(timeout=warmup_s + duration_s + 90)
    load.elapsed_s = duration_s  # requests are counted by their start inside the window
    return load


# ---------------------------------------------------------------------- server figures


def proc_kib(pid: int, key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of a process in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, proc_kib(self.pid, "VmRSS"))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, proc_kib(self.pid, "VmRSS"))


def per_connection_bytes(server: PrivateMariaDB) -> tuple[int, dict[str, int]]:
    engine = admin_engine(server.url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SHOW GLOBAL VARIABLES"))
            values = {str(r[0]): str(r[1]) for r in rows}
    finally:
        engine.dispose()
    parts = {name: int(values[name]) for name in BUFFER_VARIABLES}
    return sum(parts.values()), parts


@dataclass
class Row:
    config: Config
    max_connections: int
    clients: int
    load: Load
    high_water: int
    server_refusals: int
    rss_idle_kib: int
    rss_peak_kib: int
    estimate_mib: float
    load_before: float
    load_after: float

    @property
    def rss_growth_mib(self) -> float:
        return (self.rss_peak_kib - self.rss_idle_kib) / 1024.0


def measure(
    server: PrivateMariaDB,
    app_url: str,
    config: Config,
    *,
    max_connections: int,
    clients: int,
    duration_s: float,
    per_conn: int,
) -> Row:
    server.restart()  # fresh counters, fresh VmHWM, no connection left over
    set_mariadb_max_connections(server, max_connections)
    assert server.process is not None
    pid = server.process.pid
    shape = FleetShape(
        hosts=1,
        processes_per_host=WORKERS,
        worker_model=WorkerModel.THREADS,
        concurrency=THREADS,
        connections_per_request=2 if config.second_session else 1,
    )
    env = fleet_env(
        app_url,
        config.settings,
        second_session=config.second_session,
        shape=shape,
        budget_mode="off",
        hold_s=HOLD_S,
    )
    fleet = GunicornFleet(env, workers=WORKERS, worker_class="gthread", threads=THREADS)
    load_before = os.getloadavg()[0]
    with fleet.running():
        mariadb_status(server, flush=True)
        rss_idle = proc_kib(pid, "VmRSS")
        with RssSampler(pid) as sampler:
            load = run_keepalive_load(fleet.port, clients, WARMUP_S, duration_s)
    # Read the counters only once the fleet is gone: during the load no monitoring connection
    # was open, so Max_used_connections is the app's own high-water.
    time.sleep(1.0)
    wait_mariadb_idle(server)
    status = mariadb_status(server)
    load_after = os.getloadavg()[0]
    high_water = status["Max_used_connections"]
    return Row(
        config=config,
        max_connections=max_connections,
        clients=clients,
        load=load,
        high_water=high_water,
        server_refusals=status["Connection_errors_max_connections"],
        rss_idle_kib=rss_idle,
        rss_peak_kib=sampler.peak_kib,
        estimate_mib=high_water * per_conn / 2**20,
        load_before=load_before,
        load_after=load_after,
    )


# ---------------------------------------------------------------------- report


def table(rows: list[Row]) -> str:
    head = (
        "| Configuration | max_conn | clients | req/s | p50 ms | p99 ms | errors (1040) "
        "| conn high-water | RSS idle -> peak MiB (growth) | est. conn buffers MiB | load 1m |"
    )
    lines = [head, "|" + "|".join(["---"] + ["---:"] * 10) + "|"]
    for r in rows:
        errors = sum(r.load.errors.values())
        lines.append(
            f"| {r.config.label} | {r.max_connections} | {r.clients} | {r.load.rps:.0f} "
            f"| {r.load.pct(0.50):.1f} | {r.load.pct(0.99):.1f} "
            f"| {errors} ({max(r.load.refused, r.server_refusals)}) | {r.high_water} "
            f"| {r.rss_idle_kib / 1024:.0f} -> {r.rss_peak_kib / 1024:.0f} "
            f"(+{r.rss_growth_mib:.1f}) | {r.estimate_mib:.1f} "
            f"| {r.load_before:.1f}->{r.load_after:.1f} |"
        )
    return "\n".join(lines)


def ratios(rows: list[Row], base_key: str, base_name: str) -> str:
    base = next((r for r in rows if r.config.key == base_key), None)
    if base is None:
        return ""
    lines = [
        f"Versus {base_name} ({base.config.label}, same pass):",
        "",
        "| Configuration | connection reduction | throughput ratio "
        "| RSS growth ratio | est. buffer ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r is base:
            continue
        reduction = 1 - r.high_water / base.high_water if base.high_water else float("nan")
        tput = r.load.rps / base.load.rps if base.load.rps else float("nan")
        growth = r.rss_growth_mib / base.rss_growth_mib if base.rss_growth_mib else float("nan")
        est = r.estimate_mib / base.estimate_mib if base.estimate_mib else float("nan")
        lines.append(
            f"| {r.config.label} | {reduction:.0%} | {tput:.2f}x | {growth:.2f}x | {est:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds each")
    parser.add_argument("--configs", default="before,after,pt4,pt1", help="keys, in order")
    parser.add_argument(
        "--limited",
        default="before",
        help=f"configs to repeat at max_connections={DEFAULT_LIMIT} ('' to skip)",
    )
    parser.add_argument(
        "--limited-clients",
        type=int,
        default=2 * CLIENTS,
        help="client threads in the max_connections=151 pass (64 in flight x 2 connections "
        "= 128 < 151 cannot reach the limit; 128 x 2 = 256 can)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds (middle one reported)"
    )
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.configs.split(",") if k.strip()]
    limited = [k.strip() for k in args.limited.split(",") if k.strip()]
    unknown = [k for k in keys + limited if k not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")

    print(
        f"# fleet_connections: gunicorn {WORKERS} gthread workers x {THREADS} threads, "
        f"{CLIENTS} keep-alive clients ({args.limited_clients} in the {DEFAULT_LIMIT} pass), "
        f"warm-up {WARMUP_S:g} s + {args.duration:g} s measured, "
        f"SELECT SLEEP({HOLD_S:g}) per query, {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    started = time.monotonic()
    server = PrivateMariaDB(extra_args=[f"--max-connections={MAX_CONNECTIONS}"])
    server.start()
    try:
        app_url = mariadb_app_account(server)
        per_conn, parts = per_connection_bytes(server)
        print(
            "# per-connection buffers: "
            + ", ".join(f"{k}={v // 1024} KiB" for k, v in parts.items())
            + f" = {per_conn / 2**20:.2f} MiB",
            flush=True,
        )
        plan = [(k, MAX_CONNECTIONS, CLIENTS) for k in keys] + [
            (k, DEFAULT_LIMIT, args.limited_clients) for k in limited
        ]
        results: dict[tuple[str, int], list[Row]] = {}
        for rnd in range(args.rounds):
            for key, limit, clients in plan:
                row = measure(
                    server,
                    app_url,
                    CONFIGS[key],
                    max_connections=limit,
                    clients=clients,
                    duration_s=args.duration,
                    per_conn=per_conn,
                )
                results.setdefault((key, limit), []).append(row)
                print(
                    f"#  round {rnd + 1} {key}@{limit} x{clients} clients: "
                    f"{row.load.rps:.0f} req/s, "
                    f"high-water {row.high_water}, errors {sum(row.load.errors.values())}, "
                    f"peak RSS {row.rss_peak_kib / 1024:.0f} MiB",
                    flush=True,
                )
    finally:
        server.stop(remove=True)

    def median_row(rows: list[Row]) -> Row:
        return sorted(rows, key=lambda r: r.load.rps)[len(rows) // 2]

    pass1 = [median_row(results[(k, MAX_CONNECTIONS)]) for k in keys]
    pass2 = [median_row(results[(k, DEFAULT_LIMIT)]) for k in limited]
    print()
    print(table(pass1 + pass2))
    for base_key, name in (("after", "AFTER"), ("before", "BEFORE")):
        block = ratios(pass1, base_key, name)
        if block:
            print()
            print(block)
    if args.rounds > 1:
        print()
        print(
            f"(each row: the middle of {args.rounds} interleaved rounds by req/s, the upper "
            "middle for an even count; every round is printed above)"
        )
    print()
    print(
        f"# done in {time.monotonic() - started:.0f} s, "
        f"load average at end {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
