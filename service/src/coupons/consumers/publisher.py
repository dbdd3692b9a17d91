"""Publish order events: the helper producers (and ``coupons publish-demo-orders``) use.

:func:`open_broker` opens a kombu connection with publisher confirms on AMQP, so
:meth:`OrderEventPublisher.publish` returns only once RabbitMQ has taken responsibility for
the message (persistent, to a durable queue). A publish that fails after its retries raises;
publish again with the *same* ``message_id`` and the consumer still applies the event once.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from coupons.consumers._kombu import Connection, KombuConnection
from coupons.consumers.messages import ORDER_PAID, OrderEvent, parse_event
from coupons.consumers.topology import Topology


def open_broker(url: str, *, confirm_publish: bool = True) -> KombuConnection:
    """A kombu connection to ``url`` (``amqp://...``, ``memory://``, ``sqla+sqlite:///...``).

    ``confirm_publish`` asks RabbitMQ to confirm each publish (ignored by other transports).
    """
    options: dict[str, Any] = {}
    if url.startswith(("amqp", "pyamqp")):
        options["confirm_publish"] = confirm_publish
    return Connection(url, transport_options=options, heartbeat=0)


def new_event(
    type: str,
    *,
    order_id: str,
    customer_id: str | None = None,
    code: str | None = None,
    order_total: Decimal | str | None = None,
    currency: str | None = None,
    message_id: str | None = None,
    occurred_at: dt.datetime | None = None,
) -> OrderEvent:
    """Build and validate an event (a fresh uuid4 ``message_id`` and now unless given)."""
    event = OrderEvent(
        message_id=message_id or uuid.uuid4().hex,
        type=type,
        occurred_at=occurred_at or dt.datetime.now(dt.UTC),
        order_id=order_id,
        customer_id=customer_id,
        code=code,
        order_total=Decimal(order_total) if order_total is not None else None,
        currency=currency,
    )
    return parse_event(event.to_json())  # the same validation the consumer applies


def paid(
    order_id: str, *, customer_id: str, code: str, order_total: Decimal | str, **kw: Any
) -> OrderEvent:
    """Shorthand for an ``order.paid`` event."""
    return new_event(
        ORDER_PAID,
        order_id=order_id,
        customer_id=customer_id,
        code=code,
        order_total=order_total,
        **kw,
    )


class OrderEventPublisher:
    """Publishes events to the topology's exchange, routing key = event type, persistent.

    Declares the topology on first use. Not thread-safe (a kombu channel is not): one
    publisher per thread.
    """

    def __init__(self, connection: KombuConnection, topology: Topology | None = None) -> None:
        self.connection = connection
        self.topology = topology or Topology()
        self._producer: Any = None

    def _get_producer(self) -> Any:
        if self._producer is None:
            self._producer = self.connection.Producer()
            for queue in self.topology.queues():
                queue.declare(channel=self._producer.channel)
        return self._producer

    def publish(self, event: OrderEvent) -> None:
        """Publish one validated event (retrying the broker connection a few times)."""
        self.publish_raw(event.to_json(), routing_key=event.type, message_id=event.message_id)

    def publish_raw(
        self,
        body: str | bytes,
        *,
        routing_key: str = ORDER_PAID,
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish a body as is (tests use it to send malformed messages)."""
        producer = self._get_producer()
        producer.publish(
            body,
            exchange=self.topology.exchange,
            routing_key=routing_key,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            message_id=message_id,
            headers=headers or {},
            retry=True,
            retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5},
        )
