"""Service benchmark: the coupons service itself under gunicorn, per pool configuration, with a
closed-loop (wrk) and an open-loop (bench/openloop.py) load -- issue 10, part 3.

    .venv/bin/python bench/service_load.py            # the full run (about 10 minutes)
    .venv/bin/python bench/service_load.py --quick    # smoke run: <= 15 s of load per config

What runs (docs/benchmarks.md, "Service benchmark", says why):

* a private MariaDB on 127.0.0.1 (``--mariadb-url`` for a fresh database on a local server
  instead), migrated with ``coupons db upgrade`` and seeded (bench/_service.py);
* per configuration, ``coupons serve --workers 4 --threads 32`` with that configuration's
  ``POOLTENDER_*`` variables (:data:`CONFIGS`): ``after`` = the post-mortem's fix (20/50,
  pool_timeout 30, recycle 1800, pre_ping on every checkout, FIFO) with pooltender's shedding
  and admission control off; ``default`` = pooltender's defaults; ``2+0`` (and ``1+0``) small
  pools with the other defaults;
* per service, the phases in order (:data:`PHASES`): ``saturation`` (256 closed-loop wrk
  connections, the 100 spread campaigns: each configuration's capacity), ``saturation+key``
  (the same with an Idempotency-Key on every redeem), ``hot`` (saturation with every redeem
  on one campaign; its counts are checked exact afterwards), ``reference`` (open loop at 70%
  of AFTER's capacity) and ``overload`` (open loop at 2x AFTER's capacity). AFTER's capacity
  is its saturation goodput in the first round (AFTER runs first in every round), or
  ``--capacity``;
* rounds interleave the configurations (A B C A B C ...); the load average is printed before
  and after each round, and the run refuses to start above a 1-minute load average of
  ``--max-load`` (1.0) unless ``--allow-busy``: a figure from a loaded machine is not a figure.

Per run: goodput (200/201 per s), p50 / p99 of admitted requests and p99 of 503s (client side,
bench/_samples.py), errors by kind, the service's server connections (peak and median of a
250 ms processlist sample inside the window), mariadbd's RSS, MySQL's 1040 counter, and the
admission queue waits (server side, from /metrics, when the build has admission control).
Each table row is the median round by goodput; every round is in the JSON.

Output: tables and the issue's targets (met / not met) on stdout, ``service_load.json`` and
PNG plots (connections over time, latency distribution per phase) in ``--out``
(docs/benchmarks/ for a full run, var/bench-quick/ for ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests._paths

import _prom
from _quiet import check_quiet, fmt_load, load_avg
from _samples import Summary, read_samples, summarize
from _service import (
    AdmissionSampler,
    BenchError,
    Database,
    ProcessGroup,
    Sampler,
    Seed,
    Service,
    log_tail,
)
from tests._paths import pythonpath, use_source_trees

use_source_trees()  # this checkout's pooltender and coupons, before any installed copy

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_SCRIPT = HERE / "wrk" / "coupons.lua"
OPENLOOP = HERE / "openloop.py"
DEFAULT_OUT = ROOT / "docs" / "benchmarks"
QUICK_OUT = ROOT / "var" / "bench-quick"

# --------------------------------------------------------------------------- configurations

AFTER_ENV = {
    "POOLTENDER_POOL_SIZE": "20",
    "POOLTENDER_MAX_OVERFLOW": "50",
    "POOLTENDER_POOL_TIMEOUT": "30",
    "POOLTENDER_POOL_RECYCLE": "1800",
    "POOLTENDER_POOL_PRE_PING": "true",
    "POOLTENDER_PING_AFTER_IDLE": "0",  # SQLAlchemy's pre_ping on every checkout
    "POOLTENDER_POOL_USE_LIFO": "false",  # SQLAlchemy's default, as the post-mortem ran
    "POOLTENDER_RESET_ON_RETURN": "always",  # SQLAlchemy's reset: a ROLLBACK on every return
    "POOLTENDER_SHED": "false",
}


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    env: dict[str, str]


CONFIGS = {
    c.key: c
    for c in (
        Config("after", "AFTER 20/50 pre_ping", AFTER_ENV),
        Config("default", "pooltender defaults", {}),
        Config(
            "2+0", "2+0 per worker", {"POOLTENDER_POOL_SIZE": "2", "POOLTENDER_MAX_OVERFLOW": "0"}
        ),
        Config(
            "1+0", "1+0 per worker", {"POOLTENDER_POOL_SIZE": "1", "POOLTENDER_MAX_OVERFLOW": "0"}
        ),
        Config(
            "2+0-t20",
            "2+0, standing wait 20 ms",
            {
                "POOLTENDER_POOL_SIZE": "2",
                "POOLTENDER_MAX_OVERFLOW": "0",
                "POOLTENDER_ADMISSION_TARGET": "0.02",
            },
        ),
        Config(
            "2+0-max8",
            "2+0, admission 2..8",
            {
                "POOLTENDER_POOL_SIZE": "2",
                "POOLTENDER_MAX_OVERFLOW": "0",
                "POOLTENDER_ADMISSION_MAX": "8",
            },
        ),
        Config(
            "2+0-b4t5",
            "2+0, backlog 4, standing wait 5 ms (the earlier defaults)",
            {
                "POOLTENDER_POOL_SIZE": "2",
                "POOLTENDER_MAX_OVERFLOW": "0",
                "POOLTENDER_ADMISSION_BACKLOG": "4",
                "POOLTENDER_ADMISSION_TARGET": "0.005",
            },
        ),
        Config(
            "2+0-glog",
            "2+0, gunicorn's own access logger",
            {
                "POOLTENDER_POOL_SIZE": "2",
                "POOLTENDER_MAX_OVERFLOW": "0",
                "WEB_LOGGER_CLASS": "gunicorn.glogging.Logger",
            },
        ),
        Config(
            "2+0-b1",
            "2+0, standing backlog 1",
            {
                "POOLTENDER_POOL_SIZE": "2",
                "POOLTENDER_MAX_OVERFLOW": "0",
                "POOLTENDER_ADMISSION_BACKLOG": "1",
            },
        ),
        Config(
            "2+0-fixed",
            "2+0, admission fixed at 2",
            {
                "POOLTENDER_POOL_SIZE": "2",
                "POOLTENDER_MAX_OVERFLOW": "0",
                "POOLTENDER_ADMISSION_LIMIT": "fixed",
                "POOLTENDER_ADMISSION_INITIAL": "2",
            },
        ),
        Config(
            "4+2-fixed4",
            "4+2, admission fixed at 4",
            {"POOLTENDER_ADMISSION_LIMIT": "fixed", "POOLTENDER_ADMISSION_INITIAL": "4"},
        ),
        Config(
            "2+0-wide",
            "2+0, admission 8..32",
            {
                "POOLTENDER_POOL_SIZE": "2",
                "POOLTENDER_MAX_OVERFLOW": "0",
                "POOLTENDER_ADMISSION_INITIAL": "8",
                "POOLTENDER_ADMISSION_MAX": "32",
            },
        ),
        Config(
            "4+2-wide",
            "4+2, admission 8..32",
            {"POOLTENDER_ADMISSION_INITIAL": "8", "POOLTENDER_ADMISSION_MAX": "32"},
        ),
    )
}
BASELINE = "after"


def admission_supported() -> bool:
    """Whether this build knows ``POOLTENDER_ADMISSION`` (an unknown key fails start-up)."""
    from coupons.config import ConfigError, Settings

    try:
        Settings.from_env({"DATABASE_URL": "sqlite://", "POOLTENDER_ADMISSION": "false"})
    except ConfigError:
        return False
    return True


def check_config(config: Config) -> None:
    """Refuse a configuration the service would refuse, before anything is started."""
    from coupons.config import ConfigError, Settings

    try:
        Settings.from_env({"DATABASE_URL": "sqlite://", **config.env})
    except ConfigError as exc:
        raise BenchError(f"configuration {config.key}: {exc}") from None


# --------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Phase:
    key: str
    loop: str  # "closed" (wrk, --clients connections) or "open" (openloop.py at a rate)
    mode: str  # "spread" (100 campaigns) or "hot" (every redeem on one campaign)
    idem: bool  # an Idempotency-Key on every redeem
    rate_factor: float = 0.0  # open loop: times AFTER's capacity


PHASES = {
    p.key: p
    for p in (
        Phase("saturation", "closed", "spread", False),
        Phase("saturation+key", "closed", "spread", True),
        Phase("hot", "closed", "hot", False),
        Phase("reference", "open", "spread", False, 0.7),
        Phase("overload", "open", "spread", False, 2.0),
        # not in the default list; --phases adds them (the key variants of the other phases)
        Phase("hot+key", "closed", "hot", True),
        Phase("reference+key", "open", "spread", True, 0.7),
        Phase("overload+key", "open", "spread", True, 2.0),
    )
}
DEFAULT_PHASES = ("saturation", "saturation+key", "hot", "reference", "overload")


# --------------------------------------------------------------------------- one run


@dataclass
class Context:
    args: argparse.Namespace
    database: Database
    seed: Seed
    tmp: Path
    codes_file: Path
    hot_file: Path
    token_file: Path
    run_counter: int = 0


def _generator_argv(
    ctx: Context, phase: Phase, service: Service, rate: float, out: Path, run_id: str
) -> list[str]:
    args = ctx.args
    total = args.warmup + args.duration + args.tail
    if phase.loop == "closed":
        wrk = shutil.which("wrk")
        assert wrk is not None
        # One connection per wrk thread: the script can then pair each request with its
        # response and time it (bench/wrk/coupons.lua).
        return [
            wrk,
            "-t",
            str(args.clients),
            "-c",
            str(args.clients),
            "-d",
            f"{round(total)}s",
            "--timeout",
            "60s",
            "-s",
            str(WRK_SCRIPT),
            service.url,
            "--",
            f"codes={ctx.codes_file}",
            f"hot={ctx.hot_file}",
            f"tokenfile={ctx.token_file}",
            f"out={out}",
            f"run={run_id}",
            f"mode={phase.mode}",
            f"idem={1 if phase.idem else 0}",
        ]
    argv = [
        sys.executable,
        str(OPENLOOP),
        "--url",
        service.url,
        "--rate",
        f"{rate:.1f}",
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
        "--codes",
        str(ctx.codes_file),
        "--hot",
        str(ctx.hot_file),
        "--mode",
        phase.mode,
        "--tokenfile",
        str(ctx.token_file),
        "--out",
        str(out),
        "--run",
        run_id,
        "--grace",
        str(args.grace),
    ]
    if phase.idem:
        argv.append("--idem")
    return argv


def _window_stats(points: list[Any], start: float, end: float) -> dict[str, Any]:
    inside = [p for p in points if start <= p.t <= end]
    conns = [p.connections for p in inside] or [0]
    active = [p.active for p in inside] or [0]
    rss = [p.rss_kib for p in inside if p.rss_kib is not None]
    idle_rss = next((p.rss_kib for p in points if p.rss_kib is not None), None)
    return {
        "samples": len(inside),
        "peak": max(conns),
        "median": statistics.median(conns),
        "peak_active": max(active),
        "median_active": statistics.median(active),
        "rss_idle_kib": idle_rss,
        "rss_peak_kib": max(rss) if rss else None,
    }


def run_phase(
    ctx: Context,
    service: Service,
    admin_token: str,
    config: Config,
    phase: Phase,
    round_no: int,
    rate: float,
    last: bool = False,
) -> dict[str, Any]:
    """One load run of ``phase`` against the running ``service``; the run's record.

    Afterwards the service's backlog is drained (up to ``--drain`` s, until none of its
    connections runs a statement) so the next phase starts clean; not after the ``last``
    phase of a service, which is stopped anyway."""
    args = ctx.args
    ctx.run_counter += 1
    slug = f"{config.key}-{phase.key}".replace("+", "p")
    run_id = f"r{round_no}-{slug}-{ctx.run_counter}"
    out = ctx.tmp / f"{run_id}.samples"
    log = ctx.tmp / f"{run_id}.generator.log"
    errors_1040_before = ctx.database.status("Connection_errors_max_connections")
    metrics_before = _prom.scrape(service.metrics_text(admin_token))
    hot_before = (
        ctx.database.campaign_counts(ctx.seed.hot_campaign_id) if phase.mode == "hot" else None
    )
    load_before = load_avg()
    with Sampler(ctx.database) as sampler, AdmissionSampler(service, admin_token) as admitting:
        time.sleep(0.3)  # an idle point before the load
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        service_cpu_before = service.cpu_seconds()
        launch = time.monotonic()
        generator = ProcessGroup(_generator_argv(ctx, phase, service, rate, out, run_id), log=log)
        limit = args.warmup + args.duration + args.grace + 60
        try:
            code = generator.wait(timeout=limit)
        except BaseException:
            generator.stop(grace=2, first=signal.SIGINT)
            raise
        generator.stop(grace=1)
        service_cpu = service.cpu_seconds() - service_cpu_before
        wall = time.monotonic() - launch
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        generator_cpu = (children.ru_utime - children_before.ru_utime) + (
            children.ru_stime - children_before.ru_stime
        )
        if code != 0:
            raise BenchError(
                f"the load generator exited with status {code}; log tail ({log}):\n{log_tail(log)}"
            )
        drained_at = 0.0 if last and phase.mode != "hot" else _drain(sampler, args.drain)
    samples = read_samples(out)
    if not samples.samples:
        raise BenchError(f"the load generator wrote no samples; log tail:\n{log_tail(log)}")
    start = launch
    if "start_us" in samples.meta:
        start = int(samples.meta["start_us"]) / 1e6
    window = (start + args.warmup, start + args.warmup + args.duration)
    summary = summarize(samples, *window)
    connections = _window_stats(sampler.points, *window)
    metrics_after = _prom.scrape(service.metrics_text(admin_token))
    record: dict[str, Any] = {
        "round": round_no,
        "config": config.key,
        "phase": phase.key,
        "loop": phase.loop,
        "mode": phase.mode,
        "idempotency_key": phase.idem,
        "clients": args.clients if phase.loop == "closed" else None,
        "rate": rate if phase.loop == "open" else None,
        "load_before": load_before,
        "load_after": load_avg(),
        "summary": summary.as_json(),
        "connections": connections,
        "mysql_1040_server": ctx.database.status("Connection_errors_max_connections")
        - errors_1040_before,
        "admission_waits": _prom.wait_figures(_prom.difference(metrics_before, metrics_after)),
        "admission_during": admitting.summary(*window),
        "pooltender_stats": service.stats(admin_token),
        "generator": samples.meta,
        "drain_s": drained_at,
        # CPU over the generator's whole run (warm-up included), in cores' worth
        "service_cpu_cores": round(service_cpu / wall, 2),
        "generator_cpu_cores": round(generator_cpu / wall, 2),
        "service_cpu_ms_per_response": round(1e3 * service_cpu / max(1, len(samples.samples)), 2),
        "sampler_error": sampler.error,
        "timeline": [
            (round(p.t - window[0], 3), p.connections, p.active, p.rss_kib) for p in sampler.points
        ],
        # /pooltender/stats every 0.5 s: t (s from the window's start), stats latency ms,
        # worker pid, limit, in flight, queue length, standing, sheds so far, admitted so far,
        # pool connections checked out, second checkouts in one unit of work so far
        "admission_timeline": [
            (
                round(p.t - window[0], 3),
                p.latency_ms,
                p.pid,
                p.limit,
                p.in_flight,
                p.queue_length,
                p.standing,
                p.shed_total,
                p.admitted,
                p.checked_out,
                p.second_checkouts,
            )
            for p in admitting.points
        ],
    }
    if hot_before is not None:
        after = ctx.database.campaign_counts(ctx.seed.hot_campaign_id)
        record["hot_counts"] = {"before": hot_before, "after": after}
        record["caps_exact"] = _caps_exact(hot_before, after, summary, samples)
    record["_latencies"] = summary.admitted_latencies_ms  # for the plots; not in the JSON
    return record


def _drain(sampler: Sampler, limit: float) -> float:
    """Wait until the service runs no statement (backlog served); seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        try:
            if sampler.active_now() == 0:
                break
        except Exception:
            break
        time.sleep(0.25)
    return round(time.monotonic() - began, 2)


