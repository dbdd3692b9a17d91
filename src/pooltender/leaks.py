"""Leak detection for :mod:`pooltender.watch`, in the manner of HikariCP's ``ProxyLeakTask``.

The contract:

* At checkout the tracker captures a *cheap* stack (:func:`new_tracked`): one list of the
  code object and instruction offset of each frame, from the first frame that is not
  SQLAlchemy's, Flask-SQLAlchemy's or pooltender's own (the user's code that asked for the
  connection) outward, up to the framework that called the user's code (Flask's dispatch,
  the test runner) or :data:`STACK_LIMIT` frames. Nothing is formatted on the hot path:
  line numbers, file names and source text are worked out (``co_lines``, ``linecache``)
  only when a report is written.
  The checkout's one record is a :class:`TrackedCheckout` (slots, no ``__init__`` call),
  registered in the tracker's ``live`` dict under the watch's lock the checkout takes anyway.
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
from collections.abc import Hashable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any, Final, NamedTuple, Protocol

logger = logging.getLogger("pooltender.watch")

#: The most user frames a captured stack keeps (innermost first); a capture also stops at
#: the first frame of the framework that called the user's code (see capture_raw_stack).
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


_framework_prefixes: tuple[str, ...] | None = None


def _framework_dirs() -> tuple[str, ...]:
    """Directories of the code that *calls* the user's (the web framework, the WSGI server,
    the test runner): a captured stack ends at the first of their frames, since what lies
    beyond (request dispatch, the server loop) is the same for every checkout and names
    nothing of the user's. Found without importing them."""
    global _framework_prefixes
    if _framework_prefixes is None:
        import importlib.util

        dirs = []
        for package in ("flask", "werkzeug", "gunicorn", "_pytest", "pluggy"):
            spec = importlib.util.find_spec(package)
            if spec is not None and spec.origin:
                dirs.append(os.path.dirname(spec.origin) + os.sep)
        _framework_prefixes = tuple(dirs)
    return _framework_prefixes


#: A captured stack as the checkout left it: ``[code, offset, code, offset, ...]``, innermost
#: first (code objects and ``f_lasti`` instruction offsets; no frame is kept, so no local
#: variable is held alive). :func:`materialize` turns it into :class:`StackFrame` tuples.
RawStack = list[Any]

#: ``co_filename`` of every code object seen by a capture, split into library and user files
#: (a file's frames are all one or the other). Sets, so the frame walk tests membership with
#: an operator, not a call; a filename string caches its hash.
_library_files: set[str] = set()
_user_files: set[str] = set()
#: ``co_filename`` of the files seen past the first user frame, split the same way into the
#: framework's (where a capture stops) and the rest (kept).
_framework_files: set[str] = set()
_kept_files: set[str] = set()


#: Where the first user frame stood the last time a full walk found it, per entry frame's
#: code: ``{entry code: (offset from the entry, code of the library frame just below the
#: user frame)}``. For a checkout the entry is always the watched pool's ``connect``, so in
#: practice this holds one hint per capture site (``capture_stack``'s callers add theirs):
#: the last path's depth. A request's checkouts mostly take one path (session -> engine ->
#: pool), so the jump with :func:`sys._getframe` -- which walks CPython's frames without
#: materializing a frame object for each, where the walk by ``f_back`` materializes every
#: one (about 2,500 instructions apiece under callgrind) -- usually holds; when paths of
#: other depths alternate, each miss costs the failed check plus the walk, which re-learns.
#: Bounded: cleared when it reaches :data:`_ENTRY_HINTS_MAX` entries.
_entry_hints: dict[CodeType, tuple[int, CodeType | None]] = {}
_ENTRY_HINTS_MAX: Final = 256


