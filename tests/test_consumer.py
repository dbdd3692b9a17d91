"""The order-event consumer in one process: message semantics on every database (embedded
``memory://`` broker), and on real RabbitMQ + MariaDB: dead letters, the REPEATABLE READ
snapshot pitfall, and a database restart under a running consumer."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, text

from coupons import create_app
from coupons.config import Settings
from coupons.consumers import OrderEventPublisher, open_broker, paid, parse_event
from coupons.consumers.consumer import ConsumerOptions
from coupons.consumers.messages import (
    ORDER_CANCELLED,
    ORDER_EVENT_JSON_SCHEMA,
    ORDER_REFUNDED,
    MalformedMessage,
)
from coupons.consumers.publisher import new_event
from coupons.db import db
from coupons.migrate import upgrade
from coupons.models import Campaign, Coupon, ProcessedMessage, Redemption
from coupons.services.coupon import redeem
from pooltender.settings import PoolSettings
from tests._rabbit import (
    ConsumerThread,
    drain,
    mariadb_database,
    rabbit_url,
    seed_code,
    topology_on,
    wait_until,
)
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]


def _count(app: Flask, stmt: Any) -> int:
    with app.app_context():
        value = db.session.scalar(stmt)
        db.session.remove()
    return int(value or 0)


def _ledger(app: Flask, order_id: str) -> list[tuple[str, str]]:
    with app.app_context():
        rows = db.session.execute(
            select(Redemption.code, Redemption.status)
            .where(Redemption.order_id == order_id)
            .order_by(Redemption.id)
        ).all()
        db.session.remove()
    return [(r[0], r[1]) for r in rows]


# --------------------------------------------------------------------------- message format


def test_message_schema_matches_the_documented_json_schema() -> None:
    doc = (ROOT / "docs" / "consumer.md").read_text()
    block = re.search(r"<!-- schema -->\s*```json\n(.*?)```", doc, re.S)
    assert block, "docs/consumer.md must carry the JSON schema after <!-- schema -->"
    assert json.loads(block.group(1)) == ORDER_EVENT_JSON_SCHEMA


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        ('{"type": "order.paid"}', "invalid_schema"),
        (
            '{"message_id": "m", "type": "order.paid", "occurred_at": "2025-01-01T00:00:00Z",'
            ' "order_id": "o", "customer_id": "c", "code": "X-1", "order_total": 80.1}',
            "invalid_schema",  # a float: 80.1 is not 80.10
        ),
        (
            '{"message_id": "m", "type": "order.shipped", "occurred_at": "2025-01-01T00:00:00Z",'
            ' "order_id": "o"}',
            "invalid_schema",
        ),
        (
            '{"message_id": "m", "type": "order.paid", "occurred_at": "2025-01-01T00:00:00",'
            ' "order_id": "o", "customer_id": "c", "code": "X-1", "order_total": "80.00"}',
            "invalid_schema",  # a naive time
        ),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(body: Any, reason: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        parse_event(body)
    assert caught.value.reason == reason


def test_an_event_round_trips_and_unknown_fields_are_ignored() -> None:
    event = paid("o-1", customer_id="c-1", code="SPRING-1", order_total="80.5", currency="EUR")
    wire = json.loads(event.to_json())
    assert wire["order_total"] == "80.50"
    wire["added_later"] = {"x": 1}
    assert parse_event(json.dumps(wire)) == event
    cancel = parse_event(new_event(ORDER_CANCELLED, order_id="o-1").to_json())
    assert cancel.code is None


# --------------------------------------------------------------------------- embedded broker


def test_embedded_broker_applies_each_event_once(settings: Settings, app: Flask) -> None:
    """memory:// on every database: redeem, duplicate, refusals, rollbacks, dead letters."""
    broker = "memory://localhost/"
    consumer_settings = replace(
        settings, broker_url=broker, pool=PoolSettings(pool_size=1, max_overflow=0)
    )
    seed_code(app, "EMB-MANY")
    seed_code(app, "EMB-ONCE", max_uses=1)
    with topology_on(broker) as topology, open_broker(broker) as conn:
        publisher = OrderEventPublisher(conn, topology)
        first = paid("emb-1", customer_id="c-1", code="emb-many", order_total="80.00")
        events = [
            first,
            first,  # the same event again: a duplicate
            paid("emb-2", customer_id="c-2", code="EMB-MANY", order_total="50.00"),
            paid("emb-3", customer_id="c-3", code="EMB-ONCE", order_total="20.00"),
            paid("emb-4", customer_id="c-4", code="EMB-ONCE", order_total="20.00"),  # exhausted
            paid("emb-5", customer_id="c-5", code="EMB-MANY", order_total="9.00", currency="USD"),
            new_event(ORDER_CANCELLED, order_id="emb-1"),  # across campaigns
            new_event(ORDER_REFUNDED, order_id="emb-2", code="EMB-MANY"),  # in the code's campaign
            new_event(ORDER_CANCELLED, order_id="emb-never-paid"),  # no redemption: no-op
            paid("emb-6", customer_id="c-6", code="NO-SUCH-CODE", order_total="10.00"),
        ]
        with ConsumerThread(consumer_settings, topology) as worker:
            for event in events:
                publisher.publish(event)
            publisher.publish_raw(b"{oops", message_id="bad-json")
            publisher.publish_raw('{"message_id": "x", "type": "order.paid"}')
            publisher.publish(paid("emb-7", customer_id="c-7", code="EMB-MANY", order_total="1"))
            wait_until(lambda: worker.handled() == 13, 20, "13 messages handled")
            assert worker.thread.is_alive()
            counts = dict(worker.consumer.counts)
            between = worker.consumer.max_checked_out_between_messages
        dead = drain(broker, topology.dead_letter_queue)
    counts.pop("retries", None)
    assert counts == {
        "applied": 6,  # emb-1, emb-2, emb-3, emb-7, cancel emb-1, refund emb-2
        "duplicate": 1,
        "refused": 2,  # emb-4 coupon_exhausted, emb-5 currency_mismatch
        "no_redemption": 1,
        "dead_lettered": 3,
    }
    assert between == 0
    reasons = sorted(headers["x-death-reason"] for _, headers in dead)
    assert reasons == ["coupon_not_found", "invalid_json", "invalid_schema"]
    assert _ledger(app, "emb-1") == [("EMB-MANY", "rolled_back")]
    assert _ledger(app, "emb-2") == [("EMB-MANY", "rolled_back")]
    assert _ledger(app, "emb-3") == [("EMB-ONCE", "redeemed")]
    assert _ledger(app, "emb-4") == []
    assert _ledger(app, "emb-5") == []
    assert _ledger(app, "emb-7") == [("EMB-MANY", "redeemed")]
    # processed: 10 distinct ids among the 13 (duplicate, 3 dead letters: none)
    assert _count(app, select(func.count()).select_from(ProcessedMessage)) == 10 - 1
    assert _count(app, select(Coupon.use_count).where(Coupon.code == "EMB-MANY")) == 1
    assert _count(app, select(Coupon.use_count).where(Coupon.code == "EMB-ONCE")) == 1


