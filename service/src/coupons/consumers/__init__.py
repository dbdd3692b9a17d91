"""Order events over kombu (RabbitMQ in production, an embedded transport by default).

See docs/consumer.md; :mod:`.messages` (format), :mod:`.topology` (exchanges and queues),
:mod:`.publisher` (producers), :mod:`.consumer` (the consumer).
"""

from coupons.consumers.consumer import ConsumerOptions, OrderEventConsumer, Outcome
from coupons.consumers.messages import OrderEvent, parse_event
from coupons.consumers.publisher import OrderEventPublisher, new_event, open_broker, paid
from coupons.consumers.topology import Topology

__all__ = [
    "ConsumerOptions",
    "OrderEvent",
    "OrderEventConsumer",
    "OrderEventPublisher",
    "Outcome",
    "Topology",
    "new_event",
    "open_broker",
    "paid",
    "parse_event",
]
