"""gunicorn's gthread worker, answering admission refusals from its poller thread.

A gthread worker hands every request to a thread of its pool: the poller unregisters the
kept-alive connection, submits it to the pool, a thread parses the request, builds the WSGI
environ and calls the app, and the connection comes back to the poller through a wake-up
pipe to be registered again. For a request that pooltender's admission middleware refuses at
once, all of that is overhead: on the project's 2-core bench host a worker of 32 threads
spends 0.29 ms of CPU on a bare 503, and 5 us when the poller answers it itself (wrk, 32
keep-alive connections, one worker; docs/benchmarks.md). Under overload refusals outnumber
the requests served, and what they cost is CPU the admitted requests do not get (Fail at
Scale: shedding must cost much less than the work).

Use it in ``gunicorn.conf.py`` (``coupons serve`` does)::

    worker_class = "pooltender.gthread.ThreadWorker"

When a kept-alive connection becomes readable, the poller peeks at its bytes
(``MSG_PEEK``: nothing is consumed yet). If they hold exactly one complete, plain HTTP/1.1
request (:func:`plain_request`) and the process's
:class:`~pooltender.admission.middleware.AdmissionMiddleware` would refuse a request
arriving now without letting it wait (:meth:`AdmissionMiddleware.refuse_early`: the queue is
full, or standing with its backlog taken), the poller reads the request off the socket and
sends the middleware's own 503: the same reasons, counters, ``Retry-After`` and JSON body,
plus a ``Date``. With admission on, a new connection also waits on the poller for its
first request (plain gthread hands it to a thread at once, which then waits for the bytes),
so its first request is screened the same way. The connection stays kept alive, its
keep-alive timeout restarted, and
:class:`~pooltender.accesslog.AccessLogger` counts the refusal in its summary. A request
the limiter would admit or queue goes to a thread exactly as before, and so does anything
this cannot answer without parsing: exempt paths (health, metrics), ``HEAD``, HTTP/1.0,
chunked bodies, ``Expect``, ``Upgrade``, ``Connection: close``, percent-encoded paths,
pipelined or partly received requests, TLS (``certfile``), an app mounted under
``SCRIPT_NAME``, a process with no admission middleware (admission off) or with more than
one.

It relies on gthread's poller callback ``on_client_socket_readable`` and checks for it at
start-up; where gunicorn's worker does not have it, this is gthread unchanged (with a
warning on the error log).
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import time
from collections import deque
from email.utils import formatdate
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn
from gunicorn.workers.gthread import ThreadWorker as _GunicornThreadWorker

from pooltender.admission.middleware import AdmissionMiddleware, mark_screened

__all__ = ["ThreadWorker", "plain_request"]

#: the most bytes peeked at: a larger request goes the usual way
PEEK_BYTES = 16384
#: methods whose 503 carries a body (HEAD's must not) and whose request needs no special care
_METHODS = frozenset((b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"))
_STATUS = b"HTTP/1.1 503 Service Unavailable\r\nDate: "
_REFUSED_HEADERS = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"connection"))


def plain_request(data: bytes) -> tuple[str, int] | None:
    """``(path, length)`` if ``data`` is exactly one complete, plain HTTP/1.1 request of
    ``length`` bytes, which a server may answer without parsing it further; else None.

    Plain: the request line is ``METHOD /path HTTP/1.1`` with a method of
    :data:`_METHODS` and a path without ``%``; every header line is ``name: value`` with
    no ``Transfer-Encoding``, ``Expect``, ``Upgrade`` or ``Connection`` header; at most one
    ``Content-Length``, all digits, and its body entirely in ``data`` with nothing after
    it. The path is the target before any ``?``.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    line_end = data.find(b"\r\n")
    parts = data[:line_end].split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if version != b"HTTP/1.1" or method not in _METHODS:
        return None
    if not target.startswith(b"/") or b"%" in target:
        return None
    length = -1
    if line_end < end:
        for line in data[line_end + 2 : end].lower().split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or b" " in name:
                return None
            if name in _REFUSED_HEADERS:
                return None
            if name == b"content-length":
                value = value.strip()
                if length >= 0 or not value.isdigit():
                    return None
                length = int(value)
    total = end + 4 + max(length, 0)
    if len(data) != total:
        return None
    return target.split(b"?", 1)[0].decode("latin-1"), total