def _caps_exact(before: dict[str, int], after: dict[str, int], summary: Summary, run: Any) -> bool:
    """The hot campaign's counter equals its codes' uses, its ledger and its usage rows, stays
    under its cap, and grew by at least the 201s the clients saw."""
    created = sum(1 for s in run.samples if s.kind == "r" and s.status == 201)
    grew = after["redemption_count"] - before["redemption_count"]
    return (
        after["redemption_count"]
        == after["code_use_counts"]
        == after["ledger_rows"]
        == after["customer_usage"]
        and after["redemption_count"] <= after["max_redemptions"]
        and grew >= created
    )


# --------------------------------------------------------------------------- the benchmark


def _service_env(tmp: Path, config: Config, admission: bool) -> dict[str, str]:
    env = dict(config.env)
    if config.key == BASELINE and admission:
        env["POOLTENDER_ADMISSION"] = "false"
    metrics_dir = tmp / f"prom-{config.key}-{secrets.token_hex(3)}"
    metrics_dir.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


def run_benchmark(args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack) -> dict:
    configs = [CONFIGS[k] for k in args.configs]
    phases = [PHASES[k] for k in args.phases]
    admission = admission_supported()
    for config in configs:
        check_config(config)
    print(
        f"admission control in this build: {'yes' if admission else 'no'}"
        + ("" if admission else " (AFTER has no POOLTENDER_ADMISSION to switch off)")
    )
    needs_capacity = any(p.loop == "open" for p in phases) and args.capacity is None
    if needs_capacity and configs[0].key != BASELINE:
        raise BenchError(
            "open-loop phases are paced from AFTER's capacity: put 'after' first in --configs "
            "or give --capacity"
        )

    database = Database(tmp, args.mariadb_url, args.max_connections)
    stack.callback(database.stop)
    t0 = time.monotonic()
    database.start()
    print(
        f"MariaDB {database.version} on 127.0.0.1:{database.port} "
        f"({'private' if args.mariadb_url is None else 'shared'}, max_connections "
        f"{database.server_max_connections}), database {database.name}"
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("POOLTENDER_")}
    base_env["PYTHONPATH"] = pythonpath(os.environ.get("PYTHONPATH"))
    database.migrate(base_env, tmp / "migrate.log")
    seed = database.seed(args.campaigns, args.codes_per_campaign, args.hot_codes)
    codes_file = tmp / "codes.txt"
    hot_file = tmp / "hot_codes.txt"
    codes_file.write_text("\n".join(seed.spread_codes) + "\n")
    hot_file.write_text("\n".join(seed.hot_codes) + "\n")
    token_file = tmp / "token"
    print(
        f"seeded {args.campaigns} campaigns x {args.codes_per_campaign} codes and a hot campaign "
        f"of {args.hot_codes} codes in {time.monotonic() - t0:.1f} s"
    )
    ctx = Context(args, database, seed, tmp, codes_file, hot_file, token_file)
    secret_key = secrets.token_urlsafe(48)
    capacity = args.capacity
    records: list[dict[str, Any]] = []
    rounds_load: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        before = load_avg()
        print(f"\n--- round {round_no}/{args.rounds}: load average before {fmt_load(before)}")
        for config in configs:
            env = _service_env(tmp, config, admission)
            log = tmp / f"service-{round_no}-{config.key}.log"
            service = Service(database, env, args.workers, args.threads, secret_key, log)
            stack.callback(service.stop)
            started = time.monotonic()
            service.start()
            token = service.login(seed.service_email, seed.password)
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            admin_token = service.login(seed.admin_email, seed.password)
            print(f"  {config.label}: service up in {time.monotonic() - started:.1f} s")
            try:
                for n, phase in enumerate(phases, 1):
                    rate = 0.0
                    if phase.loop == "open":
                        if capacity is None:
                            raise BenchError("AFTER's capacity is unknown (its saturation failed)")
                        rate = phase.rate_factor * capacity
                    record = run_phase(
                        ctx, service, admin_token, config, phase, round_no, rate, n == len(phases)
                    )
                    records.append(record)
                    if capacity is None and config.key == BASELINE and phase.key == "saturation":
                        capacity = record["summary"]["goodput"]
                        print(f"    AFTER's capacity (saturation goodput): {capacity:.1f}/s")
                    print("    " + one_line(record))
            finally:
                service.stop()
        after = load_avg()
        print(f"--- round {round_no}: load average after {fmt_load(after)}")
        rounds_load.append({"round": round_no, "before": before, "after": after})
    return {
        "capacity_after": capacity,
        "admission_in_build": admission,
        "mariadb_version": database.version,
        "max_connections": database.server_max_connections,
        "rounds_load": rounds_load,
        "records": records,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }


