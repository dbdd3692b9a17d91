"""Admission settings: ``POOLTENDER_ADMISSION*`` keys, read and validated like PoolSettings.

=================================  ===========  ===============================================
key                                default      meaning
=================================  ===========  ===============================================
``POOLTENDER_ADMISSION``           true         admit requests through the limiter (false: off,
                                                exactly the behaviour without admission control)
``POOLTENDER_ADMISSION_LIMIT``     gradient2    ``gradient2`` | ``vegas`` | ``aimd`` | ``fixed``
``POOLTENDER_ADMISSION_INITIAL``   pool cap     the limit at start (``fixed``: the limit)
``POOLTENDER_ADMISSION_MIN``       pool cap     the limit never goes below this
``POOLTENDER_ADMISSION_MAX``       2 x cap      ... nor above this
``POOLTENDER_ADMISSION_QUEUE``     64           most requests waiting at once (0: no queue)
``POOLTENDER_ADMISSION_BACKLOG``   1            most requests waiting while the queue is
                                                standing; a newcomer beyond it is refused at
                                                once (0: none wait under a standing queue)
``POOLTENDER_ADMISSION_TARGET``    0.02         seconds a request may wait under a standing queue
``POOLTENDER_ADMISSION_INTERVAL``  0.1          seconds the queue must stay non-empty to be standing
``POOLTENDER_ADMISSION_TIMEOUT``   0.05         seconds a request may wait when the queue drained
                                                within the interval (and no refusal happened)
``POOLTENDER_ADMISSION_EXEMPT``    /healthz,/readyz,/metrics,/pooltender
                                                comma-separated path prefixes never queued
``POOLTENDER_ADMISSION_JITTER``    retry after  a refusal's ``Retry-After`` is
                                                ``POOLTENDER_RETRY_AFTER`` plus 0 .. this many
                                                whole seconds, at random (0: no jitter)
=================================  ===========  ===============================================

"pool cap" is the process's ``pool_size + max_overflow`` (6 with pooltender's defaults).

Why these defaults, for a 2-core box running a few workers each with a small pool:

* **initial = the pool's cap.** Every admitted request may want a connection; admitting more
  than the pool can serve only moves the queue into the pool, where a waiting request has
  already parsed its body and checked its token (CPU spent for nothing if it is then shed).
* **max = 2 x the cap.** Part of a request's service time holds no connection (parsing,
  auth, serializing; about a third in the issue-10 profile), so slightly more requests than
  connections can run without queueing on the pool; beyond 2x the extra threads only contend
  for the GIL and the two cores. The adaptive limit finds the point below it.
* **min = the pool's cap** (or ``initial`` / ``maximum`` when either is set below it). The
  pool is the resource being protected: with fewer requests admitted than it has
  connections, connections sit idle while requests are refused. An adaptive limit reads
  latency, and on a CPU-bound box latency also grows with *other* processes' load (the
  database, the other workers, the load generator on the same two cores) and with the GIL;
  Gradient2 then takes that for queueing and lowers the limit below the pool -- which
  starves goodput just when the process is busiest (issue 10: pooltender's defaults, 4+2
  per process, served 0.61-0.71x of their saturation goodput under 2x overload). The
  algorithm adapts *between* the pool's cap and ``max``: how many more requests than
  connections may run (parse, authenticate, serialize) without one waiting on the pool.
  Set ``POOLTENDER_ADMISSION_MIN`` lower (at least 1) to let it go below the pool.
* **interval 100 ms**: Facebook's value for its CoDel variant ("Fail at Scale", Ben Maurer,
  ACM Queue 13(8), 2015: N = 100 ms), which is also CoDel's own default (RFC 8289). A queue
  non-empty for 100 ms, or one that saw a refusal within the last 100 ms, is *standing*.
* **backlog 1, target 20 ms** (issue 10's benchmark; Fail at Scale's M is 5 ms): under a
  standing queue one request may wait, for at most 20 ms, and a newcomer finding it taken
  is refused at once -- by the gthread worker's poller before it is even parsed
  (:mod:`pooltender.gthread`), which costs microseconds instead of a thread's 0.3 ms. Every
  further waiter would mostly time out (each freed slot goes to one waiter, while arrivals
  refill the queue), and a refusal after a wait costs the full thread path; a single waiter
  with 20 ms usually gets the next free slot. 2+0 per worker at 2x capacity, interleaved
  runs: backlog 1 / 20 ms served 772 and 723/s against 622 and 616/s with one waiter per
  slot and 5 ms, and 875 / 844 against 832 / 796/s at saturation (docs/benchmarks.md).
* **timeout 50 ms**, half of Fail at Scale's N (its long wait is N itself): a burst (the
  queue drained within the last 100 ms) may wait up to 50 ms, still several times a
  request's service time here (3-10 ms unloaded). It is also the bound on any wait before a
  503, and issue 10's budget for that wait is 100 ms at p99 *as measured*, i.e. until the
  refused thread runs again: on a gthread worker of a loaded 2-core box a thread whose
  timed wait ended needs the GIL back, which took 20-150 ms more in the benchmarks (the
  recorded run's refusals after a 100 ms timeout took up to 250 ms; a smoke run with a
  short backlog still 120 ms). 50 ms leaves the other half of the budget to that wake-up.
  Raise it, with the interval, for a service whose requests are slow by design (a login
  hashing a password with argon2 takes tens of milliseconds).
* **jitter = the Retry-After itself** (1 s -> a refusal says 1 or 2 s): clients refused in one
  burst come back spread over two seconds instead of together (Fail at Scale on retry storms;
  Marc Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015).
* **queue 64**: a bound on waiting threads/greenlets, far above what a gthread worker's
  threads can fill; the timeouts, not the length, normally end a wait.

Values may be typed (a Flask config) or strings (the environment), parsed by
:func:`pooltender.settings._parse` (the same parser as PoolSettings); ``""`` is an error, an
unknown ``POOLTENDER_ADMISSION_*`` key is an error naming the valid keys, nothing is clamped.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from pooltender.settings import DEFAULT_PREFIX, SettingsError, SettingsProblem, _parse

__all__ = ["ADMISSION_KEYS", "DEFAULT_EXEMPT", "LIMIT_ALGORITHMS", "AdmissionSettings"]

LIMIT_ALGORITHMS: Final = ("gradient2", "vegas", "aimd", "fixed")
DEFAULT_EXEMPT: Final = ("/healthz", "/readyz", "/metrics", "/pooltender")

#: field name -> (key suffix after the prefix, kind)
_FIELDS: Final[dict[str, tuple[str, type]]] = {
    "enabled": ("ADMISSION", bool),
    "limit": ("ADMISSION_LIMIT", str),
    "initial": ("ADMISSION_INITIAL", int),
    "minimum": ("ADMISSION_MIN", int),
    "maximum": ("ADMISSION_MAX", int),
    "queue": ("ADMISSION_QUEUE", int),
    "backlog": ("ADMISSION_BACKLOG", int),
    "target": ("ADMISSION_TARGET", float),
    "interval": ("ADMISSION_INTERVAL", float),
    "timeout": ("ADMISSION_TIMEOUT", float),
    "exempt": ("ADMISSION_EXEMPT", tuple),
    "jitter": ("ADMISSION_JITTER", int),
}

#: Every admission key under the default prefix (the Flask extension's own keys include them).
ADMISSION_KEYS: Final = frozenset(f"{DEFAULT_PREFIX}{suffix}" for suffix, _ in _FIELDS.values())

#: The cap assumed when no pool is known (PoolSettings' defaults: 4 + 2).
_DEFAULT_CAP: Final = 6


@dataclass(frozen=True, kw_only=True)
class AdmissionSettings:
    """Validated admission settings for one process. See the module docstring for defaults.

    ``initial``, ``minimum`` and ``maximum`` are None only before :meth:`for_pool` fills
    them from the pool's cap; :meth:`from_mapping` always returns them filled.
    """

    enabled: bool = True
    limit: str = "gradient2"
    initial: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    queue: int = 64
    backlog: int | None = 1
    target: float = 0.02
    interval: float = 0.1
    timeout: float = 0.05
    exempt: tuple[str, ...] = DEFAULT_EXEMPT
    jitter: int | None = None
    source_prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        self.validate()

    def key(self, name: str) -> str:
        """The key a user sets for field ``name``: ``minimum`` -> ``POOLTENDER_ADMISSION_MIN``."""
        return f"{self.source_prefix}{_FIELDS[name][0]}"

    @property
    def initial_limit(self) -> int:
        """``initial``, or the default for PoolSettings' default cap if none was resolved."""
        return self.initial if self.initial is not None else min(_DEFAULT_CAP, self.max_limit)

    @property
    def min_limit(self) -> int:
        """``minimum``, or 1 if none was resolved (the floor the limit never goes below)."""
        return self.minimum if self.minimum is not None else 1

    @property
    def max_limit(self) -> int:
        """``maximum``, or twice PoolSettings' default cap if none was resolved."""
        if self.maximum is not None:
            return self.maximum
        return max(2 * _DEFAULT_CAP, self.min_limit)

    def for_pool(self, cap: int) -> AdmissionSettings:
        """A copy with unset ``minimum`` / ``initial`` / ``maximum`` derived from the pool's
        ``cap``: maximum = 2 x cap (at least ``minimum``), initial = cap within [minimum,
        maximum], minimum = cap, or the ``initial`` / ``maximum`` given when either is lower
        (so an explicit small limit stays valid)."""
        minimum = self.minimum
        if minimum is None:
            given = [v for v in (self.initial, self.maximum) if v is not None]
            minimum = max(1, min([cap, *given]))
        maximum = self.maximum if self.maximum is not None else max(2 * cap, minimum)
        initial = self.initial
        if initial is None:
            initial = min(max(cap, minimum), maximum)
        return replace(self, initial=initial, minimum=minimum, maximum=maximum)

    def validate(self) -> None:
        """Check each value, then the values against each other; raise SettingsError."""
        problems: list[SettingsProblem] = []

        def bad(name: str, message: str) -> None:
            problems.append(SettingsProblem(self.key(name), getattr(self, name), message))

        for name, (_suffix, kind) in _FIELDS.items():
            value = getattr(self, name)
            if value is None and name in ("initial", "minimum", "maximum", "jitter", "backlog"):
                continue
            if kind is bool and not isinstance(value, bool):
                bad(name, "must be true or false")
            elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                bad(name, "must be a whole number")
            elif kind is float and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                bad(name, "must be a finite number of seconds")
            elif kind is str and not isinstance(value, str):
                bad(name, f"must be one of {', '.join(LIMIT_ALGORITHMS)}")
            elif kind is tuple and (
                not isinstance(value, tuple) or not all(isinstance(p, str) for p in value)
            ):
                bad(name, "must be a comma-separated list of path prefixes")
        if problems:
            raise SettingsError(problems)

        if self.limit not in LIMIT_ALGORITHMS:
            close = difflib.get_close_matches(self.limit, LIMIT_ALGORITHMS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            bad("limit", f"must be one of {', '.join(LIMIT_ALGORITHMS)}{hint}")
        if self.minimum is not None and self.minimum < 1:
            bad("minimum", "must be at least 1 (a process must be able to serve a request)")
        if self.maximum is not None and self.maximum < max(self.min_limit, 1):
            bad("maximum", f"must be at least {self.key('minimum')}={self.min_limit}")
        if self.initial is not None:
            if self.initial < self.min_limit:
                bad("initial", f"must be at least {self.key('minimum')}={self.min_limit}")
            elif self.maximum is not None and self.initial > self.maximum:
                bad("initial", f"must not exceed {self.key('maximum')}={self.maximum}")
        if self.jitter is not None and self.jitter < 0:
            bad("jitter", "must be 0 (Retry-After exactly POOLTENDER_RETRY_AFTER) or more")
        if self.queue < 0:
            bad("queue", "must be 0 (shed at once when the limit is reached) or more")
        if self.backlog is not None and self.backlog < 0:
            bad("backlog", "must be 0 (no waiter under a standing queue) or more")
        if self.target <= 0:
            bad("target", "must be more than 0 seconds (e.g. 0.005)")
        if self.interval <= 0:
            bad("interval", "must be more than 0 seconds (e.g. 0.1)")
        elif self.target > 0 and self.target >= self.interval:
            bad(
                "target",
                f"must be below {self.key('interval')}={self.interval!r}: the queue counts as "
                "standing only after it stayed non-empty for the interval",
            )
        if self.timeout <= 0:
            bad("timeout", "must be more than 0 seconds (e.g. 0.1)")
        elif self.target > 0 and self.timeout < self.target:
            bad(
                "timeout",
                f"must be at least {self.key('target')}={self.target!r} (the wait under a "
                "standing queue is the shorter one)",
            )
        for prefix in self.exempt:
            if not prefix.startswith("/"):
                bad("exempt", f"path prefix {prefix!r} must start with '/'")
                break
        if problems:
            raise SettingsError(problems)

    def as_json(self) -> dict[str, Any]:
        """The settings as plain values (for /pooltender/stats)."""
        return {
            "enabled": self.enabled,
            "limit": self.limit,
            "initial": self.initial_limit,
            "min": self.min_limit,
            "max": self.max_limit,
            "queue": self.queue,
            "backlog": self.backlog,
            "target_s": self.target,
            "interval_s": self.interval,
            "timeout_s": self.timeout,
            "exempt": list(self.exempt),
            "jitter": self.jitter,
        }

    @classmethod
    def from_mapping(
        cls,
        mapping: Mapping[str, Any],
        *,
        pool_cap: int | None = None,
        prefix: str = DEFAULT_PREFIX,
    ) -> AdmissionSettings:
        """Settings from the ``prefix``-ed admission keys of ``mapping`` (a Flask config,
        ``os.environ``); other keys are ignored. ``pool_cap`` (the process's
        pool_size + max_overflow) sets the defaults of ``initial`` and ``maximum``."""
        by_key = {f"{prefix}{suffix}": name for name, (suffix, _kind) in _FIELDS.items()}
        values: dict[str, Any] = {}
        problems: list[SettingsProblem] = []
        family = f"{prefix}ADMISSION_"
        for key, raw in mapping.items():
            if not isinstance(key, str):
                continue
            name = by_key.get(key)
            if name is None:
                if key.startswith(family):
                    close = difflib.get_close_matches(key, sorted(by_key), n=1)
                    hint = f"did you mean {close[0]}? " if close else ""
                    problems.append(
                        SettingsProblem(
                            key, raw, f"is not a setting; {hint}valid keys: {', '.join(by_key)}"
                        )
                    )
                continue
            try:
                values[name] = _parse_value(_FIELDS[name][1], raw)
            except ValueError as exc:
                problems.append(SettingsProblem(key, raw, str(exc)))
        if problems:
            raise SettingsError(problems)
        settings = cls(**values, source_prefix=prefix)
        return settings.for_pool(_DEFAULT_CAP if pool_cap is None else pool_cap)


def _parse_value(kind: type, raw: object) -> object:
    """``raw`` as ``kind``: numbers and booleans through settings.py's ``_parse``; the
    algorithm name and the exempt list (strings) share its rule that ``""`` is an error."""
    if kind is str or kind is tuple:
        if isinstance(raw, str):
            text = raw.strip()
            if text == "":
                raise ValueError("is empty; unset it to use the default, or give a value")
            if kind is str:
                return text.lower()
            parts = tuple(part.strip() for part in text.split(","))
            if any(part == "" for part in parts):
                raise ValueError("has an empty path prefix; separate prefixes with single commas")
            return parts
        if kind is tuple and isinstance(raw, list | tuple | set | frozenset):
            return tuple(raw)
        return raw
    return _parse(kind, raw)
