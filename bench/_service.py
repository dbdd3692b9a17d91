"""What bench/service_load.py runs against: a MariaDB server, a seeded coupons database, the
coupons service under gunicorn, and a sampler of the server's connections and memory.

* :class:`Database` -- a private ``mariadbd`` in a temp directory on a free port (the default:
  its counters, memory and ``max_connections`` belong to the benchmark alone) or, with
  ``--mariadb-url``, a fresh database on a local server; an ordinary account (no SUPER, so
  the app sees ``max_connections`` as a real application does), ``coupons db upgrade``,
  and the seed: an admin and a service user, 100 campaigns x ``codes_per_campaign`` codes
  without any cap (so no 409 outside the hot-campaign case) and one *hot* campaign whose cap
  (100 million) cannot run out during a run.
* :class:`Service` -- ``coupons serve --workers W --threads T`` (gunicorn gthread, the
  production command) with one configuration's ``POOLTENDER_*`` variables; waits until
  ``/healthz`` answers and every worker has booted, or prints the log's tail and raises.
* :class:`Sampler` -- every 250 ms, from its own connection: the service's server
  connections (``information_schema.PROCESSLIST`` rows of the service's account and
  database, and how many of them run a statement) and mariadbd's ``VmRSS``.
* :class:`ProcessGroup` -- every child is started in its own session and stopped by its
  process-group id (SIGTERM, then SIGKILL), so gunicorn's workers go with their master.

Everything listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests._paths import pythonpath  # importers put the repository root on sys.path

ROOT = Path(__file__).resolve().parents[1]
APP_USER = "coupons_bench"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
HOT_CAP = 100_000_000


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why (no traceback is printed)."""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class ProcessGroup:
    """A child process in its own session, stopped with its whole process group."""

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path
    ) -> None:
        self.argv = list(argv)
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                env=dict(env) if env is not None else None,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=ROOT,
            )
        self.pgid = self.process.pid  # a session leader's pgid is its pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, grace: float = 15.0, first: signal.Signals = signal.SIGTERM) -> None:
        """Signal the group, wait ``grace`` s for the leader, then SIGKILL the group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, first)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)  # stragglers (workers) of the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of the live processes of process group ``pgid``, from
    /proc/<pid>/stat (fields 14, 15 and the group in 5; man 5 proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _mysql_connect(host: str, port: int, user: str, password: str = "", db: str = "") -> Any:
    import MySQLdb

    kwargs: dict[str, Any] = {"host": host, "port": port, "user": user, "charset": "utf8mb4"}
    if password:
        kwargs["passwd"] = password
    if db:
        kwargs["db"] = db
    conn = MySQLdb.connect(**kwargs)
    conn.autocommit(True)
    return conn


@dataclass
class Seed:
    """What the load generators need: the codes, the hot campaign, the users' passwords."""

    spread_codes: list[str]
    hot_codes: list[str]
    hot_campaign_id: int
    admin_email: str
    service_email: str
    password: str = field(repr=False)


