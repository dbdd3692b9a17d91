"""Leak detection for :mod:`pooltender.watch`, in the manner of HikariCP's ``ProxyLeakTask``.

The contract:

* At checkout the tracker captures a *cheap* stack: ``(file, line, function)`` of each frame,
  skipping SQLAlchemy's, Flask-SQLAlchemy's and pooltender's own frames, so the first frame is
  the user's code that asked for the connection. No source text is read and no
  ``traceback`` objects are built on the hot path; source lines are looked up (``linecache``)
  only when a report is written.
* One daemon sweeper thread per watch, started lazily on the first checkout (never at import),
  reports a connection held longer than the threshold **once**: a ``WARNING`` on the
  ``pooltender.watch`` logger with the stack and the held time, a counter, and a bounded list
  of :class:`LeakReport` records.
* When a reported connection finally comes back, the tracker logs again ("returned after
  X s"), as HikariCP does ("Previously reported leaked connection ... was returned").
* A connection that is never closed but returned by the garbage collector (its proxy died
  while checked out) is counted and logged: in CPython that hides the leak, on PyPy or with
  reference cycles it holds the connection until a GC pass.
* With leak detection off the watch holds :data:`NO_TRACKING`, an object whose methods do
  nothing, so the checkout path never branches on "is detection on?".

Everything here runs under the watch's lock only where noted; the sweeper takes that lock
for the short moment it flips a checkout's ``reported`` flag, so a report and the matching
"returned" line can never cross.
"""

from __future__ import annotations

import linecache
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any, Final, NamedTuple, Protocol

logger = logging.getLogger("pooltender.watch")

#: How many user frames a captured stack keeps (innermost first).
STACK_LIMIT: Final = 12


