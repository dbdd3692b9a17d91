"""Helpers for the fleet tests: a private PostgreSQL, ordinary (non-admin) database accounts,
server counters, a gunicorn fleet of ``fleet_app`` workers, and a threaded HTTP load generator.

The private MariaDB itself comes from :mod:`tests.pooltender._servers`. What is added here:

* :class:`PrivatePostgres` -- a throw-away PostgreSQL 15 cluster (``initdb`` + ``pg_ctl``) in
  a temp directory on a free port, trust auth, its log in the temp directory (refused
  connections are counted from it). PostgreSQL refuses to run as root, so under root the
  binaries run as the ``postgres`` user (``runuser``).
* :func:`mariadb_app_account` / :func:`postgres_app_account` -- an ordinary account for the
  app. It matters: MariaDB lets an account with SUPER one connection *beyond*
  max_connections and PostgreSQL lets superusers use ``superuser_reserved_connections``; the
  app must see the limit a real application account sees.
* :class:`GunicornFleet` -- ``gunicorn 'fleet_app:create_app()'`` with N workers; it waits
  until every worker has loaded the app (a ``post_worker_init`` hook writes a file per worker).
* :func:`run_load` -- a bounded number of ``GET`` requests from a pool of client threads,
  keep-alive off, loopback only; responses are classified (200, connection refused by the
  database, anything else).

When a server cannot be started the test skips locally and fails under ``CI=true``
(:func:`tests.pooltender._servers.server_missing`).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from tests._paths import pythonpath
from tests.pooltender._servers import PrivateMariaDB, free_port, server_missing

HERE = Path(__file__).resolve().parent
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
APP_USER = "fleet_app"

# What a refused connection looks like in a response body (driver messages).
REFUSAL_MARKERS = (
    "1040",  # MySQL/MariaDB ER_CON_COUNT_ERROR: (1040, 'Too many connections')
    "Too many connections",
    "too many clients already",  # PostgreSQL 53300
    "remaining connection slots are reserved",  # PostgreSQL 53300, reserved slots left
)


def admin_engine(url: str) -> Engine:
    """An engine without a pool for the test's own short administrative queries."""
    return create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")


# ---------------------------------------------------------------------- accounts


def mariadb_app_account(server: PrivateMariaDB, driver: str = "mysqldb") -> str:
    """Create (once) an account without SUPER / CONNECTION ADMIN and return its URL."""
    engine = admin_engine(server.url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE USER IF NOT EXISTS '{APP_USER}'@'%'"))
            conn.execute(text(f"GRANT ALL PRIVILEGES ON test.* TO '{APP_USER}'@'%'"))
    finally:
        engine.dispose()
    return f"mysql+{driver}://{APP_USER}@127.0.0.1:{server.port}/test"


def set_mariadb_max_connections(server: PrivateMariaDB, max_connections: int) -> None:
    """``SET GLOBAL max_connections`` on the *private* server (never on a shared one)."""
    engine = admin_engine(server.url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f"SET GLOBAL max_connections = {int(max_connections)}"))
    finally:
        engine.dispose()


def mariadb_status(server: PrivateMariaDB, *, flush: bool = False) -> dict[str, int]:
    """Connection counters of the private server (``flush`` first runs ``FLUSH STATUS``,
    which resets ``Max_used_connections`` to the connections open now)."""
    names = (
        "Connection_errors_max_connections",
        "Max_used_connections",
        "Threads_connected",
        "Connections",
    )
    engine = admin_engine(server.url)
    try:
        with engine.connect() as conn:
            if flush:
                conn.execute(text("FLUSH STATUS"))
            rows = conn.execute(text("SHOW GLOBAL STATUS"))
            status = {str(r[0]): str(r[1]) for r in rows}
    finally:
        engine.dispose()
    return {name: int(status[name]) for name in names}


def wait_mariadb_idle(server: PrivateMariaDB, timeout: float = 20.0) -> None:
    """Wait until only the monitoring connection itself is connected."""
    deadline = time.monotonic() + timeout
    while mariadb_status(server)["Threads_connected"] > 1 and time.monotonic() < deadline:
        time.sleep(0.1)


# ---------------------------------------------------------------------- PostgreSQL


_PID = re.compile(r"\[(\d+)\]")


@dataclass
class LogFigures:
    """Counted from a PostgreSQL log: refused connections, ``user``'s connections opened, and
    the most of them connected at once."""

    refusals: int = 0
    connections: int = 0
    high_water: int = 0


