"""The WSGI middleware that admits each request before the application sees it.

It wraps any WSGI callable (``app.wsgi_app`` for Flask), so it runs before Flask builds a
request context, parses a body, authenticates or touches the database: a request that has to
wait does so holding nothing but its thread (or greenlet), and a refused one costs a dict
lookup, a lock and a pre-encoded 503 (body and headers built once at start-up: no JSON
encoding, no message formatting and no logging per refusal -- under overload refusals
outnumber the requests served, and every microsecond they take is CPU the admitted requests
do not get; Fail at Scale's point that a shed must be much cheaper than the work). The
refusal::

    503 Service Unavailable
    Retry-After: <retry_after .. retry_after + jitter>
    Content-Type: application/json
    {"error": {"code": "overloaded", "message": "..."}}

``Retry-After`` is spread over ``retry_after_jitter + 1`` whole seconds (by default
``retry_after`` .. ``2 x retry_after``), chosen per refusal, so that clients refused in the
same burst do not all come back in the same second and make the next burst (the "retry
storm" of Fail at Scale and of AWS's "Timeouts, retries and backoff with jitter").

Requests whose ``PATH_INFO`` starts with an exempt prefix (on a path-segment boundary:
``/metrics`` covers ``/metrics`` and ``/metrics/x``, not ``/metricsx``) bypass the limiter:
health, readiness and metrics must answer *especially* when the process is overloaded.

The slot is released when the application *returns* its response iterable, not when the
server closes it: by then a Flask app has run its handler and its teardown (the session is
removed, the connection is back in the pool), so the sample is the request's service time
without the time a slow client takes to read the body, and a server or test client that
never calls ``close()`` (Werkzeug's test client without ``buffered=True``) cannot leak the
slot. A streamed body (a generator that keeps working while it is sent) is therefore not
counted while it streams. An exception from the application releases the slot at once
without feeding the limit. A 503 from the
application itself (the pool's shed wait, the last line of defence) is a *drop*: loss-based
limits (AIMD, Vegas) back off on it.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pooltender.admission.limiter import SHED_REASONS, AdmissionLimiter, Overloaded

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["REFUSED_KEY", "AdmissionMiddleware", "mark_screened", "shed_body"]

log = logging.getLogger("pooltender.admission")

#: The environ key a refused request carries (its shed reason): the server's access logger
#: can tell a refusal from a response of the application (:mod:`pooltender.accesslog`
#: counts them instead of writing a line each).
REFUSED_KEY = "pooltender.admission.refused"

_INSTANCES: weakref.WeakSet[AdmissionMiddleware] = weakref.WeakSet()
#: per thread (per greenlet under gevent): the request this thread runs next was screened
#: with a reservation (mark_screened); __call__ hands that to acquire and clears it
_screened = threading.local()


def mark_screened() -> None:
    """Tell this thread's next admission that :meth:`AdmissionMiddleware.refuse_early`
    reserved a place for its request (a server calls it before running the request)."""
    _screened.reserved = True


_SERIALS = itertools.count()

_MESSAGES = {
    "queue_full": "too many requests are already waiting",
    "standing_queue": "requests have been queueing here for a while",
    "queue_timeout": "no request slot came free in time",
}


def shed_body(reason: str, retry_after: int) -> bytes:
    """The JSON body of a refusal for ``reason``."""
    message = (
        f"the service is overloaded ({_MESSAGES.get(reason, reason)}); retry in {retry_after} s"
    )
    return json.dumps({"error": {"code": "overloaded", "message": message}}).encode()


class AdmissionMiddleware:
    """``AdmissionMiddleware(app, limiter)``: a WSGI app that admits, then calls ``app``.

    ``exempt`` lists path prefixes that bypass the limiter; ``retry_after`` is the least
    seconds in the refusal's ``Retry-After`` and ``retry_after_jitter`` how many more it may
    say (None: ``retry_after``; 0: always ``retry_after``); ``on_request_end`` (optional) is
    called after each admitted or refused request, e.g. to mirror metrics for a
    multiprocess scrape.
    """

    def __init__(
        self,
        app: WSGIApplication,
        limiter: AdmissionLimiter,
        *,
        exempt: Iterable[str] = (),
        retry_after: int = 1,
        retry_after_jitter: int | None = None,
        on_request_end: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self._serial = next(_SERIALS)
        self.exempt = tuple(p.rstrip("/") or "/" for p in exempt)
        self.retry_after = retry_after
        self._on_end = on_request_end
        jitter = retry_after if retry_after_jitter is None else retry_after_jitter
        if jitter < 0:
            raise ValueError("retry_after_jitter must be 0 or more")
        self._refusals = {
            reason: tuple(
                (
                    [
                        ("Content-Type", "application/json"),
                        ("Retry-After", str(seconds)),
                        ("Content-Length", str(len(body))),
                    ],
                    body,
                )
                for seconds in range(retry_after, retry_after + jitter + 1)
                for body in (shed_body(reason, seconds),)
            )
            for reason in SHED_REASONS
        }
        self._pick = random.Random().randrange
        # the same refusals as raw HTTP header lines and body, for a server that answers
        # before it parses (refuse_early); the status line and Date are the server's
        self._raw_refusals = {
            reason: tuple(
                b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
                + b"\r\n"
                + body
                for headers, body in variants
            )
            for reason, variants in self._refusals.items()
        }
        _INSTANCES.add(self)

    @staticmethod
    def in_process() -> list[AdmissionMiddleware]:
        """The admission middlewares built in this process (alive), oldest first."""
        return sorted(_INSTANCES, key=lambda middleware: middleware._serial)

    def refuse_early(self, path: str) -> tuple[str, bytes] | bool:
        """For a server that can answer before it parses a request of ``path``:
        ``(reason, raw)`` if it is refused, counted by the limiter, ``raw`` this
        middleware's own 503 as header lines, a blank line and the body (the server adds
        the status line and ``Date``); else whether a place was reserved for it -- True:
        call :func:`mark_screened` in the thread that then runs the request, before the
        application (see :meth:`AdmissionLimiter.screen`). Exempt paths are never refused or
        reserved."""
        exempt = self.exempt
        if exempt and path.startswith(exempt) and self.is_exempt(path):
            return False
        refused, reserved = self.limiter.screen()
        if refused is None:
            return reserved
        variants = self._raw_refusals[refused.reason]
        raw = variants[self._pick(len(variants))] if len(variants) > 1 else variants[0]
        if self._on_end is not None:
            self._on_end()
        return refused.reason, raw

    def is_exempt(self, path: str) -> bool:
        """Whether ``path`` bypasses the limiter."""
        if not path.startswith(self.exempt):  # one C call for the usual, admitted path
            return False
        for prefix in self.exempt:
            if path.startswith(prefix) and (
                len(path) == len(prefix) or prefix == "/" or path[len(prefix)] == "/"
            ):
                return True
        return False

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        exempt = self.exempt
        if exempt:
            path = environ.get("PATH_INFO") or "/"
            # the usual, admitted path: one C call (is_exempt checks the segment boundary)
            if path.startswith(exempt) and self.is_exempt(path):
                return self.app(environ, start_response)
        screened = _screened.__dict__.pop("reserved", False)
        try:
            admission = self.limiter.acquire(screened=screened)
        except Overloaded as exc:
            variants = self._refusals[exc.reason]
            headers, payload = (
                variants[self._pick(len(variants))] if len(variants) > 1 else variants[0]
            )
            environ[REFUSED_KEY] = exc.reason
            start_response("503 Service Unavailable", list(headers))
            if self._on_end is not None:
                self._on_end()
            return [payload]
        dropped = False

        def watching_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            nonlocal dropped
            dropped = status.startswith("503")
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, watching_start_response)
        except BaseException:
            admission.release(sample=False)
            raise
        admission.release(dropped=dropped)
        if self._on_end is not None:
            self._on_end()
        return body
