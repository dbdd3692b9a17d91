"""``pooltender doctor``: findings that name exactly the known connections (real MariaDB and
PostgreSQL), the near-limit finding with the SET GLOBAL / my.cnf lines on a saturated private
MariaDB, the post-mortem's BEFORE fleet versus a pooltender-sized one, and masking."""

from __future__ import annotations

import gc
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from pooltender.budget import FleetShape, WorkerModel
from pooltender.cli import main
from pooltender.server.doctor import Severity, Thresholds, diagnose, doctor
from pooltender.settings import PoolSettings
from tests.pooltender._servers import PrivateMariaDB
from tests.pooltender.test_server import PASSWORD, ConnectionSet, connection_set

__all__ = ["connection_set"]

FAST = ["--idle-after", "1", "--idle-per-host", "2", "--idle-in-transaction-after", "1"]


def test_findings_name_exactly_the_known_connections(connection_set: ConnectionSet) -> None:
    cs = connection_set
    result = CliRunner().invoke(
        main,
        ["doctor", cs.admin, "--json", *FAST, "--user", cs.user_a, "--user", cs.user_b],
    )
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    findings = {f["code"]: f for f in data["findings"]}
    # user a: 3 idle > 2 per host -> one pile-up finding with exactly those ids; b's 2 are not
    piles = [f for f in data["findings"] if f["code"] == "idle-pileup"]
    assert len(piles) == 1
    assert sorted(piles[0]["connection_ids"]) == sorted(cs.ids["idle_a"])
    assert piles[0]["figures"]["user"] == cs.user_a
    assert "POOLTENDER_POOL_SIZE" in " ".join(piles[0]["remedy"])
    iit = findings["idle-in-transaction"]
    assert iit["severity"] == "warning"
    assert sorted(iit["connection_ids"]) == sorted(cs.ids["iit_a"])
    assert "privileged-account" not in findings
    assert data["snapshot"]["by_user"][cs.user_a] == 6
    ranks = [Severity(f["severity"]).rank for f in data["findings"]]
    assert ranks == sorted(ranks)
    # the typed API agrees, and filtered to user b alone nothing is wrong
    report = doctor(cs.admin, thresholds=Thresholds(idle_after=1, idle_per_group=2,
                    idle_in_transaction_after=1), users=[cs.user_b])  # fmt: skip
    assert [f.code for f in report.findings if f.severity is not Severity.INFO] in (
        [],
        ["near-limit"],  # only if the shared server is busy right now
    )


@pytest.mark.parametrize("backend", ["mariadb", "postgresql"])
def test_pool_recycle_against_wait_timeout(backend: str) -> None:
    from tests.pooltender.test_server import admin_url

    url = admin_url(backend)
    report = doctor(url, pool_recycle=-1, users=["nobody"], env={})
    if backend == "mariadb":
        finding = report.finding("pool-recycle")
        assert finding is not None
        assert "POOLTENDER_POOL_RECYCLE=" in finding.remedy[0]
        env = {"POOLTENDER_POOL_RECYCLE": "10"}
        assert doctor(url, users=["nobody"], env=env).finding("pool-recycle") is None
    else:  # PostgreSQL has no wait_timeout; idle_session_timeout is off by default
        assert report.finding("pool-recycle") is None


def test_no_url_and_unreachable_server_exit_2_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    runner = CliRunner()
    none = runner.invoke(main, ["doctor"])
    assert none.exit_code == 2
    assert "DATABASE_URL" in none.output
    secret = "Pw-" + secrets.token_hex(5)
    for url in (
        f"mysql+mysqldb://root:{secret}@127.0.0.1:1/test",
        f"mysql+mysqldb://root:{secret}@127.0.0.1:3306/test",  # access denied
        f"postgresql+psycopg://postgres:{secret}@127.0.0.1:1/postgres",
    ):
        result = runner.invoke(main, ["doctor", url])
        assert result.exit_code == 2, result.output
        assert secret not in result.output
        assert ":***@" in result.output
        monkeypatch.setenv("DATABASE_URL", url)
        from_env = runner.invoke(main, ["doctor", "--json"])
        assert from_env.exit_code == 2
        assert secret not in from_env.output


