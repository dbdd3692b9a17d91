"""``pooltender top`` against real MariaDB: plain snapshots over a pipe (the inspector's own
connection and known test connections in them), ``--iterations``, clean exit 2 without a URL
or a server (password masked), and the live view on a terminal: a pty, where ``q`` quits and
``s`` re-sorts, and tmux, whose screen shows the table."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import secrets
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from click.testing import CliRunner
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from pooltender.cli import main
from pooltender.cli.top import render_text, sort_connections
from pooltender.server.snapshot import ServerConnection, ServerSnapshot
from tests.conftest import create_database, drop_database
from tests.pooltender._servers import server_missing

CLI = [sys.executable, "-c", "from pooltender.cli import main; main()", "top"]


@dataclass
class Known:
    url: str
    database: str
    idle_id: int
    in_tx_id: int


@pytest.fixture(scope="module")
def known() -> Iterator[Known]:
    """A private database with two connections held open: one idle, one idle in a
    transaction (an UPDATE not yet committed: an InnoDB transaction)."""
    name = f"pt_top_{secrets.token_hex(4)}"
    url = create_database("mariadb", name)
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INT PRIMARY KEY, n INT)"))
        conn.execute(text("INSERT INTO t VALUES (1, 0)"))
    idle: Connection = engine.connect()
    in_tx: Connection = engine.connect()
    idle_id = int(idle.execute(text("SELECT CONNECTION_ID()")).scalar_one())
    idle.commit()
    in_tx_id = int(in_tx.execute(text("SELECT CONNECTION_ID()")).scalar_one())
    in_tx.execute(text("UPDATE t SET n = n + 1 WHERE id = 1"))
    yield Known(url, name, idle_id, in_tx_id)
    in_tx.rollback()
    in_tx.close()
    idle.close()
    engine.dispose()
    drop_database("mariadb", name)


def row_of(output: str, conn_id: int) -> str:
    rows = [line for line in output.splitlines() if re.match(rf"{conn_id}\*?\s", line)]
    assert len(rows) == 1, f"connection {conn_id} not listed once in:\n{output}"
    return rows[0]


def test_pipe_mode_prints_plain_snapshot_with_own_and_known_connections(known: Known) -> None:
    result = CliRunner().invoke(main, ["top", known.url, "--once"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "\x1b" not in out  # no ANSI over a pipe
    assert out.startswith("pooltender top - mysql ")
    assert re.search(r"client connections: \d+ / \d+ max_connections", out)
    assert out.count("pooltender top - ") == 1
    own = [line for line in out.splitlines() if re.match(r"\d+\*\s", line)]
    assert len(own) == 1  # the inspector's own connection, marked *
    assert "active" in own[0]
    idle = row_of(out, known.idle_id)
    assert known.database in idle
    assert re.search(r"\sidle\s", idle)
    in_tx = row_of(out, known.in_tx_id)
    assert known.database in in_tx
    assert "idle in transaction" in in_tx
    assert re.search(r"by state: .*idle in transaction \d", out)


def test_iterations_prints_that_many_snapshots_through_a_real_pipe(known: Known) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [*CLI, known.url, "--iterations", "2", "--interval", "0.3", "--sort", "state"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert out.count("pooltender top - ") == 2
    assert out.count("sorted by state") == 2
    assert "\x1b" not in out
    assert time.monotonic() - started >= 0.3
    # sorted by state: the one holding a transaction comes before the idle one
    first = out.split("pooltender top - ")[1]
    lines = first.splitlines()
    assert lines.index(row_of(first, known.in_tx_id)) < lines.index(row_of(first, known.idle_id))


def test_url_defaults_to_database_url(known: Known, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", known.url)
    result = CliRunner().invoke(main, ["top", "--once", "--sort", "user"])
    assert result.exit_code == 0, result.output
    assert known.database in row_of(result.output, known.idle_id)


def test_no_url_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result = CliRunner().invoke(main, ["top", "--once"])
    assert result.exit_code == 2
    assert "DATABASE_URL" in result.output


def test_unreachable_server_exits_2_with_the_password_masked() -> None:
    url = "mysql+mysqldb://app:s3cret-pw@127.0.0.1:1/app"
    result = CliRunner().invoke(main, ["top", url, "--once"])
    assert result.exit_code == 2
    assert "s3cret-pw" not in result.output
    assert "app:***@127.0.0.1:1/app" in result.output
    assert "Traceback" not in result.output


def _conn(i: int, state: str, user: str, seconds: float, **kw: object) -> ServerConnection:
    values: dict[str, object] = {
        "id": i,
        "user": user,
        "host": f"10.0.0.{i}",
        "database": "app",
        "state": state,
        "command": "Sleep",
        "seconds_in_state": seconds,
        "transaction_age": None,
        "query": None,
        "wait_event": None,
        "is_self": False,
        "kind": "client",
    }
    values.update(kw)
    return ServerConnection(**values)  # type: ignore[arg-type]


def test_sort_orders() -> None:
    conns = (
        _conn(1, "idle", "zed", 5),
        _conn(2, "active", "amy", 1),
        _conn(3, "idle in transaction", "bob", 2),
        _conn(4, "idle", "amy", 50),
    )
    assert [c.id for c in sort_connections(conns, "time")] == [4, 1, 3, 2]
    assert [c.id for c in sort_connections(conns, "user")] == [4, 2, 3, 1]
    assert [c.id for c in sort_connections(conns, "state")] == [3, 2, 4, 1]
    assert [c.id for c in sort_connections(conns, "host")] == [1, 2, 3, 4]
    snapshot = ServerSnapshot(
        backend="mysql",
        server_version="10.11",
        taken_at=0.0,
        url="mysql://app:***@db/app",
        max_connections=10,
        reserved_connections=0,
        connections=conns,
        status={},
        variables={},
        memory_per_connection_bytes=None,
        unreadable={},
    )
    text_ = render_text(snapshot, "user")
    assert "client connections: 4 / 10 max_connections (40%)" in text_
    assert "by user:  amy 2, bob 1, zed 1" in text_


# --------------------------------------------------------------------------- terminals


def _read_until(fd: int, pattern: str, timeout: float, seen: bytearray) -> None:
    deadline = time.monotonic() + timeout
    while pattern.encode() not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            tail = bytes(seen[-1500:]).decode(errors="replace")
            raise AssertionError(f"{pattern!r} not seen on the terminal; last output: {tail!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"terminal closed before {pattern!r} was seen")
            seen += chunk


def test_on_a_terminal_s_resorts_and_q_quits(known: Known) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}
    proc = subprocess.Popen(
        [*CLI, known.url, "--interval", "0.5"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    seen = bytearray()
    try:
        _read_until(master, "sorted by time", 30, seen)
        assert b"\x1b[" in seen  # a rich full-screen view, not plain text
        os.write(master, b"s")
        _read_until(master, "sorted by user", 10, seen)
        os.write(master, b"q")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)


def test_in_tmux_the_screen_shows_the_table_and_q_quits(known: Known) -> None:
    tmux = shutil.which("tmux")
    if not tmux:
        server_missing("tmux", "not on PATH (apt-get install tmux)")
    session = f"pt-top-{secrets.token_hex(3)}"
    socket = f"pt-top-{secrets.token_hex(3)}"  # a private tmux server, not the user's
    base = [tmux, "-L", socket]
    command = " ".join([*(f"'{part}'" for part in CLI), f"'{known.url}'", "--interval", "0.5"])
    subprocess.run(
        [*base, "new-session", "-d", "-s", session, "-x", "160", "-y", "40", command],
        check=True,
        timeout=10,
    )
    try:
        screen = ""
        deadline = time.monotonic() + 30
        while f"{known.in_tx_id} " not in screen and time.monotonic() < deadline:
            time.sleep(0.3)
            screen = subprocess.run(
                [*base, "capture-pane", "-p", "-t", session],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout
        assert "max_connections" in screen, screen
        assert "idle in transaction" in screen, screen
        assert known.database in screen, screen
        subprocess.run([*base, "send-keys", "-t", session, "q"], check=True, timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = subprocess.run(
                [*base, "has-session", "-t", session], capture_output=True, timeout=10, check=False
            )
            if alive.returncode != 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("pooltender top did not quit on q")
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True, timeout=10, check=False)
