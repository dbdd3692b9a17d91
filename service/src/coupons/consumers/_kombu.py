"""kombu's names, typed ``Any`` in one place.

kombu ships partial annotations (many functions untyped), which mypy strict rejects at every
call; re-exporting the few names this package uses as ``Any`` keeps the rest strict.
"""

from __future__ import annotations

from typing import Any

from kombu import connection, entity, messaging

Connection: Any = connection.Connection
Consumer: Any = messaging.Consumer
Producer: Any = messaging.Producer
Exchange: Any = entity.Exchange
Queue: Any = entity.Queue

#: Annotation aliases (a kombu object whose methods are untyped).
KombuConnection = Any
KombuMessage = Any
KombuProducer = Any
