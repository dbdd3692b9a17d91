"""A process forked after the watch is in use (gunicorn ``preload_app``, Celery prefork)
starts with watch state of its own: counts from zero, fresh locks, and a leak sweeper that
exists in the child. The test really forks, after the import and a first checkout (which
starts the sweeper in the parent), with one connection held across the fork."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from pooltender.hooks import dispose_inherited
from pooltender.watch import WatchedQueuePool, install_watch, watch_of

try:
    from tests.pooltender._servers import mariadb_url
except ImportError:  # tests/ is not a package here: the module sits beside this file
    from _servers import mariadb_url  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine(
        mariadb_url(), poolclass=WatchedQueuePool, pool_size=3, max_overflow=0, pool_timeout=10
    )
    yield engine
    watch = watch_of(engine)
    if watch is not None:
        watch.remove()
    engine.dispose()


def _in_child(engine: Engine, dispose: bool) -> dict[str, object]:
    """What the child measures (run in the forked child only)."""
    if dispose:
        dispose_inherited([engine])  # what gunicorn's post_fork hook does
    watch = watch_of(engine)
    assert watch is not None
    at_start = watch.stats()
    conn = engine.connect()  # held past the 0.2 s threshold: the sweeper must report it
    conn.execute(text("SELECT 1"))
    deadline = time.monotonic() + 5
    while watch.stats().leaks_reported == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    conn.close()
    end = watch.stats()
    return {
        "start_checkouts": at_start.checkouts,
        "start_checked_out": at_start.checked_out,
        "start_leaks": at_start.leaks_reported,
        "start_high_water": at_start.high_water_checked_out,
        "leaks_reported": end.leaks_reported,
        "leaks_returned": end.leaks_returned,
        "checkouts": end.checkouts,
        "checked_out": end.checked_out,
        "second_checkouts": end.second_checkouts,
    }


def _fork_and_measure(engine: Engine, dispose: bool) -> dict[str, object]:
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a process with threads (the sweeper) may
        # deadlock: exactly the situation under test
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(read_end)
            result: dict[str, object] = _in_child(engine, dispose)
        except BaseException as exc:  # reported to the parent, which fails the test
            result = {"error": f"{type(exc).__name__}: {exc}"}
            code = 1
        try:
            os.write(write_end, json.dumps(result).encode())
            os.close(write_end)
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks) or b"{}")
    assert os.waitstatus_to_exitcode(status) == 0, result
    return dict(result)


@pytest.mark.parametrize("dispose", [True, False], ids=["post_fork-dispose", "no-hook"])
def test_forked_child_has_its_own_counts_locks_and_sweeper(engine: Engine, dispose: bool) -> None:
    watch = install_watch(engine, leak_threshold=0.2)
    with engine.connect() as conn:  # first checkout: starts the sweeper thread in the parent
        conn.execute(text("SELECT 1"))
    held = engine.connect()  # out across the fork
    try:
        before = watch.stats()
        assert before.checkouts == 2
        assert before.checked_out == 1
        child = _fork_and_measure(engine, dispose)
    finally:
        held.close()
    assert child == {
        "start_checkouts": 0,
        "start_checked_out": 0,
        "start_leaks": 0,
        "start_high_water": 0,
        "leaks_reported": 1,
        "leaks_returned": 1,
        "checkouts": 1,
        "checked_out": 0,
        "second_checkouts": 0,
    }
    # the parent's own figures are its own: the child's checkout is not among them (its
    # held connection, out the whole time, is the parent's one leak report)
    after = watch.stats()
    assert after.checkouts == 2
    assert after.checked_out == 0
