"""The quiet-machine rule every benchmark here follows: read the load average first.

A figure measured beside other work is not a figure. :func:`check_quiet` prints the
1-minute / 5-minute / 15-minute load average, refuses (returns ``None``) above
``max_load`` unless ``allow_busy`` was given, and otherwise returns the load and whether the
run is marked busy, so that every output of a busy run can say its figures are not valid.
"""

from __future__ import annotations

import os
import sys

LoadAverage = tuple[float, float, float]


def load_avg() -> LoadAverage:
    """``os.getloadavg()`` rounded to hundredths (what the outputs record)."""
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def fmt_load(load: LoadAverage) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def check_quiet(max_load: float, allow_busy: bool) -> tuple[LoadAverage, bool] | None:
    """Print the load average; ``None`` when the machine is busy and that is not allowed."""
    load = load_avg()
    print(f"load average before the benchmark: {fmt_load(load)} ({os.cpu_count()} CPUs)")
    busy = load[0] > max_load
    if busy and not allow_busy:
        print(
            f"error: the 1-minute load average is {load[0]:.2f} (> {max_load}); a figure "
            "from a loaded machine is not a figure. Stop what else runs, or pass --allow-busy "
            "for a run whose figures are not valid.",
            file=sys.stderr,
        )
        return None
    if busy:
        print(
            f"\n!!! WARNING: load average {load[0]:.2f} > {max_load}: the machine is busy; "
            "THESE FIGURES ARE NOT VALID (harness check only) !!!\n"
        )
    return load, busy