def capture_raw_stack(limit: int = STACK_LIMIT, depth: int = 1) -> RawStack:
    """The hot-path half of :func:`capture_stack` (see :data:`RawStack`).

    Finds the first user frame outward from ``sys._getframe(depth)``: the innermost library
    frames (the pool, the engine, the session, us: between the checkout and the user's code)
    are skipped by their file's membership in a set. How many there were last time is kept
    (:data:`_entry_hints`) and checked on each use: the library frame just below the user
    frame must be the same code as when learnt and the frame above it a user file's. The
    usual capture thus materializes three frames (the entry, that library frame, the user
    frame) where the walk would materialize every library frame; a hint that no longer
    holds falls back to the walk, which learns it again. From the first user frame on, up to
    ``limit`` frames are taken, stopping before the first frame of the framework that called the
    user's code (Flask, Werkzeug, gunicorn, the test runner: see :func:`_framework_dirs`), so
    a request's checkout keeps the handful of frames from its view down and does not make
    CPython materialize the dispatch frames beyond. A library frame among those kept
    (pooltender's retry loop, Flask-SQLAlchemy) is dropped only by :func:`materialize`,
    when a report is written. Per frame: a few attribute reads and one set membership; no
    call, no allocation but the one list.
    """
    skip = _skip_prefixes or _library_prefixes()
    library, user = _library_files, _user_files
    entry = sys._getframe(depth)
    frame: FrameType | None = None
    hint = _entry_hints.get(entry.f_code)
    if hint is not None:
        offset, below = hint
        if offset == 0:
            frame = entry
        else:
            try:
                last_library = sys._getframe(depth + offset - 1)
            except ValueError:  # a shallower stack than when learnt
                last_library = None
            if last_library is not None and last_library.f_code is below:
                candidate = last_library.f_back
                if candidate is not None and candidate.f_code.co_filename in user:
                    frame = candidate
    if frame is None:  # no hint, or it did not hold: walk, and learn the hint
        frame = entry
        offset = 0
        below = None
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename in user:
                break
            if filename not in library:  # first sight of this file: classify it once
                if not filename.startswith(skip):
                    user.add(filename)
                    break
                library.add(filename)
            below = frame.f_code
            frame = frame.f_back
            offset += 1
        if frame is not None:
            if len(_entry_hints) >= _ENTRY_HINTS_MAX:
                _entry_hints.clear()
            _entry_hints[entry.f_code] = (offset, below)
    size = 2 * limit
    raw: RawStack = [None] * size
    kept = _kept_files
    i = 0
    if frame is not None and size:  # the first user frame is kept whatever its file
        raw[0] = frame.f_code
        raw[1] = frame.f_lasti
        i = 2
        frame = frame.f_back
    while frame is not None and i < size:
        code = frame.f_code
        if code.co_filename not in kept:  # the framework's, or first sight of this file
            filename = code.co_filename
            if filename in _framework_files:
                break
            if filename.startswith(_framework_prefixes or _framework_dirs()):
                _framework_files.add(filename)
                break
            kept.add(filename)
        raw[i] = code
        raw[i + 1] = frame.f_lasti
        i += 2
        frame = frame.f_back
    del raw[i:]
    return raw


def _library_code(code: CodeType) -> bool:
    filename = code.co_filename
    if filename in _library_files:
        return True
    if filename in _user_files:
        return False
    library = filename.startswith(_skip_prefixes or _library_prefixes())
    (_library_files if library else _user_files).add(filename)
    return library


def _line(code: CodeType, offset: int) -> int:
    """The source line of the instruction at byte ``offset`` of ``code`` (what
    ``frame.f_lineno`` answers, worked out at report time from the offset kept)."""
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line if line is not None else code.co_firstlineno
    return code.co_firstlineno


def materialize(raw: RawStack) -> Stack:
    """Turn a raw stack into :class:`StackFrame` tuples, library frames dropped (done only
    when reporting)."""
    return tuple(
        StackFrame(code.co_filename, _line(code, offset), code.co_name)
        for code, offset in zip(raw[::2], raw[1::2], strict=True)
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

    Built by :func:`new_tracked` (there is no ``__init__``: the checkout path sets the slots
    itself and pays no extra Python call). ``seq`` is the watch's checkout number, given
    under the watch's lock when the checkout is registered (a test guard compares it with
    its start); ``open``, ``reported`` and ``owner`` (which becomes nobody when its unit of
    work ends with it still out) change only under the watch's lock.
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

    seq: int
    owner: Hashable
    started_ns: int
    raw_stack: RawStack
    thread_name: str
    proxy_ref: weakref.ref[Any]
    reported: bool
    open: bool
    _stack: Stack | None

    @property
    def stack(self) -> Stack:
        if self._stack is None:
            self._stack = materialize(self.raw_stack)
        return self._stack