def test_diagnose_is_pure_and_ranks_critical_first() -> None:
    from pooltender.server.snapshot import ServerSnapshot

    snap = ServerSnapshot(
        backend="mysql",
        server_version="test",
        taken_at=0.0,
        url="mysql://x",
        max_connections=100,
        reserved_connections=1,
        connections=(),
        status={
            "Threads_connected": 85,
            "Max_used_connections": 101,
            "Connection_errors_max_connections": 7,
        },
        variables={"wait_timeout": "600"},
        memory_per_connection_bytes=3 * 2**20,
        unreadable={},
    )
    findings = diagnose(snap, pool_recycle=1800)
    assert [f.code for f in findings] == ["near-limit", "pool-recycle"]
    near = findings[0]
    assert near.severity is Severity.CRITICAL
    assert near.figures["recommended_max_connections"] == 128  # (101 + 1) / 0.8
    assert "SET GLOBAL max_connections = 128;" in "\n".join(near.remedy)
    assert "[mysqld]\nmax_connections = 128" in "\n".join(near.remedy)


# ---------------------------------------------------------------------- private MariaDB


@pytest.fixture(scope="module")
def private() -> Iterator[PrivateMariaDB]:
    # connect_timeout 2: a refused client's server thread lingers until its handshake times
    # out (10 s by default), and the doctor below needs the one SUPER slot it occupies.
    with PrivateMariaDB(["--max-connections=10", "--connect-timeout=2"]) as server:
        engine = create_engine(server.url, poolclass=NullPool)
        with engine.connect() as conn:
            conn.execute(text(f"CREATE USER 'app'@'%' IDENTIFIED BY '{PASSWORD}'"))
            conn.execute(text("GRANT SELECT ON test.* TO 'app'@'%'"))
        engine.dispose()
        yield server


def _app_url(server: PrivateMariaDB) -> str:
    url = make_url(server.url).set(username="app", password=PASSWORD)
    return url.render_as_string(hide_password=False)


def _flush_status(server: PrivateMariaDB) -> None:
    """What the operator does after the fix: reset the since-start counters."""
    engine = create_engine(server.url, poolclass=NullPool)
    with engine.connect() as conn:
        conn.execute(text("FLUSH STATUS"))
    engine.dispose()


def _assert_refused(engine: Engine) -> None:
    """The eleventh connection is refused; nothing of it (exception, traceback, socket)
    outlives this call, so the server can drop its thread as soon as the socket closes."""
    with pytest.raises(DBAPIError, match="Too many connections"):
        engine.connect()
    gc.collect()


def _doctor_once_the_refused_thread_is_gone(server: PrivateMariaDB) -> Result:
    """Run doctor through the server's one SUPER slot (max_connections + 1).

    MariaDB counts a refused client's thread until that thread has finished tearing down, so
    a doctor started right after the refusal can itself be refused on a loaded machine (exit
    2, "cannot inspect ... Too many connections"). The operator would simply run it again;
    so does this helper, for up to twenty seconds (the private server's connect_timeout is
    2 s). A report (exit 0 or 1) is returned at once: its findings quote the 1040 too.
    """
    deadline = time.monotonic() + 20.0
    while True:
        result = CliRunner().invoke(main, ["doctor", server.url])
        refused = result.exit_code == 2 and "Too many connections" in result.output
        if not refused or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_saturated_server_reports_the_limit_and_the_fix(private: PrivateMariaDB) -> None:
    _flush_status(private)
    engine = create_engine(_app_url(private), poolclass=NullPool)
    held: list[Connection] = []
    try:
        for _ in range(10):
            held.append(engine.connect())
        _assert_refused(engine)
        result = _doctor_once_the_refused_thread_is_gone(private)
        assert result.exit_code == 1, result.output
        out = result.output
        assert "CRITICAL" in out
        assert "[near-limit]" in out
        assert "the server reached max_connections=10 (peak 11)" in out
        assert "Max_used_connections=11" in out
        assert "SET GLOBAL max_connections = 15;" in out  # peak 11 (10 + doctor) / 0.8
        assert "[mysqld]" in out
        assert "max_connections = 15" in out
    finally:
        for conn in held:
            conn.close()
        engine.dispose()


