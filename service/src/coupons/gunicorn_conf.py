"""gunicorn settings for the coupon service: ``gunicorn -c python:coupons.gunicorn_conf``.

Environment: ``PORT`` (8000), ``HOST`` (127.0.0.1), ``WEB_WORKERS`` (2), ``WEB_THREADS`` (4),
``WEB_WORKER_CLASS`` (gthread; or gevent with the ``gevent`` extra, or sync),
``WEB_LOGGER_CLASS`` (``pooltender.accesslog.AccessLogger``: gunicorn's access lines without
a line per admission refusal; ``gunicorn.glogging.Logger`` for gunicorn's own),
``WEB_KEEPALIVE`` (5 s: longer than the 1-2 s Retry-After of admission's 503s, so a client
that honours it comes back on its kept-alive connection instead of a new one; gunicorn's own
default of 2 s closed many such connections just before their retry).
Each worker is one process with one pool, so the fleet's connections are
workers x (pool_size + max_overflow) per host; keep that inside the server's budget.

Prometheus multiprocess mode: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before
gunicorn starts (``coupons serve`` does it for you, with a fresh temporary directory);
:func:`child_exit` then removes a dead worker's live gauges, as prometheus-client documents,
and keeps its counter and histogram files, so no counter ever goes backwards when a worker
is recycled (docs/adopting.md).
"""

from __future__ import annotations

import os
from typing import Any

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_WORKERS", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
worker_class = os.environ.get("WEB_WORKER_CLASS", "gthread")
keepalive = int(os.environ.get("WEB_KEEPALIVE", "5"))
accesslog = "-"
# gunicorn's access lines, with atoms built only when the format names them (0.22 ms less
# per request on the bench host), and admission refusals counted in one WARNING line per
# 10 s instead of a line each (pooltender.accesslog)
logger_class = os.environ.get("WEB_LOGGER_CLASS", "pooltender.accesslog.AccessLogger")
graceful_timeout = 20
timeout = 60


def post_fork(server: Any, worker: Any) -> None:
    """Drop pooled connections inherited from the master (when the app was preloaded).

    A connection shared by two processes interleaves their packets; pooltender's hook calls
    ``dispose(close=False)`` on every engine its extension built, forgetting the parent's
    connections without closing them under the parent.
    """
    from pooltender.hooks import gunicorn_post_fork

    gunicorn_post_fork(server, worker)


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited (recycled, killed, crashed): drop its live gauges from the scrape.

    prometheus-client's ``mark_process_dead`` removes only the ``livesum`` / ``livemax`` gauge
    files of that pid; its counters and histograms stay, so sums over workers never drop.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
