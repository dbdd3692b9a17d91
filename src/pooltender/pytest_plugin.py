"""pytest plugin: fail a test that leaves a database connection checked out.

Enable it with ``-p pooltender.pytest_plugin`` or ``pytest_plugins = ["pooltender.pytest_plugin"]``
in a ``conftest.py``. Two ways to guard a test:

* the ``pool_guard`` fixture::

      def test_report(pool_guard, engine):
          pool_guard.watch(engine)
          ...

* the marker, naming the fixtures that provide engines::

      @pytest.mark.no_leaked_connections("engine")
      def test_report(engine): ...

The check runs **after the test's fixtures are torn down** (a ``pytest_runtest_teardown``
wrapper), so a fixture that holds a connection for the test and releases it in its own
teardown is not blamed. What fails the test (reported by pytest as an error at teardown,
like any failing finalizer, and the run exits non-zero):

* a connection checked out *during the test* (setup, call or teardown) still checked out;
* a connection checked out during the test that was never closed and that the garbage
  collector returned (CPython hides such a leak at function exit; PyPy would hold it).

The failure message lists each connection with the ``file:line`` stack of the code that
checked it out: guarding an engine turns on stack capture on its watch
(:func:`pooltender.watch.install_watch`, ``capture_stacks=True``).
"""

from __future__ import annotations

import gc
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from pooltender.leaks import format_stack
from pooltender.watch import PoolWatch, install_watch

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["PoolGuard"]

MARKER = "no_leaked_connections"


@dataclass
class _Guarded:
    watch: PoolWatch
    first_seq: int


@dataclass
class PoolGuard:
    """Engines guarded for the current test; :meth:`problems` says what leaked."""

    _guarded: list[_Guarded] = field(default_factory=list)

    def watch(self, engine: Engine) -> PoolWatch:
        """Guard ``engine`` from now on; returns its watch (installed if needed)."""
        watch = install_watch(engine, capture_stacks=True)
        for guarded in self._guarded:
            if guarded.watch is watch:
                return watch
        self._guarded.append(_Guarded(watch, watch.next_seq()))
        return watch

    def problems(self) -> list[str]:
        """One text per leaked connection, with the stack of its checkout.

        If connections are still out, a garbage collection runs first, so one that nothing
        references any more is reported as "never closed" rather than "still checked out".
        """
        if any(g.watch.stats().checked_out for g in self._guarded):
            gc.collect()
        found: list[str] = []
        for guarded in self._guarded:
            for checkout in guarded.watch.open_checkouts():
                if checkout.seq >= guarded.first_seq:
                    found.append(
                        f"connection still checked out ({checkout.held_seconds:.3f} s, thread "
                        f"{checkout.thread_name!r}), checked out at:\n"
                        f"{format_stack(checkout.stack)}"
                    )
            stats = guarded.watch.stats()
            for report in stats.gc_return_reports:
                if report.seq >= guarded.first_seq:
                    found.append(
                        "connection never closed (returned by the garbage collector after "
                        f"{report.held_seconds:.3f} s), checked out at:\n"
                        f"{format_stack(report.stack)}"
                    )
        return found


_GUARD_KEY = pytest.StashKey[PoolGuard]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*engine_fixtures): fail the test if it leaves a connection of the engines "
        "these fixtures provide checked out (pooltender)",
    )


def _guard_for(item: pytest.Item) -> PoolGuard:
    guard = item.stash.get(_GUARD_KEY, None)
    if guard is None:
        guard = PoolGuard()
        item.stash[_GUARD_KEY] = guard
    return guard


@pytest.fixture
def pool_guard(request: pytest.FixtureRequest) -> PoolGuard:
    """A :class:`PoolGuard` for this test: ``pool_guard.watch(engine)`` guards an engine."""
    return _guard_for(request.node)


@pytest.fixture(autouse=True)
def _pooltender_marker_guard(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker(MARKER)
    if marker is None:
        return
    names = marker.args or tuple(marker.kwargs.get("engine_fixtures", ()))
    if not names:
        raise pytest.UsageError(
            f"@pytest.mark.{MARKER} needs the name of at least one engine fixture, "
            f'e.g. @pytest.mark.{MARKER}("engine")'
        )
    guard = _guard_for(request.node)
    for name in names:
        value: Any = request.getfixturevalue(name)
        engine = getattr(value, "engine", value)  # an Engine, or something with .engine
        guard.watch(engine)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    result = yield  # fixtures are finalized here; then look at what is still checked out
    guard = item.stash.get(_GUARD_KEY, None)
    if guard is not None:
        problems = guard.problems()
        if problems:
            pytest.fail(
                f"{item.nodeid} leaked {len(problems)} database connection(s):\n"
                + "\n".join(problems),
                pytrace=False,
            )
    return result
