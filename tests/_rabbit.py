"""Helpers of the consumer tests: brokers, topologies, consumer threads, databases, sampling.

* :func:`rabbit_url` -- the local RabbitMQ (``TEST_BROKER_URL``), reachable or skip/fail.
* :func:`topology_on` -- a uniquely named topology, deleted from the broker afterwards.
* :class:`ConsumerThread` -- an :class:`OrderEventConsumer` with an app of its own, in a thread.
* :func:`mariadb_database` -- a fresh, migrated MariaDB database, dropped afterwards.
* :class:`ProcesslistSampler` -- counts the server's connections to one database every 50 ms.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from coupons import create_app
from coupons.config import Settings
from coupons.consumers import ConsumerOptions, OrderEventConsumer, Topology, open_broker
from coupons.db import db
from coupons.migrate import upgrade
from coupons.services.coupon import create_campaign, create_code
from tests.conftest import MARIADB_ADMIN_URL, create_database, drop_database, server_missing

RABBIT_URL = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def rabbit_url() -> str:
    """The test RabbitMQ's URL; skip locally / fail under CI when it is not reachable."""
    try:
        with open_broker(RABBIT_URL) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        server_missing("RabbitMQ", exc)
    return RABBIT_URL


@contextlib.contextmanager
def topology_on(broker_url: str) -> Iterator[Topology]:
    """A topology with a random prefix; its queues and exchanges are deleted at the end."""
    topology = Topology(f"coupons-test-{secrets.token_hex(4)}")
    try:
        yield topology
    finally:
        with open_broker(broker_url) as conn:
            channel = conn.channel()
            for queue in topology.queues():
                with contextlib.suppress(Exception):
                    queue(channel).delete()
            for exchange in (topology.exchange, topology.dead_letter_exchange):
                with contextlib.suppress(Exception):
                    exchange(channel).delete()


def queue_depth(broker_url: str, queue: Any) -> int:
    """Messages ready in ``queue`` (declared if missing)."""
    with open_broker(broker_url) as conn:
        declared = queue(conn.channel()).queue_declare()
        return int(declared.message_count) if declared is not None else 0


def drain(broker_url: str, queue: Any, *, timeout: float = 1.0) -> list[tuple[str, dict[str, Any]]]:
    """Take every message of ``queue``: ``(body text, headers)`` pairs, acked, undecoded."""
    got: list[tuple[str, dict[str, Any]]] = []

    def on_message(message: Any) -> None:
        body = message.body
        got.append((body.decode() if isinstance(body, bytes) else str(body), message.headers))
        message.ack()

    with open_broker(broker_url) as conn, conn.Consumer([queue], on_message=on_message):
        while True:
            try:
                conn.drain_events(timeout=timeout)
            except (TimeoutError, OSError):
                break
    return got


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class ConsumerThread:
    """A consumer with an app (and engine, and watch) of its own, running in a thread."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        *,
        options: ConsumerOptions | None = None,
    ) -> None:
        self.app = create_app(settings)
        self.consumer = OrderEventConsumer(
            self.app,
            open_broker(settings.broker_url),
            topology,
            options or ConsumerOptions(poll_interval=0.1, retry_base_delay=0.05),
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="consumer", daemon=True)

    def _run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def __enter__(self) -> ConsumerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.consumer.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the consumer did not stop"
        with self.app.app_context():
            db.engine.dispose()
        if self.error is not None:
            raise self.error

    def count(self, outcome: str) -> int:
        return self.consumer.counts[outcome]

    def handled(self) -> int:
        return sum(v for k, v in self.consumer.counts.items() if k != "retries")


@contextlib.contextmanager
def mariadb_database() -> Iterator[str]:
    """A fresh, migrated database on the shared MariaDB; dropped at the end."""
    name = f"coupons_cons_{os.getpid()}_{secrets.token_hex(3)}"
    url = create_database("mariadb", name)
    try:
        upgrade(url)
        yield url
    finally:
        drop_database("mariadb", name)


def seed_code(
    app: Flask, code: str, *, max_uses: int | None = None, max_redemptions: int | None = None
) -> int:
    """A percent campaign with one code; returns the campaign id."""
    with app.app_context():
        campaign = create_campaign(
            name=f"campaign {code}",
            discount_type="percent",
            discount_value=Decimal("10"),
            currency="EUR",
            max_redemptions=max_redemptions,
        )
        create_code(campaign.id, code=code, max_uses=max_uses)
        db.session.remove()
    return campaign.id


def admin_engine(url: str = MARIADB_ADMIN_URL) -> Engine:
    """An engine on the server without a default database (so it is not counted)."""
    return create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")


def scalar(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


class ProcesslistSampler:
    """Counts ``information_schema.PROCESSLIST`` rows of database ``name`` every 50 ms."""

    def __init__(self, admin_url: str, name: str, interval: float = 0.05) -> None:
        self.engine = admin_engine(admin_url)
        self.name = name
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        with self.engine.connect() as conn:
            query = text("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = :db")
            while not self._stop.is_set():
                self.samples.append(int(conn.execute(query, {"db": self.name}).scalar_one()))
                self._stop.wait(self.interval)

    def __enter__(self) -> ProcesslistSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.engine.dispose()

    @property
    def max(self) -> int:
        return max(self.samples, default=0)
