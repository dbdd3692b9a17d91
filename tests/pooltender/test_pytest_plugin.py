"""The pytest plugin, run on small generated test suites with ``pytester``."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
import pytest
from sqlalchemy import create_engine

pytest_plugins = ["pooltender.pytest_plugin"]


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield engine
    engine.dispose()
"""


def run(pytester: pytest.Pytester, tests: str) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=tests)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")


def test_a_leaking_test_fails_with_the_stack_of_its_checkout(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        from sqlalchemy import text

        KEEP = []

        def test_leaks(pool_guard, engine):
            pool_guard.watch(engine)
            conn = engine.connect()
            conn.execute(text("SELECT 1"))
            KEEP.append(conn)
        """,
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_leaks leaked 1 database connection(s)*",
            "*connection still checked out*",
            "*test_suite.py:* in test_leaks",
            "        conn = engine.connect()",
        ]
    )
    assert result.ret != 0


def test_a_clean_suite_passes(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import pytest
        from sqlalchemy import text

        def test_closes(pool_guard, engine):
            pool_guard.watch(engine)
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        @pytest.mark.no_leaked_connections("engine")
        def test_marked_and_clean(engine):
            with engine.begin() as conn:
                conn.execute(text("SELECT 1"))
        """,
    )
    result.assert_outcomes(passed=2)
    assert result.ret == 0


def test_the_marker_guards_the_named_engine_fixture(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import pytest
        from sqlalchemy.orm import Session
        from sqlalchemy import text

        SESSIONS = []

        @pytest.mark.no_leaked_connections("engine")
        def test_session_left_open(engine):
            session = Session(engine)
            session.execute(text("SELECT 1"))
            SESSIONS.append(session)
        """,
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_suite.py:* in test_session_left_open",
            '        session.execute(text("SELECT 1"))',
        ]
    )


def test_a_connection_never_closed_is_caught_even_when_collected(
    pytester: pytest.Pytester,
) -> None:
    result = run(
        pytester,
        """
        from sqlalchemy import text

        def test_forgets_to_close(pool_guard, engine):
            pool_guard.watch(engine)
            conn = engine.connect()
            conn.execute(text("SELECT 1"))
            del conn
        """,
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*never closed*garbage collector*",
            "*test_suite.py:* in test_forgets_to_close",
            "        conn = engine.connect()",
        ]
    )


def test_a_fixture_holding_a_connection_until_its_teardown_is_not_blamed(
    pytester: pytest.Pytester,
) -> None:
    result = run(
        pytester,
        """
        import pytest
        from sqlalchemy import text

        @pytest.fixture
        def conn(engine, pool_guard):
            pool_guard.watch(engine)
            connection = engine.connect()
            yield connection
            connection.close()

        def test_uses_fixture_connection(conn):
            conn.execute(text("SELECT 1"))
        """,
    )
    result.assert_outcomes(passed=1)


def test_marker_without_fixture_names_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import pytest

        @pytest.mark.no_leaked_connections()
        def test_nothing():
            pass
        """,
    )
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*needs the name of at least one engine fixture*"])
