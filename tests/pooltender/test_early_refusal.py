"""Refusing before parsing: the limiter's ``screen`` (the decision ``acquire`` takes at once,
with requests in transit counted as waiting), the middleware's ``refuse_early`` (its own 503
as raw bytes, exempt paths never refused), ``plain_request``'s framing rules, and
``pooltender.gthread.ThreadWorker`` in real gunicorn answering refusals from its poller on
kept-alive and new connections."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pooltender.admission import AdmissionLimiter, AdmissionMiddleware, FixedLimit, Overloaded
from pooltender.admission.middleware import mark_screened
from tests._serve import coupons_serve_refusing
from tests.pooltender._servers import free_port

pytest.importorskip("gunicorn")
from pooltender.gthread import plain_request


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ the limiter's screen


def test_screen_passes_requests_on_while_there_is_capacity() -> None:
    lim = AdmissionLimiter(FixedLimit(2))
    assert lim.screen() == (None, False)  # nothing in flight: not even a reservation
    held = lim.acquire()
    assert lim.screen() == (None, False)  # one slot still free
    held.release()
    assert lim.stats().shed_total == 0


def test_screen_refuses_what_acquire_would_refuse_at_once() -> None:
    clock = Clock()
    lim = AdmissionLimiter(FixedLimit(1), max_queue=0, clock=clock)
    held = lim.acquire()
    refused, reserved = lim.screen()
    assert isinstance(refused, Overloaded)
    assert (refused.reason, refused.waited, reserved) == ("queue_full", 0.0, False)
    with pytest.raises(Overloaded) as direct:
        lim.acquire()
    assert direct.value.reason == "queue_full"  # the same decision
    held.release()
    assert lim.stats().shed == {"queue_full": 2, "standing_queue": 0, "queue_timeout": 0}


def test_requests_in_transit_count_as_waiting_until_they_arrive_or_expire() -> None:
    """Limit 1, a standing queue with a backlog of 1: the first request screened while the
    slot is taken is passed on with a reservation; the next is refused because the first
    counts as waiting; once the first arrives (acquire(screened=True)) it waits in the
    queue itself; a reservation that never arrives expires after the interval."""
    clock = Clock()
    lim = AdmissionLimiter(
        FixedLimit(1), target=30.0, interval=0.1, timeout=30.0, standing_backlog=1, clock=clock
    )
    held = lim.acquire()
    lim._last_shed = clock.now  # a refusal just happened: the queue counts as standing
    assert lim.stats().standing
    assert lim.screen() == (None, True)  # passed on, reserved
    refused, reserved = lim.screen()
    assert refused is not None
    assert refused.reason == "standing_queue"
    assert not reserved
    result: list[Any] = []
    waiter = threading.Thread(target=lambda: result.append(lim.acquire(screened=True)))
    waiter.start()
    deadline = time.monotonic() + 30
    while lim.stats().queue_length != 1:
        assert time.monotonic() < deadline, "the screened request never queued"
        time.sleep(0.005)
    assert not lim._transit  # its reservation was taken when it queued
    refused, _ = lim.screen()
    assert refused is not None  # the queue itself now holds the backlog
    held.release()
    waiter.join(timeout=30)
    result[0].release()
    # a reservation whose request never arrives stops counting after the interval
    held = lim.acquire()
    lim._last_shed = clock.now
    assert lim.screen() == (None, True)
    assert lim.screen()[0] is not None
    clock.now += 0.2
    lim._last_shed = clock.now
    assert lim.screen() == (None, True)  # the stale reservation expired
    held.release()


def test_middleware_refuse_early_returns_its_own_503_and_skips_exempt_paths() -> None:
    lim = AdmissionLimiter(FixedLimit(1), max_queue=0)
    middleware = AdmissionMiddleware(
        lambda environ, start_response: [b""],
        lim,
        exempt=("/healthz", "/metrics"),
        retry_after=2,
        retry_after_jitter=0,
    )
    assert middleware in AdmissionMiddleware.in_process()
    assert middleware.refuse_early("/api/v1/x") is False  # capacity: passed on
    held = lim.acquire()
    assert middleware.refuse_early("/healthz") is False  # exempt, even when full
    assert middleware.refuse_early("/metrics/x") is False
    refusal = middleware.refuse_early("/api/v1/x")
    assert isinstance(refusal, tuple)
    reason, raw = refusal
    assert reason == "queue_full"
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n"))
    assert headers[b"Retry-After"] == b"2"
    assert headers[b"Content-Type"] == b"application/json"
    assert int(headers[b"Content-Length"]) == len(body)
    assert json.loads(body)["error"]["code"] == "overloaded"
    held.release()
    assert lim.stats().shed["queue_full"] == 1


def test_mark_screened_reaches_the_next_admission_on_this_thread_only() -> None:
    lim = AdmissionLimiter(FixedLimit(1))
    seen: list[bool] = []
    original = lim.acquire

    def spy(*, screened: bool = False) -> Any:
        seen.append(screened)
        return original(screened=screened)

    lim.acquire = spy  # type: ignore[method-assign]
    middleware = AdmissionMiddleware(lambda environ, start_response: [b"ok"], lim)
    mark_screened()
    other = threading.Thread(target=lambda: middleware({"PATH_INFO": "/a"}, lambda *a: None))
    other.start()
    other.join()
    middleware({"PATH_INFO": "/a"}, lambda *a: None)
    middleware({"PATH_INFO": "/a"}, lambda *a: None)
    assert seen == [False, True, False]  # the other thread's; this one's, once


# ------------------------------------------------------------------ plain_request

BODY = b'{"code":"ABC"}'
PLAIN = (
    b"POST /api/v1/redemptions?x=1 HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
    b"Content-Length: 14\r\n\r\n" + BODY
)

GET = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"

CASES = [
    ("plain POST", PLAIN, ("/api/v1/redemptions", len(PLAIN))),
    ("plain GET", GET, ("/a", len(GET))),
    (
        "lower-case names",
        PLAIN.replace(b"Content-Length", b"content-length"),
        ("/api/v1/redemptions", len(PLAIN)),
    ),
    ("partial body", PLAIN[:-1], None),
    ("partial head", PLAIN[:30], None),
    ("pipelined", PLAIN + b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", None),
    ("HEAD", PLAIN.replace(b"POST", b"HEAD", 1), None),
    ("HTTP/1.0", PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0", 1), None),
    ("chunked", PLAIN.replace(b"Content-Length: 14", b"Transfer-Encoding: chunked"), None),
    ("expect", PLAIN.replace(b"Host: h", b"Expect: 100-continue"), None),
    ("upgrade", PLAIN.replace(b"Host: h", b"Upgrade: h2c"), None),
    ("connection close", PLAIN.replace(b"Host: h", b"Connection: close"), None),
    ("two lengths", PLAIN.replace(b"Host: h", b"Content-Length: 14"), None),
    ("bad length", PLAIN.replace(b"Length: 14", b"Length: +14"), None),
    ("space before colon", PLAIN.replace(b"Host:", b"Host :"), None),
    ("no colon", PLAIN.replace(b"Host: h", b"Host h"), None),
    ("percent path", PLAIN.replace(b"/api/v1/", b"/api/v1%2F", 1), None),
    ("absolute form", PLAIN.replace(b"/api", b"http://h/api", 1), None),
    ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plain_request_accepts_only_one_complete_plain_request(
    data: bytes, expected: tuple[str, int] | None
) -> None:
    assert plain_request(data) == expected


# ------------------------------------------------------------------ in real gunicorn


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``coupons serve`` (pooltender's gthread worker): admission fixed at 1, no queue."""
    port = free_port()
    with coupons_serve_refusing(tmp_path, port) as log:
        yield port, log


