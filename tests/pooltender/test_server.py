"""The server inspector against real MariaDB and PostgreSQL: known sets of connections, from
two test accounts, must come back exactly -- ids, states, groupings."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from pooltender.server.snapshot import (
    InspectionError,
    ServerSnapshot,
    connect_for_inspection,
    inspect_url,
    take_snapshot,
)
from tests.pooltender._servers import mariadb_url, postgres_url

BACKENDS = ("mariadb", "postgresql")
PASSWORD = "Pt-" + secrets.token_hex(6)


def admin_url(backend: str) -> str:
    return mariadb_url() if backend == "mariadb" else postgres_url()


@dataclass
class ConnectionSet:
    """Two fresh accounts and known connections: user ``a`` holds ``idle_a`` idle,
    ``busy_a`` running a long sleep and ``iit_a`` idle in transaction; user ``b`` holds
    ``idle_b`` idle. ``ids`` maps each group to its server ids."""

    backend: str
    admin: str
    idle_a: int = 3
    busy_a: int = 1
    iit_a: int = 2
    idle_b: int = 2
    settle: float = 1.2
    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    ids: dict[str, list[int]] = field(default_factory=dict)
    conns: dict[int, Connection] = field(default_factory=dict)
    _engines: list[Engine] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def user_a(self) -> str:
        return f"pta_{self.suffix}"

    @property
    def user_b(self) -> str:
        return f"ptb_{self.suffix}"

    @property
    def table(self) -> str:
        return f"pt_trx_{self.suffix}"

    def url_for(self, user: str) -> str:
        url = make_url(self.admin).set(username=user, password=PASSWORD)
        return url.render_as_string(hide_password=False)

    def _admin_exec(self, *statements: str) -> None:
        engine = create_engine(self.admin, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                for statement in statements:
                    conn.execute(text(statement))
        finally:
            engine.dispose()

    def __enter__(self) -> ConnectionSet:
        if self.backend == "mariadb":
            self._admin_exec(
                f"CREATE TABLE test.{self.table} (id INT PRIMARY KEY) ENGINE=InnoDB",
                *(
                    stmt
                    for user in (self.user_a, self.user_b)
                    for stmt in (
                        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}'",
                        f"GRANT SELECT ON test.* TO '{user}'@'%'",
                    )
                ),
            )
        else:
            self._admin_exec(
                *(
                    f"CREATE ROLE {u} LOGIN PASSWORD '{PASSWORD}'"
                    for u in (self.user_a, self.user_b)
                )
            )
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def _engine(self, user: str) -> Engine:
        engine = create_engine(self.url_for(user), poolclass=NullPool)
        self._engines.append(engine)
        return engine

    def _connect(self, user: str, *, autocommit: bool) -> tuple[int, Connection]:
        conn = self._engine(user).connect()
        if autocommit:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        ident_sql = (
            "SELECT CONNECTION_ID()" if self.backend == "mariadb" else "SELECT pg_backend_pid()"
        )
        ident = int(conn.execute(text(ident_sql)).scalar_one())
        self.conns[ident] = conn
        return ident, conn

    def _open(self) -> None:
        for group, user, count in (
            ("idle_a", self.user_a, self.idle_a),
            ("idle_b", self.user_b, self.idle_b),
        ):
            self.ids[group] = [self._connect(user, autocommit=True)[0] for _ in range(count)]
        self.ids["iit_a"] = []
        for _ in range(self.iit_a):
            ident, conn = self._connect(self.user_a, autocommit=False)
            # MySQL shows a transaction only once it touched InnoDB
            touch = f"SELECT * FROM test.{self.table}" if self.backend == "mariadb" else "SELECT 1"
            conn.execute(text(touch))
            self.ids["iit_a"].append(ident)
        self.ids["busy_a"] = []
        sleep_sql = "SELECT SLEEP(60)" if self.backend == "mariadb" else "SELECT pg_sleep(60)"
        for _ in range(self.busy_a):
            ident, conn = self._connect(self.user_a, autocommit=True)
            self.ids["busy_a"].append(ident)
            thread = threading.Thread(target=_run_quietly, args=(conn, sleep_sql), daemon=True)
            thread.start()
            self._threads.append(thread)
        deadline = time.monotonic() + 10
        while self.ids["busy_a"]:
            snap = self.snapshot()
            states = {c.id: c.state for c in snap.connections}
            if all(states.get(i) == "active" for i in self.ids["busy_a"]):
                break
            assert time.monotonic() < deadline, f"busy connections never ran: {states}"
            time.sleep(0.05)
        time.sleep(self.settle)  # let the idle ones age past a 1 s threshold

    def snapshot(self) -> ServerSnapshot:
        engine = connect_for_inspection(self.admin)
        try:
            return take_snapshot(engine)
        finally:
            engine.dispose()

    @property
    def users(self) -> tuple[str, str]:
        return (self.user_a, self.user_b)

    def alive(self, ident: int) -> bool:
        """Whether our client connection ``ident`` still answers a query."""
        try:
            self.conns[ident].execute(text("SELECT 1")).scalar_one()
            return True
        except DBAPIError:
            return False

    def close(self) -> None:
        cancel = "KILL QUERY {}" if self.backend == "mariadb" else "SELECT pg_cancel_backend({})"
        for ident in self.ids.get("busy_a", []):
            with contextlib.suppress(DBAPIError):
                self._admin_exec(cancel.format(int(ident)))
        for thread in self._threads:
            thread.join(timeout=10)
        for conn in self.conns.values():
            with contextlib.suppress(DBAPIError):
                conn.close()
        for engine in self._engines:
            engine.dispose()
        if self.backend == "mariadb":
            self._admin_exec(
                f"DROP USER IF EXISTS '{self.user_a}'@'%'",
                f"DROP USER IF EXISTS '{self.user_b}'@'%'",
                f"DROP TABLE IF EXISTS test.{self.table}",
            )
        else:
            self._admin_exec(*(f"DROP ROLE IF EXISTS {u}" for u in self.users))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _run_quietly(conn: Connection, sql: str) -> None:
    with contextlib.suppress(DBAPIError):  # cancelled at teardown
        conn.execute(text(sql))


@pytest.fixture(params=BACKENDS)
def connection_set(request: pytest.FixtureRequest) -> Iterator[ConnectionSet]:
    with ConnectionSet(request.param, admin_url(request.param)) as cs:
        yield cs


# ---------------------------------------------------------------------- tests


def test_snapshot_reports_exactly_the_known_connections(connection_set: ConnectionSet) -> None:
    cs = connection_set
    snap = cs.snapshot()
    ours = snap.only_users(cs.users)
    by_id = {c.id: c for c in ours.connections}
    expected_ids = {i for ids in cs.ids.values() for i in ids}
    assert set(by_id) == expected_ids
    expected_state = {"idle_a": "idle", "idle_b": "idle", "iit_a": "idle in transaction"}
    expected_state["busy_a"] = "active"
    for group, state in expected_state.items():
        for ident in cs.ids[group]:
            c = by_id[ident]
            assert c.state == state, (group, c)
            assert c.kind == "client"
            assert not c.is_self
            assert c.host == "127.0.0.1"
    for ident in cs.ids["iit_a"]:
        age = by_id[ident].transaction_age
        assert age is not None
        assert age >= 1.0
        assert by_id[ident].seconds_in_state >= 1.0
    for ident in cs.ids["idle_a"] + cs.ids["idle_b"]:
        assert by_id[ident].transaction_age is None
        assert by_id[ident].seconds_in_state >= 1.0
    busy = by_id[cs.ids["busy_a"][0]]
    assert busy.query is not None
    assert "sleep" in busy.query.lower()

    assert ours.by_user() == {cs.user_a: 6, cs.user_b: 2}
    assert ours.by_state() == {"idle": 5, "idle in transaction": 2, "active": 1}
    assert ours.by_host() == {"127.0.0.1": 8}
    # the whole snapshot: own connection flagged, figures present, JSON has the groupings
    assert sum(c.is_self for c in snap.connections) == 1
    assert snap.max_connections is not None
    assert snap.max_connections > 0
    assert snap.status["Threads_connected"] >= 9
    data = ours.to_json()
    assert data["by_user"] == {cs.user_a: 6, cs.user_b: 2}
    assert len(data["connections"]) == 8
    if cs.backend == "mariadb":
        assert snap.backend == "mysql"
        assert snap.reserved_connections == 1
        assert snap.memory_per_connection_bytes is not None
        assert snap.memory_per_connection_bytes > 0
        for name in (
            "Threads_running",
            "Max_used_connections",
            "Connection_errors_max_connections",
        ):
            assert name in snap.status
        assert {"wait_timeout", "interactive_timeout", "sort_buffer_size"} <= set(snap.variables)
        assert snap.privileged is True
        assert snap.privileged_users is not None
        assert "root" in snap.privileged_users
        assert cs.user_a not in snap.privileged_users
    else:
        assert snap.backend == "postgresql"
        assert snap.memory_per_connection_bytes is None
        assert "idle_in_transaction_session_timeout" in snap.variables
        assert any(c.kind == "system" for c in snap.connections)
        assert snap.privileged_users is not None
        assert "postgres" in snap.privileged_users


@pytest.mark.parametrize("backend", BACKENDS)
def test_least_privilege_says_what_it_cannot_read(backend: str) -> None:
    with ConnectionSet(
        backend, admin_url(backend), idle_a=1, busy_a=0, iit_a=0, idle_b=2, settle=0
    ) as cs:
        snap = inspect_url(cs.url_for(cs.user_a))
        assert snap.current_user is not None
        assert snap.current_user.split("@")[0] == cs.user_a
        assert snap.privileged is False
        assert PASSWORD not in snap.url
        assert "***" in snap.url
        if backend == "mariadb":
            # without PROCESS: only its own threads, and it says so
            assert {c.user for c in snap.connections} == {cs.user_a}
            assert "processlist" in snap.unreadable
            assert "PROCESS" in snap.unreadable["transactions"]
        else:
            assert "pg_read_all_stats" in snap.unreadable["activity"]
            others = [c for c in snap.connections if c.user == cs.user_b]
            assert len(others) == 2
            assert {c.state for c in others} == {"unknown"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors_never_show_the_password(backend: str) -> None:
    url = make_url(admin_url(backend)).set(password="Sekrit-" + PASSWORD)
    refused = url.set(port=1).render_as_string(hide_password=False)
    wrong = url.set(username="nobody_" + secrets.token_hex(3)).render_as_string(hide_password=False)
    for bad in (refused, wrong):
        with pytest.raises(InspectionError) as info:
            inspect_url(bad)
        message = str(info.value)
        assert "Sekrit" not in message
        assert PASSWORD not in message
        assert "***" in message
        assert message.startswith("[pooltender-inspect]")
