"""gunicorn's access log at a fraction of its cost, and without a line per refusal.

gunicorn's ``Logger.access`` builds every atom any ``access_log_format`` could name for every
request: the twenty single-letter atoms, and one ``{name}i`` / ``{name}o`` / ``{name}e`` atom
per request header, response header and WSGI environ variable, each key lower-cased and each
string value escaped, whether or not the format uses it. On the project's 2-core bench host
that costs 0.22 ms per request: a gthread worker answering a pre-encoded 503 from a bare WSGI
app spends 0.51 ms of CPU per request with the access log on and 0.29 ms with it off (wrk,
32 keep-alive connections, one worker of 32 threads; docs/benchmarks.md). Under overload,
where refusals outnumber the requests served, that is the largest part of what a refusal
costs, and Fail at Scale's rule is that shedding must cost much less than the work.

:class:`AccessLogger`, gunicorn's ``logger_class``, changes three things and nothing else:

* **Atoms are computed when the format asks for them.** The mapping handed to the log
  record builds one atom per ``%(name)s`` lookup, with gunicorn's own rules (``-`` for an
  unknown atom; ``{name}i``, ``{name}o`` and ``{name}e`` matched case-insensitively, the last
  of a repeated header winning; ``"`` escaped in string values), so a line is byte for byte
  what gunicorn writes, for any format, and costs what its own atoms cost.
* **A line goes to gunicorn's own access file or stream with one** ``write(2)`` when that is
  all the ``logging`` module would do with it: the access logger has exactly gunicorn's
  handler (a plain ``StreamHandler`` or ``FileHandler`` with gunicorn's ``%(message)s``
  format), no filters, and does not propagate. ``logging`` builds a record, takes the
  handler's lock and flushes per line, which in a worker of 32 threads cost about 0.15 ms
  of CPU per line against 0.03 ms for the direct write (a bare WSGI app under wrk:
  0.49 ms per request through ``logging``, 0.33-0.35 ms direct, 0.29-0.32 ms with no log).
  A line is written whole (a loop for a short write); any other handler setup
  (``--log-config``, syslog, a rotating handler, filters) goes through ``logging`` as
  before, and so does a line whose direct write fails.
* **Refusals of pooltender's admission middleware are counted, not logged.** The middleware
  marks the environ of a request it refused before the application ran
  (:data:`~pooltender.admission.middleware.REFUSED_KEY`, the shed reason); such a request
  writes no access line. Instead, gunicorn's error log gets one WARNING line at the first
  refusal of the process, then at most one per ``summary_interval`` (10 s), written by the
  first request logged or refused once the interval has passed: how many requests were
  refused since the last such line, by reason. The same
  counts are in ``/pooltender/stats`` and ``/metrics`` (``pooltender_admission_shed_total``)
  per process and reason. A 503 the application itself answers (the pool's shed wait, the
  last line of defence) is an ordinary access line.

Use it in ``gunicorn.conf.py``::

    logger_class = "pooltender.accesslog.AccessLogger"

It needs gunicorn (which imports it) and nothing else of pooltender's extras. Caveat: the
atoms read the request's environ and response when the record is *formatted*; gunicorn's
handlers format at once, but a handler that formats records later (a ``QueueHandler``
formats in ``prepare``, at once, and is fine) would see the objects as they are then.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, cast

from gunicorn.glogging import Logger

from pooltender.admission.middleware import REFUSED_KEY

__all__ = ["AccessLogger"]


class _Atoms(dict[str, Any]):
    """gunicorn's ``SafeAtoms`` for one request, each atom built on its first lookup.

    It holds the status under ``s`` from the start, so the mapping is never empty (the
    ``logging`` module treats only a non-empty mapping as the format's arguments).
    """

    __slots__ = ("_environ", "_logger", "_req", "_request_time", "_resp")

    def __init__(
        self, logger: AccessLogger, resp: Any, req: Any, environ: Any, request_time: Any
    ) -> None:
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        super().__init__(s=status)
        self._logger = logger
        self._resp = resp
        self._req = req
        self._environ = environ
        self._request_time = request_time

    def __getitem__(self, key: str) -> Any:
        if key.startswith("{"):
            key = key.lower()
        try:
            return dict.__getitem__(self, key)
        except KeyError:
            pass
        value = self._build(key)
        if isinstance(value, str):
            value = value.replace('"', '\\"')
        self[key] = value
        return value

    def _build(self, key: str) -> Any:
        environ = self._environ
        if key.startswith("{") and len(key) > 3 and key[-2] == "}":
            return self._lookup(key[1:-2], key[-1])
        if key == "h":
            return environ.get("REMOTE_ADDR", "-")
        if key == "l":
            return "-"
        if key == "u":
            return self._logger._get_user(environ) or "-"
        if key == "t":
            return self._logger.now()
        if key == "r":
            return f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}"
        if key in _ENVIRON_ATOMS:
            return environ.get(_ENVIRON_ATOMS[key])
        if key == "b":
            sent = getattr(self._resp, "sent", None)
            return (sent is not None and str(sent)) or "-"
        if key == "B":
            return getattr(self._resp, "sent", None)
        if key == "f":
            return environ.get("HTTP_REFERER", "-")
        if key == "a":
            return environ.get("HTTP_USER_AGENT", "-")
        elapsed = self._request_time
        if key == "T":
            return elapsed.seconds
        if key == "D":
            return elapsed.seconds * 1000000 + elapsed.microseconds
        if key == "M":
            return elapsed.seconds * 1000 + int(elapsed.microseconds / 1000)
        if key == "L":
            return f"{elapsed.seconds}.{elapsed.microseconds:06d}"
        if key == "p":
            return f"<{os.getpid()}>"
        return "-"

    def _lookup(self, name: str, kind: str) -> Any:
        """``{name}i`` / ``{name}o`` / ``{name}e``: the last item whose lower-cased key is
        ``name`` (``name`` is lower case already), as gunicorn's dict update leaves it."""
        if kind == "i":
            headers = getattr(self._req, "headers", self._req)
            items = headers.items() if hasattr(headers, "items") else headers
        elif kind == "o":
            headers = self._resp.headers
            items = headers.items() if hasattr(headers, "items") else headers
        elif kind == "e":
            items = self._environ.items()
        else:
            return "-"
        found: Any = "-"
        for item_key, value in items:
            if item_key.lower() == name:
                found = value
        return found


_ENVIRON_ATOMS = {
    "m": "REQUEST_METHOD",
    "U": "PATH_INFO",
    "q": "QUERY_STRING",
    "H": "SERVER_PROTOCOL",
}


class AccessLogger(Logger):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's ``Logger`` with lazy access-log atoms and refusals summarized; see the
    module docstring. ``summary_interval`` (seconds) is how often at most the refusal summary
    is written."""

    summary_interval = 10.0

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._refused: dict[str, int] = {}
        self._refused_lock = threading.Lock()
        self._early = 0
        self._direct: logging.StreamHandler[Any] | None
        self._summary_due = 0.0  # the first refusal is reported at once
        self._summary_since = time.monotonic()

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self._direct = self._direct_handler()

    def _direct_handler(self) -> logging.StreamHandler[Any] | None:
        """gunicorn's own access handler, if writing to its stream is all ``logging`` would
        do with a line (the module docstring); else None."""
        log = self.access_log
        if log.propagate or log.filters or not log.isEnabledFor(logging.INFO):
            return None
        if len(log.handlers) != 1:
            return None
        handler = log.handlers[0]
        if type(handler) not in (logging.StreamHandler, logging.FileHandler):
            return None
        formatter = handler.formatter
        if handler.filters or handler.level > logging.INFO:
            return None
        if formatter is not None and (
            type(formatter) is not logging.Formatter or formatter._fmt != "%(message)s"
        ):
            return None
        return cast("logging.StreamHandler[Any]", handler)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        reason = environ.get(REFUSED_KEY)
        if reason is not None:
            self.count_refusal(reason)
            return
        if self._refused and time.monotonic() >= self._summary_due:
            self._summarize()
        if not self.access_log_enabled:
            return
        atoms = _Atoms(self, resp, req, environ, request_time)
        direct = self._direct
        if direct is not None:
            try:
                line = self.cfg.access_log_format % atoms
            except Exception:  # gunicorn's own rule: a bad format is logged, never raised
                import traceback

                self.error(traceback.format_exc())
                return
            if self._write_direct(direct, line):
                return
        try:
            self.access_log.info(self.cfg.access_log_format, atoms)
        except Exception:
            import traceback

            self.error(traceback.format_exc())

    @staticmethod
    def _write_direct(handler: logging.StreamHandler[Any], line: str) -> bool:
        """Write ``line`` whole to ``handler``'s stream with ``write(2)``; False if that
        could not be done (then ``logging`` writes it)."""
        stream = handler.stream
        if stream is None:
            return False
        try:
            stream.flush()  # anything else written to it (print() on stdout) goes first
            data = (line + "\n").encode(
                getattr(stream, "encoding", None) or "utf-8", "backslashreplace"
            )
            fd = stream.fileno()
            while data:
                written = os.write(fd, data)
                data = data[written:]
        except (OSError, ValueError, AttributeError):  # closed, reopened, or no descriptor
            return False
        return True

    def count_refusal(self, reason: str, *, early: bool = False) -> None:
        """Count one admission refusal (no access line); write the summary if it is due.
        ``early``: answered before parsing (:mod:`pooltender.gthread`'s poller)."""
        with self._refused_lock:
            self._refused[reason] = self._refused.get(reason, 0) + 1
            if early:
                self._early += 1
        if time.monotonic() >= self._summary_due:
            self._summarize()

    def _summarize(self) -> None:
        """Write the refusal counts since the last summary on the error log; reset them."""
        now = time.monotonic()
        with self._refused_lock:
            if now < self._summary_due:  # another thread has just written it
                return
            counts, self._refused = self._refused, {}
            early, self._early = self._early, 0
            since, self._summary_since = self._summary_since, now
            self._summary_due = now + self.summary_interval
        total = sum(counts.values())
        if not total:
            return
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))
        if early:
            reasons += f"; {early} answered before parsing"
        self.error_log.warning(
            "pooltender admission refused %d request(s) with 503 in the last %.1f s (%s); "
            "refusals are counted here and in /metrics, not written to the access log",
            total,
            now - since,
            reasons,
        )

    def refusals_pending(self) -> dict[str, int]:
        """The refusals counted since the last summary, by reason (a copy)."""
        with self._refused_lock:
            return dict(self._refused)