class Database:
    """The MariaDB server and the benchmark's database on it; see the module doc."""

    def __init__(self, workdir: Path, mariadb_url: str | None, max_connections: int) -> None:
        self.workdir = workdir
        self.shared_url = mariadb_url
        self.max_connections = max_connections
        self.private: Any = None
        self.name = f"coupons_bench_{os.getpid()}"
        self.host = "127.0.0.1"
        self.port = 0
        self.admin_user = "root"
        self.admin_password = ""
        self.mariadbd_pid: int | None = None

    # -------------------------------------------------------------- server

    def start(self) -> None:
        if self.shared_url is None:
            self._start_private()
        else:
            self._use_shared(self.shared_url)
        admin = self.admin()
        try:
            cur = admin.cursor()
            cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
            cur.execute(f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4")
            cur.execute(f"CREATE USER IF NOT EXISTS '{APP_USER}'@'%'")
            cur.execute(f"GRANT ALL PRIVILEGES ON `{self.name}`.* TO '{APP_USER}'@'%'")
            cur.execute("SELECT @@version, @@max_connections")
            self.version, self.server_max_connections = cur.fetchone()
        finally:
            admin.close()

    def _start_private(self) -> None:
        sys.path.insert(0, str(ROOT))
        from tests.pooltender._servers import PrivateMariaDB

        server = PrivateMariaDB(
            extra_args=(
                "--innodb-buffer-pool-size=128M",
                f"--max-connections={self.max_connections}",
            )
        )
        try:
            server.start()
        except BaseException as exc:  # tests' helper skips (pytest's Skipped) when it fails
            if type(exc).__name__ in ("Skipped", "Failed"):
                server.stop(remove=True)
                raise BenchError(f"cannot start a private MariaDB: {exc}") from None
            server.stop(remove=True)
            raise
        self.private = server
        self.port = server.port
        self.mariadbd_pid = server.process.pid if server.process else None

    def _use_shared(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        if parsed.host not in LOCAL_HOSTS:
            raise BenchError(f"--mariadb-url must point at 127.0.0.1, got host {parsed.host!r}")
        self.port = parsed.port or 3306
        self.admin_user = parsed.username or "root"
        self.admin_password = parsed.password or ""
        admin = self.admin()
        try:
            cur = admin.cursor()
            cur.execute("SELECT @@pid_file")
            (pid_file,) = cur.fetchone()
        finally:
            admin.close()
        with contextlib.suppress(OSError, ValueError):
            self.mariadbd_pid = int(Path(pid_file).read_text().strip())

    def admin(self) -> Any:
        return _mysql_connect(self.host, self.port, self.admin_user, self.admin_password)

    @property
    def app_url(self) -> str:
        return f"mysql+mysqldb://{APP_USER}@{self.host}:{self.port}/{self.name}"

    def status(self, name: str) -> int:
        admin = self.admin()
        try:
            cur = admin.cursor()
            cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
            row = cur.fetchone()
            return int(row[1]) if row else 0
        finally:
            admin.close()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            admin = self.admin()
            try:
                admin.cursor().execute(f"DROP DATABASE IF EXISTS `{self.name}`")
            finally:
                admin.close()
        if self.private is not None:
            self.private.stop(remove=True)
            self.private = None

    # -------------------------------------------------------------- schema and seed

    def migrate(self, env: Mapping[str, str], log: Path) -> None:
        """``coupons db upgrade`` against the new database (the command an operator runs)."""
        proc = ProcessGroup(
            [
                sys.executable,
                "-c",
                "import sys; sys.argv[0] = 'coupons'; from coupons.cli import main; main()",
                "db",
                "upgrade",
            ],
            env={**env, "DATABASE_URL": self.app_url},
            log=log,
        )
        try:
            code = proc.wait(timeout=180)
        finally:
            proc.stop(grace=1)
        if code != 0:
            raise BenchError(f"coupons db upgrade failed (exit {code}):\n{log_tail(log)}")

    def seed(self, campaigns: int, codes_per_campaign: int, hot_codes: int) -> Seed:
        """Users, ``campaigns`` uncapped campaigns with uncapped codes, one hot campaign."""
        from coupons.app import create_app
        from coupons.config import Settings
        from coupons.db import db
        from coupons.services.auth import create_user
        from coupons.services.codegen import generate_codes
        from coupons.services.coupon import create_campaign
        from pooltender.settings import PoolSettings

        password = secrets.token_urlsafe(18)
        seed = Seed([], [], 0, "admin@bench.example", "checkout@bench.example", password)
        settings = Settings(database_url=self.app_url, pool=PoolSettings(pool_size=1))
        app = create_app(settings)
        with app.app_context():
            try:
                create_user(seed.admin_email, password, "admin")
                create_user(seed.service_email, password, "service")
                ids = []
                for n in range(campaigns):
                    view = create_campaign(
                        name=f"spread {n}",
                        discount_type="percent",
                        discount_value=Decimal("10"),
                        currency="EUR",
                    )
                    ids.append(view.id)
                    generate_codes(view.id, codes_per_campaign, pattern="S-####-####")
                hot = create_campaign(
                    name="hot",
                    discount_type="percent",
                    discount_value=Decimal("10"),
                    currency="EUR",
                    max_redemptions=HOT_CAP,
                )
                generate_codes(hot.id, hot_codes, pattern="H-####-####")
                seed.hot_campaign_id = hot.id
            finally:
                db.engine.dispose()
        conn = _mysql_connect(self.host, self.port, APP_USER, db=self.name)
        try:
            cur = conn.cursor()
            cur.execute("SELECT code, campaign_id FROM coupons ORDER BY id")
            for code, campaign_id in cur.fetchall():
                hot = campaign_id == seed.hot_campaign_id
                (seed.hot_codes if hot else seed.spread_codes).append(code)
        finally:
            conn.close()
        return seed

    def campaign_counts(self, campaign_id: int) -> dict[str, int]:
        """The hot campaign's counter, its codes' use counts and its ledger rows."""
        conn = _mysql_connect(self.host, self.port, APP_USER, db=self.name)
        try:
            cur = conn.cursor()
            cur.execute(
                "SELECT redemption_count, max_redemptions FROM campaigns WHERE id = %s",
                (campaign_id,),
            )
            count, cap = cur.fetchone()
            cur.execute(
                "SELECT COALESCE(SUM(use_count), 0) FROM coupons WHERE campaign_id = %s",
                (campaign_id,),
            )
            (uses,) = cur.fetchone()
            cur.execute(
                "SELECT COUNT(*) FROM redemptions WHERE campaign_id = %s AND status = 'redeemed'",
                (campaign_id,),
            )
            (rows,) = cur.fetchone()
            cur.execute(
                "SELECT COALESCE(SUM(count), 0) FROM customer_usage WHERE campaign_id = %s",
                (campaign_id,),
            )
            (usage,) = cur.fetchone()
        finally:
            conn.close()
        return {
            "redemption_count": int(count),
            "max_redemptions": int(cap),
            "code_use_counts": int(uses),
            "ledger_rows": int(rows),
            "customer_usage": int(usage),
        }


# ------------------------------------------------------------------ the service


def _http(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (127.0.0.1)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


class Service:
    """The coupons service under gunicorn with one configuration; see the module doc."""

    def __init__(
        self,
        database: Database,
        config_env: Mapping[str, str],
        workers: int,
        threads: int,
        secret_key: str,
        log: Path,
    ) -> None:
        self.database = database
        self.port = free_port()
        self.workers = workers
        self.log = log
        base = {k: v for k, v in os.environ.items() if not k.startswith("POOLTENDER_")}
        self.env = {
            **base,
            **config_env,
            "PYTHONPATH": pythonpath(os.environ.get("PYTHONPATH")),
            "DATABASE_URL": database.app_url,
            "SECRET_KEY": secret_key,
            "COUPONS_ENV": "production",
            "ACCESS_TOKEN_TTL": "7200",
        }
        self.argv = [
            sys.executable,
            "-c",
            "import sys; sys.argv[0] = 'coupons'; from coupons.cli import main; main()",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--threads",
            str(threads),
        ]
        self.group: ProcessGroup | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        self.group = ProcessGroup(self.argv, env=self.env, log=self.log)
        deadline = time.monotonic() + timeout
        while True:
            if not self.group.alive():
                raise BenchError(
                    f"the service exited with status {self.group.process.returncode} "
                    f"before it answered; log tail ({self.log}):\n{log_tail(self.log)}"
                )
            booted = self.log.read_text(errors="replace").count("Booting worker")
            with contextlib.suppress(OSError):
                status, _ = _http("GET", f"{self.url}/healthz", timeout=2)
                if status == 200 and booted >= self.workers:
                    return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the service did not answer /healthz with {self.workers} workers within "
                    f"{timeout:.0f} s; log tail ({self.log}):\n{log_tail(self.log)}"
                )
            time.sleep(0.2)

    def login(self, email: str, password: str) -> str:
        status, body = _http(
            "POST",
            f"{self.url}/api/v1/auth/login",
            {"email": email, "password": password},
            timeout=30,
        )
        if status != 200:
            raise BenchError(
                f"login as {email} answered {status}: {body[:300]!r}\n{log_tail(self.log)}"
            )
        return str(json.loads(body)["access_token"])

    def stats(self, admin_token: str, times: int = 8) -> list[dict[str, Any]]:
        """``/pooltender/stats`` from several requests (each answers for one worker)."""
        out = []
        for _ in range(times):
            with contextlib.suppress(OSError, ValueError):
                status, body = _http("GET", f"{self.url}/pooltender/stats", token=admin_token)
                if status == 200:
                    data = json.loads(body)
                    out.append(
                        {
                            k: data.get(k)
                            for k in ("admission", "requests_shed", "settings")
                            if k in data
                        }
                    )
        return out

    def metrics_text(self, admin_token: str) -> str:
        """The service's ``/metrics`` (fleet-wide under PROMETHEUS_MULTIPROC_DIR); "" if none.
        The page goes through coupons' admin guard, so the scrape sends an admin token."""
        with contextlib.suppress(OSError):
            status, body = _http("GET", f"{self.url}/metrics", token=admin_token)
            if status == 200:
                return body.decode(errors="replace")
        return ""

    def cpu_seconds(self) -> float:
        """CPU time used so far by gunicorn's master and workers."""
        return group_cpu_seconds(self.group.pgid) if self.group is not None else 0.0

    def stop(self) -> None:
        """Stop gunicorn and its workers (SIGINT: gunicorn's quick shutdown; a backlog of an
        overload run is not worth serving), then SIGKILL what is left of the group."""
        if self.group is not None:
            self.group.stop(grace=10, first=signal.SIGINT)
            self.group = None


# ------------------------------------------------------------------ sampler


def read_rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class Point:
    t: float  # time.monotonic()
    connections: int
    active: int
    rss_kib: int | None


class Sampler:
    """Samples the service's server connections and mariadbd's RSS every ``interval`` s."""

    def __init__(self, database: Database, interval: float = 0.25) -> None:
        self.database = database
        self.interval = interval
        self.points: list[Point] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            conn = self.database.admin()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return
        try:
            cur = conn.cursor()
            query = (
                "SELECT COUNT(*), COALESCE(SUM(COMMAND <> 'Sleep'), 0) "
                "FROM information_schema.PROCESSLIST WHERE USER = %s AND DB = %s"
            )
            while not self._stop.is_set():
                t = time.monotonic()
                cur.execute(query, (APP_USER, self.database.name))
                total, active = cur.fetchone()
                self.points.append(
                    Point(t, int(total), int(active), read_rss_kib(self.database.mariadbd_pid))
                )
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()

    def active_now(self) -> int:
        conn = self.database.admin()
        try:
            cur = conn.cursor()
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE USER = %s AND DB = %s AND COMMAND <> 'Sleep'",
                (APP_USER, self.database.name),
            )
            return int(cur.fetchone()[0])
        finally:
            conn.close()


@dataclass(frozen=True)
class AdmissionPoint:
    """One ``/pooltender/stats`` answer: which worker (``pid``) and its limiter's state."""

    t: float  # time.monotonic() when the request was sent
    latency_ms: float  # how long the (admission-exempt) stats request took
    pid: int | None
    limit: int | None
    in_flight: int | None
    queue_length: int | None
    standing: bool | None
    shed_total: int | None
    admitted: int | None
    checked_out: int | None  # the worker's pool: connections checked out (all engines)
    second_checkouts: int | None  # so far: a unit of work that took a second connection


class AdmissionSampler:
    """Asks ``/pooltender/stats`` every ``interval`` s during a run, so that a run's record
    says what admission control did while it ran (the limit, in flight, queue, standing),
    not only its totals afterwards. Each request reaches whichever worker accepts it, named
    by ``pid``. The page is exempt from admission, so its latency is the time to get a
    gunicorn thread: it shows a backlog in front of the limiter that no limiter figure can.
    One small request every ``interval`` s is the sampler's cost to the service."""

    def __init__(self, service: Service, admin_token: str, interval: float = 0.5) -> None:
        self.service = service
        self.token = admin_token
        self.interval = interval
        self.points: list[AdmissionPoint] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> AdmissionSampler:
        self._thread = threading.Thread(target=self._run, name="bench-admission", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        url = f"{self.service.url}/pooltender/stats"
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                status, body = _http("GET", url, token=self.token, timeout=5.0)
                data = json.loads(body) if status == 200 else None
            except (OSError, ValueError):
                data = None
            latency = (time.monotonic() - t) * 1e3
            if not isinstance(data, dict):
                self.errors += 1
            else:
                a = data.get("admission")
                a = a if isinstance(a, dict) and a.get("enabled") else {}
                engines = [e for e in (data.get("engines") or {}).values() if isinstance(e, dict)]
                self.points.append(
                    AdmissionPoint(
                        t,
                        round(latency, 1),
                        a.get("pid"),
                        a.get("limit"),
                        a.get("in_flight"),
                        a.get("queue_length"),
                        a.get("standing"),
                        a.get("shed_total"),
                        a.get("admitted"),
                        sum(int(e.get("checked_out") or 0) for e in engines) if engines else None,
                        sum(int(e.get("second_checkouts") or 0) for e in engines)
                        if engines
                        else None,
                    )
                )
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def summary(self, start: float, end: float) -> dict[str, Any]:
        """Within the window: per worker, the limit's min / median / max, the largest in
        flight and queue, the share of answers that found the queue standing; and the stats
        request's own latency (median, max) fleet-wide."""
        inside = [p for p in self.points if start <= p.t <= end]
        per_pid: dict[str, Any] = {}
        for pid in sorted({p.pid for p in inside if p.pid is not None}):
            mine = [p for p in inside if p.pid == pid and p.limit is not None]
            if not mine:
                continue
            limits = sorted(int(p.limit) for p in mine if p.limit is not None)
            per_pid[str(pid)] = {
                "samples": len(mine),
                "limit_min": limits[0],
                "limit_median": limits[len(limits) // 2],
                "limit_max": limits[-1],
                "in_flight_max": max(int(p.in_flight or 0) for p in mine),
                "queue_max": max(int(p.queue_length or 0) for p in mine),
                "standing_share": round(sum(1 for p in mine if p.standing) / len(mine), 2),
                "checked_out_max": max(int(p.checked_out or 0) for p in mine),
                "second_checkouts": max(int(p.second_checkouts or 0) for p in mine),
            }
        latencies = sorted(p.latency_ms for p in inside)
        return {
            "samples": len(inside),
            "errors": self.errors,
            "workers": per_pid,
            "stats_latency_ms_median": latencies[len(latencies) // 2] if latencies else None,
            "stats_latency_ms_max": latencies[-1] if latencies else None,
        }
