"""Database servers for pooltender's tests: the shared local ones, and private MariaDB servers.

* :func:`mariadb_url` / :func:`postgres_url` -- the shared servers (``TEST_MARIADB_URL`` /
  ``TEST_POSTGRES_URL``, defaults: the local ones), checked reachable: a missing server skips
  the test locally and fails it under ``CI=true`` (:func:`server_missing`).
* :class:`PrivateMariaDB` -- a throw-away ``mariadbd`` on a free port with its datadir and
  socket in a temp directory, for tests that need to restart a server or give it odd global
  settings (``max_connections=20``) without touching the shared one. Use as a context
  manager or call :meth:`PrivateMariaDB.stop`; ``extra_args`` are passed to ``mariadbd``.

Never changes a shared server's global settings.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MARIADB_URL = os.environ.get("TEST_MARIADB_URL", "mysql+mysqldb://root@127.0.0.1:3306/test")
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MARIADBD = os.environ.get("MARIADBD", shutil.which("mariadbd") or "/usr/sbin/mariadbd")
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


def server_missing(what: str, exc: BaseException | str) -> NoReturn:
    """Skip locally, fail under CI=true: a real-database test must never silently vanish."""
    detail = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    message = f"{what} is not available ({detail})"
    if IN_CI:
        pytest.fail(f"{message}; CI requires it", pytrace=False)
    pytest.skip(message)


def _reachable(what: str, url: str) -> str:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        server_missing(what, exc)
    finally:
        engine.dispose()
    return url


def mariadb_url() -> str:
    """URL of the shared MariaDB (database ``test``), or skip / fail (see module doc)."""
    return _reachable("MariaDB", MARIADB_URL)


def postgres_url() -> str:
    """URL of the shared PostgreSQL, or skip / fail (see module doc)."""
    return _reachable("PostgreSQL", POSTGRES_URL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateMariaDB:
    """A private ``mariadbd`` (root, no password) in a temp directory; see the module doc."""

    def __init__(self, extra_args: Sequence[str] = (), startup_timeout: float = 60.0) -> None:
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.tmp = Path(tempfile.mkdtemp(prefix="pooltender-mariadb-"))
        self.datadir = self.tmp / "data"
        # Its own tmpdir: a starting mariadbd deletes every "#sql*" file in its tmpdir
        # (mysql_rm_tmp_tables), which with the default /tmp removed the shared server's
        # in-use temporary tables and failed its queries (errno 6, "Error on delete of
        # /tmp/#sql-temptable-...").
        self.tmpdir = self.tmp / "tmp"
        self.socket = self.tmp / "mysqld.sock"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log = self.tmp / "mariadbd.log"

    @property
    def url(self) -> str:
        return f"mysql+mysqldb://root@127.0.0.1:{self.port}/test"

    def __enter__(self) -> PrivateMariaDB:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(remove=True)

    def _install(self) -> None:
        if not (os.access(MARIADBD, os.X_OK) and os.access(INSTALL_DB, os.X_OK)):
            server_missing("private MariaDB", f"{MARIADBD} or {INSTALL_DB} not found")
        cmd = [
            INSTALL_DB,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",  # its bootstrap server cleans its tmpdir too
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        if done.returncode:
            server_missing("private MariaDB", done.stderr.decode(errors="replace")[-2000:])

    def start(self) -> None:
        """Start the server (installing the datadir the first time) and wait until it answers."""
        self.tmpdir.mkdir(exist_ok=True)
        if not self.datadir.exists():
            self._install()
        cmd = [
            MARIADBD,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.tmp / 'mariadbd.pid'}",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=16M",
            "--skip-name-resolve",
            *self.extra_args,
        ]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        log = self._log.open("ab")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                engine = create_engine(
                    f"mysql+mysqldb://root@127.0.0.1:{self.port}/", poolclass=NullPool
                )
                with engine.connect() as conn:
                    conn.execute(text("CREATE DATABASE IF NOT EXISTS test"))
                engine.dispose()
                return
            except Exception as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = self._log.read_text(errors="replace")[-2000:]
                    self.stop(remove=False)
                    server_missing("private MariaDB", f"did not start: {exc}; log: {tail}")
                time.sleep(0.1)

    def stop(self, *, remove: bool = False) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 30 s); ``remove`` deletes the datadir."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if remove:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.tmp)

    def restart(self) -> None:
        """Stop and start again on the same port and datadir (existing connections die)."""
        self.stop(remove=False)
        self.start()