def _login(conn: http.client.HTTPConnection) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"email": "nobody@example.test", "password": "not-the-password"})
    conn.request(
        "POST", "/api/v1/auth/login", body=body, headers={"Content-Type": "application/json"}
    )
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_the_poller_refuses_on_kept_alive_and_new_connections_and_they_stay_usable(
    served: tuple[int, Path],
) -> None:
    port, log = served
    refusals: list[tuple[dict[str, str], bytes]] = []
    answered = 0
    lock = threading.Lock()

    def client() -> None:
        nonlocal answered
        for _ in range(3):  # a new connection each round: first requests are screened too
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for _ in range(15):  # the same kept-alive connection, refused or not
                status, headers, body = _login(conn)
                with lock:
                    if status == 503:
                        refusals.append((headers, body))
                    else:
                        answered += 1
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert refusals, answered
    assert answered, len(refusals)
    for headers, body in refusals:
        assert headers["Retry-After"] in {"1", "2"}
        assert "Date" in headers
        assert json.loads(body)["error"]["code"] == "overloaded"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200  # exempt and idle: answered
    conn.close()
    time.sleep(10.5)  # the summary interval: the next refusal or request writes the summary
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    _login(conn)
    conn.close()
    deadline = time.monotonic() + 10
    early = 0
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        early = sum(
            int(part.split(" answered before parsing")[0].rsplit(" ", 1)[-1])
            for part in text.split("; ")[1:]
            if " answered before parsing" in part
        )
        if early:
            break
        time.sleep(0.2)
    assert early > 0, text[-3000:]  # refusals the poller answered itself
    assert early <= len(refusals)