def one_line(r: dict[str, Any]) -> str:
    s, c = r["summary"], r["connections"]
    load = f"{r['load_before'][0]:.2f}->{r['load_after'][0]:.2f}"
    rate = f" @{r['rate']:.0f}/s" if r["rate"] else ""
    errors = {
        k: v for k, v in s["by_status"].items() if not k.startswith(("200", "201", "503", "-1 "))
    }
    return (
        f"{r['phase']:<15}{rate:>9} goodput {s['goodput']:7.1f}/s  p50 {_ms(s['admitted_p50_ms'])}"
        f" p99 {_ms(s['admitted_p99_ms'])}  503 {s['shed']:5d}  conns peak {c['peak']:3d} "
        f"median {c['median']:5.1f}  unanswered {s['unfinished']}  other {errors or '-'}  "
        f"CPU cores service {r['service_cpu_cores']:.2f} generator {r['generator_cpu_cores']:.2f}"
        f"  load {load}{_admission_text(r)}"
    )


def _admission_text(r: dict[str, Any]) -> str:
    """What admission control did during the window, from the /pooltender/stats samples:
    the limit's range over every worker, the largest queue, the share of samples standing,
    the wait before a 503 (p99, interpolated, and its bucket) and the stats page's own
    latency (a backlog in front of the limiter)."""
    during = r.get("admission_during") or {}
    workers = list((during.get("workers") or {}).values())
    if not workers:
        return ""
    low = min(w["limit_min"] for w in workers)
    high = max(w["limit_max"] for w in workers)
    queue = max(w["queue_max"] for w in workers)
    standing = sum(w["standing_share"] * w["samples"] for w in workers) / max(
        1, sum(w["samples"] for w in workers)
    )
    return (
        f"\n      admission: limit {low}..{high}, queue max {queue}, standing "
        f"{standing:.0%} of samples, wait before 503 p99 {_wait_text(r)} ms, stats page "
        f"{during.get('stats_latency_ms_median')} / {during.get('stats_latency_ms_max')} ms "
        "(median / max)"
    )