class PrivatePostgres:
    """A private PostgreSQL cluster with ``max_connections`` given; see the module doc."""

    def __init__(self, max_connections: int, startup_timeout: float = 60.0) -> None:
        self.max_connections = max_connections
        self.startup_timeout = startup_timeout
        self.tmp = Path(tempfile.mkdtemp(prefix="pooltender-pg-"))
        self.datadir = self.tmp / "data"
        self.log = self.tmp / "postgres.log"
        self.port = free_port()
        self._started = False

    @property
    def url(self) -> str:
        """Superuser URL (the test's own monitoring; may use the reserved slots)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)

    def start(self) -> None:
        """initdb, start, and wait until it answers; skip / fail if that is impossible."""
        initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
        if not (os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK)):
            server_missing("private PostgreSQL", f"{initdb} or {pg_ctl} not found")
        if os.geteuid() == 0:
            try:
                shutil.chown(self.tmp, user="postgres")
            except (LookupError, OSError) as exc:
                server_missing("private PostgreSQL", f"no postgres user to run it as: {exc}")
        done = self._run(
            [str(initdb), "-D", str(self.datadir), "-A", "trust", "-U", "postgres", "--no-sync"],
            timeout=120,
        )
        if done.returncode:
            server_missing("private PostgreSQL", done.stderr.decode(errors="replace")[-2000:])
        options = " ".join(
            [
                f"-c port={self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.tmp}",
                f"-c max_connections={self.max_connections}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c shared_buffers=16MB",
                "-c log_connections=on",
                "-c log_disconnections=on",
                "-c log_line_prefix='%m [%p] '",
            ]
        )
        done = self._run(
            [str(pg_ctl), "-D", str(self.datadir), "-l", str(self.log), "-w", "-o", options,
             "start"],
            timeout=self.startup_timeout,
        )  # fmt: skip
        if done.returncode:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            self.stop()
            server_missing("private PostgreSQL", f"did not start: {done.stderr!r}; log: {tail}")
        self._started = True

    def stop(self) -> None:
        """Stop the cluster (fast shutdown) and delete its directory."""
        if self._started:
            self._run(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"],
                timeout=60,
            )
            self._started = False
        with contextlib.suppress(OSError):
            shutil.rmtree(self.tmp)

    def log_offset(self) -> int:
        """Where the server log ends now; pass it to :meth:`connections_since`."""
        return self.log.stat().st_size if self.log.exists() else 0

    def connections_since(self, offset: int, user: str = APP_USER) -> LogFigures:
        """Refusals and the high-water of ``user``'s connections, replayed from the log.

        PostgreSQL has no ``Max_used_connections``, and a monitoring connection would take
        one of the very slots being measured, so the server runs with ``log_connections`` and
        ``log_disconnections``: a backend of ``user`` is live from its "connection
        authorized" line until its "disconnection" line or a FATAL line of the same pid (a
        backend refused for lack of slots after authenticating logs no disconnection).
        """
        with self.log.open("rb") as handle:
            handle.seek(offset)
            lines = handle.read().decode(errors="replace").splitlines()
        figures = LogFigures()
        live: set[str] = set()
        for line in lines:
            pid_match = _PID.search(line)
            pid = pid_match.group(1) if pid_match else ""
            if "FATAL:" in line:
                live.discard(pid)
                if _is_refusal(line):
                    figures.refusals += 1
            elif "connection authorized:" in line and f"user={user} " in f"{line} ":
                live.add(pid)
                figures.connections += 1
                figures.high_water = max(figures.high_water, len(live))
            elif "disconnection:" in line:
                live.discard(pid)
        return figures

    def client_backends(self, user: str = APP_USER) -> int:
        """Client backends of ``user`` connected now."""
        engine = admin_engine(self.url)
        try:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend' AND usename = :u"
                        ),
                        {"u": user},
                    ).scalar_one()
                )
        finally:
            engine.dispose()

    def wait_idle(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.client_backends() > 0 and time.monotonic() < deadline:
            time.sleep(0.1)


def postgres_app_account(server: PrivatePostgres) -> str:
    """Create (once) an ordinary role (no superuser) and return its URL."""
    engine = admin_engine(server.url)
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": APP_USER}
            ).first()
            if exists is None:
                conn.execute(text(f"CREATE ROLE {APP_USER} LOGIN NOSUPERUSER"))
    finally:
        engine.dispose()
    return f"postgresql+psycopg://{APP_USER}@127.0.0.1:{server.port}/postgres"


# ---------------------------------------------------------------------- gunicorn

_HOOKS = """
import os

def post_worker_init(worker):
    open(os.path.join({ready!r}, "ready-%d" % worker.pid), "w").close()
