"""``coupons consume`` and ``coupons publish-demo-orders``: the order-event consumer's CLI.

Connection budget: ``--processes N`` worker processes, each with its own pool of
``--pool-size + --max-overflow`` connections (default 1 + 0: a consumer handles one message
at a time and needs one connection), so the consumers can open at most
``N x (pool_size + max_overflow)`` connections.

``BROKER_URL=memory://`` (the default) is a broker inside one process: ``coupons consume``
refuses it (it would wait forever on a queue nobody else can reach); use RabbitMQ
(``amqp://...``) or a shared embedded one (``sqla+sqlite:///var/broker.db``).
``publish-demo-orders`` on ``memory://`` publishes and then consumes in-process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import uuid
from dataclasses import replace
from decimal import Decimal
from types import FrameType
from typing import Any

import click

from coupons.config import Settings

log = logging.getLogger("coupons.consumer")

#: Test hook: ``seconds:marker-path``; the consumer sleeps that long inside the unit of work
#: before commit, after writing the marker file (tests SIGKILL it there).
HOLD_ENV = "COUPONS_CONSUMER_TEST_HOLD"


def _options(prefetch: int, max_attempts: int, stats_interval: float) -> Any:
    from coupons.consumers.consumer import ConsumerOptions

    hold, marker = 0.0, None
    raw = os.environ.get(HOLD_ENV, "")
    if raw:
        seconds, _, path = raw.partition(":")
        hold, marker = float(seconds), path or None
    return ConsumerOptions(
        prefetch=prefetch,
        max_attempts=max_attempts,
        stats_interval=stats_interval,
        hold_before_commit=hold,
        hold_marker=marker,
    )


def run_worker(settings: Settings, topology_prefix: str, options: Any) -> int:
    """One consumer process: build the app, consume until SIGTERM/SIGINT, return 0."""
    from coupons import create_app
    from coupons.consumers import OrderEventConsumer, Topology, open_broker

    app = create_app(settings)
    consumer = OrderEventConsumer(
        app, open_broker(settings.broker_url), Topology(topology_prefix), options
    )
    consumer.install_signal_handlers()
    log.info(
        "consumer %d started: broker %s, queue %s, prefetch %d, pool %d+%d",
        os.getpid(),
        settings.broker_url.split("@")[-1],
        consumer.topology.queue.name,
        options.prefetch,
        settings.pool.pool_size,
        settings.pool.max_overflow,
    )
    consumer.run()
    log.info("consumer %d stopped", os.getpid())
    return 0


def _child(settings: Settings, topology_prefix: str, options: Any) -> None:
    sys.exit(run_worker(settings, topology_prefix, options))


def supervise(settings: Settings, topology_prefix: str, options: Any, processes: int) -> int:
    """Run ``processes`` forked workers; forward SIGTERM/SIGINT; 0 when all stopped cleanly.

    Workers are forked before any app, engine or broker connection exists in this process,
    so nothing is shared across the fork. A worker that dies on its own stops the others and
    the supervisor exits 1: restarting is the process manager's job (systemd, Kubernetes).
    """
    ctx = multiprocessing.get_context("fork")
    workers = [
        ctx.Process(target=_child, args=(settings, topology_prefix, options), name=f"consumer-{i}")
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = False
    remaining = list(workers)
    while remaining:
        for worker in list(remaining):
            worker.join(timeout=0.5)
            if worker.exitcode is None:
                continue
            remaining.remove(worker)
            if worker.exitcode != 0:
                failed = True
                log.error("%s exited with %s", worker.name, worker.exitcode)
                if not stopping:
                    forward(signal.SIGTERM, None)
    return 1 if failed else 0


@click.command("consume")
@click.option(
    "--processes",
    default=1,
    show_default=True,
    envvar="CONSUMER_PROCESSES",
    type=click.IntRange(1, 64),
    help="Worker processes (concurrency).",
)
@click.option(
    "--prefetch",
    default=10,
    show_default=True,
    envvar="CONSUMER_PREFETCH",
    type=click.IntRange(1, 10000),
    help="Unacknowledged messages per worker (basic_qos).",
)
@click.option(
    "--pool-size",
    default=1,
    show_default=True,
    envvar="CONSUMER_DB_POOL_SIZE",
    type=click.IntRange(1),
    help="Database pool size per worker.",
)
@click.option(
    "--max-overflow",
    default=0,
    show_default=True,
    envvar="CONSUMER_DB_MAX_OVERFLOW",
    type=click.IntRange(0),
    help="Database pool overflow per worker.",
)
@click.option(
    "--max-attempts",
    default=5,
    show_default=True,
    type=click.IntRange(1),
    help="Tries of a failing message before the DLQ (an unreachable database is retried "
    "without limit).",
)
@click.option(
    "--topology",
    "topology_prefix",
    default="coupons.orders",
    show_default=True,
    envvar="CONSUMER_TOPOLOGY",
    help="Prefix of the exchange and queue names.",
)
@click.option("--stats-interval", default=60.0, show_default=True, type=click.FloatRange(0.1))
def consume(
    processes: int,
    prefetch: int,
    pool_size: int,
    max_overflow: int,
    max_attempts: int,
    topology_prefix: str,
    stats_interval: float,
) -> None:
    """Consume order events (order.paid, order.cancelled, order.refunded) from BROKER_URL.

    Stops gracefully on SIGTERM/SIGINT: the current message is finished and acknowledged.
    Database connections: at most PROCESSES x (POOL_SIZE + MAX_OVERFLOW).
    """
    from coupons.cli.common import load_settings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    base = load_settings()
    settings = replace(
        base, pool=base.pool.with_values(pool_size=pool_size, max_overflow=max_overflow)
    )
    if settings.broker_url.startswith("memory://"):
        raise click.ClickException(
            "BROKER_URL=memory:// is a broker inside one process, which no producer can reach; "
            "set BROKER_URL=amqp://... (RabbitMQ) or sqla+sqlite:///var/broker.db"
        )
    options = _options(prefetch, max_attempts, stats_interval)
    if processes == 1:
        code = run_worker(settings, topology_prefix, options)
    else:
        code = supervise(settings, topology_prefix, options, processes)
    sys.exit(code)


@click.command("publish-demo-orders")
@click.argument("count", type=click.IntRange(1))
@click.option("--code", "codes", multiple=True, help="Code(s) to use (default: unused codes).")
@click.option(
    "--cancel", default=0, show_default=True, type=click.IntRange(0), help="Then cancel K."
)
@click.option("--order-total", default="80.00", show_default=True)
@click.option("--topology", "topology_prefix", default="coupons.orders", envvar="CONSUMER_TOPOLOGY")
def publish_demo_orders(
    count: int, codes: tuple[str, ...], cancel: int, order_total: str, topology_prefix: str
) -> None:
    """Publish COUNT order.paid events (and --cancel K order.cancelled) to BROKER_URL.

    Codes default to COUNT unused codes of the database (``coupons demo`` seeds 1,000). On
    the default memory:// broker the events are consumed right here, in this process.
    """
    from sqlalchemy import select

    from coupons import create_app
    from coupons.cli.common import load_settings
    from coupons.consumers import OrderEventConsumer, OrderEventPublisher, Topology, open_broker
    from coupons.consumers.consumer import ConsumerOptions
    from coupons.consumers.messages import ORDER_CANCELLED
    from coupons.consumers.publisher import new_event, paid
    from coupons.db import db
    from coupons.models import Coupon

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = load_settings()
    app = create_app(settings)
    if not codes:
        with app.app_context():
            codes = tuple(
                db.session.scalars(
                    select(Coupon.code)
                    .where(Coupon.use_count == 0)
                    .order_by(Coupon.id)
                    .limit(count)
                )
            )
            db.session.remove()
        if not codes:
            raise click.ClickException("no unused code in the database; run coupons demo first")
    topology = Topology(topology_prefix)
    run = uuid.uuid4().hex[:8]
    with open_broker(settings.broker_url) as connection:
        publisher = OrderEventPublisher(connection, topology)
        for i in range(count):
            publisher.publish(
                paid(
                    f"demo-{run}-{i}",
                    customer_id=f"demo-customer-{run}-{i}",
                    code=codes[i % len(codes)],
                    order_total=Decimal(order_total),
                )
            )
        for i in range(min(cancel, count)):
            publisher.publish(new_event(ORDER_CANCELLED, order_id=f"demo-{run}-{i}"))
        click.echo(f"published {count} order.paid and {min(cancel, count)} order.cancelled")
        if settings.broker_url.startswith("memory://"):
            consumer = OrderEventConsumer(
                app, connection.clone(), topology, ConsumerOptions(poll_interval=0.1)
            )
            counts = consumer.run(idle_exit=0.5)
            click.echo("consumed in-process: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def register(main: click.Group) -> None:
    main.add_command(consume)
    main.add_command(publish_demo_orders)