# ------------------------------------------------------------------ any WSGI app, TLS

SLOW_APP = """
import time
from pooltender.admission import AdmissionLimiter, AdmissionMiddleware, FixedLimit

def slow(environ, start_response):
    time.sleep(0.02)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]

app = AdmissionMiddleware(slow, AdmissionLimiter(FixedLimit(1), max_queue=0), exempt=("/healthz",))
"""


@contextlib.contextmanager
def _gunicorn(tmp_path: Path, *extra: str) -> Iterator[tuple[int, Path]]:
    import os
    import subprocess
    import sys

    from tests._paths import pythonpath

    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{pythonpath()}"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1",
             "--threads", "8", "-k", "pooltender.gthread.ThreadWorker",
             "--logger-class", "pooltender.accesslog.AccessLogger", "--access-logfile", "-",
             *extra, "slowapp:app"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "Booting worker" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
        time.sleep(0.3)
        yield port, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _hammer(connect: Any) -> tuple[int, int]:
    counts = {"ok": 0, "refused": 0}
    lock = threading.Lock()

    def client() -> None:
        conn = connect()
        for _ in range(20):
            conn.request("GET", "/work")
            response = conn.getresponse()
            response.read()
            with lock:
                counts["ok" if response.status == 200 else "refused"] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts["ok"], counts["refused"]


def test_any_wsgi_app_behind_the_middleware_is_refused_from_the_poller(tmp_path: Path) -> None:
    """Not only coupons: a bare WSGI app wrapped in AdmissionMiddleware, served by
    ``-k pooltender.gthread.ThreadWorker``; the poller answers most of its refusals."""
    with _gunicorn(tmp_path) as (port, log):
        ok, refused = _hammer(lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=30))
        assert ok > 0
        assert refused > 0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        deadline = time.monotonic() + 15
        while "answered before parsing" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(11)  # the summary is written by the first request after 10 s
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/work")
            conn.getresponse().read()
            conn.close()


def test_under_tls_refusals_are_the_applications_and_the_worker_keeps_serving(
    tmp_path: Path,
) -> None:
    """With ``--certfile`` the poller cannot read the request: no early refusals, no crash."""
    import shutil
    import ssl
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with _gunicorn(tmp_path, "--certfile", str(cert), "--keyfile", str(key)) as (port, log):
        ok, refused = _hammer(
            lambda: http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
        )
        assert ok > 0
        assert refused > 0  # the middleware's own 503s, from the threads
        text = log.read_text(errors="replace")
        assert "answered before parsing" not in text
        assert "Traceback" not in text, text[-2000:]
