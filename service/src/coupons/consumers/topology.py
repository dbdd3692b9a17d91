"""Where order events travel: one topic exchange, one work queue, a dead-letter exchange
and its queue. All durable; messages are published persistent.

Names derive from one prefix (``coupons.orders`` by default; tests use a random one)::

    <prefix>            topic exchange; producers publish with routing key = event type
    <prefix>.events     durable queue bound with ``order.*``: every consumer process reads it
    <prefix>.dlx        direct exchange of dead letters
    <prefix>.dlq        durable queue bound to the DLX with routing key ``dead``

The work queue carries no ``x-dead-letter-exchange`` argument: the consumer dead-letters
explicitly (publish to the DLX with the reason in headers, then ack), which works the same on
RabbitMQ and on kombu's embedded transports, which know no broker-side dead-lettering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from coupons.consumers._kombu import Exchange, Queue

DEFAULT_PREFIX: Final = "coupons.orders"
DEAD_ROUTING_KEY: Final = "dead"


@dataclass(frozen=True)
class Topology:
    """The exchanges and queues of one deployment, named from ``prefix``."""

    prefix: str = DEFAULT_PREFIX

    @property
    def exchange(self) -> Any:
        return Exchange(self.prefix, type="topic", durable=True)

    @property
    def queue(self) -> Any:
        return Queue(
            f"{self.prefix}.events",
            exchange=self.exchange,
            routing_key="order.*",
            durable=True,
        )

    @property
    def dead_letter_exchange(self) -> Any:
        return Exchange(f"{self.prefix}.dlx", type="direct", durable=True)

    @property
    def dead_letter_queue(self) -> Any:
        return Queue(
            f"{self.prefix}.dlq",
            exchange=self.dead_letter_exchange,
            routing_key=DEAD_ROUTING_KEY,
            durable=True,
        )

    def queues(self) -> list[Any]:
        """Every queue to declare (declaring a queue declares its exchange and binding)."""
        return [self.queue, self.dead_letter_queue]
