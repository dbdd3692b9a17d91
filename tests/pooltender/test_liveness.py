"""Idle-window liveness ping, on the real MariaDB and PostgreSQL (and a private MariaDB).

Dead connections -- KILLed, expired by wait_timeout, cut by a server restart -- that sat idle
longer than the window are caught at checkout and replaced: the caller never sees an error.
The documented hazard is shown too: a connection killed *within* the window is handed out,
its first statement fails with a disconnect, and the following checkout works.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, exc, text
from sqlalchemy.pool import NullPool

from pooltender.liveness import idle_ping_of, install_idle_ping
from pooltender.watch import WatchedQueuePool, install_watch, watch_of

try:
    from tests.pooltender._servers import PrivateMariaDB, mariadb_url, postgres_url
except ImportError:  # tests/ is not a package here: the module sits beside this file
    from _servers import PrivateMariaDB, mariadb_url, postgres_url  # type: ignore[no-redef]

BACKENDS: dict[str, tuple[Callable[[], str], str, str]] = {
    # url, "who am I" query, "kill that session" statement
    "mariadb": (mariadb_url, "SELECT CONNECTION_ID()", "KILL {id}"),
    "postgresql": (postgres_url, "SELECT pg_backend_pid()", "SELECT pg_terminate_backend({id})"),
}


def pooled(url: str, after_idle: float) -> Engine:
    engine = create_engine(url, poolclass=WatchedQueuePool, pool_size=1, max_overflow=0)
    install_watch(engine)
    install_idle_ping(engine, after_idle)
    return engine


def session_id(engine: Engine, query: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(query)).scalar_one())


def kill(url: str, statement: str, victim: int) -> None:
    admin = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(statement.format(id=victim)))
    admin.dispose()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    url_of, whoami, kill_stmt = BACKENDS[request.param]
    return url_of(), whoami, kill_stmt


def test_refuses_zero_window_and_double_ping(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match="pool_pre_ping=True"):
        install_idle_ping(engine, 0)
    pinging = create_engine(f"sqlite:///{tmp_path / 'y.db'}", pool_pre_ping=True)
    with pytest.raises(ValueError, match="pool_pre_ping=False"):
        install_idle_ping(pinging, 0.5)
    ping = install_idle_ping(engine, 0.5)
    assert install_idle_ping(engine, 1.0) is ping
    assert ping.after_idle == 1.0
    assert idle_ping_of(engine) is ping
    ping.remove()
    assert idle_ping_of(engine) is None


def test_recently_used_and_fresh_connections_are_not_pinged(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'z.db'}", pool_size=1, max_overflow=0)
    ping = install_idle_ping(engine, 60)
    for _ in range(20):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    assert ping.stats().pings == 0
    ping.after_idle = 0.05
    time.sleep(0.1)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert ping.stats().pings == 1
    assert ping.stats().failures == 0
    engine.dispose()


def test_killed_idle_connection_is_replaced_silently(backend: tuple[str, str, str]) -> None:
    url, whoami, kill_stmt = backend
    engine = pooled(url, after_idle=0.2)
    before = session_id(engine, whoami)
    kill(url, kill_stmt, before)
    time.sleep(0.4)  # idle longer than the window
    after = session_id(engine, whoami)  # no error reaches the caller
    assert after != before
    ping = idle_ping_of(engine)
    assert ping is not None
    assert ping.stats().failures == 1
    watch = watch_of(engine)
    assert watch is not None
    stats = watch.stats()
    assert stats.ping_failures == 1
    assert stats.checked_out == 0
    engine.dispose()


def test_wait_timeout_expiry_is_caught_on_mariadb() -> None:
    url = mariadb_url()
    engine = pooled(url, after_idle=0.5)
    with engine.connect() as conn:
        # only this session: the shared server's global setting is untouched
        conn.execute(text("SET SESSION wait_timeout = 1"))
        before = conn.execute(text("SELECT CONNECTION_ID()")).scalar_one()
    time.sleep(2.5)  # the server closes the idle session after 1 s
    with engine.connect() as conn:
        after = conn.execute(text("SELECT CONNECTION_ID()")).scalar_one()
        timeout = conn.execute(text("SELECT @@session.wait_timeout")).scalar_one()
    assert after != before
    assert int(timeout) != 1  # a fresh session with the default timeout
    engine.dispose()


def test_connection_killed_within_the_window_is_not_caught(
    backend: tuple[str, str, str],
) -> None:
    """The hazard, as with HikariCP: the skip window trades this case for fewer round trips."""
    url, whoami, kill_stmt = backend
    engine = pooled(url, after_idle=60)
    victim = session_id(engine, whoami)
    kill(url, kill_stmt, victim)
    time.sleep(0.2)
    with pytest.raises(exc.DBAPIError) as caught, engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # handed out unchecked: the first statement fails
    assert caught.value.connection_invalidated
    assert session_id(engine, whoami) != victim  # SQLAlchemy invalidated it; next one works
    engine.dispose()


@pytest.mark.slow
def test_server_restart_is_caught_on_a_private_mariadb() -> None:
    with PrivateMariaDB() as server:
        engine = pooled(server.url, after_idle=0.2)
        assert session_id(engine, "SELECT 1") == 1
        server.restart()
        time.sleep(0.3)
        with engine.connect() as conn:  # the pooled connection died with the old server
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        ping = idle_ping_of(engine)
        assert ping is not None
        assert ping.stats().failures == 1
        engine.dispose()
