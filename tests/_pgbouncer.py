"""A private PgBouncer for tests: Debian's ``pgbouncer`` on a free port in front of the shared
test PostgreSQL, in a temp directory, stopped at the end.

* ``pool_mode`` defaults to ``transaction`` (the mode this project supports behind a proxy);
  ``default_pool_size`` and ``max_client_conn`` are arguments, so a test can make the server
  side small and see many clients served by few server connections.
* Authentication: ``auth_type = trust`` with an ``auth_file`` the fixture writes (PgBouncer
  still requires the user to be listed there); the test server itself is ``trust`` on
  127.0.0.1. ``admin_users`` is the same user, so ``SHOW POOLS`` works on the admin console
  (database ``pgbouncer``).
* PgBouncer refuses to run as root; as root the fixture passes ``-u nobody`` and makes the
  directory that user's.
* The binary is ``$PGBOUNCER`` or ``/usr/sbin/pgbouncer`` (Debian's package ``pgbouncer``,
  installed by ``scripts/ensure-system-deps.sh``). Missing, the test is skipped locally and
  FAILS under ``CI=true`` (:func:`server_missing`, as for the databases).

Never touches the shared PostgreSQL's configuration.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from sqlalchemy.engine import make_url

from tests.pooltender._servers import free_port, server_missing

PGBOUNCER = os.environ.get("PGBOUNCER", shutil.which("pgbouncer") or "/usr/sbin/pgbouncer")


class PgBouncer:
    """``PgBouncer(upstream_url, default_pool_size=4)``; use as a context manager.

    :meth:`url` is the SQLAlchemy URL of a database through the proxy; :attr:`admin_dsn` the
    libpq DSN of its admin console.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        pool_mode: str = "transaction",
        default_pool_size: int = 4,
        max_client_conn: int = 200,
        query_wait_timeout: int = 30,
    ) -> None:
        if not os.path.exists(PGBOUNCER):
            server_missing("pgbouncer", f"no binary at {PGBOUNCER}; apt-get install pgbouncer")
        upstream = make_url(upstream_url)
        self.upstream = upstream
        self.user = upstream.username or "postgres"
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pooltender-pgbouncer-"))
        self.log = self.dir / "pgbouncer.log"
        (self.dir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": self.dir / "userlist.txt",
            "admin_users": self.user,
            "pool_mode": pool_mode,
            "default_pool_size": default_pool_size,
            "min_pool_size": 0,
            "reserve_pool_size": 0,
            "max_client_conn": max_client_conn,
            "query_wait_timeout": query_wait_timeout,
            "ignore_startup_parameters": "extra_float_digits",
            "logfile": self.log,
            "pidfile": self.dir / "pgbouncer.pid",
        }
        host, port = upstream.host or "127.0.0.1", upstream.port or 5432
        ini = ["[databases]", f"* = host={host} port={port}", "", "[pgbouncer]"]
        ini += [f"{k} = {v}" for k, v in settings.items()]
        (self.dir / "pgbouncer.ini").write_text("\n".join(ini) + "\n")
        command = [PGBOUNCER, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            command[1:1] = ["-u", "nobody"]
        self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        self._wait_listening()

    def _wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                log = self.log.read_text() if self.log.exists() else ""
                self.stop()
                raise RuntimeError(f"pgbouncer exited at start-up:\n{log[-2000:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("pgbouncer did not listen within 15 s")

    def url(self, database: str | None = None) -> str:
        """The SQLAlchemy URL of ``database`` (default: the upstream URL's) via PgBouncer."""
        url = self.upstream.set(
            host="127.0.0.1", port=self.port, database=database or self.upstream.database
        )
        return url.render_as_string(hide_password=False)

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=pgbouncer user={self.user}"

    def stop(self) -> None:
        """SIGINT (PgBouncer's safe shutdown), then SIGKILL if it lingers; remove the dir."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
