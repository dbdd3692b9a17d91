"""``coupons serve`` for real in a test: gunicorn in a child process on a free port, waited
for until it answers, stopped with SIGTERM (then SIGKILL) however the test ends; and
``coupons demo --no-serve`` as a newcomer runs it (:func:`run_demo`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests._paths import pythonpath

SECRET = "a-test-secret-that-is-at-least-32-characters-long"


def serve_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a served test app: this checkout's code, ``database_url``,
    development mode, a fixed secret, a multiprocess dir of ``coupons serve``'s own."""
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath(),
        "DATABASE_URL": database_url,
        "COUPONS_ENV": "development",
        "SECRET_KEY": SECRET,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # coupons serve must make its own
    env.update(extra)
    return env


def newcomer_env() -> dict[str, str]:
    """A newcomer's environment: this checkout's code, development mode, and no database,
    broker, dashboard or secret setting."""
    env = {**os.environ, "PYTHONPATH": pythonpath(), "COUPONS_ENV": "development"}
    for key in ("DATABASE_URL", "BROKER_URL", "POOLTENDER_DASHBOARD", "SECRET_KEY"):
        env.pop(key, None)
    return env


def run_demo(cwd: Path, port: int = 8765) -> subprocess.CompletedProcess[str]:
    """``coupons demo --no-serve`` in ``cwd`` in :func:`newcomer_env`; asserts it exited 0."""
    env = newcomer_env()
    done = subprocess.run(
        [sys.executable, "-c", "from coupons.cli import main; main()", "demo", "--no-serve"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "PORT": str(port)},
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


@contextmanager
def coupons_serve(
    port: int,
    args: list[str],
    env: Mapping[str, str],
    log: Path,
    *,
    ready: Callable[[subprocess.Popen[bytes]], bool] = lambda _process: True,
    timeout: float = 90.0,
    stop_timeout: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``coupons serve --port PORT *args``; yield once /healthz answers and ``ready``
    holds; fail the test with the log if it exits or does not come up within ``timeout``."""
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from coupons.cli import main; main()",
                "serve",
                "--port",
                str(port),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=log.parent,
        )
    try:
        deadline = time.monotonic() + timeout
        while not (_answers(port) and ready(process)):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def coupons_serve_refusing(tmp_path: Path, port: int) -> Iterator[Path]:
    """``coupons serve`` on SQLite in ``tmp_path``, on ``port``: one gthread worker of 8
    threads, admission fixed at 1 request with no queue, so concurrent clients are refused.
    Yields the gunicorn log."""
    env = serve_env(
        f"sqlite:///{tmp_path / 'serve.db'}",
        POOLTENDER_ADMISSION_LIMIT="fixed",
        POOLTENDER_ADMISSION_INITIAL="1",
        POOLTENDER_ADMISSION_QUEUE="0",
    )
    log = tmp_path / "gunicorn.log"
    args = ["--workers", "1", "--threads", "8", "--worker-class", "gthread"]
    with coupons_serve(port, args, env, log, timeout=60, stop_timeout=30):
        yield log
