"""A gunicorn worker SIGKILLed under load: the other workers keep serving, the clients see at
most connection errors for the requests that worker had in flight, and the ledger is exact.

``coupons serve`` (3 gthread workers, 2 threads each) runs on a private MariaDB
(tests/pooltender/_servers.py). 16 client threads redeem one order after another over HTTP,
each with its own Idempotency-Key, retrying an order (same key and body) after a connection
error or a 503 until it gets a final answer, as a checkout backend would. One worker is
SIGKILLed, :data:`KILLS` times (gunicorn starts a replacement). The killed worker's open
transactions are rolled back by the server when its connections drop, and the key row is
written in the effect's transaction, so a retry either replays a committed redemption or
runs afresh (docs/reliability.md 3).

Which errors a kill explains is read, not guessed from a time window (a loaded machine
stretches any window: the victim dies, the clients see it and the test's clock is read
each when the scheduler lets them). The victim is SIGSTOPped first, so it accepts nothing
more; the connections it then holds are read from /proc (its descriptors, /proc/net/tcp),
and every connection error must be one of those, sent before the stop and failing after
the SIGKILL. Its death is seen on a pidfd (every descriptor closed), its replacement as
accepting when that worker's poller watches the listening socket (gthread registers it
once the app is loaded); the other workers must answer requests between the two.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.pool import NullPool

from coupons import create_app
from coupons.db import db
from coupons.models import Campaign, Coupon, IdempotencyKey, Redemption, Role
from tests._faults import migrated_private_mariadb, uncapped_code
from tests._serve import children, coupons_serve, serve_env
from tests.conftest import TEST_SECRET, make_settings
from tests.pooltender._servers import PrivateMariaDB, free_port
from tests.test_faults import user_headers

CLIENTS = 16
WORKERS = 3
KILLS = 2
API = "/api/v1"


server = pytest.fixture(scope="module", name="server")(migrated_private_mariadb)


def _workers(process: subprocess.Popen[bytes]) -> list[int]:
    masters = children(process.pid)
    return sorted(children(masters[0])) if masters else []


def _fds(pid: int) -> dict[int, str]:
    """``pid``'s open file descriptors and what they link to (socket:[inode], ...)."""
    links = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            links[int(fd.name)] = os.readlink(fd)
    return links