def _hammer(engines: list[Engine], threads_per_engine: int, rounds: int) -> int:
    """Run SELECT SLEEP(0.05) from many threads per engine; count refused connections."""
    refused = 0
    lock = threading.Lock()

    def work(engine: Engine) -> None:
        nonlocal refused
        for _ in range(rounds):
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT SLEEP(0.05)"))
            except DBAPIError as exc:
                if "Too many connections" not in str(exc):
                    raise
                with lock:
                    refused += 1

    threads = [
        threading.Thread(target=work, args=(e,)) for e in engines for _ in range(threads_per_engine)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return refused


def test_doctor_before_and_after(private: PrivateMariaDB) -> None:
    """BEFORE: 4 processes' pools of 200 + 500 overflow under concurrent load (the
    post-mortem's fleet) fill the server; doctor names the problem and the fix. AFTER: a
    pooltender-sized fleet (4 + 2 per process, 2 processes here) is healthy."""
    _flush_status(private)
    app = _app_url(private)
    before = [create_engine(app, pool_size=200, max_overflow=500, pool_timeout=2) for _ in range(4)]
    try:
        refused = _hammer(before, threads_per_engine=4, rounds=3)
        assert refused > 0  # the server said "Too many connections"
        flags = ["--processes", "4", "--worker-model", "gevent", "--pool-size", "200"]
        flags += ["--max-overflow", "500", "--idle-after", "0", "--idle-per-host", "5"]
        result = CliRunner().invoke(main, ["doctor", private.url, *flags])
        assert result.exit_code == 1, result.output
        out = result.output
        assert "[near-limit]" in out
        assert re.search(r"CRITICAL \[near-limit\] .*reached max_connections=10", out), out
        assert "SET GLOBAL max_connections = 2800;" in out  # what 4 x 700 needs
        assert "max_connections = 2800" in out
        assert "[budget]" in out
        assert "DOES NOT FIT" in out
        assert "[idle-pileup]" in out
        assert "POOLTENDER_POOL_SIZE" in out
        assert PASSWORD not in out
    finally:
        for engine in before:
            engine.dispose()

    _flush_status(private)  # the fix is deployed; the operator resets the counters
    settings = PoolSettings(pool_size=4, max_overflow=2)
    after = [create_engine(app, **settings.engine_options()) for _ in range(1)]
    try:
        assert _hammer(after, threads_per_engine=4, rounds=3) == 0
        report = doctor(
            private.url,
            fleet=FleetShape(processes_per_host=1, worker_model=WorkerModel.THREADS, concurrency=4),
            settings=settings,
            thresholds=Thresholds(idle_after=0, idle_per_group=5),
            env={},
        )
        assert report.budget is not None
        assert report.budget.ok
        assert report.exit_code == 0, [f.title for f in report.findings]
        assert report.healthy
        result = CliRunner().invoke(main, ["doctor", private.url, "--idle-after", "0"])
        assert result.exit_code == 0, result.output
        # the two healthy endings: no findings at all, or info-only findings
        healthy_lines = ("healthy: no findings", "verdict: healthy (info only)")
        assert sum(line in result.output for line in healthy_lines) == 1, result.output
        assert "needs attention" not in result.output
    finally:
        for engine in after:
            engine.dispose()


def test_a_fleet_that_fits_is_never_told_to_lower_max_connections() -> None:
    """A budget that fits but clashes with the server (pool_recycle=-1 against MariaDB's
    wait_timeout) is a finding; its remedy names the setting and carries no SQL, because the
    SQL would set max_connections to the fleet's small need, below the server's (issue 13)."""
    from tests.pooltender.test_server import admin_url

    report = doctor(
        admin_url("mariadb"),
        fleet=FleetShape(processes_per_host=1, worker_model=WorkerModel.THREADS, concurrency=4),
        settings=PoolSettings(pool_size=4, max_overflow=2, pool_recycle=-1),
        users=["nobody"],
        env={},
    )
    assert report.budget is not None
    assert report.budget.fits
    assert report.budget.max_connections is not None
    assert report.budget.required_max_connections < report.budget.max_connections
    finding = report.finding("budget")
    assert finding is not None
    remedy = "\n".join(finding.remedy)
    assert "POOLTENDER_POOL_RECYCLE" in remedy
    assert "max_connections =" not in remedy, remedy
