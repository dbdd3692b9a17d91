"""SheddingQueuePool: the shed wait is the caller's, never the pool's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from pooltender.shedding import SheddingQueuePool, current_shed_wait, shed_after


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'shed.db'}",
        poolclass=SheddingQueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=30,
    )
    yield engine
    engine.dispose()


def test_dispose_inside_a_shed_wait_keeps_the_configured_pool_timeout(engine: Engine) -> None:
    """engine.dispose() builds the new pool with QueuePool.recreate(timeout=self._timeout);
    inside a request that attribute answers the shed wait, which must not become the new
    pool's timeout for every later caller (consumers, cron)."""
    with shed_after(0.2):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        assert engine.pool.timeout() == 0.2  # the caller still sees its own shed wait
    assert current_shed_wait() is None
    pool = engine.pool
    assert isinstance(pool, SheddingQueuePool)
    assert pool.timeout() == 30
    assert pool._pool_timeout == 30
    # and a recreate outside any shed wait keeps it too
    engine.dispose()
    assert engine.pool.timeout() == 30