def _ms(value: float | None) -> str:
    return "    -" if value is None else f"{value:6.1f}ms"


# --------------------------------------------------------------------------- report


def median_rows(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (phase, config): the middle round by goodput (upper middle for an even count)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["phase"], r["config"]), []).append(r)
    out = {}
    for key, rows in groups.items():
        ordered = sorted(rows, key=lambda r: r["summary"]["goodput"])
        out[key] = ordered[len(ordered) // 2]
    return out


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def tables(result: dict[str, Any], phases: list[str], configs: list[str]) -> str:
    rows = median_rows(result["records"])
    lines = []
    for phase in phases:
        base = rows.get((phase, BASELINE))
        lines.append(f"\n{phase}")
        lines.append(
            "| configuration | goodput/s | vs AFTER | p50 ms | p99 ms | 503 | 503 p99 ms "
            "| other errors | 1040 | peak conns | median conns | RSS peak MiB | server wait p99 "
            "before 503 ms | rounds goodput |"
        )
        lines.append("|" + "---|" * 14)
        for key in configs:
            r = rows.get((phase, key))
            if r is None:
                continue
            s, c = r["summary"], r["connections"]
            others = {k: v for k, v in s["by_status"].items() if k[:3] not in ("200", "201")}
            others = {k: v for k, v in others.items() if not k.startswith(("503", "-1 "))}
            if s["unfinished"]:
                others["unanswered"] = s["unfinished"]
            every = [
                f"{x['summary']['goodput']:.0f}"
                for x in result["records"]
                if x["phase"] == phase and x["config"] == key
            ]
            rss = c["rss_peak_kib"]
            wait = _wait_text(r)
            lines.append(
                f"| {CONFIGS[key].label} | {s['goodput']:.1f} | "
                f"{_ratio(s['goodput'], base['summary']['goodput'] if base else None)} | "
                f"{_num(s['admitted_p50_ms'])} | {_num(s['admitted_p99_ms'])} | {s['shed']} | "
                f"{_num(s['shed_p99_ms'])} | "
                f"{', '.join(f'{k}: {v}' for k, v in others.items()) or '0'} | "
                f"{r['mysql_1040_server']} | {c['peak']} | {c['median']:.1f} | "
                f"{'-' if rss is None else f'{rss / 1024:.0f}'} | {wait} | "
                f"{' / '.join(every)} |"
            )
    return "\n".join(lines)


def server_wait_before_503_ms(record: dict[str, Any]) -> float | None:
    """p99 of the server-side wait of the requests shed with a 503, in ms: from the difference
    of two /metrics scrapes around the run (fleet-wide, this run only), interpolated inside
    its bucket (bench/_prom.py; the upper edge where an older record has no interpolation);
    failing that, the largest ``admission.shed_wait.p99_s`` of the workers that answered
    /pooltender/stats (cumulative since the service started); None when the build exposes
    neither. 100 ms is a bucket edge, so the interpolated value is <= 100 exactly when the
    bucket's upper edge is."""
    from_metrics = record["admission_waits"].get("shed", {})
    if from_metrics.get("count"):
        value: float | None = from_metrics.get("p99_ms", from_metrics.get("p99_ms_le"))
        return value
    p99s = [
        s["admission"]["shed_wait"]["p99_s"]
        for s in record["pooltender_stats"]
        if isinstance(s.get("admission"), dict)
        and isinstance(s["admission"].get("shed_wait"), dict)
        and s["admission"]["shed_wait"].get("p99_s") is not None
    ]
    return max(p99s) * 1e3 if p99s else None


def _wait_text(record: dict[str, Any]) -> str:
    """The wait before a 503 for a table: the interpolated p99 and its bucket, ``80.2
    (75-100]``."""
    value = server_wait_before_503_ms(record)
    bucket = record["admission_waits"].get("shed", {}).get("p99_bucket_ms")
    if value is None or not bucket:
        return _num(value)
    return f"{value:.1f} ({bucket[0]:g}-{bucket[1]:g}]"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@dataclass
class Target:
    config: str
    name: str
    met: bool | None  # None: cannot be judged from this run
    detail: str


def targets(result: dict[str, Any], workers: int) -> list[Target]:
    """Issue 10's service targets, per configuration other than AFTER (its own thresholds)."""
    rows = median_rows(result["records"])
    out: list[Target] = []
    per_process = 2 * workers
    configs = [k for k in dict.fromkeys(r["config"] for r in result["records"]) if k != BASELINE]
    for key in configs:

        def row(phase: str, config: str = key) -> dict[str, Any] | None:
            return rows.get((phase, config))

        ref, ref_a = row("reference"), row("reference", BASELINE)
        if ref is not None:
            s, peak = ref["summary"], ref["connections"]["peak"]
            p99 = s["admitted_p99_ms"]
            p99_a = ref_a["summary"]["admitted_p99_ms"] if ref_a else None
            fives = s["server_errors_non_503"]
            ok = (
                s["shed"] == 0
                and fives == 0
                and s["unfinished"] == 0
                and peak <= per_process
                and p99 is not None
                and p99_a is not None
                and p99 <= p99_a
            )
            out.append(
                Target(
                    key,
                    "reference: 0 shed, 0 5xx, peak conns <= 2/process, p99 <= AFTER's",
                    ok,
                    f"shed {s['shed']}, 5xx {fives}, unanswered {s['unfinished']}, peak {peak} "
                    f"(limit {per_process}), p99 {_num(p99)} vs AFTER {_num(p99_a)} ms",
                )
            )
        sat, sat_a = row("saturation"), row("saturation", BASELINE)
        if sat is not None and sat_a is not None:
            g, g_a = sat["summary"]["goodput"], sat_a["summary"]["goodput"]
            peak = sat["connections"]["peak"]
            fives = sat["summary"]["server_errors_non_503"]
            ok = g >= 1.2 * g_a and peak <= per_process and fives == 0
            out.append(
                Target(
                    key,
                    "saturation: goodput >= 1.2x AFTER's, <= 2 conns/process, 0 5xx but 503",
                    ok,
                    f"{g:.1f} vs {g_a:.1f}/s ({_ratio(g, g_a)}), peak {peak}, 5xx {fives}",
                )
            )
        over = row("overload")
        if over is not None:
            s = over["summary"]
            n1040 = over["mysql_1040_server"] + s["mysql_1040_in_bodies"]
            fives = s["server_errors_non_503"]
            g_sat = sat["summary"]["goodput"] if sat else None
            p99_ref = ref["summary"]["admitted_p99_ms"] if ref else None
            wait = server_wait_before_503_ms(over)
            checks = [
                n1040 == 0,
                fives == 0,
                g_sat is not None and s["goodput"] >= 0.9 * g_sat,
                s["admitted_p99_ms"] is not None
                and p99_ref is not None
                and s["admitted_p99_ms"] <= 2 * p99_ref,
            ]
            met: bool | None = all(checks)
            if s["shed"] and wait is None:
                met = None if all(checks) else False
            elif wait is not None:
                met = all(checks) and wait <= 100
            out.append(
                Target(
                    key,
                    "overload: 0x1040, 0 5xx but 503, goodput >= 0.9x saturation, "
                    "p99 <= 2x reference p99, server wait before 503 p99 <= 100 ms",
                    met,
                    f"1040 {n1040}, 5xx {fives}, goodput {s['goodput']:.1f} vs saturation "
                    f"{_num(g_sat)} ({_ratio(s['goodput'], g_sat)}), p99 "
                    f"{_num(s['admitted_p99_ms'])} vs 2x{_num(p99_ref)} ms, wait before 503 "
                    f"p99 {_wait_text(over)} ms" + (" (not exposed)" if wait is None else ""),
                )
            )
        hot = row("hot")
        if hot is not None and sat is not None:
            g, g_s = hot["summary"]["goodput"], sat["summary"]["goodput"]
            exact = all(
                r.get("caps_exact", True)
                for r in result["records"]
                if r["phase"].startswith("hot") and r["config"] == key
            )
            out.append(
                Target(
                    key,
                    "hot campaign: goodput >= 0.7x spread's, caps exact",
                    g >= 0.7 * g_s and exact,
                    f"{g:.1f} vs {g_s:.1f}/s ({_ratio(g, g_s)}), caps exact: {exact}",
                )
            )
    return out


def format_targets(found: list[Target]) -> str:
    lines = ["\ntargets (issue 10; ratios from this run)"]
    for t in found:
        verdict = {True: "MET", False: "NOT MET", None: "n/a"}[t.met]
        lines.append(f"  [{verdict:>7}] {CONFIGS[t.config].label}: {t.name}")
        lines.append(f"            {t.detail}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, short runs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the window")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds measured")
    parser.add_argument("--configs", default="after,default,2+0", help=f"of {', '.join(CONFIGS)}")
    parser.add_argument(
        "--phases", default=",".join(DEFAULT_PHASES), help=f"of {', '.join(PHASES)}"
    )
    parser.add_argument("--clients", type=int, default=256, help="closed-loop connections")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--capacity", type=float, help="AFTER's capacity (req/s) to pace from")
    parser.add_argument("--campaigns", type=int, default=100)
    parser.add_argument("--codes-per-campaign", type=int, default=20)
    parser.add_argument("--hot-codes", type=int, default=200)
    parser.add_argument("--grace", type=float, default=5.0, help="open loop: wait for answers")
    parser.add_argument(
        "--tail", type=float, default=3.0, help="closed loop: s wrk runs on after the window"
    )
    parser.add_argument("--drain", type=float, default=30.0, help="max s to wait for a backlog")
    parser.add_argument("--mariadb-url", help="a local server (root URL) instead of a private one")
    parser.add_argument("--max-connections", type=int, default=151, help="private server's")
    parser.add_argument("--out", type=Path, help="JSON + PNG directory")
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--allow-busy", action="store_true", help="run above --max-load")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--keep-logs", action="store_true", help="keep the gunicorn logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
        # 5 phases x (1 + 2) s: at most 15 s of load per configuration
        args.warmup = min(args.warmup, 1.0)
        args.duration = min(args.duration, 2.0)
        args.grace = min(args.grace, 2.0)
        args.tail = min(args.tail, 1.0)
        args.drain = min(args.drain, 5.0)
    args.configs = [k.strip() for k in args.configs.split(",") if k.strip()]
    args.phases = [k.strip() for k in args.phases.split(",") if k.strip()]
    unknown = [k for k in args.configs if k not in CONFIGS] + [
        k for k in args.phases if k not in PHASES
    ]
    if unknown:
        parser.error(f"unknown configuration or phase: {', '.join(unknown)}")
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    return args


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every started process is stopped."""

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (scripts/ensure-system-deps.sh wrk)", file=sys.stderr)
        return 1
    quiet = check_quiet(args.max_load, args.allow_busy)
    if quiet is None:
        return 1
    load, busy = quiet
    if args.quick:
        print("SMOKE RUN (--quick): short windows, one round; the figures are not measurements\n")
    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    keep = args.keep_logs
    try:
        with _terminate_as_interrupt(), contextlib.ExitStack() as stack:
            result = run_benchmark(args, tmp, stack)
    except BenchError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        keep = True
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: every started process was stopped", file=sys.stderr)
        return 130
    finally:
        if keep:
            print(f"(logs kept in {tmp}: the services' gunicorn logs)", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    result.update(
        command=" ".join([Path(sys.executable).name, "bench/service_load.py", *sys.argv[1:]])
        if argv is None
        else " ".join(["bench/service_load.py", *argv]),
        quick=args.quick,
        busy=busy,
        load_at_start=load,
        cpus=os.cpu_count(),
        python=platform.python_version(),
        machine=platform.machine(),
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        configs={k: {"label": CONFIGS[k].label, "env": CONFIGS[k].env} for k in args.configs},
    )
    print(tables(result, args.phases, args.configs))
    found = targets(result, args.workers)
    print(format_targets(found))
    result["targets"] = [t.__dict__ for t in found]
    args.out.mkdir(parents=True, exist_ok=True)
    latencies = {
        (r["round"], r["config"], r["phase"]): r.pop("_latencies") for r in result["records"]
    }
    path = args.out / "service_load.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if not args.no_plots:
        from _plots import plot_phases

        for written in plot_phases(result, latencies, args.out, median_rows(result["records"])):
            print(f"wrote {written.relative_to(ROOT) if written.is_relative_to(ROOT) else written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
