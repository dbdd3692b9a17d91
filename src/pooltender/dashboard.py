"""The live dashboard: one server-rendered page and a JSON endpoint it polls.

:func:`register_dashboard` mounts, under ``path`` (e.g. ``/pooltender/dashboard``):

``<path>/``               the page (Jinja template ``templates/dashboard.html``)
``<path>/data``           JSON: ``{"server": ServerSnapshot.to_json() | null,
                          "server_error": str | null, "pool": {engine: pool_stats_json(...)},
                          "taken_at": epoch seconds, "interval_s": float}``
``<path>/static/<file>``  the page's script and stylesheet (``static/dashboard.*``)

Everything is served by the app: no CDN, no build step. The script
(``static/dashboard.js``) polls ``<path>/data`` every ``interval`` seconds and redraws
inline-SVG charts: server connections by state / user / host / database against
``max_connections``, this process's pool (checked out over the last polls against pool size
and overflow), checkout wait and hold time p50/p99, and leak reports.

The page never shows a credential: the server URL comes from the snapshot, which masks the
password, and query text is scrubbed of ``IDENTIFIED BY '...'`` / ``PASSWORD '...'``
literals before it leaves the process.

:class:`SnapshotCache` wraps the snapshot callable so that any number of open dashboards
query the server at most once per ``ttl`` seconds. The Flask extension wires it up when
``POOLTENDER_DASHBOARD`` is true (see :mod:`pooltender.flask`); any Flask app can also call
:func:`register_dashboard` itself.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from flask import Blueprint, Flask, Response, jsonify, url_for
from jinja2 import FileSystemLoader

from pooltender.stats import pool_stats_json
from pooltender.text import first_line

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from pooltender.server.snapshot import ServerSnapshot
    from pooltender.stats import PoolStats

__all__ = [
    "DEFAULT_DASHBOARD_PATH",
    "SnapshotCache",
    "dashboard_data",
    "inspection_snapshots",
    "register_dashboard",
    "scrub_query",
]

DEFAULT_DASHBOARD_PATH = "/pooltender/dashboard"
_HERE = Path(__file__).resolve().parent

SnapshotSource = Callable[[], "ServerSnapshot | None"]
PoolSource = Callable[[], "Mapping[str, PoolStats]"]

_SECRET_LITERAL = re.compile(
    r"((?:IDENTIFIED\s+(?:WITH\s+\S+\s+)?(?:BY|AS)|PASSWORD)\s*(?:\(\s*)?(?:=\s*)?)"
    r"('(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.)*\")",
    re.IGNORECASE,
)


def scrub_query(query: str | None, limit: int = 300) -> str | None:
    """Query text with password literals replaced by ``'***'``, cut to ``limit`` characters."""
    if query is None:
        return None
    scrubbed = _SECRET_LITERAL.sub(r"\1'***'", query)
    return scrubbed if len(scrubbed) <= limit else scrubbed[: limit - 1] + "\u2026"


class SnapshotCache:
    """Call ``take()`` at most once per ``ttl`` seconds; concurrent callers share one result.

    A failing ``take()`` raises to the caller that triggered it and is cached like a result
    (so a down server is not hammered either).
    """

    def __init__(self, take: Callable[[], ServerSnapshot | None], ttl: float = 1.0) -> None:
        self._take = take
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._value: ServerSnapshot | None = None
        self._error: BaseException | None = None

    def __call__(self) -> ServerSnapshot | None:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.ttl:
                try:
                    self._value, self._error = self._take(), None
                except Exception as exc:
                    self._value, self._error = None, exc
                self._at = time.monotonic()
            if self._error is not None:
                raise self._error
            return self._value


#: Dialects with a server to inspect (pooltender.server.snapshot reads these).
INSPECTABLE_DIALECTS: Final = frozenset({"mysql", "mariadb", "postgresql"})


class NoServer(Exception):
    """The database has no server to inspect (an embedded one, e.g. SQLite): the page shows
    the pool only and says why, instead of an inspection error (issue 13)."""


def no_server_reason(dialect: str) -> str:
    """Why the page has no server panel for ``dialect`` (shown as is)."""
    shown = "SQLite" if dialect == "sqlite" else repr(dialect)
    return (
        f"Pool only: {shown} has no database server to inspect (no max_connections, no other "
        "clients' connections), so there is no server panel. On MariaDB, MySQL or PostgreSQL "
        "this page also shows the server's connections against max_connections."
    )


def inspection_snapshots(engine: Callable[[], Engine], *, ttl: float = 1.0) -> SnapshotCache:
    """Snapshots of the server behind ``engine()``, at most one per ``ttl`` seconds.

    They are taken over a separate inspection engine (no pool, short connect timeout; see
    :func:`pooltender.server.snapshot.connect_for_inspection`), built on first use from
    ``engine()``'s URL: not through the app's pool, so the dashboard still answers when that pool is
    exhausted, and its own connection never shows as one of the app's checkouts.
    ``engine`` is called lazily (inside a request, where ``db.engine`` is available).
    """
    inspector: list[Engine] = []

    def take() -> ServerSnapshot:
        from pooltender.server.snapshot import connect_for_inspection, take_snapshot

        if not inspector:  # SnapshotCache's lock serializes the calls
            dialect = engine().dialect.name
            if dialect not in INSPECTABLE_DIALECTS:
                raise NoServer(no_server_reason(dialect))
            url = engine().url.render_as_string(hide_password=False)
            inspector.append(connect_for_inspection(url))
        return take_snapshot(inspector[0])

    return SnapshotCache(take, ttl)


def _snapshot_json(snapshot: ServerSnapshot) -> dict[str, Any]:
    raw: Any = snapshot.to_json()
    data: dict[str, Any] = json.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
    for conn in data.get("connections") or ():
        if isinstance(conn, dict) and "query" in conn:
            conn["query"] = scrub_query(conn["query"])
    data["client_count"] = len(snapshot.client_connections())
    data["groups"] = {
        "state": snapshot.by_state(),
        "user": snapshot.by_user(),
        "host": snapshot.by_host(),
        "database": snapshot.by_database(),
    }
    return data


def _pool_json(stats: PoolStats) -> dict[str, Any]:
    out = pool_stats_json(stats)
    out["leaks"] = [
        {
            "where": report.where,
            "held_s": report.held_seconds,
            "thread": report.thread_name,
            "reported_at": report.reported_at,
        }
        for report in stats.leak_reports
    ]
    return out


def dashboard_data(
    pool_stats: PoolSource,
    snapshot: SnapshotSource,
    *,
    interval: float = 2.0,
    admission: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``<path>/data`` body. A failing snapshot gives ``server: null`` and its error.
    ``admission`` (optional) gives the ``"admission"`` object (see pooltender.admission)."""
    server: dict[str, Any] | None = None
    error: str | None = None
    pool_only: str | None = None
    try:
        snap = snapshot()
        server = None if snap is None else _snapshot_json(snap)
    except NoServer as exc:  # nothing is wrong: there is no server to show
        pool_only = str(exc)
    except Exception as exc:  # the pool half of the page still works with the server down
        error = first_line(exc)[:300]
    return {
        "server": server,
        "server_error": error,
        "pool_only": pool_only,
        "pool": {name: _pool_json(s) for name, s in pool_stats().items()},
        "admission": admission() if admission is not None else {"enabled": False},
        "taken_at": time.time(),
        "interval_s": interval,
    }


