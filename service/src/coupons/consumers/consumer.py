"""The order-event consumer: one message, one unit of work, exactly one effect.

Per message (``_handle``):

1. Parse and validate the body (:func:`~coupons.consumers.messages.parse_event`). Malformed
   (not JSON, schema error): dead-lettered at once with the reason, acked.
2. In a fresh app context, :func:`pooltender.session.unit_of_work` around
   :func:`coupons.db.transaction` (deadlock retries; ``BEGIN IMMEDIATE`` on SQLite): the
   ``processed_messages`` row is inserted *first*, then the effect, in the same transaction.
   A duplicate message id fails that insert (on MariaDB it waits for a concurrent twin to
   commit or roll back), so a redelivered or re-sent event is acked without effect.
3. Ack only after the commit. A crash between commit and ack redelivers the message; the
   dedupe row makes the redelivery a no-op. ``unit_of_work`` removes the session in
   ``finally``: the connection is back in the pool before the consumer waits again, and no
   transaction (hence no REPEATABLE READ snapshot) outlives the message.

Outcomes (see docs/consumer.md):

* ``applied``: redeemed, or the order's redemption(s) rolled back.
* ``duplicate``: message id already processed; acked, nothing written.
* ``refused``: a business refusal of ``order.paid`` (``coupon_exhausted``,
  ``customer_limit_reached``, ``coupon_expired``, ``already_redeemed``, ``currency_mismatch``
  ...). Final: the refusal runs in a savepoint that is rolled back, the processed row is
  committed (so a redelivery is a duplicate), the reason is logged, the message acked.
* ``no_redemption``: a cancel/refund for an order with no standing redemption; recorded, acked.
* ``dead_lettered``: malformed, ``coupon_not_found``, or a failure that outlived
  ``max_attempts``: published to the DLX with ``x-death-reason``/``x-death-detail`` headers
  and no processed row (a fixed message can be replayed), then acked.

Transient failures: a database that is unreachable or dropped the connection (restart,
failover, pool timeout) is retried in-process with capped exponential backoff *without
limit*: it is not the message's fault, and dead-lettering would drain the whole queue into the
DLQ during an outage. Any other error (deadlock retries exhausted, lock wait timeout, a bug)
is retried ``max_attempts`` times, then dead-lettered. No connection is held while backing
off. A stop request during a backoff requeues the message and exits.

The consumer never touches Flask request objects; it uses only ``db.session``.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import enum
import functools
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

from flask import Flask
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from coupons.consumers._kombu import (
    Consumer,
    KombuConnection,
    KombuMessage,
    KombuProducer,
    Producer,
)
from coupons.consumers.messages import ORDER_PAID, MalformedMessage, OrderEvent, parse_event
from coupons.consumers.topology import DEAD_ROUTING_KEY, Topology
from coupons.db import db, transaction
from coupons.errors import ServiceError, Unprocessable
from coupons.models import Coupon, ProcessedMessage, Redemption, RedemptionStatus, utcnow
from coupons.services.coupon import redeem_in_transaction, rollback_in_transaction
from pooltender.failures import is_unavailable
from pooltender.session import unit_of_work
from pooltender.watch import PoolWatch, install_watch

log = logging.getLogger("coupons.consumer")

#: Service error codes that are not business outcomes but a message nobody can apply as is.
DEAD_LETTER_CODES: Final = frozenset({"coupon_not_found", "invalid_amount", "invalid_code"})
_MAX_DETAIL: Final = 1000


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    NO_REDEMPTION = "no_redemption"
    DEAD_LETTERED = "dead_lettered"
    REQUEUED = "requeued"


class DeadLetter(Exception):
    """Raised inside a unit of work: roll back, dead-letter the message with ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _Duplicate(Exception):
    """The processed-message insert found the id: the event was applied before."""


