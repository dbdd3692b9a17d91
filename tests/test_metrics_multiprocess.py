"""``coupons serve`` sets up prometheus-client's multiprocess mode, so ``/metrics`` counters are
fleet-wide sums that never go backwards, whichever worker answers and when workers are recycled.

Real gunicorn (two gthread workers) on a SQLite file, real HTTP from several threads so both
workers serve traffic, one worker killed with SIGTERM (gunicorn replaces it) twice between
scrapes; 20 scrapes, every counter sample (``*_total``, histogram ``_count`` / ``_bucket`` /
``_sum``) at least what it was in the scrape before. Before issue 13 the counters read by two
scrapes depended on the worker that answered (48, 48, 43, ...).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests._serve import children, coupons_serve, serve_env
from tests.pooltender._servers import free_port

SCRAPES = 20
#: scrape numbers after which one worker is killed (gunicorn starts a new one)
RECYCLE_AFTER = (6, 13)


#: The scraper's bearer token (POOLTENDER_METRICS_TOKEN): /metrics goes through the guard.
METRICS_TOKEN = "a-scraper-token-for-this-test-only"


def _get(url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    wanted = urllib.request.Request(url, headers=headers)  # noqa: S310 - local test server
    with urllib.request.urlopen(wanted, timeout=20) as response:  # noqa: S310
        return str(response.read().decode())


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(): value.decode() for key, value in pairs}


class Served:
    def __init__(self, process: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.process = process
        self.base = base
        self.log = log

    @property
    def master(self) -> int:
        (master,) = children(self.process.pid)
        return master

    def workers(self) -> list[int]:
        return sorted(children(self.master))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    env = serve_env(f"sqlite:///{tmp_path / 'serve.db'}", POOLTENDER_METRICS_TOKEN=METRICS_TOKEN)
    log = tmp_path / "gunicorn.log"
    args = ["--workers", "2", "--threads", "2"]
    ready = lambda process: len(Served(process, "", log).workers()) == 2  # noqa: E731
    with coupons_serve(port, args, env, log, ready=ready) as process:
        yield Served(process, f"http://127.0.0.1:{port}", log)


def traffic(base: str, requests: int = 24, threads: int = 6) -> None:
    """Concurrent /readyz requests (each checks out a connection), spread over the workers."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(requests // threads):
                _get(f"{base}/readyz")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(60)
    assert not errors, errors


def counter_samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body):
        if family.type not in ("counter", "histogram"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_created", "_gcount", "_gsum")):
                continue
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def wait_for_replacement(served: Served, dead: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = served.workers()
        if dead not in workers and len(workers) == 2:
            return
        time.sleep(0.1)
    pytest.fail(f"gunicorn did not replace worker {dead}:\n{served.log.read_text()}")


def test_counters_never_drop_across_workers_and_recycling(served: Served) -> None:
    metrics_dir = Path(environ_of(served.master)["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir.is_dir()
    assert metrics_dir.name.startswith("coupons-metrics-")  # coupons serve made a fresh one

    # traffic until both workers have served requests (each writes its own counter file)
    first = served.workers()
    deadline = time.monotonic() + 60
    while not all((metrics_dir / f"counter_{pid}.db").exists() for pid in first):
        assert time.monotonic() < deadline, f"not every worker got traffic: {first}"
        traffic(served.base)
    # a worker mirrors its pool counters at most once a second after requests (and at a
    # scrape it answers itself): wait until the pool's counter is in the aggregate
    checkouts = ("pooltender_pool_checkouts_total", (("engine", "default"),))
    while checkouts not in counter_samples(_get(f"{served.base}/metrics", METRICS_TOKEN)):
        assert time.monotonic() < deadline, "no pool checkouts in /metrics"
        traffic(served.base)
        time.sleep(0.2)

    with pytest.raises(urllib.error.HTTPError) as anonymous:  # /metrics goes through the guard
        _get(f"{served.base}/metrics")
    assert anonymous.value.code in (401, 403)

    scrapes: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []
    killed: list[int] = []
    for number in range(1, SCRAPES + 1):
        traffic(served.base, requests=12)
        scrapes.append(counter_samples(_get(f"{served.base}/metrics", METRICS_TOKEN)))
        if number in RECYCLE_AFTER:
            victim = served.workers()[0]
            os.kill(victim, signal.SIGTERM)  # gunicorn's graceful worker exit; it forks a new one
            wait_for_replacement(served, victim)
            killed.append(victim)

    assert all(checkouts in scrape for scrape in scrapes)
    assert scrapes[-1][checkouts] > scrapes[0][checkouts]
    for before, after, number in zip(scrapes, scrapes[1:], range(2, SCRAPES + 1), strict=False):
        for key, value in before.items():
            assert key in after, f"scrape {number}: {key} disappeared"
            assert after[key] >= value, f"scrape {number}: {key} went from {value} to {after[key]}"

    for pid in killed:  # live gauges of dead workers are gone, their counters kept
        assert not list(metrics_dir.glob(f"gauge_live*_{pid}.db")), pid
        assert (metrics_dir / f"counter_{pid}.db").exists(), pid

    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=60) == 0
    assert not metrics_dir.exists()  # removed at exit