def register_dashboard(
    app: Flask,
    *,
    path: str = DEFAULT_DASHBOARD_PATH,
    pool_stats: PoolSource,
    snapshot: SnapshotSource,
    protect: Callable[[], None] | None = None,
    interval: float = 2.0,
    history: int = 90,
    title: str = "pooltender",
    admission: Callable[[], dict[str, Any]] | None = None,
) -> Blueprint:
    """Mount the dashboard on ``app`` under ``path``; return the blueprint registered.

    ``pool_stats`` returns engine name -> :class:`~pooltender.stats.PoolStats` (this
    process's pools); ``snapshot`` returns a :class:`~pooltender.server.snapshot.ServerSnapshot` or
    None (wrap it in :class:`SnapshotCache`; an exception is shown on the page, not raised).
    ``protect`` runs before every dashboard request (raise or ``abort(403)`` to refuse);
    ``interval`` is the page's polling period in seconds and ``history`` how many polls the
    checked-out time series keeps. ``admission`` gives the admission limiter's figures
    (limit, in flight, queue) shown on the page, if admission control is installed.
    """
    prefix = "/" + path.strip("/")
    if prefix == "/":
        raise ValueError("the dashboard needs a path of its own, not '/'")
    bp = Blueprint(
        "pooltender_dashboard",
        __name__,
        url_prefix=prefix,
        static_folder=str(_HERE / "static"),
        static_url_path="/static",
    )
    if protect is not None:
        guard = protect

        @bp.before_request
        def _protect() -> None:
            guard()

    # A private loader: the page's template cannot be shadowed by (or shadow) the app's own.
    env = app.jinja_env.overlay(loader=FileSystemLoader(str(_HERE / "templates")))

    @bp.get("/")
    def page() -> Response:
        data = dashboard_data(pool_stats, snapshot, interval=interval, admission=admission)
        template = env.get_template("dashboard.html")
        html = template.render(
            data=data,
            title=title,
            interval=interval,
            history=history,
            data_url=url_for("pooltender_dashboard.data"),
            script_url=url_for("pooltender_dashboard.static", filename="dashboard.js"),
            style_url=url_for("pooltender_dashboard.static", filename="dashboard.css"),
        )
        response = Response(html, mimetype="text/html")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'"
        )
        return response

    @bp.get("/data")
    def data() -> Response:
        body = dashboard_data(pool_stats, snapshot, interval=interval, admission=admission)
        response = jsonify(body)
        response.headers["Cache-Control"] = "no-store"
        return response

    app.register_blueprint(bp)
    return bp
