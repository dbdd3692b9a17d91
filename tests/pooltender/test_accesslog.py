"""pooltender.accesslog.AccessLogger: gunicorn's access lines, byte for byte, from atoms built
on demand; refusals of the admission middleware counted in a WARNING summary instead of a
line each -- in one process against gunicorn's own ``Logger``, and in real gunicorn."""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

gunicorn_config = pytest.importorskip("gunicorn.config")
from gunicorn.glogging import Logger  # noqa: E402

from pooltender.accesslog import AccessLogger  # noqa: E402
from pooltender.admission.middleware import REFUSED_KEY  # noqa: E402
from tests._serve import coupons_serve_refusing  # noqa: E402
from tests.pooltender._servers import free_port  # noqa: E402

FORMATS = [
    None,  # gunicorn's default: %(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"
    "%(h)s %(m)s %(U)s?%(q)s %(H)s %(s)s %(B)s %(T)s %(D)s %(M)s %(L)s %(p)s",
    "%({x-request-id}i)s %({X-REQUEST-ID}i)s %({content-type}o)s %({remote_addr}e)s",
    "%({missing}i)s %({missing}o)s %({missing}e)s %(nosuch)s %({bad)s %(u)s",
    '"%(r)s" "%(a)s" "%(f)s" %({quoted}i)s',
]


@pytest.fixture(autouse=True)
def _close_gunicorn_handlers() -> Iterator[None]:
    """gunicorn's loggers are process-wide: close the files a test's logger opened."""
    yield
    for name in ("gunicorn.access", "gunicorn.error"):
        for handler in list(logging.getLogger(name).handlers):
            handler.close()
            logging.getLogger(name).removeHandler(handler)


class _Response:
    def __init__(self, status: str, sent: int | None, headers: list[tuple[str, str]]) -> None:
        self.status, self.sent, self.headers = status, sent, headers


class _Request:
    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers


def _environ(**extra: str) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "RAW_URI": "/api/v1/redemptions?x=1",
        "PATH_INFO": "/api/v1/redemptions",
        "QUERY_STRING": "x=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_USER_AGENT": 'curl/8 "quoted"',
        "HTTP_REFERER": "http://example.test/",
        "wsgi.url_scheme": "http",
    }
    environ.update(extra)
    return environ


def _logger(cls: type[Logger], path: Path, fmt: str | None) -> Logger:
    cfg = gunicorn_config.Config()
    cfg.set("accesslog", str(path))
    cfg.set("errorlog", str(path.with_suffix(".err")))
    if fmt is not None:
        cfg.set("access_log_format", fmt)
    logger = cls(cfg)
    logger.now = lambda: "[01/Dec/2026:12:00:00 +0000]"  # both loggers, one clock reading
    # pytest's log capture adds its own handler, with which logging must write the lines;
    # without it the access logger has gunicorn's handler alone, as in gunicorn
    for handler in list(logger.access_log.handlers):
        if not getattr(handler, "_gunicorn", False):
            logger.access_log.removeHandler(handler)
    if isinstance(logger, AccessLogger):
        logger._direct = logger._direct_handler()
    return logger


def _lines(cls: type[Logger], path: Path, fmt: str | None, calls: list[tuple]) -> list[str]:
    logger = _logger(cls, path, fmt)
    for call in calls:
        logger.access(*call)
    for handler in logger.access_log.handlers:
        handler.flush()
    text = path.read_text()
    for handler in list(logger.access_log.handlers) + list(logger.error_log.handlers):
        handler.close()
    return text.splitlines()


def _call(
    headers: list[tuple[str, str]], environ: dict[str, Any], status: str = "201 CREATED"
) -> tuple:
    response = _Response(status, 87, [("Content-Type", "application/json"), ("X-Q", 'a"b')])
    return (response, _Request(headers), environ, datetime.timedelta(seconds=1, microseconds=2345))


