"""Admission control: a per-process concurrency limit applied when a request *starts*.

Why: on a small box the GIL and the cores, not the pool, run out first. Admitting every
request lets them all parse, authenticate and then queue for a connection; the threads that
hold connections get descheduled, hold times stretch, the pool's queue grows, and requests
are shed only after they burned CPU. With admission, only ``limit`` requests run; the rest
wait *before* doing anything (no connection, no CPU), and a standing queue is answered
``503`` + ``Retry-After`` in milliseconds. The limit adapts to measured service time.

Parts (data flows one way: request -> admission -> application):

* :mod:`.limits` -- the limit algorithms (Netflix concurrency-limits' Gradient2, Vegas,
  AIMD; fixed);
* :mod:`.limiter` -- :class:`AdmissionLimiter`: the in-flight count and the waiting queue
  with Fail at Scale's CoDel timeouts and adaptive LIFO;
* :mod:`.middleware` -- :class:`AdmissionMiddleware`: the WSGI wrapper (any WSGI app);
* :mod:`.settings` -- :class:`AdmissionSettings`: ``POOLTENDER_ADMISSION*`` keys;
* :mod:`.metrics` -- Prometheus collector and multiprocess mirror.

Any WSGI app::

    limiter = build_limiter(AdmissionSettings.from_mapping(os.environ, pool_cap=6))
    app = AdmissionMiddleware(app, limiter, exempt=settings.exempt)

A Flask app gets it from :class:`pooltender.flask.Pooltender` (``POOLTENDER_ADMISSION``,
default on), which calls :func:`install_admission`. The pool's own shed wait
(``POOLTENDER_SHED_WAIT``) stays as the last line of defence behind it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pooltender.admission.limiter import (
    SHED_REASONS,
    Admission,
    AdmissionLimiter,
    AdmissionStats,
    Overloaded,
)
from pooltender.admission.limits import (
    AIMDLimit,
    FixedLimit,
    Gradient2Limit,
    Limit,
    VegasLimit,
    WindowedLimit,
)
from pooltender.admission.middleware import AdmissionMiddleware, shed_body
from pooltender.admission.settings import (
    ADMISSION_KEYS,
    DEFAULT_EXEMPT,
    LIMIT_ALGORITHMS,
    AdmissionSettings,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from flask import Flask
    from prometheus_client import CollectorRegistry

    from pooltender.admission.metrics import AdmissionMirror

__all__ = [
    "ADMISSION_KEYS",
    "DEFAULT_EXEMPT",
    "LIMIT_ALGORITHMS",
    "SHED_REASONS",
    "AIMDLimit",
    "Admission",
    "AdmissionLimiter",
    "AdmissionMiddleware",
    "AdmissionSettings",
    "AdmissionStats",
    "FixedLimit",
    "Gradient2Limit",
    "InstalledAdmission",
    "Limit",
    "Overloaded",
    "VegasLimit",
    "WindowedLimit",
    "admission_json",
    "admission_of",
    "build_limit",
    "build_limiter",
    "install_admission",
    "metrics_for_scrape",
    "settings_for_app",
    "shed_body",
]

_EXTENSION_KEY = "pooltender.admission"


def build_limit(settings: AdmissionSettings) -> Limit:
    """The limit algorithm ``settings.limit`` names, within the settings' bounds."""
    initial, low, high = settings.initial_limit, settings.min_limit, settings.max_limit
    if settings.limit == "fixed":
        return FixedLimit(initial)
    if settings.limit == "aimd":
        return AIMDLimit(initial=initial, minimum=low, maximum=high)
    if settings.limit == "vegas":
        return VegasLimit(initial=initial, minimum=low, maximum=high)
    return Gradient2Limit(initial=initial, minimum=low, maximum=high)


def build_limiter(settings: AdmissionSettings) -> AdmissionLimiter:
    """An :class:`AdmissionLimiter` configured by ``settings``."""
    return AdmissionLimiter(
        build_limit(settings),
        max_queue=settings.queue,
        standing_backlog=settings.backlog,
        target=settings.target,
        interval=settings.interval,
        timeout=settings.timeout,
        min_limit=settings.min_limit,
        max_limit=settings.max_limit,
    )


@dataclass
class InstalledAdmission:
    """What :func:`install_admission` put on an app (``app.extensions``)."""

    settings: AdmissionSettings
    limiter: AdmissionLimiter | None
    middleware: AdmissionMiddleware | None
    mirror: AdmissionMirror | None = None

    def stats(self) -> AdmissionStats | None:
        return None if self.limiter is None else self.limiter.stats()


