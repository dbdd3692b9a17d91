"""The exact-cap scenarios of tests/test_concurrency.py, on PostgreSQL reached through a real
PgBouncer in transaction mode (tests/_pgbouncer.py).

The scenarios are imported, not copied: pytest collects them here with this module's
fixtures, which put a PgBouncer with 4 server connections between the app (a 8 + 4 pool per
process, ``POOLTENDER_PROXY=pgbouncer-transaction``) and a fresh migrated database, and install
pooltender's session-state guard on the app's engine, so any statement coupons sends that
would leave state on a server connection fails the test. Caps must stay exact although
consecutive transactions of one client connection run on different server connections.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from flask import Flask

from coupons import create_app
from coupons.config import Settings
from coupons.db import db
from coupons.migrate import upgrade
from pooltender.proxy import install_session_state_guard
from pooltender.settings import PoolSettings
from tests._pgbouncer import PgBouncer
from tests.conftest import create_database, drop_database, empty_tables, make_settings
from tests.test_concurrency import (
    test_campaign_cap_shared_by_twenty_codes_is_exact,
    test_code_max_uses_is_exact,
    test_concurrent_rollbacks_restore_each_redemption_once,
    test_mixed_redeems_and_rollbacks_lose_no_count,
    test_per_customer_limit_race,
    test_same_order_raced_on_two_codes_redeems_once,
)

pytestmark = pytest.mark.slow

SCENARIOS = (
    test_code_max_uses_is_exact,
    test_campaign_cap_shared_by_twenty_codes_is_exact,
    test_concurrent_rollbacks_restore_each_redemption_once,
    test_per_customer_limit_race,
    test_same_order_raced_on_two_codes_redeems_once,
    test_mixed_redeems_and_rollbacks_lose_no_count,
)
SERVER_CONNECTIONS = 4


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    """A fresh PostgreSQL database, migrated directly (migrations need a real session), and
    a PgBouncer in transaction mode in front of it."""
    name = f"coupons_pgb_{os.getpid()}_{secrets.token_hex(3)}"
    direct = create_database("postgresql", name)
    try:
        upgrade(direct)
        with PgBouncer(direct, default_pool_size=SERVER_CONNECTIONS) as proxy:
            yield proxy
    finally:
        drop_database("postgresql", name)


@pytest.fixture
def database_url(bouncer: PgBouncer) -> str:
    """Overrides conftest's three-backend fixture: only PostgreSQL, through PgBouncer."""
    return bouncer.url()


@pytest.fixture
def settings(database_url: str) -> Settings:
    """As in test_concurrency.py (queue, never shed, admission off), plus the proxy setting."""
    pool = PoolSettings(
        pool_size=8,
        max_overflow=4,
        pool_timeout=120,
        shed_wait=120,
        proxy="pgbouncer-transaction",
    )
    return make_settings(
        database_url, pool=pool, pooltender_config={"POOLTENDER_ADMISSION": "false"}
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    """conftest's app, with the session-state guard on its engine."""
    application = create_app(settings)
    with application.app_context():
        install_session_state_guard(db.engine)
    yield application
    with application.app_context():
        db.session.remove()
        empty_tables()
        checked_out = db.engine.pool.checkedout()  # type: ignore[attr-defined]
        db.engine.dispose()
    assert checked_out == 0, f"{checked_out} connection(s) left checked out after the test"


def test_scenarios_run_through_the_proxy(app: Flask, bouncer: PgBouncer) -> None:
    """The fixtures above really route the app through PgBouncer, with psycopg's prepared
    statements off on the app's own connections."""
    with app.app_context():
        assert db.engine.url.port == bouncer.port
        raw = db.engine.raw_connection()
        try:
            assert raw.driver_connection.prepare_threshold is None  # type: ignore[union-attr]
        finally:
            raw.close()
