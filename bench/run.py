"""``make bench``: the benchmarks of issue 10 in one run: ``python bench/run.py [--quick] [NAME]``.

In order (``NAME`` picks some; ``lint_speed`` and ``consumers`` run only when named):

``service_load``     the coupons service under gunicorn per pool configuration, closed and open
                     loop (bench/service_load.py); first, while the machine is still quiet --
                     it refuses to start above a 1-minute load average of 1.0
``request_cpu``      request CPU per endpoint next to the raw driver's floor, and pooltender's
                     own per-request cost (bench/request_cpu.py, when present)
``watch_overhead``   the pool watch's and liveness checks' cost per checkout + checkin
``fleet_before``     the post-mortem's BEFORE (200/500 + a second Session) next to AFTER on the
                     stand-in app (bench/fleet_connections.py): the service must never contain
                     that bug, so BEFORE is measured only there
``lint_speed``       ``pooltender lint`` over the standard library (not part of ``make bench``)
``consumers``        ``coupons consume`` with 1, 2, 4 processes on one RabbitMQ queue, hot
                     campaign vs spread (bench/consumers.py; not part of ``make bench``)

Each prints its own tables; this runner prints the load average and the time around each,
request_cpu's targets as MET / NOT MET at the end, and writes ``bench_run.json`` (exit
codes, times, load averages, request_cpu's JSON) next to the service benchmark's output
(docs/benchmarks/, or var/bench-quick/ with ``--quick``).
The whole default run is sized to finish in under 20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests._paths

from tests._paths import pythonpath

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ORDER = ("service_load", "request_cpu", "watch_overhead", "fleet_before")
OPTIONAL = ("lint_speed", "consumers")


def commands(quick: bool, out: Path, passthrough: list[str]) -> dict[str, list[str] | None]:
    """The command line of each benchmark (None: its script is not in this checkout)."""
    py = sys.executable
    request_cpu = HERE / "request_cpu.py"
    # --json OUT is the interface bench/run.py expects; an older script without it still runs
    cpu_json = (
        ["--json", str(out / "request_cpu.json")]
        if request_cpu.exists() and "--json" in request_cpu.read_text()
        else []
    )
    return {
        "service_load": [
            py,
            str(HERE / "service_load.py"),
            *(["--quick"] if quick else []),
            "--out",
            str(out),
            *passthrough,
        ],
        "request_cpu": (
            [
                py,
                str(request_cpu),
                *cpu_json,
                *(["--requests", "50", "--rounds", "1"] if quick else []),
            ]
            if request_cpu.exists()
            else None
        ),
        "watch_overhead": [
            py,
            str(HERE / "watch_overhead.py"),
            *(["--iterations", "2000", "--repeat", "1"] if quick else []),
        ],
        "fleet_before": [
            py,
            str(HERE / "fleet_connections.py"),
            "--configs",
            "before,after",
            "--limited",
            "before",
            "--duration",
            "3" if quick else "8",
        ],
        "lint_speed": [py, str(HERE / "lint_speed.py")],
        "consumers": [
            py,
            str(HERE / "consumers.py"),
            *(["--quick"] if quick else []),
            "--out",
            str(out / "consumers.json"),
            *passthrough,
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"of {', '.join(ORDER + OPTIONAL)}")
    parser.add_argument("--quick", action="store_true", help="a smoke run of every harness")
    parser.add_argument(
        "--allow-busy",
        action="store_true",
        help="let service_load run on a loaded machine (its figures are then not valid)",
    )
    args = parser.parse_args(argv)
    names = args.names or list(ORDER)
    unknown = [n for n in names if n not in ORDER + OPTIONAL]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    out = ROOT / ("var/bench-quick" if args.quick else "docs/benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath(env.get("PYTHONPATH"))
    cmds = commands(args.quick, out, ["--allow-busy"] if args.allow_busy else [])
    report: dict[str, Any] = {"quick": args.quick, "started_load": os.getloadavg(), "runs": []}
    started = time.monotonic()
    failed = 0
    for name in names:
        cmd = cmds[name]
        print(f"\n=== {name} === load average {_load()}", flush=True)
        if cmd is None:
            print(f"(skipped: bench/{name}.py is not in this checkout)")
            report["runs"].append({"name": name, "skipped": True})
            continue
        print("$ " + " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)))
        t = time.monotonic()
        try:
            code = subprocess.call(cmd, env=env, cwd=ROOT)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        elapsed = time.monotonic() - t
        failed += code != 0
        print(f"=== {name}: exit {code} in {elapsed:.0f} s, load average {_load()}", flush=True)
        report["runs"].append(
            {"name": name, "exit": code, "seconds": round(elapsed, 1), "load_after": _load()}
        )
    cpu_json = out / "request_cpu.json"
    if "request_cpu" in names and cpu_json.exists():
        report["request_cpu"] = json.loads(cpu_json.read_text())
    report["seconds"] = round(time.monotonic() - started, 1)
    (out / "bench_run.json").write_text(json.dumps(report, indent=1) + "\n")
    if "request_cpu" in report:
        print("\n" + "\n".join(request_cpu_summary(report["request_cpu"])))
    print(f"\nmake bench: {report['seconds']:.0f} s in all, {failed} failed")
    return 1 if failed else 0


def request_cpu_summary(document: dict[str, Any]) -> list[str]:
    """request_cpu's targets (from its ``--json`` document) as MET / NOT MET lines."""
    load = document.get("load_average", {})
    before, after = load.get("before", [0.0]), load.get("after", [0.0])
    lines = [f"request CPU targets (load average {before[0]:.2f} before, {after[0]:.2f} after):"]
    for row in document.get("targets", []):
        value = row["value"]
        shown = f"{value:.1%}" if row["limit"] < 1 else f"{value:.2f}x"
        lines.append(f"  {'MET' if row['met'] else 'NOT MET':<8} {row['target']}: {shown}")
    return lines


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    raise SystemExit(main())