def _tcp(port: int) -> tuple[int, dict[int, int]]:
    """From /proc/net/tcp: the inode of the socket listening on ``port``, and the inode of
    every open connection accepted on it (ESTABLISHED: not yet closed by its client), with
    the client's port."""
    listener, accepted = 0, {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if int(local.split(":")[1], 16) != port:
            continue
        if state == "0A":  # LISTEN
            listener = inode
        elif state == "01":  # ESTABLISHED
            accepted[inode] = int(remote.split(":")[1], 16)
    return listener, accepted


def _held(pid: int, port: int) -> set[int]:
    """The client ports of the connections ``pid`` holds (accepted, not yet closed)."""
    _, accepted = _tcp(port)
    inodes = {int(link[8:-1]) for link in _fds(pid).values() if link.startswith("socket:[")}
    return {client for inode, client in accepted.items() if inode in inodes}


def _accepting(pid: int, port: int) -> bool:
    """Whether worker ``pid`` accepts connections: its poller watches the listening socket,
    which gunicorn's gthread worker registers once the app is loaded (``run()``)."""
    listener, _ = _tcp(port)
    try:
        fds = _fds(pid)
        listening = {fd for fd, link in fds.items() if link == f"socket:[{listener}]"}
        for fd, link in fds.items():
            if link == "anon_inode:[eventpoll]":
                for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                    if line.startswith("tfd:") and int(line.split()[1]) in listening:
                        return True
    except FileNotFoundError:  # the worker exited
        pass
    return False


def _stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (SIGSTOP took effect everywhere)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that exited meanwhile
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return all(state == "T" for state in states)


@pytest.fixture
def served(server: PrivateMariaDB, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = serve_env(server.url, SECRET_KEY=TEST_SECRET)
    args = ["--workers", str(WORKERS), "--threads", "2"]
    ready = lambda process: len(_workers(process)) == WORKERS  # noqa: E731
    with coupons_serve(port, args, env, tmp_path / "gunicorn.log", ready=ready) as process:
        yield process, port


@dataclass
class Kill:
    """One kill, on the test's monotonic clock: the worker was stopped (SIGSTOP, all its
    threads) at ``stopped``, its connections then read (``held``: the clients' ports),
    SIGKILLed at ``killed``, seen dead (its pidfd readable: every descriptor closed) at
    ``dead``, and a replacement seen accepting at ``ready``."""

    victim: int
    stopped: float
    held: set[int]
    killed: float
    dead: float = 0.0
    ready: float = 0.0


@dataclass
class Failure:
    """A request that got a connection error: sent (before connecting) at ``sent``, from
    client port ``port`` (None: the connection itself failed), the error seen at ``failed``."""

    client: int
    sent: float
    failed: float
    port: int | None
    error: str

    def caused_by(self, kill: Kill) -> bool:
        """Whether this was a connection ``kill.victim`` held when it was stopped (so sent
        before that), failing once it was killed: the only errors a kill may cause."""
        return self.port in kill.held and self.sent <= kill.stopped and self.failed >= kill.killed


def _report(kills: list[Kill], failures: list[Failure]) -> str:
    """Every kill, and every connection error with its times from the kill that explains it
    (or, if none does, the nearest one)."""
    lines = [
        f"kill {n}: worker {k.victim} held {len(k.held)} connections; dead +{k.dead - k.killed:.3f}"
        f" s, replacement accepting +{k.ready - k.killed:.3f} s after the SIGKILL"
        for n, k in enumerate(kills, 1)
    ]
    for f in sorted(failures, key=lambda f: f.sent):
        explained = [(n, k) for n, k in enumerate(kills, 1) if f.caused_by(k)]
        n, kill = (
            explained or sorted(enumerate(kills, 1), key=lambda nk: abs(f.sent - nk[1].killed))
        )[0]
        lines.append(
            f"  client {f.client} port {f.port}: sent {f.sent - kill.killed:+.3f} s, failed "
            f"{f.failed - kill.killed:+.3f} s from kill {n}: {f.error}"
            f"{'' if explained else '  <- NOT explained by a kill'}"
        )
    return "\n".join(lines)


def _wait_for(what: str, done: Callable[[], bool]) -> float:
    """Poll ``done`` until it holds (fail the test with ``what`` after 60 s); return when."""
    deadline = time.monotonic() + 60
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within 60 s")
        time.sleep(0.02)
    return time.monotonic()


def _kill_a_worker(process: subprocess.Popen[bytes], port: int) -> Kill:
    """SIGKILL a serving worker (not a replacement still loading the app); return once gunicorn
    has a replacement accepting. Stopped first, it accepts nothing more: the connections it
    holds then are the ones the kill may fail."""
    serving = _workers(process)
    victim = next((pid for pid in serving if _accepting(pid, port)), None)
    if victim is None:
        pytest.fail(f"no worker of {serving} accepts connections")
    pidfd = os.pidfd_open(victim)
    try:
        os.kill(victim, signal.SIGSTOP)
        stopped = _wait_for("the victim did not stop", lambda: _stopped(victim))
        kill = Kill(victim, stopped, _held(victim, port), time.monotonic())
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        with selectors.DefaultSelector() as exited:
            exited.register(pidfd, selectors.EVENT_READ)
            if not exited.select(60):
                pytest.fail(f"worker {victim} still alive 60 s after its SIGKILL")
        kill.dead = time.monotonic()
    finally:
        os.close(pidfd)

    def replaced() -> bool:
        workers = _workers(process)
        new = [pid for pid in workers if pid not in serving]
        return len(workers) == WORKERS and len(new) == 1 and _accepting(new[0], port)

    kill.ready = _wait_for("gunicorn did not replace the killed worker", replaced)
    return kill


@pytest.mark.fault
@pytest.mark.slow
def test_a_worker_killed_under_load_loses_nothing(
    server: PrivateMariaDB, served: tuple[subprocess.Popen[bytes], int]
) -> None:
    process, port = served
    app = create_app(make_settings(server.url))
    client = app.test_client()
    admin = user_headers(app, Role.ADMIN)
    service = user_headers(app, Role.SERVICE)
    uncapped_code(client, admin, "W", "WKILL")
    with app.app_context():
        db.engine.dispose()

    statuses: dict[int | str, int] = {}
    bad: list[tuple[int, object]] = []
    told: dict[str, int] = {}
    successes: list[tuple[float, float]] = []  # (sent, answered)
    failures: list[Failure] = []
    lock = threading.Lock()
    stop = threading.Event()

    def post(
        body: dict[str, str], key: str, ports: list[int]
    ) -> tuple[int, dict[str, object] | None]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.connect()
            assert conn.sock is not None
            ports.append(conn.sock.getsockname()[1])
            conn.request(
                "POST",
                f"{API}/redemptions",
                body=json.dumps(body),
                headers={**service, "Idempotency-Key": key, "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    def run(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            order = f"w{worker}-o{n}"
            body = {"code": "WKILL", "customer_id": order, "order_id": order, "order_total": "5"}
            while True:
                sent, local_port = time.monotonic(), list[int]()
                try:
                    status, payload = post(body, f"key-{order}", local_port)
                except (OSError, http.client.HTTPException) as exc:
                    failure = Failure(
                        worker, sent, time.monotonic(), next(iter(local_port), None), repr(exc)
                    )
                    with lock:
                        statuses["connection error"] = statuses.get("connection error", 0) + 1
                        failures.append(failure)
                    time.sleep(0.05)
                    continue
                answered = time.monotonic()
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status not in (201, 503):
                        bad.append((status, payload))
                    if status == 201 and payload is not None:
                        told[order] = int(str(payload["id"]))
                        successes.append((sent, answered))
                if status != 503:
                    break
                time.sleep(0.05)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    kills: list[Kill] = []
    try:
        for _ in range(KILLS):
            time.sleep(1.5)
            kills.append(_kill_a_worker(process, port))
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
    assert not any(thread.is_alive() for thread in threads)
    # served by the others: sent after the victim stopped, answered before its replacement
    # accepted anything
    by_others = [
        sum(1 for sent, answered in successes if k.stopped <= sent and answered <= k.ready)
        for k in kills
    ]
    report = _report(kills, failures)
    print(f"statuses {statuses}; {len(told)} orders redeemed; 201s by the others {by_others}")
    print(report)
    assert bad == [], bad[:5]
    # only the requests the killed worker held (running, or accepted into its queue) fail,
    # once it is killed: none it did not hold, none later
    if not all(any(f.caused_by(k) for k in kills) for f in failures):
        pytest.fail(f"connection errors the kills do not explain:\n{report}", pytrace=False)
    assert all(count > 0 for count in by_others), "the other workers stopped serving"

    engine = create_engine(server.url, poolclass=NullPool)
    with engine.connect() as conn:
        ledger = {row.order_id: row.id for row in conn.execute(select(Redemption))}
        stuck = conn.execute(
            select(IdempotencyKey.key).where(IdempotencyKey.response_status.is_(None))
        ).all()
        use_count = conn.execute(select(Coupon.use_count)).scalar_one()
        redemption_count = conn.execute(select(Campaign.redemption_count)).scalar_one()
    engine.dispose()
    assert stuck == []
    assert ledger == told, "every 201 has exactly its row, and no other order left one"
    assert use_count == redemption_count == len(ledger)
