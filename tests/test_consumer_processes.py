"""``coupons consume`` as real processes on RabbitMQ and MariaDB: 10,000 messages through 4
worker processes inside the connection budget, and a worker SIGKILLed mid-message.

``CONSUMER_LOAD_MESSAGES`` sets the load test's size (default 10,000, the acceptance figure).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from coupons import create_app
from coupons.consumers import OrderEventPublisher, open_broker, paid
from coupons.db import db
from pooltender.settings import PoolSettings
from tests._rabbit import (
    ConsumerThread,
    ProcesslistSampler,
    admin_engine,
    drain,
    mariadb_database,
    queue_depth,
    rabbit_url,
    scalar,
    seed_code,
    topology_on,
    wait_until,
)
from tests.conftest import MARIADB_ADMIN_URL, TEST_SECRET, make_settings

COUPONS = str(Path(sys.executable).with_name("coupons"))
LOAD = int(os.environ.get("CONSUMER_LOAD_MESSAGES", "10000"))
PROCESSES = 4
POOL_SIZE, MAX_OVERFLOW = 1, 0


@pytest.fixture
def rabbit() -> str:
    return rabbit_url()


@pytest.fixture
def maria_url() -> Iterator[str]:
    with mariadb_database() as url:
        yield url


def _env(database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        BROKER_URL=broker_url,
        COUPONS_ENV="test",
        SECRET_KEY=TEST_SECRET,
        **extra,
    )
    return env


def _seed(database_url: str, code: str) -> None:
    app = create_app(make_settings(database_url))
    seed_code(app, code)  # no caps: the campaign and the code are unlimited
    with app.app_context():
        db.engine.dispose()


def _stop(process: subprocess.Popen[Any], timeout: float = 60) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.mark.slow
def test_ten_thousand_messages_through_four_processes(
    maria_url: str, rabbit: str, tmp_path: Path
) -> None:
    db_name = make_url(maria_url).database
    assert db_name
    budget = PROCESSES * (POOL_SIZE + MAX_OVERFLOW)
    _seed(maria_url, "LOAD-ALL")
    admin = admin_engine()
    log_path = tmp_path / "consume.log"
    with topology_on(rabbit) as topology:
        with open_broker(rabbit, confirm_publish=False) as conn:
            publisher = OrderEventPublisher(conn, topology)
            started = time.monotonic()
            for i in range(LOAD):
                publisher.publish(
                    paid(f"load-{i}", customer_id=f"c-{i}", code="LOAD-ALL", order_total="25.00")
                )
            publish_seconds = time.monotonic() - started
        wait_until(lambda: queue_depth(rabbit, topology.queue) == LOAD, 30, "every publish")
        processed_sql = f"SELECT COUNT(*) FROM `{db_name}`.processed_messages"
        with ProcesslistSampler(MARIADB_ADMIN_URL, db_name) as sampler, log_path.open("w") as log:
            process = subprocess.Popen(
                [
                    COUPONS,
                    "consume",
                    f"--processes={PROCESSES}",
                    f"--pool-size={POOL_SIZE}",
                    f"--max-overflow={MAX_OVERFLOW}",
                    "--prefetch=20",
                    f"--topology={topology.prefix}",
                    "--stats-interval=10",
                ],
                env=_env(maria_url, rabbit),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                started = time.monotonic()
                wait_until(lambda: scalar(admin, processed_sql) == LOAD, 400, "every message")
                consume_seconds = time.monotonic() - started
                time.sleep(0.5)  # consumers idle, waiting for the next message
                idle = scalar(
                    admin,
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                    "WHERE DB = :db AND COMMAND <> 'Sleep'",
                    db=db_name,
                )
                open_trx = scalar(
                    admin,
                    "SELECT COUNT(*) FROM information_schema.INNODB_TRX t "
                    "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
                    "WHERE p.DB = :db",
                    db=db_name,
                )
            finally:
                code = _stop(process)
        output = log_path.read_text()
        dead = drain(rabbit, topology.dead_letter_queue, timeout=0.3)
        left = queue_depth(rabbit, topology.queue)

    def count(sql: str) -> int:
        return scalar(admin, sql.replace("$db", f"`{db_name}`"))

    ledger = count("SELECT COUNT(*) FROM $db.redemptions")
    orders = count("SELECT COUNT(DISTINCT order_id) FROM $db.redemptions")
    processed = count("SELECT COUNT(*) FROM $db.processed_messages")
    campaign_count = count("SELECT redemption_count FROM $db.campaigns")
    use_count = count("SELECT use_count FROM $db.coupons")
    admin.dispose()
    rate = LOAD / consume_seconds
    print(
        f"\n{LOAD} messages: published in {publish_seconds:.1f} s, consumed by {PROCESSES} "
        f"processes in {consume_seconds:.1f} s ({rate:.0f} msg/s); max connections seen "
        f"{sampler.max} (budget {budget}, {len(sampler.samples)} samples)"
    )
    assert code == 0, output[-3000:]
    assert ledger == orders == processed == campaign_count == use_count == LOAD
    assert dead == []
    assert left == 0
    assert sampler.max <= budget, f"{sampler.max} connections > budget {budget}"
    assert idle == 0, "a connection was busy while every consumer waited"
    assert open_trx == 0, "a consumer connection is idle in a transaction"
    exits = re.findall(r"consumer stats \(exit\): (.*)", output)
    assert len(exits) == PROCESSES, output[-3000:]
    for line in exits:
        assert " checked_out=0 " in line, line
        assert "max_checked_out_between_messages=0" in line, line
        assert "hold_p99_ms=" in line, line
    print("\n".join(exits))


def test_sigkill_mid_message_is_redelivered_and_applied_once(
    maria_url: str, rabbit: str, tmp_path: Path
) -> None:
    _seed(maria_url, "KILL-ME")
    marker = tmp_path / "inside-unit-of-work"
    settings = make_settings(
        maria_url, broker_url=rabbit, pool=PoolSettings(pool_size=1, max_overflow=0)
    )
    event = paid("kill-1", customer_id="c", code="KILL-ME", order_total="30.00")
    with topology_on(rabbit) as topology, open_broker(rabbit) as conn:
        publisher = OrderEventPublisher(conn, topology)
        process = subprocess.Popen(
            [COUPONS, "consume", f"--topology={topology.prefix}"],
            env=_env(maria_url, rabbit, COUPONS_CONSUMER_TEST_HOLD=f"60:{marker}"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            publisher.publish(event)
            wait_until(marker.exists, 30, "the consumer inside its unit of work")
        finally:
            process.kill()  # SIGKILL: no ack, no commit
            process.wait(timeout=10)
        app = create_app(settings)
        with app.app_context():
            assert db.session.execute(db.text("SELECT COUNT(*) FROM redemptions")).scalar() == 0
            db.session.remove()
        with ConsumerThread(settings, topology) as worker:
            wait_until(lambda: worker.handled() == 1, 30, "the redelivery")
            publisher.publish(event)  # a duplicate delivery of an applied event
            wait_until(lambda: worker.handled() == 2, 30, "the duplicate")
            counts = dict(worker.consumer.counts)
        left = queue_depth(rabbit, topology.queue)
    with app.app_context():
        ledger = db.session.execute(db.text("SELECT COUNT(*) FROM redemptions")).scalar()
        processed = db.session.execute(db.text("SELECT COUNT(*) FROM processed_messages")).scalar()
        uses = db.session.execute(db.text("SELECT use_count FROM coupons")).scalar()
        db.session.remove()
        db.engine.dispose()
    assert counts == {"applied": 1, "duplicate": 1}
    assert ledger == processed == uses == 1
    assert left == 0