def install_admission(
    app: Flask,
    settings: AdmissionSettings,
    *,
    retry_after: int = 1,
    exempt_extra: tuple[str, ...] = (),
    multiprocess: bool = False,
) -> InstalledAdmission:
    """Wrap ``app.wsgi_app`` in an :class:`AdmissionMiddleware` (when ``settings.enabled``).

    ``exempt_extra`` adds path prefixes to ``settings.exempt`` (the extension passes its
    configured endpoints and metrics paths, so moving them keeps them exempt).
    ``multiprocess`` mirrors the metrics for prometheus-client's multiprocess mode.
    Returns the record also kept in ``app.extensions["pooltender.admission"]``.
    """
    if _EXTENSION_KEY in app.extensions:
        raise RuntimeError("admission control is already installed on this app")
    installed = InstalledAdmission(settings=settings, limiter=None, middleware=None)
    if settings.enabled:
        limiter = build_limiter(settings)
        mirror = None
        if multiprocess:
            from pooltender.admission.metrics import AdmissionMirror

            mirror = AdmissionMirror(limiter.stats)
        exempt = tuple(dict.fromkeys((*settings.exempt, *(p for p in exempt_extra if p))))
        middleware = AdmissionMiddleware(
            app.wsgi_app,
            limiter,
            exempt=exempt,
            retry_after=retry_after,
            retry_after_jitter=settings.jitter,
            on_request_end=None if mirror is None else mirror.sync,
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
        installed = InstalledAdmission(settings, limiter, middleware, mirror)
    app.extensions[_EXTENSION_KEY] = installed
    return installed


def admission_of(app: Flask) -> InstalledAdmission | None:
    """What :func:`install_admission` installed on ``app``, if anything."""
    installed: InstalledAdmission | None = app.extensions.get(_EXTENSION_KEY)
    return installed


def admission_json(installed: InstalledAdmission | None) -> dict[str, Any]:
    """The ``"admission"`` object of /pooltender/stats and the dashboard's data."""
    if installed is None or installed.limiter is None:
        return {"enabled": False}
    stats = installed.limiter.stats()

    return {
        "enabled": True,
        "pid": os.getpid(),  # which worker answered (one limiter per process)
        "algorithm": stats.algorithm,
        "limit": stats.limit,
        "in_flight": stats.in_flight,
        "queue_length": stats.queue_length,
        "standing": stats.standing,
        "admitted": stats.admitted,
        "admitted_after_wait": stats.admitted_after_wait,
        "shed": stats.shed,
        "shed_total": stats.shed_total,
        "queue_wait": stats.queue_wait.to_json(),
        "shed_wait": stats.shed_wait.to_json(),
        "high_water_in_flight": stats.high_water_in_flight,
        "high_water_queue": stats.high_water_queue,
        "settings": installed.settings.as_json(),
    }


def settings_for_app(config: Mapping[str, Any], *, pool_cap: int) -> AdmissionSettings:
    """AdmissionSettings from a Flask config's ``POOLTENDER_ADMISSION*`` keys, with the
    extension's own pages (``POOLTENDER_ENDPOINTS``, ``POOLTENDER_METRICS_PATH``,
    ``POOLTENDER_DASHBOARD_PATH``) added to the exempt prefixes wherever they are mounted."""
    settings = AdmissionSettings.from_mapping(config, pool_cap=pool_cap)
    own = (
        str(config.get("POOLTENDER_ENDPOINTS", "/pooltender")).rstrip("/"),
        str(config.get("POOLTENDER_METRICS_PATH", "/metrics")),
        str(config.get("POOLTENDER_DASHBOARD_PATH") or ""),
    )
    extra = tuple(p for p in own if p.startswith("/") and p not in settings.exempt)
    if not extra:
        return settings
    return replace(settings, exempt=(*settings.exempt, *extra))


def metrics_for_scrape(app: Flask, registry: CollectorRegistry, *, multiprocess: bool) -> None:
    """Add ``app``'s admission metrics to a scrape: register a collector on ``registry``
    (single process), or bring the multiprocess mirror up to date (the caller's
    MultiProcessCollector then reads it)."""
    installed = admission_of(app)
    if installed is None or installed.limiter is None:
        return
    if multiprocess:
        if installed.mirror is not None:
            installed.mirror.sync(force=True)
        return
    from pooltender.admission.metrics import AdmissionCollector

    registry.register(AdmissionCollector(installed.limiter.stats))