def new_tracked(started_ns: int, owner: Hashable, proxy: Any) -> TrackedCheckout:
    """A checkout's record, its stack captured from the caller outward (numbered and
    registered later, under the watch's lock). Called on every checkout with detection on."""
    tracked = TrackedCheckout()
    tracked.raw_stack = capture_raw_stack(STACK_LIMIT, 2)
    tracked.seq = 0
    tracked.started_ns = started_ns
    tracked.owner = owner
    tracked.thread_name = threading.current_thread().name
    tracked.proxy_ref = weakref.ref(proxy)
    tracked.reported = False
    tracked.open = True
    tracked._stack = None
    return tracked


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
    """The leak-tracking strategy a watch holds.

    The checkout and checkin paths do not call it: with detection on, the watch builds each
    checkout's record with :func:`new_tracked` and adds it to (removes it from) ``live``
    under its own lock, in the critical section it takes for its counts anyway; ``live`` is
    None when detection is off. Only a checkin that has something to tell (a reported leak
    came back, or the garbage collector returned it) calls :meth:`returned`.
    """

    #: the tracked checkouts not yet returned, by ``seq`` (mutated under the watch's lock);
    #: None: detection is off
    live: dict[int, TrackedCheckout] | None

    def needs_sweeper(self) -> bool:
        """True until the sweeper thread is started (the watch starts it, lazily, on the
        first checkout with :meth:`start_sweeper`)."""

    def start_sweeper(self) -> None:
        """Start the sweeper thread if it is not running yet (idempotent)."""

    def returned(self, tracked: TrackedCheckout, now_ns: int) -> None:
        """``tracked`` came back at ``now_ns`` (already out of ``live``), after being
        reported as a leak, or through the garbage collector: log and count it."""

    def open_checkouts(self) -> list[TrackedCheckout]:
        """The tracked checkouts not yet returned, oldest first."""

    def disown(self, owner: Hashable, new_owner: Hashable) -> list[TrackedCheckout]:
        """Give ``owner``'s open checkouts to ``new_owner`` (its unit of work ended); return
        them, oldest first."""

    def stop(self) -> None:
        """Stop any background thread; the tracker is not used again."""


class _NoTracking:
    """Leak detection off: nothing is tracked (HikariCP's ``NO_LEAK`` task)."""

    __slots__ = ()

    live: dict[int, TrackedCheckout] | None = None

    def needs_sweeper(self) -> bool:
        return False

    def start_sweeper(self) -> None:
        return None

    def returned(self, tracked: TrackedCheckout, now_ns: int) -> None:
        return None

    def open_checkouts(self) -> list[TrackedCheckout]:
        return []

    def disown(self, owner: Hashable, new_owner: Hashable) -> list[TrackedCheckout]:
        return []

    def stop(self) -> None:
        return None


NO_TRACKING: Final[Tracker] = _NoTracking()


class StackTracker:
    """Keeps the checkouts with their stacks; reports leaks past ``threshold`` seconds
    (``inf`` = never).

    ``live`` is its registry (filled by the watch, see :class:`Tracker`). ``lock`` is the
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
        self.live: dict[int, TrackedCheckout] | None = {}
        self._lock = lock
        self._sink = sink
        self._name = name
        self._sweeper: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopped = threading.Event()
        # Sweep often enough that a report lands within ~25 % of the threshold, at most 1 s.
        self.interval = min(max(threshold / 4, 0.01), 1.0) if threshold != float("inf") else 0

    @property
    def _live(self) -> dict[int, TrackedCheckout]:
        live = self.live
        assert live is not None  # a StackTracker always has its registry
        return live

    def needs_sweeper(self) -> bool:
        return bool(self.interval) and self._sweeper is None and not self._stopped.is_set()

    def start_sweeper(self) -> None:
        self._start_sweeper()

    def returned(self, tracked: TrackedCheckout, now_ns: int) -> None:
        held = (now_ns - tracked.started_ns) / 1e9
        if tracked.proxy_ref() is None:
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