@pytest.mark.parametrize("fmt", FORMATS)
def test_lines_are_gunicorns_own_for_every_kind_of_atom(tmp_path: Path, fmt: str | None) -> None:
    headers = [
        ("X-REQUEST-ID", "first"),
        ("X-REQUEST-ID", "second"),  # repeated: the last one wins, as in gunicorn
        ("QUOTED", 'say "hi"'),
        ("AUTHORIZATION", "Basic dXNlcjpwYXNz"),  # user:pass -> %(u)s is "user"
    ]
    calls = [
        _call(headers, _environ(HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz")),
        _call([], _environ(), status="404 NOT FOUND"),
        (_Response("200 OK", None, []), _Request([]), _environ(), datetime.timedelta(0)),
    ]
    ours = _lines(AccessLogger, tmp_path / "ours.log", fmt, calls)
    theirs = _lines(Logger, tmp_path / "theirs.log", fmt, calls)
    assert len(theirs) == 3
    assert ours == theirs


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(st.sampled_from(["X-A", "x-a", "X-B", "Accept"]), max_size=4),
    values=st.lists(st.text(alphabet='ab" \\-', max_size=6), min_size=4, max_size=4),
    agent=st.text(alphabet='ab" \\', max_size=8),
)
def test_header_and_environ_atoms_match_gunicorn_for_any_values(
    tmp_path: Path, names: list[str], values: list[str], agent: str
) -> None:
    fmt = "%({x-a}i)s|%({x-b}i)s|%({accept}i)s|%({http_user_agent}e)s|%(a)s|%({x-q}o)s"
    headers = [(name.upper(), value) for name, value in zip(names, values, strict=False)]
    calls = [_call(headers, _environ(HTTP_USER_AGENT=agent))]
    stamp = str(time.monotonic_ns())
    ours = _lines(AccessLogger, tmp_path / f"o{stamp}.log", fmt, calls)
    theirs = _lines(Logger, tmp_path / f"t{stamp}.log", fmt, calls)
    assert ours == theirs


def test_refusals_write_no_line_and_are_summarized_on_the_error_log(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    logger = _logger(AccessLogger, path, None)
    logger.summary_interval = 0.2
    refused = _environ(**{REFUSED_KEY: "standing_queue"})
    logger.access(*_call([], refused, status="503 Service Unavailable"))  # the first: at once
    for _ in range(4):
        logger.access(*_call([], dict(refused), status="503 Service Unavailable"))
    logger.access(*_call([], _environ(**{REFUSED_KEY: "queue_timeout"}), status="503 X"))
    assert logger.refusals_pending() == {"standing_queue": 4, "queue_timeout": 1}
    logger.access(*_call([], _environ()))  # an admitted request: one line
    logger.access(*_call([], _environ(), status="503 SERVICE UNAVAILABLE"))  # the app's own
    time.sleep(0.25)
    logger.access(*_call([], _environ()))  # past the interval: this request writes the summary
    assert logger.refusals_pending() == {}
    for handler in logger.access_log.handlers + logger.error_log.handlers:
        handler.flush()
    lines = path.read_text().splitlines()
    assert [line.split('"')[2].split()[0] for line in lines] == ["201", "503", "201"]
    errors = [
        line for line in path.with_suffix(".err").read_text().splitlines() if "WARNING" in line
    ]
    assert len(errors) == 2, errors
    assert "refused 1 request(s)" in errors[0]
    assert "(standing_queue 1)" in errors[0]
    assert "refused 5 request(s)" in errors[1]
    assert "(queue_timeout 1, standing_queue 4)" in errors[1]


def test_concurrent_refusals_are_all_counted(tmp_path: Path) -> None:
    logger = _logger(AccessLogger, tmp_path / "a.log", None)
    logger.summary_interval = 3600.0
    logger.access(*_call([], _environ(**{REFUSED_KEY: "queue_full"}), status="503 X"))  # first
    start = threading.Barrier(8)

    def refuse() -> None:
        start.wait()
        for _ in range(500):
            logger.access(*_call([], _environ(**{REFUSED_KEY: "queue_full"}), status="503 X"))

    threads = [threading.Thread(target=refuse) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert logger.refusals_pending() == {"queue_full": 4000}


# ------------------------------------------------------------------ in real gunicorn


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``coupons serve`` (pooltender's gthread worker): admission fixed at 1, no queue."""
    port = free_port()
    with coupons_serve_refusing(tmp_path, port) as log:
        yield f"http://127.0.0.1:{port}", log


def _post_login(url: str) -> int:
    body = json.dumps({"email": "nobody@example.test", "password": "not-the-password"}).encode()
    request = urllib.request.Request(  # noqa: S310 - a local test server
        f"{url}/api/v1/auth/login", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_coupons_serve_logs_served_requests_and_summarizes_refusals(
    served: tuple[str, Path],
) -> None:
    url, log = served
    statuses: list[int] = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(5):
            status = _post_login(url)
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = statuses.count(503)
    answered = len(statuses) - refused
    assert refused > 0, statuses  # eight clients against a limit of 1 and no queue
    assert answered > 0, statuses
    deadline = time.monotonic() + 10
    while True:
        text = log.read_text(errors="replace")
        access = [line for line in text.splitlines() if '"POST /api/v1/auth/login' in line]
        if len(access) >= answered or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(access) == answered  # one access line per request the app answered
    assert not any('" 503 ' in line for line in access)  # and none per refusal
    summaries = [line for line in text.splitlines() if "pooltender admission refused" in line]
    assert summaries, text[-2000:]  # the first refusal is reported at once
    assert "[WARNING]" in summaries[0]
    assert "not-the-password" not in text


def test_lines_go_straight_to_gunicorns_file_and_whole_under_threads(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    logger = _logger(AccessLogger, path, None)
    assert logger._direct is logger.access_log.handlers[0]  # gunicorn's own FileHandler
    start = threading.Barrier(8)

    def write() -> None:
        start.wait()
        for _ in range(500):
            logger.access(*_call([("X", "y" * 300)], _environ()))

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 4000
    assert len(set(lines)) == 1  # every line whole: none torn by another thread's write


def test_any_other_handler_setup_goes_through_logging(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    logger = _logger(AccessLogger, path, None)
    seen: list[str] = []

    class Keep(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record.getMessage())
            return True

    logger.access_log.addFilter(Keep())
    previous = list(logger.access_log.handlers) + list(logger.error_log.handlers)
    try:
        logger.setup(logger.cfg)  # a reload re-decides (and replaces gunicorn's handler)
        for handler in previous:
            handler.close()
        assert logger._direct is None
        logger.now = lambda: "[01/Dec/2026:12:00:00 +0000]"
        logger.access(*_call([], _environ()))
    finally:
        for f in list(logger.access_log.filters):
            logger.access_log.removeFilter(f)
    assert len(seen) == 1  # the filter saw the record: logging wrote it
    assert seen[0] in path.read_text()
