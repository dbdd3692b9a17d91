"""PNG plots of bench/service_load.py's runs (matplotlib, Agg backend): per phase, the
service's server connections over the run and the distribution of admitted latencies, one
line per configuration, from the median round of each (the rows of the printed tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_phases(
    result: dict[str, Any],
    latencies: dict[tuple[int, str, str], list[float]],
    out: Path,
    rows: dict[tuple[str, str], dict[str, Any]],
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {k: v["label"] for k, v in result["configs"].items()}
    phases = list(dict.fromkeys(r["phase"] for r in result["records"]))
    written = []
    note = " (SMOKE RUN: not a measurement)" if result.get("quick") or result.get("busy") else ""
    for phase in phases:
        fig, (conns, dist) = plt.subplots(1, 2, figsize=(12, 4.5))
        for config in labels:
            row = rows.get((phase, config))
            if row is None:
                continue
            t = [p[0] for p in row["timeline"]]
            conns.step(t, [p[1] for p in row["timeline"]], where="post", label=labels[config])
            values = sorted(latencies.get((row["round"], config, phase), []))
            if values:
                n = len(values)
                dist.plot(values, [1 - i / n for i in range(n)], label=labels[config])
        window = result["settings"]["duration"]
        conns.axvspan(0, window, color="grey", alpha=0.1, label="measured window")
        conns.set_xlabel("seconds from the start of the measured window")
        conns.set_ylabel("server connections of the service (processlist)")
        conns.set_title(f"{phase}: connections over time")
        conns.legend(fontsize="small")
        dist.set_xscale("log")
        dist.set_yscale("log")
        dist.set_xlabel("latency of admitted requests, ms (client side)")
        dist.set_ylabel("fraction slower (1 - CDF)")
        dist.set_title(f"{phase}: latency distribution")
        dist.legend(fontsize="small")
        fig.suptitle(f"coupons service, {phase}{note}")
        fig.tight_layout()
        path = out / f"service_{phase.replace('+', '_')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