@dataclass(frozen=True, kw_only=True)
class ConsumerOptions:
    """Tuning of one consumer process; defaults suit production.

    ``prefetch``: unacked messages the broker may push ahead (``basic_qos``); bounded so a
    slow or dying consumer strands few messages. ``max_attempts``: tries of a message
    failing with a non-connectivity error before it is dead-lettered. ``retry_base_delay`` /
    ``retry_max_delay``: exponential backoff between tries. ``stats_interval``: seconds
    between pool-stats log lines. ``poll_interval``: how long one wait for a message lasts
    before the stop flag is checked again. ``hold_before_commit`` / ``hold_marker``: test hook
    (sleep inside the unit of work before the commit, after touching the marker file).
    """

    prefetch: int = 10
    max_attempts: int = 5
    retry_base_delay: float = 0.2
    retry_max_delay: float = 5.0
    stats_interval: float = 60.0
    poll_interval: float = 1.0
    hold_before_commit: float = 0.0
    hold_marker: str | None = None

    def __post_init__(self) -> None:
        if self.prefetch < 1 or self.max_attempts < 1:
            raise ValueError("prefetch and max_attempts must be at least 1")


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    reason: str | None = None


def _body_text(message: KombuMessage) -> bytes | str:
    body: Any = message.body
    return body if isinstance(body, bytes | str) else str(body)