# --------------------------------------------------------------------------- RabbitMQ + MariaDB


@pytest.fixture
def rabbit() -> str:
    return rabbit_url()


@pytest.fixture
def maria_settings(rabbit: str) -> Any:
    with mariadb_database() as url:
        yield make_settings(url, broker_url=rabbit, pool=PoolSettings(pool_size=1, max_overflow=0))


@pytest.fixture
def maria_app(maria_settings: Settings) -> Any:
    application = create_app(maria_settings)
    yield application
    with application.app_context():
        db.session.remove()
        db.engine.dispose()


def test_rabbitmq_dead_letters_with_reason_and_goes_on(
    maria_settings: Settings, maria_app: Flask, rabbit: str
) -> None:
    seed_code(maria_app, "DLQ-OK")
    with topology_on(rabbit) as topology, open_broker(rabbit) as conn:
        publisher = OrderEventPublisher(conn, topology)
        with ConsumerThread(maria_settings, topology) as worker:
            publisher.publish_raw(b"\x00not json at all")
            publisher.publish(paid("dlq-1", customer_id="c", code="DLQ-NOPE", order_total="5"))
            publisher.publish(paid("dlq-2", customer_id="c", code="DLQ-OK", order_total="5"))
            wait_until(lambda: worker.handled() == 3, 20, "3 messages handled")
        dead = drain(rabbit, topology.dead_letter_queue)
    assert sorted(h["x-death-reason"] for _, h in dead) == ["coupon_not_found", "invalid_json"]
    for body, headers in dead:
        assert headers["x-death-detail"]
        assert headers["x-original-routing-key"] == "order.paid"
        assert body  # the original body, unchanged
    assert _ledger(maria_app, "dlq-2") == [("DLQ-OK", "redeemed")]


