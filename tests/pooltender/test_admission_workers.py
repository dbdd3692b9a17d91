"""Admission control under each worker model: gevent greenlets (monkey-patched, in a
subprocess so this test process stays unpatched) and real gunicorn started by
``coupons serve --worker-class gthread|gevent|sync`` on a free port.

(Threads -- the gthread model -- are what tests/pooltender/test_admission.py uses throughout.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._paths import pythonpath
from tests._serve import coupons_serve, serve_env
from tests.pooltender._servers import free_port

SRC = pythonpath()
ROOT = str(Path(__file__).resolve().parents[2])

GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json

    import gevent

    from pooltender.admission import AdmissionLimiter, FixedLimit, Overloaded
    from pooltender.admission.limiter import _Waiter

    lim = AdmissionLimiter(FixedLimit(2), timeout=30, interval=30, max_queue=200)
    inside = high = 0

    def request(_):
        global inside, high
        admission = lim.acquire()
        inside += 1
        high = max(high, inside)
        gevent.sleep(0.002)  # cooperative: other greenlets run, and queue
        inside -= 1
        admission.release()

    gevent.joinall([gevent.spawn(request, i) for i in range(100)], timeout=60, raise_error=True)
    drained = lim.stats()

    # a standing queue under gevent: one holder, one early waiter, then a newcomer is shed
    standing = AdmissionLimiter(FixedLimit(1), target=0.005, interval=0.05, timeout=30)
    held = standing.acquire()
    early = gevent.spawn(standing.acquire)
    gevent.sleep(0.2)  # the early waiter sleeps on its gate without blocking the hub
    try:
        standing.acquire()
        reason = None
    except Overloaded as exc:
        reason = exc.reason
    queued_while_shed = standing.stats().queue_length
    held.release()
    early.get(timeout=30).release()

    print(json.dumps({
        "patched": monkey.is_module_patched("threading"),
        "gate": type(_Waiter().gate).__module__,
        "admitted": drained.admitted,
        "after_wait": drained.admitted_after_wait,
        "shed": drained.shed_total,
        "high": high,
        "reason": reason,
        "queued_while_shed": queued_while_shed,
        "in_flight_after": standing.stats().in_flight,
    }))
    """
)


def test_gevent_greenlets_queue_cooperatively_and_standing_queues_shed() -> None:
    pytest.importorskip("gevent")
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["patched"] is True
    assert result["gate"].startswith("gevent")  # the waiter sleeps on a gevent lock
    assert result["admitted"] == 100
    assert result["shed"] == 0
    assert result["after_wait"] > 0
    assert result["high"] <= 2
    assert result["reason"] == "standing_queue"
    assert result["queued_while_shed"] == 1
    assert result["in_flight_after"] == 0


#: The scraper's bearer token (POOLTENDER_METRICS_TOKEN): /metrics goes through the guard.
METRICS_TOKEN = "a-scraper-token-for-this-test-only"


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    wanted = urllib.request.Request(url, headers=headers)  # noqa: S310 - local test server
    with urllib.request.urlopen(wanted, timeout=10) as response:  # noqa: S310
        return response.status, response.read().decode()


@pytest.fixture(params=["gthread", "gevent", "sync"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """``coupons serve --worker-class <param>``: real gunicorn, one worker, on a free port."""
    worker_class = request.param
    if worker_class == "gevent":
        pytest.importorskip("gevent")
    port = free_port()
    # admission settings reach the workers through the environment, as in production
    env = serve_env(
        f"sqlite:///{tmp_path / 'serve.db'}",
        POOLTENDER_ADMISSION_LIMIT="fixed",
        POOLTENDER_ADMISSION_INITIAL="3",
        POOLTENDER_METRICS_TOKEN=METRICS_TOKEN,
    )
    log = tmp_path / "gunicorn.log"
    args = ["--workers", "1", "--threads", "4", "--worker-class", worker_class]
    with coupons_serve(port, args, env, log, timeout=60, stop_timeout=30):
        yield worker_class, f"http://127.0.0.1:{port}", log


def test_coupons_serve_admits_requests_under_each_worker_class(
    served: tuple[str, str, Path],
) -> None:
    worker_class, base, log = served
    status, body = _get(f"{base}/openapi.json")  # not exempt: through the limiter
    assert status == 200
    assert json.loads(body)["info"]["title"] == "Coupons"
    status, metrics = _get(f"{base}/metrics", METRICS_TOKEN)  # exempt from admission
    assert status == 200
    admitted = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("pooltender_admission_admitted_total")
    ]
    assert admitted
    assert admitted[0] >= 1  # the worker ran the request through admission control
    limit = [line for line in metrics.splitlines() if line.startswith("pooltender_admission_limit")]
    assert limit == ["pooltender_admission_limit 3.0"]  # POOLTENDER_ADMISSION_* from the env
    # gunicorn's own start-up line; gthread is pooltender's subclass (pooltender.gthread)
    expected = {"gthread": "pooltender.gthread.ThreadWorker"}.get(worker_class, worker_class)
    assert f"Using worker: {expected}" in log.read_text()


MIRROR_SCRIPT = textwrap.dedent(
    """
    import json

    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    from pooltender.admission import AdmissionLimiter, FixedLimit, Overloaded
    from pooltender.admission.metrics import AdmissionMirror

    lim = AdmissionLimiter(FixedLimit(2), max_queue=0)
    mirror = AdmissionMirror(lim.stats)
    held = [lim.acquire(), lim.acquire()]
    for _ in range(3):
        try:
            lim.acquire()
        except Overloaded:
            pass
    mirror.sync(force=True)
    for admission in held:
        admission.release()
    lim.acquire().release()
    mirror.sync(force=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    print(generate_latest(registry).decode())
    """
)


def test_the_multiprocess_mirror_writes_what_a_gunicorn_scrape_reads(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    env = {**os.environ, "PYTHONPATH": SRC, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", MIRROR_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(done.stdout)
        for s in family.samples
    }
    assert samples[("pooltender_admission_limit", ())] == 2
    assert samples[("pooltender_admission_in_flight", ())] == 0
    assert samples[("pooltender_admission_admitted_total", ())] == 3
    assert samples[("pooltender_admission_shed_total", (("reason", "queue_full"),))] == 3
    assert samples[("pooltender_admission_shed_total", (("reason", "standing_queue"),))] == 0
    count = ("pooltender_admission_queue_wait_seconds_count", (("outcome", "shed"),))
    assert samples[count] == 3
    edges = {
        dict(labels)["le"]
        for name, labels in samples
        if name == "pooltender_admission_queue_wait_seconds_bucket"
    }
    assert {"0.05", "0.075", "0.1", "0.125", "0.15", "0.25"} <= edges  # the mirror's too


def test_coupons_serve_refuses_a_bad_admission_setting_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from coupons.cli import main

    result = CliRunner().invoke(
        main,
        ["serve", "--port", str(free_port())],
        env={
            "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
            "POOLTENDER_ADMISSION_LIMIT": "adaptive",
        },
    )
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "POOLTENDER_ADMISSION_LIMIT='adaptive'" in lines[0]
    assert "gradient2" in lines[0]