class OrderEventConsumer:
    """Consumes the topology's queue until :meth:`stop` (or a signal, see
    :meth:`install_signal_handlers`). One consumer per process, single-threaded: it needs one
    database connection, so its pool can be ``pool_size=1, max_overflow=0``.

    ``app`` must be an app of its own (not shared with other threads) when tests want the
    watch figures to describe the consumer alone.
    """

    def __init__(
        self,
        app: Flask,
        connection: KombuConnection,
        topology: Topology | None = None,
        options: ConsumerOptions | None = None,
    ) -> None:
        self.app = app
        self.connection = connection
        self.topology = topology or Topology()
        self.options = options or ConsumerOptions()
        self.counts: collections.Counter[str] = collections.Counter()
        self.max_checked_out_between_messages = 0
        self._stop = threading.Event()
        self._publish_connection: KombuConnection | None = None
        self._dead_producer: KombuProducer | None = None
        with app.app_context():
            self.watch: PoolWatch = install_watch(db.engine)

    # ---- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the consumer to stop: the current message is finished and acked first."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the consumer gracefully (main thread only)."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %s: stopping after the current message", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # ---- the loop ------------------------------------------------------------------------

    def run(self, *, idle_exit: float | None = None) -> collections.Counter[str]:
        """Consume until stopped (or, with ``idle_exit``, until the queue stays empty that
        many seconds); return the outcome counts. Broker disconnects are survived by
        reconnecting: unacked messages are redelivered, and dedupe makes that safe."""
        last_stats = time.monotonic()
        last_message = time.monotonic()
        delay = self.options.retry_base_delay
        try:
            while not self.stopping:
                try:
                    channel = self.connection.channel()
                    consumer = Consumer(
                        channel,
                        queues=[self.topology.queue],
                        on_message=self._on_message,
                        auto_declare=True,
                    )
                    self.topology.dead_letter_queue(channel).declare()
                    consumer.qos(prefetch_count=self.options.prefetch)
                    with consumer:
                        delay = self.options.retry_base_delay
                        while not self.stopping:
                            before = self.counts.total()
                            with contextlib.suppress(socket.timeout, TimeoutError):
                                self.connection.drain_events(timeout=self.options.poll_interval)
                            now = time.monotonic()
                            if self.counts.total() != before:
                                last_message = now
                            elif idle_exit is not None and now - last_message >= idle_exit:
                                return self.counts
                            if now - last_stats >= self.options.stats_interval:
                                self.log_stats("periodic")
                                last_stats = now
                except self.connection.recoverable_connection_errors as exc:
                    if self.stopping:
                        break
                    log.warning("broker connection lost (%s); reconnecting in %.1f s", exc, delay)
                    self.connection.collect()
                    self.connection = self.connection.clone()
                    self._sleep(delay)
                    delay = min(self.options.retry_max_delay, delay * 2)
            return self.counts
        finally:
            self.log_stats("exit")
            if self._publish_connection is not None:
                self._publish_connection.release()
            self.connection.release()

    def _on_message(self, message: KombuMessage) -> None:
        result = self._handle(message)
        self.counts[result.outcome.value] += 1
        # Between messages the consumer must hold no connection (the session was removed).
        out = self.watch.stats().checked_out
        if out > self.max_checked_out_between_messages:
            self.max_checked_out_between_messages = out
            log.error("%d connection(s) still checked out between messages", out)

    def _handle(self, message: KombuMessage) -> Result:
        try:
            event = parse_event(_body_text(message))
        except MalformedMessage as exc:
            return self._dead_letter(message, exc.reason, str(exc), attempts=1)
        attempt = 0
        delay = self.options.retry_base_delay
        while True:
            attempt += 1
            try:
                result = self._apply(event)
            except DeadLetter as exc:
                return self._dead_letter(message, exc.reason, str(exc), attempts=attempt)
            except Exception as exc:
                unavailable = is_unavailable(exc)
                self.counts["retries"] += 1
                if not unavailable and attempt >= self.options.max_attempts:
                    reason = "retries_exhausted"
                    detail = f"{type(exc).__name__}: {exc}"
                    return self._dead_letter(message, reason, detail, attempts=attempt)
                log.warning(
                    "message %s attempt %d failed (%s: %s); %s in %.2f s",
                    event.message_id,
                    attempt,
                    type(exc).__name__,
                    str(exc).splitlines()[0][:300] if str(exc) else "",
                    "database unavailable, retrying" if unavailable else "retrying",
                    delay,
                )
                if self._sleep(delay):
                    message.requeue()
                    return Result(Outcome.REQUEUED, "stopping")
                delay = min(self.options.retry_max_delay, delay * 2)
                continue
            message.ack()
            if result.outcome in (Outcome.REFUSED, Outcome.NO_REDEMPTION):
                log.info("message %s %s: %s", event.message_id, result.outcome, result.reason)
            else:
                log.debug("message %s %s", event.message_id, result.outcome)
            return result

    def _sleep(self, seconds: float) -> bool:
        """Back off; True when a stop was requested meanwhile."""
        return self._stop.wait(seconds)

    # ---- the unit of work ----------------------------------------------------------------

    def _apply(self, event: OrderEvent) -> Result:
        """One unit of work: commit, or roll back; the session is removed in any case."""
        with self.app.app_context(), unit_of_work(db.session):
            try:
                return transaction(functools.partial(self._in_transaction, event))
            except _Duplicate:
                return Result(Outcome.DUPLICATE)

    def _in_transaction(self, event: OrderEvent) -> Result:
        try:
            db.session.execute(
                insert(ProcessedMessage.__table__).values(
                    message_id=event.message_id, event_type=event.type, processed_at=utcnow()
                )
            )
        except IntegrityError:
            raise _Duplicate() from None
        result = self._redeem(event) if event.type == ORDER_PAID else self._roll_back(event)
        self._test_hold()  # noqa: POL010 -- the fault tests' hook holds the transaction on purpose
        return result

    def _redeem(self, event: OrderEvent) -> Result:
        if event.code is None or event.customer_id is None or event.order_total is None:
            raise DeadLetter("invalid_schema", "order.paid without code/customer/total")
        try:
            with db.session.begin_nested():
                view = redeem_in_transaction(
                    code=event.code,
                    customer_id=event.customer_id,
                    order_id=event.order_id,
                    order_total=event.order_total,
                    now=event.occurred_at,
                )
                if event.currency is not None and event.currency != view.currency:
                    raise Unprocessable(
                        f"the order is in {event.currency}, the campaign in {view.currency}",
                        code="currency_mismatch",
                    )
        except ServiceError as exc:
            if exc.code in DEAD_LETTER_CODES:
                raise DeadLetter(exc.code, exc.message) from None
            return Result(Outcome.REFUSED, exc.code)
        return Result(Outcome.APPLIED, f"redemption {view.id}")

    def _roll_back(self, event: OrderEvent) -> Result:
        """Roll back the order's standing redemption(s).

        With ``code``: the redemption of ``order_id`` in that code's campaign (an unknown code
        is dead-lettered as ``coupon_not_found``). Without: every standing redemption of
        ``order_id``, across campaigns. The reads here are plain (non-locking) reads in this
        message's fresh transaction; ``rollback_in_transaction`` then locks each ledger row and
        flips it only if it still stands, so a concurrent rollback cannot count twice.
        """
        session = db.session
        stmt = select(Redemption.id).where(
            Redemption.status == RedemptionStatus.REDEEMED.value,
        )
        if event.code is not None:
            key = event.code.strip().upper()
            campaign_id = session.execute(
                select(Coupon.campaign_id).where(Coupon.code == key)
            ).scalar_one_or_none()
            if campaign_id is None:
                raise DeadLetter("coupon_not_found", f"no coupon has the code {key!r}")
            stmt = stmt.where(
                Redemption.campaign_id == campaign_id, Redemption.active_order_key == event.order_id
            )
        else:
            stmt = stmt.where(Redemption.order_id == event.order_id)
        ids = list(session.execute(stmt.order_by(Redemption.id)).scalars())
        if not ids:
            return Result(Outcome.NO_REDEMPTION, f"order {event.order_id} has no redemption")
        for redemption_id in ids:
            rollback_in_transaction(redemption_id, now=event.occurred_at)
        return Result(Outcome.APPLIED, f"rolled back {ids}")

    def _test_hold(self) -> None:
        if self.options.hold_before_commit <= 0:
            return
        if self.options.hold_marker:
            Path(self.options.hold_marker).write_text(str(time.time()))
        time.sleep(self.options.hold_before_commit)

    # ---- dead letters --------------------------------------------------------------------

    def _dead_letter(
        self, message: KombuMessage, reason: str, detail: str, *, attempts: int
    ) -> Result:
        """Publish the message unchanged to the DLX with the reason in headers, then ack.

        Published on a connection of its own (with confirms on RabbitMQ): waiting for a
        confirm on the consuming connection could dispatch the next delivery re-entrantly.
        """
        headers = dict(message.headers or {})
        headers.update(
            {
                "x-death-reason": reason,
                "x-death-detail": detail[:_MAX_DETAIL],
                "x-death-attempts": attempts,
                "x-death-at": dt.datetime.now(dt.UTC).isoformat(),
                "x-original-routing-key": message.delivery_info.get("routing_key", ""),
                "x-original-exchange": message.delivery_info.get("exchange", ""),
            }
        )
        producer = self._get_dead_producer()
        producer.publish(
            message.body,
            exchange=self.topology.dead_letter_exchange,
            routing_key=DEAD_ROUTING_KEY,
            content_type=message.content_type or "application/json",
            content_encoding=message.content_encoding or "utf-8",
            delivery_mode=2,
            headers=headers,
            retry=True,
            retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5},
        )
        message.ack()
        log.warning("message dead-lettered (%s): %s", reason, detail[:300])
        return Result(Outcome.DEAD_LETTERED, reason)

    def _get_dead_producer(self) -> KombuProducer:
        if self._dead_producer is None:
            self._publish_connection = self.connection.clone()
            self._dead_producer = Producer(self._publish_connection.channel())
            self.topology.dead_letter_queue(self._dead_producer.channel).declare()
        return self._dead_producer

    # ---- stats ---------------------------------------------------------------------------

    def log_stats(self, when: str) -> None:
        """One log line: outcome counts and pooltender's watch figures."""
        stats = self.watch.stats()
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        log.info(
            "consumer stats (%s): %s | pool checkouts=%d checked_out=%d "
            "max_checked_out_between_messages=%d high_water=%d connects=%d invalidations=%d "
            "hold_p50_ms=%.2f hold_p99_ms=%.2f",
            when,
            counts or "messages=0",
            stats.checkouts,
            stats.checked_out,
            self.max_checked_out_between_messages,
            stats.high_water_checked_out,
            stats.connects,
            stats.invalidations,
            stats.hold_time.p50 * 1000,
            stats.hold_time.p99 * 1000,
        )