class StackFrame(NamedTuple):
    """One frame of a captured checkout stack."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"

    def source(self) -> str:
        """The source line, read lazily (only when a report is printed)."""
        return linecache.getline(self.filename, self.lineno).strip()


Stack = tuple[StackFrame, ...]

_skip_prefixes: tuple[str, ...] | None = None


def _library_prefixes() -> tuple[str, ...]:
    """Directories whose frames are not "user code": SQLAlchemy, Flask-SQLAlchemy, us.

    Computed on first use, not at import, and without importing Flask-SQLAlchemy.
    """
    global _skip_prefixes
    if _skip_prefixes is None:
        import importlib.util

        import sqlalchemy

        dirs = [os.path.dirname(sqlalchemy.__file__ or ""), os.path.dirname(__file__)]
        # Flask-SQLAlchemy, and the test runner's machinery: never the user's code
        for package in ("flask_sqlalchemy", "_pytest", "pluggy"):
            spec = importlib.util.find_spec(package)
            if spec is not None and spec.origin:
                dirs.append(os.path.dirname(spec.origin))
        dirs.append(os.path.dirname(threading.__file__ or "") + os.sep + "contextlib.py")
        prefixes = [d + os.sep if not d.endswith(".py") else d for d in dirs if d]
        prefixes.append("<sqlalchemy ")  # SQLAlchemy's generated wrappers (decorators)
        _skip_prefixes = tuple(prefixes)
    return _skip_prefixes


RawStack = tuple[tuple[CodeType, int], ...]

_is_library: dict[CodeType, bool] = {}


def capture_raw_stack(limit: int = STACK_LIMIT, depth: int = 1) -> RawStack:
    """The hot-path half of :func:`capture_stack`: ``(code, line)`` pairs, innermost first.

    Walks ``sys._getframe`` directly. The innermost library frames (the pool, the engine,
    the session, us: between the checkout and the user's code) are skipped by a per-code
    object memo; from the first user frame on, ``limit`` frames are taken as they come, with
    no test per frame, and a library frame among them (a Flask-SQLAlchemy or test-runner
    frame further out) is dropped only by :func:`materialize`, when a report is written. So
    a checkout costs a few attribute reads per frame. Code objects (not frames) are kept,
    so no local variables are held alive.
    """
    skip = _skip_prefixes or _library_prefixes()
    known = _is_library
    frame: FrameType | None = sys._getframe(depth)
    while frame is not None:
        code = frame.f_code
        library = known.get(code)
        if library is None:
            library = known[code] = code.co_filename.startswith(skip)
        if not library:
            break
        frame = frame.f_back
    frames: list[tuple[CodeType, int]] = []
    append = frames.append
    for _ in range(limit):
        if frame is None:
            break
        append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return tuple(frames)


def _library_code(code: CodeType) -> bool:
    library = _is_library.get(code)
    if library is None:
        library = _is_library[code] = code.co_filename.startswith(
            _skip_prefixes or _library_prefixes()
        )
    return library


def materialize(raw: RawStack) -> Stack:
    """Turn a raw stack into :class:`StackFrame` tuples, library frames dropped (done only
    when reporting)."""
    return tuple(
        StackFrame(code.co_filename, line, code.co_name)
        for code, line in raw
        if not _library_code(code)
    )


def capture_stack(limit: int = STACK_LIMIT) -> Stack:
    """The caller's stack as ``StackFrame`` tuples, innermost first, library frames skipped."""
    return materialize(capture_raw_stack(limit, depth=2))


def stack_where(stack: Stack) -> str:
    """``file:line`` of a stack's innermost (user) frame, ``?`` when none was captured."""
    return f"{stack[0].filename}:{stack[0].lineno}" if stack else "?"


def format_stack(stack: Stack, indent: str = "    ") -> str:
    """Multi-line text for a log record or a test failure: ``file:line in fn`` and source."""
    if not stack:
        return f"{indent}(no stack captured: enable leak detection or capture_stacks)"
    lines = []
    for frame in stack:
        lines.append(f"{indent}{frame}")
        src = frame.source()
        if src:
            lines.append(f"{indent}    {src}")
    return "\n".join(lines)


class TrackedCheckout:
    """What the tracker keeps about one checkout: where it came from, and its report state.

    ``seq`` is the watch's checkout number (a test guard compares it with its start);
    ``open``, ``reported`` and ``owner`` (which becomes nobody when its unit of work ends with
    it still out) change only under the watch's lock.
    """

    __slots__ = (
        "_stack",
        "open",
        "owner",
        "proxy_ref",
        "raw_stack",
        "reported",
        "seq",
        "started_ns",
        "thread_name",
    )

    def __init__(
        self, seq: int, started_ns: int, owner: Hashable, raw_stack: RawStack, proxy: Any
    ) -> None:
        self.seq = seq
        self.owner = owner
        self.started_ns = started_ns
        self.raw_stack = raw_stack
        self.thread_name = threading.current_thread().name
        self.proxy_ref: weakref.ref[Any] = weakref.ref(proxy)
        self.reported = False
        self.open = True
        self._stack: Stack | None = None

    @property
    def stack(self) -> Stack:
        if self._stack is None:
            self._stack = materialize(self.raw_stack)
        return self._stack


@dataclass(frozen=True)
class LeakReport:
    """A connection held longer than the leak threshold (reported once per checkout)."""

    held_seconds: float
    threshold: float
    thread_name: str
    stack: Stack
    reported_at: float  # time.time()

    @property
    def where(self) -> str:
        """``file:line`` of the user's code that checked the connection out."""
        return stack_where(self.stack)

    def __str__(self) -> str:
        return (
            f"connection held {self.held_seconds:.3f} s (leak threshold {self.threshold:g} s) "
            f"by thread {self.thread_name!r}, checked out at:\n{format_stack(self.stack)}"
        )


@dataclass(frozen=True)
class CheckoutRecord:
    """One checkout: its number, how long it was held, by which thread, from where."""

    seq: int
    held_seconds: float
    thread_name: str
    stack: Stack

    @property
    def where(self) -> str:
        """``file:line`` of the user's code that checked the connection out."""
        return stack_where(self.stack)


@dataclass(frozen=True)
class OpenCheckout(CheckoutRecord):
    """A connection checked out right now (for test guards and teardown safety nets)."""


@dataclass(frozen=True)
class GcReturnReport(CheckoutRecord):
    """A connection never closed by its user: the garbage collector returned it."""


class LeakSink(Protocol):
    """What a tracker reports to (the watch). Called outside the watch's lock."""

    def leak_reported(self, report: LeakReport) -> None:
        """A checkout passed the threshold; called once per checkout."""

    def leak_returned(self, held_seconds: float, tracked: TrackedCheckout) -> None:
        """A checkout reported as leaked came back after ``held_seconds``."""

    def gc_returned(self, report: GcReturnReport) -> None:
        """A checkout came back through garbage collection, never closed."""


class Tracker(Protocol):
    """The leak-tracking strategy a watch holds. Methods run on the checkout/checkin path."""

    def on_checkout(
        self, numbering: Iterator[int], started_ns: int, owner: Hashable, proxy: Any
    ) -> TrackedCheckout | None:
        """Capture what the strategy needs (stack, proxy weakref), numbered from
        ``numbering`` (the watch's checkout counter); start the sweeper lazily. Called on
        every checkout, detection on or off (off: returns None and numbers nothing)."""

    def on_checkin(self, tracked: TrackedCheckout | None, now_ns: int) -> None:
        """The connection came back (or was detached); ``tracked`` is what checkout returned."""

    def open_checkouts(self) -> list[TrackedCheckout]:
        """The tracked checkouts not yet returned, oldest first."""

    def disown(self, owner: Hashable, new_owner: Hashable) -> list[TrackedCheckout]:
        """Give ``owner``'s open checkouts to ``new_owner`` (its unit of work ended); return
        them, oldest first."""

    def stop(self) -> None:
        """Stop any background thread; the tracker is not used again."""


class _NoTracking:
    """Leak detection off: every method does nothing (HikariCP's ``NO_LEAK`` task)."""

    __slots__ = ()

    def on_checkout(
        self, numbering: Iterator[int], started_ns: int, owner: Hashable, proxy: Any
    ) -> TrackedCheckout | None:
        return None

    def on_checkin(self, tracked: TrackedCheckout | None, now_ns: int) -> None:
        return None

    def open_checkouts(self) -> list[TrackedCheckout]:
        return []

    def disown(self, owner: Hashable, new_owner: Hashable) -> list[TrackedCheckout]:
        return []

    def stop(self) -> None:
        return None


NO_TRACKING: Final[Tracker] = _NoTracking()


class StackTracker:
    """Captures stacks at checkout; reports leaks past ``threshold`` seconds (``inf`` = never).

    Keeps its own registry of the checkouts it tracks (``open_checkouts()``). ``lock`` is the
    watch's lock, held for the few dict operations and flag flips that a report and the
    matching checkin must not interleave.
    """

    def __init__(
        self,
        *,
        threshold: float,
        lock: threading.Lock,
        sink: LeakSink,
        name: str,
    ) -> None:
        if not threshold > 0:
            raise ValueError(f"leak threshold must be > 0 seconds (or inf), got {threshold!r}")
        self.threshold = threshold
        self._threshold_ns = threshold * 1e9
        self._live: dict[int, TrackedCheckout] = {}
        self._lock = lock
        self._sink = sink
        self._name = name
        self._sweeper: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopped = threading.Event()
        # Sweep often enough that a report lands within ~25 % of the threshold, at most 1 s.
        self.interval = min(max(threshold / 4, 0.01), 1.0) if threshold != float("inf") else 0

    def on_checkout(
        self, numbering: Iterator[int], started_ns: int, owner: Hashable, proxy: Any
    ) -> TrackedCheckout | None:
        if self._sweeper is None and self.interval:
            self._start_sweeper()
        seq = next(numbering)
        tracked = TrackedCheckout(seq, started_ns, owner, capture_raw_stack(depth=3), proxy)
        with self._lock:
            self._live[seq] = tracked
        return tracked

    def on_checkin(self, tracked: TrackedCheckout | None, now_ns: int) -> None:
        if tracked is None:
            return
        with self._lock:
            tracked.open = False
            self._live.pop(tracked.seq, None)
        collected = tracked.proxy_ref() is None
        if not (collected or tracked.reported):
            return  # the usual checkin: nothing to tell
        held = (now_ns - tracked.started_ns) / 1e9
        if collected:
            self._sink.gc_returned(
                GcReturnReport(
                    seq=tracked.seq,
                    held_seconds=held,
                    thread_name=tracked.thread_name,
                    stack=tracked.stack,
                )
            )
        if tracked.reported:
            self._sink.leak_returned(held, tracked)

    def open_checkouts(self) -> list[TrackedCheckout]:
        """The tracked checkouts not yet returned, oldest first."""
        with self._lock:
            return sorted(self._live.values(), key=lambda t: t.seq)

    def disown(self, owner: Hashable, new_owner: Hashable) -> list[TrackedCheckout]:
        with self._lock:
            mine = sorted((t for t in self._live.values() if t.owner == owner), key=lambda t: t.seq)
            for tracked in mine:
                tracked.owner = new_owner
        return mine

    def adopt(self, previous: Tracker) -> None:
        """Take over the open checkouts of the tracker this one replaces (reconfiguration)."""
        for tracked in previous.open_checkouts():
            with self._lock:
                if tracked.open:
                    self._live[tracked.seq] = tracked

    def stop(self) -> None:
        self._stopped.set()
        sweeper = self._sweeper
        if sweeper is not None and sweeper is not threading.current_thread():
            sweeper.join(timeout=5)

    def _start_sweeper(self) -> None:
        with self._start_lock:
            if self._sweeper is not None or self._stopped.is_set():
                return
            thread = threading.Thread(
                target=self._sweep_forever, name=f"pooltender-leaks-{self._name}", daemon=True
            )
            self._sweeper = thread
            thread.start()

    def _sweep_forever(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.sweep()
            except Exception:  # the sweeper must outlive any one bad report
                logger.exception("pooltender leak sweeper failed; continuing")

    def sweep(self, now_ns: int | None = None) -> int:
        """Report every open checkout past the threshold not yet reported; return how many."""
        now = time.perf_counter_ns() if now_ns is None else now_ns
        due = []
        for tracked in self.open_checkouts():
            if not tracked.reported and now - tracked.started_ns >= self._threshold_ns:
                with self._lock:
                    if tracked.reported or not tracked.open:
                        continue
                    tracked.reported = True
                due.append(tracked)
        for tracked in due:
            self._sink.leak_reported(
                LeakReport(
                    held_seconds=(now - tracked.started_ns) / 1e9,
                    threshold=self.threshold,
                    thread_name=tracked.thread_name,
                    stack=tracked.stack,
                    reported_at=time.time(),
                )
            )
        return len(due)
