"""``pooltender lint`` throughput in lines per second over the running interpreter's stdlib.

    .venv/bin/python bench/lint_speed.py [--jobs N] [--all-rules] [--path DIR]

Lints every ``*.py`` under ``sysconfig.get_paths()["stdlib"]`` (``site-packages`` excluded)
with every rule selected and reports files, lines, wall seconds, lines per second and the
number of internal errors (POL999, must be 0). Two modes:

* default -- what the CLI does: every file is parsed with the standard library's ``ast`` (C
  speed) for the project's function summaries and for each rule's necessary condition
  (``pooltender.lint.prefilter``); libcst parses only the files where a selected rule can fire;
* ``--all-rules`` -- every rule on every file (libcst parse plus one tree walk per file), the
  worst case, as for a codebase where every file talks to the database.

Nothing is written (no ``--fix``). Wall time includes process start-up of the workers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sysconfig
import time
from pathlib import Path

from pooltender.lint.config import default_config
from pooltender.lint.engine import lint_paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--all-rules", action="store_true")
    parser.add_argument("--path", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    args = parser.parse_args()
    config = default_config(exclude=("site-packages", "__pycache__"))
    start = time.perf_counter()
    report = lint_paths([args.path], config, all_rules=args.all_rules, jobs=args.jobs)
    seconds = time.perf_counter() - start
    mode = "all rules on every file" if args.all_rules else "default (trigger prefilter)"
    print(f"python {platform.python_version()} on {platform.machine()}, {args.jobs} job(s)")
    print(f"mode: {mode}; path: {args.path}")
    print(f"files: {report.files}  lines: {report.lines}  seconds: {seconds:.1f}")
    print(f"lines/s: {report.lines / seconds:,.0f}")
    print(f"internal errors (POL999): {len(report.crashes)}")
    return 1 if report.crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