def test_repeatable_read_snapshot_does_not_hide_new_rows(
    maria_settings: Settings, maria_app: Flask, rabbit: str
) -> None:
    """A long-lived consumer sees rows committed after its previous message.

    Control first: on MariaDB's default REPEATABLE READ, a session that never ends its
    transaction keeps its first snapshot and misses a row committed later (the post-mortem's
    loop without remove()). Then the consumer: after message 1 it holds no connection and no
    transaction; a campaign, a code and a redemption are created behind its back, and the next
    messages must see all of them (a locking read finds the code; the cancel's plain read
    must find the redemption).
    """
    seed_code(maria_app, "RR-FIRST")
    with maria_app.app_context():  # the control: a transaction left open reads a stale snapshot
        stale = db.session.scalar(select(func.count()).select_from(Redemption))
        other = create_app(maria_settings)
        with other.app_context():
            seed_code(other, "RR-CONTROL")
            redeem(code="RR-CONTROL", customer_id="c", order_id="rr-c", order_total=Decimal(9))
            db.engine.dispose()
        assert db.session.scalar(select(func.count()).select_from(Redemption)) == stale == 0
        db.session.remove()
    with topology_on(rabbit) as topology, open_broker(rabbit) as conn:
        publisher = OrderEventPublisher(conn, topology)
        with ConsumerThread(maria_settings, topology) as worker:
            publisher.publish(paid("rr-1", customer_id="c1", code="RR-FIRST", order_total="10"))
            wait_until(lambda: worker.handled() == 1, 20, "message 1")
            assert worker.consumer.watch.stats().checked_out == 0
            with maria_app.app_context():
                open_trx = db.session.execute(
                    text(
                        "SELECT COUNT(*) FROM information_schema.INNODB_TRX t "
                        "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
                        "WHERE p.DB = DATABASE() AND p.ID <> CONNECTION_ID()"
                    )
                ).scalar_one()
                db.session.remove()
            assert open_trx == 0, "the idle consumer keeps a transaction open"
            # rows created after the consumer's previous message
            seed_code(maria_app, "RR-LATER")
            with maria_app.app_context():
                redeem(code="RR-LATER", customer_id="c2", order_id="rr-2", order_total=Decimal(7))
                db.session.remove()
            publisher.publish(paid("rr-3", customer_id="c3", code="RR-LATER", order_total="10"))
            publisher.publish(new_event(ORDER_CANCELLED, order_id="rr-2"))
            wait_until(lambda: worker.handled() == 3, 20, "messages 2 and 3")
            counts = dict(worker.consumer.counts)
            assert worker.consumer.max_checked_out_between_messages == 0
    assert counts.get("applied") == 3, counts
    assert _ledger(maria_app, "rr-3") == [("RR-LATER", "redeemed")]
    assert _ledger(maria_app, "rr-2") == [("RR-LATER", "rolled_back")]


def test_database_restart_under_a_running_consumer(rabbit: str, tmp_path: Path) -> None:
    """A private MariaDB is stopped mid-stream and started again; nothing is lost or doubled."""
    from tests.pooltender._servers import PrivateMariaDB

    n = 60
    with PrivateMariaDB() as server:
        upgrade(server.url)
        settings = make_settings(
            server.url,
            broker_url=rabbit,
            pool=PoolSettings(pool_size=1, max_overflow=0, pool_timeout=2),
        )
        app = create_app(settings)
        seed_code(app, "RESTART")
        with app.app_context():
            db.engine.dispose()
        options = ConsumerOptions(
            poll_interval=0.1, retry_base_delay=0.05, retry_max_delay=0.5, prefetch=5
        )
        with topology_on(rabbit) as topology, open_broker(rabbit) as conn:
            publisher = OrderEventPublisher(conn, topology)
            with ConsumerThread(settings, topology, options=options) as worker:
                for i in range(n):
                    publisher.publish(
                        paid(f"rs-{i}", customer_id=f"c{i}", code="RESTART", order_total="10")
                    )
                wait_until(lambda: worker.handled() >= 10, 30, "10 messages before the restart")
                server.stop()
                publisher.publish(paid("rs-late", customer_id="c", code="RESTART", order_total="1"))
                server.start()
                wait_until(lambda: worker.handled() == n + 1, 60, "every message after restart")
                assert worker.thread.is_alive()
                counts = dict(worker.consumer.counts)
                stats = worker.consumer.watch.stats()
            dead = drain(rabbit, topology.dead_letter_queue, timeout=0.3)
        with app.app_context():
            ledger = db.session.scalar(select(func.count()).select_from(Redemption))
            distinct = db.session.scalar(select(func.count(func.distinct(Redemption.order_id))))
            processed = db.session.scalar(select(func.count()).select_from(ProcessedMessage))
            used = db.session.scalar(select(Campaign.redemption_count))
            db.session.remove()
            db.engine.dispose()
    assert dead == []
    assert counts["applied"] + counts.get("duplicate", 0) == n + 1, counts
    assert ledger == distinct == processed == used == n + 1
    assert counts.get("retries", 0) >= 1, "the restart was not noticed"
    assert stats.checked_out == 0