class ThreadWorker(_GunicornThreadWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's ``gthread`` worker whose poller answers admission refusals; see the
    module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._admission: AdmissionMiddleware | None = None
        self._poll_new = False
        self._date_second = -1
        self._date = b""

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self._admission = self._find_admission()
        # new connections through the poller too, on a gthread that keeps its kept-alive
        # connections where we expect them (gunicorn >= 23)
        self._poll_new = self._admission is not None and isinstance(
            getattr(self, "keepalived_conns", None), deque
        )

    def _find_admission(self) -> AdmissionMiddleware | None:
        """The process's one admission middleware, or None (and why, on the error log)."""
        if not hasattr(_GunicornThreadWorker, "on_client_socket_readable"):
            self.log.warning(
                "pooltender.gthread: this gunicorn's gthread worker has no poller callback "
                "to answer refusals from; running as plain gthread"
            )
            return None
        if self.cfg.is_ssl:
            return None  # the bytes on a TLS socket are not the request: no early answers
        if os.environ.get("SCRIPT_NAME") or (self.cfg.env or {}).get("SCRIPT_NAME"):
            return None  # paths on the wire are not the app's PATH_INFO: no early answers
        found = AdmissionMiddleware.in_process()
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            self.log.info(
                "pooltender.gthread: %d admission middlewares in this process; refusals "
                "are answered by the application",
                len(found),
            )
        return None

    def accept(self, listener: Any) -> None:
        """With admission on, a new connection waits on the poller for its first request,
        like a kept-alive one, so that request can be refused before parsing too (gthread
        hands a new connection to a thread at once, which then waits for its first bytes)."""
        if not self._poll_new:
            super().accept(listener)
            return
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())  # non-blocking
        conn.set_timeout()
        self.keepalived_conns.append(conn)
        self.poller.register(
            conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
        )

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        # a stopping worker answers the next request with "Connection: close" (gunicorn's
        # own path) instead of keeping the connection alive with an early 503
        if self._admission is not None and self.alive and self._refuse_early(conn):
            return
        conn.data_ready = True  # the poller saw its bytes: no thread has to wait for them
        super().on_client_socket_readable(conn, client)

    def _refuse_early(self, conn: Any) -> bool:
        """Answer the request waiting on ``conn`` with the middleware's 503 if it is plain
        and the limiter refuses it at once; False: hand it to a thread as usual."""
        sock = conn.sock
        try:
            data = sock.recv(PEEK_BYTES, socket.MSG_PEEK)
        except (OSError, ValueError):  # ValueError: a socket that takes no flags
            return False
        parsed = plain_request(data)
        if parsed is None:
            return False
        path, length = parsed
        assert self._admission is not None
        refusal = self._admission.refuse_early(path)
        if refusal is True:  # counted as waiting until a thread picks it up (handle)
            conn.pooltender_in_transit = True
            return False
        if refusal is False:
            return False
        reason, raw = refusal
        response = b"".join((_STATUS, self._http_date(), b"\r\n", raw))
        try:
            taken = sock.recv(length)
            sent = sock.send(response) if len(taken) == length else -1
        except OSError:
            sent = -1
        if sent != len(response):  # the peer went away, or a full send buffer: close it
            self._close_kept_alive(conn)
        else:
            self._restart_keepalive(conn)
        count = getattr(self.log, "count_refusal", None)
        if count is not None:
            count(reason, early=True)
        return True

    def handle(self, conn: Any) -> Any:
        # runs in a pool thread: a request the poller passed on while the limiter was busy
        # stops counting as in transit when this thread's admission takes its place
        # (AdmissionLimiter.screen); a request that never reaches it expires from the count
        if getattr(conn, "pooltender_in_transit", False):
            conn.pooltender_in_transit = False
            mark_screened()
        return super().handle(conn)

    def _http_date(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = formatdate(now, usegmt=True).encode("ascii")
        return self._date

    def _keepalive_queue(self) -> Any:
        # gunicorn >= 23 names it keepalived_conns; older releases _keep
        return getattr(self, "keepalived_conns", None) or getattr(self, "_keep", None)

    def _restart_keepalive(self, conn: Any) -> None:
        """The keep-alive timeout counts from this response: move ``conn`` to the end of the
        worker's timeout-ordered queue with a fresh deadline."""
        queue = self._keepalive_queue()
        if queue is None:
            return
        try:
            queue.remove(conn)
        except ValueError:
            return
        conn.set_timeout()
        queue.append(conn)

    def _close_kept_alive(self, conn: Any) -> None:
        queue = self._keepalive_queue()
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.poller.unregister(conn.sock)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(conn)
        self.nr_conns -= 1
        conn.close()