"""


@dataclass
class BootOutcome:
    """How a gunicorn start ended when it was expected to fail."""

    returncode: int | None
    log: str


class GunicornFleet:
    """``gunicorn 'fleet_app:create_app()'`` on a free loopback port; see the module doc.

    ``env`` is added to a copy of the environment from which every ``POOLTENDER_*`` and
    ``FLEET_*`` variable has been removed, so the caller's shell cannot leak settings in.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        workers: int,
        worker_class: str = "gthread",
        threads: int = 1,
        worker_connections: int = 1000,
    ) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="pooltender-fleet-"))
        self.port = free_port()
        self.workers = workers
        self.log_path = self.tmp / "gunicorn.log"
        hooks = self.tmp / "hooks.py"
        hooks.write_text(_HOOKS.format(ready=str(self.tmp)))
        self.cmd = [
            sys.executable, "-m", "gunicorn",
            "--chdir", str(HERE),
            "--config", str(hooks),
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(workers),
            "--worker-class", worker_class,
            "--threads", str(threads),
            "--worker-connections", str(worker_connections),
            "--backlog", "2048",
            "--timeout", "60",
            "--graceful-timeout", "5",
            "--log-level", "warning",
            "fleet_app:create_app()",
        ]  # fmt: skip
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("POOLTENDER_", "FLEET_", "GUNICORN_"))
        }
        base["PYTHONPATH"] = pythonpath(os.environ.get("PYTHONPATH"))
        self.env = {**base, **env}
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=HERE
            )
        finally:
            log.close()
        return self.process

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until every worker has loaded the app; raise with the log if not."""
        process = self._spawn()
        deadline = time.monotonic() + timeout
        while len(list(self.tmp.glob("ready-*"))) < self.workers:
            if process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"gunicorn did not boot {self.workers} workers "
                    f"(exit {process.returncode}):\n{self.log()[-4000:]}"
                )
            time.sleep(0.05)

    def expect_boot_failure(self, timeout: float = 60.0) -> BootOutcome:
        """Start, and wait for gunicorn to give up (a worker failing to boot halts it)."""
        process = self._spawn()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return BootOutcome(None, self.log())
        outcome = BootOutcome(process.returncode, self.log())
        self.stop()
        return outcome

    def stop(self) -> None:
        """SIGQUIT the master (quick shutdown: the load is over, nothing is in flight), SIGKILL
        after 20 s; delete the temp dir."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.tmp)

    @contextlib.contextmanager
    def running(self) -> Iterator[GunicornFleet]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


# ---------------------------------------------------------------------- load


def _is_refusal(text_: str) -> bool:
    return any(marker in text_ for marker in REFUSAL_MARKERS)


@dataclass
class LoadResult:
    """What the clients saw. ``refused`` are 500s whose body carries the database's
    "too many connections" refusal; ``other`` counts everything else that was not a 200."""

    clients: int
    requests: int = 0
    ok: int = 0
    refused: int = 0
    other: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    pids: set[int] = field(default_factory=set)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "requests": self.requests,
            "ok_200": self.ok,
            "refused_too_many_connections": self.refused,
            "other_failures": dict(self.other),
            "elapsed_s": round(self.elapsed_s, 2),
            "requests_per_s": round(self.requests_per_s, 1),
            "ok_per_s": round(self.ok_per_s, 1),
            "workers_answering": len(self.pids),
            "sample_errors": self.samples[:3],
        }


def run_load(
    port: int,
    *,
    clients: int,
    total: int,
    deadline_s: float,
    path: str = "/redeem",
    timeout_s: float = 60.0,
) -> LoadResult:
    """Send ``total`` requests from ``clients`` threads at once (each a new TCP connection,
    ``Connection: close``), stopping early at ``deadline_s``; return what came back."""
    result = LoadResult(clients=clients)
    lock = threading.Lock()
    issued = 0
    start_gate = threading.Barrier(clients + 1)
    stop_at = 0.0

    def take() -> bool:
        nonlocal issued
        with lock:
            if issued >= total or time.monotonic() > stop_at:
                return False
            issued += 1
            return True

    def record(status: int | None, body: str, error: str | None) -> None:
        with lock:
            result.requests += 1
            if status == 200:
                result.ok += 1
                with contextlib.suppress(ValueError, IndexError):
                    result.pids.add(int(body.rsplit('"pid":', 1)[1].strip(" }\n")))
            elif status == 500 and _is_refusal(body):
                result.refused += 1
                if len(result.samples) < 3:
                    result.samples.append(body.strip()[:200])
            else:
                key = error or f"HTTP {status}"
                result.other[key] += 1
                if len(result.samples) < 3:
                    result.samples.append(f"{key}: {body.strip()[:200]}")

    def client() -> None:
        start_gate.wait()
        while take():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
            try:
                conn.request("GET", path, headers={"Connection": "close"})
                response = conn.getresponse()
                body = response.read().decode(errors="replace")
                record(response.status, body, None)
            except (OSError, http.client.HTTPException) as exc:
                record(None, "", type(exc).__name__)
            finally:
                conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    stop_at = began + deadline_s
    start_gate.wait()
    for thread in threads:
        thread.join(timeout=deadline_s + timeout_s + 5)
    result.elapsed_s = time.monotonic() - began
    return result


def database_of(url: str) -> str:
    """``mariadb`` or ``postgresql``, for reports."""
    return "postgresql" if make_url(url).get_backend_name() == "postgresql" else "mariadb"
