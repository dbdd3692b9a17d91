"""The dashboard against real MariaDB: its routes through Flask's test client, then the page
in headless Chromium (Debian's ``chromium``), driven over the DevTools protocol: it renders,
its charts update as connections are opened and checked out, and a screenshot is written.

Chromium missing skips locally and fails under ``CI=true`` (as a missing server does). The
screenshot goes to the test's tmp dir; with ``UPDATE_DOCS_SCREENSHOT=1`` it is also copied to
``docs/dashboard.png`` (so CI never writes into the work tree).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, abort
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from werkzeug.serving import BaseWSGIServer, make_server

from pooltender.dashboard import (
    SnapshotCache,
    dashboard_data,
    inspection_snapshots,
    register_dashboard,
    scrub_query,
)
from pooltender.flask import Pooltender
from pooltender.server.snapshot import connect_for_inspection, take_snapshot
from tests.conftest import create_database, drop_database
from tests.pooltender._servers import server_missing

REPO = Path(__file__).resolve().parents[2]
DASH = "/ops/pool"
PASSWORD = "hunter2-not-shown"


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
    )
    if not found:
        server_missing("headless Chromium", "no chromium on PATH (apt-get install chromium)")
    return found


# --------------------------------------------------------------------------- the app


@dataclass
class Dash:
    app: Flask
    db: SQLAlchemy
    url: str
    database: str
    inspector: Engine

    def engine(self) -> Engine:
        with self.app.app_context():
            engine: Engine = self.db.engine
            return engine


@pytest.fixture(scope="module")
def dash() -> Iterator[Dash]:
    name = f"pt_dash_{secrets.token_hex(4)}"
    url = create_database("mariadb", name)
    db = SQLAlchemy()
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        POOLTENDER_POOL_SIZE=4,
        POOLTENDER_MAX_OVERFLOW=2,
        POOLTENDER_LEAK_THRESHOLD=0.3,
    )
    Pooltender(app, db)
    inspector = connect_for_inspection(url)
    # The URL shown on the page is the one given here (a password the page must never show).
    shown = make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)
    state = app.extensions["pooltender"]
    register_dashboard(
        app,
        path=DASH,
        pool_stats=state.stats,
        snapshot=SnapshotCache(lambda: take_snapshot(inspector, url=shown), ttl=0.2),
        interval=0.4,
        history=40,
    )
    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text("CREATE TABLE pt_rows (id INT PRIMARY KEY, n INT)"))
            conn.execute(text("INSERT INTO pt_rows VALUES (1, 0), (2, 0)"))
        for _ in range(40):  # some checkouts so the wait / hold histograms have figures
            with db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
    yield Dash(app, db, url, name, inspector)
    with app.app_context():
        db.engine.dispose()
    inspector.dispose()
    drop_database("mariadb", name)


# --------------------------------------------------------------------------- routes


def test_data_endpoint_reports_server_and_pool(dash: Dash) -> None:
    engine = dash.engine()
    with engine.connect() as held:
        held.execute(text("SELECT 1"))
        time.sleep(0.25)  # past the snapshot cache
        body = dash.app.test_client().get(f"{DASH}/data").get_json()
    assert set(body) >= {"server", "server_error", "pool", "taken_at", "interval_s"}
    assert body["server_error"] is None
    server = body["server"]
    assert server["backend"] == "mysql"
    assert server["max_connections"] > 0
    # the pool's connections to our private database are on the server
    assert server["groups"]["database"][dash.database] >= 1
    assert set(server["groups"]) == {"state", "user", "host", "database"}
    assert server["client_count"] == sum(server["groups"]["state"].values())
    assert any(c["is_self"] for c in server["connections"])
    pool = body["pool"]["default"]
    assert pool["pool_size"] == 4
    assert pool["max_overflow"] == 2
    assert pool["checked_out"] >= 1
    assert pool["checkout_wait"]["count"] >= 40
    assert {"p50_s", "p99_s"} <= set(pool["hold_time"])
    assert isinstance(pool["leaks"], list)


def test_page_is_server_rendered_and_serves_its_own_assets(dash: Dash) -> None:
    client = dash.app.test_client()
    page = client.get(f"{DASH}/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for chart in ("capacity", "group-state", "group-user", "group-host", "series-default"):
        assert f'data-chart="{chart}"' in html
    assert 'data-metric="pool.default.pool_size" data-value="4"' in html
    assert f'data-key="{dash.database}"' in html  # the by-database figures, before any script
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    # everything comes from the app: no CDN, no other origin
    assert "http://" not in html.replace(dash.url.split("@")[0], "")
    assert "https://" not in html
    with client.get(f"{DASH}/static/dashboard.js") as script:
        assert script.status_code == 200
        assert b"setTimeout(poll" in script.data
    with client.get(f"{DASH}/static/dashboard.css") as style:
        assert style.status_code == 200


def test_credentials_never_reach_the_page(dash: Dash) -> None:
    client = dash.app.test_client()
    html = client.get(f"{DASH}/").get_data(as_text=True)
    data = client.get(f"{DASH}/data").get_data(as_text=True)
    for text_ in (html, data):
        assert PASSWORD not in text_
        assert "***@127.0.0.1" in text_  # the URL is shown, masked


def test_inspection_snapshots_bypass_the_app_pool(dash: Dash) -> None:
    source = inspection_snapshots(dash.engine, ttl=60)
    state = dash.app.extensions["pooltender"]
    with dash.app.app_context():
        before = state.stats()["default"].checkouts
        snapshot = source()
        after = state.stats()["default"].checkouts
    assert snapshot is not None
    assert snapshot is source()  # cached
    assert snapshot.backend == "mysql"
    own = [c for c in snapshot.connections if c.is_self]
    assert len(own) == 1
    assert own[0].database == dash.database
    assert after == before  # not one of the app's checkouts


def test_protect_guards_page_data_and_assets() -> None:
    app = Flask(__name__)

    def deny() -> None:
        abort(403)

    register_dashboard(app, path="/admin/db/", pool_stats=dict, snapshot=lambda: None, protect=deny)
    client = app.test_client()
    for path in ("/admin/db/", "/admin/db/data", "/admin/db/static/dashboard.js"):
        with client.get(path) as response:
            assert response.status_code == 403, path


def test_server_errors_are_shown_not_raised() -> None:
    def down() -> None:
        raise ConnectionError("server went away\nsecond line")

    body = dashboard_data(dict, down)
    assert body["server"] is None
    assert body["server_error"] == "ConnectionError: server went away"
    app = Flask(__name__)
    register_dashboard(app, pool_stats=dict, snapshot=down)
    page = app.test_client().get("/pooltender/dashboard/")
    assert page.status_code == 200
    assert "server went away" in page.get_data(as_text=True)


def test_snapshot_cache_calls_at_most_once_per_ttl() -> None:
    calls: list[float] = []

    def take() -> None:
        calls.append(time.monotonic())

    cache = SnapshotCache(take, ttl=0.3)
    threads = [threading.Thread(target=cache) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    time.sleep(0.35)
    cache()
    assert len(calls) == 2


def test_query_text_is_scrubbed_of_password_literals() -> None:
    assert scrub_query("ALTER USER 'a'@'%' IDENTIFIED BY 's3cr3t'") == (
        "ALTER USER 'a'@'%' IDENTIFIED BY '***'"
    )
    assert "pw" not in (scrub_query("SET PASSWORD FOR a = PASSWORD('pw')") or "")
    assert scrub_query("ALTER ROLE x PASSWORD 'pw'") == "ALTER ROLE x PASSWORD '***'"
    assert scrub_query("SELECT 1") == "SELECT 1"
    assert len(scrub_query("SELECT " + "x" * 1000) or "") == 300


def test_a_dashboard_path_of_its_own_is_required() -> None:
    with pytest.raises(ValueError, match="path of its own"):
        register_dashboard(Flask(__name__), path="/", pool_stats=dict, snapshot=lambda: None)


# --------------------------------------------------------------------------- the browser


class LiveServer:
    """The app on 127.0.0.1, a free port, in a thread (werkzeug's threaded server)."""

    def __init__(self, app: Flask) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


def _chromium_flags(user_data_dir: str) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        "--window-size=1200,900",
        f"--user-data-dir={user_data_dir}",
    ]


class Browser:
    """Headless Chromium over the DevTools protocol (websocket-client; no browser download)."""

    def __init__(self, chromium: str, workdir: Path) -> None:
        import websocket

        self.profile = tempfile.mkdtemp(prefix="pt-chromium-", dir=workdir)
        self.log = (workdir / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [chromium, *_chromium_flags(self.profile), "--remote-debugging-port=0", "about:blank"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"chromium did not start: see {workdir / 'chromium.log'}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=20, suppress_origin=True
        )
        self._id = 0
        self.console: list[str] = []
        self.call("Runtime.enable")
        self.call("Page.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if message.get("method") == "Runtime.exceptionThrown":
                self.console.append(json.dumps(message["params"]["exceptionDetails"]))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression!r} (last {value!r})")
            time.sleep(0.1)

    def screenshot(self, path: Path, width: int = 1200) -> None:
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        time.sleep(0.3)  # one layout / paint at the new size
        shot = self.call("Page.captureScreenshot", format="png")
        import base64

        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        if hasattr(self, "ws"):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def live(dash: Dash) -> Iterator[LiveServer]:
    server = LiveServer(dash.app)
    yield server
    server.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    chromium = chromium_path()
    b = Browser(chromium, tmp_path)
    yield b
    b.close()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def metric(name: str) -> str:
    return f"document.querySelector('[data-metric=\"{name}\"]').dataset.value"


def test_dump_dom_renders_the_charts_with_values(
    dash: Dash, live: LiveServer, tmp_path: Path
) -> None:
    chromium = chromium_path()
    profile = tempfile.mkdtemp(prefix="pt-chromium-", dir=tmp_path)
    done = subprocess.run(
        [
            chromium,
            *_chromium_flags(profile),
            "--virtual-time-budget=3000",
            "--dump-dom",
            live.url(f"{DASH}/"),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    dom = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert int(dom.split('data-polls="')[1].split('"')[0]) >= 2  # drawn, then polled
    assert 'class="capacity"' in dom  # the SVG charts drawn by the script
    assert "max_connections" in dom
    assert f'data-group="database" data-key="{dash.database}"' in dom
    assert 'class="series"' in dom
    assert PASSWORD not in dom


def test_charts_update_in_the_browser_and_a_screenshot_is_written(
    dash: Dash, live: LiveServer, browser: Browser, tmp_path: Path
) -> None:
    engine = dash.engine()
    db_count = (
        "(n => n ? Number(n.dataset.value) : 0)(document.querySelector("
        f'\'g[data-group="database"][data-key="{dash.database}"]\'))'
    )
    held = [engine.connect()]  # held past the 0.3 s leak threshold: a leak report
    held[0].execute(text("SELECT 1"))
    raw = create_engine(dash.url, poolclass=NullPool)
    others = []
    sleeper: threading.Thread | None = None
    try:
        browser.call("Page.navigate", url=live.url(f"{DASH}/"))
        browser.wait_for("document.body && Number(document.body.dataset.polls) >= 2")
        browser.wait_for("document.querySelector('[data-leak-where]') !== null")
        polls = int(browser.evaluate("Number(document.body.dataset.polls)"))
        checked_out = int(browser.evaluate(metric("pool.default.checked_out")))
        on_server = int(browser.evaluate(db_count))
        points = int(
            browser.evaluate("Number(document.querySelector('svg.series').dataset.points)")
        )
        assert checked_out == 1
        assert on_server >= 1

        # Between two observations: 4 more pool checkouts (one past pool_size: overflow),
        # and 3 connections of other
        # clients -- one idle in a transaction (holding a row lock), one running a query,
        # one idle.
        held += [engine.connect() for _ in range(4)]
        for conn in held[1:]:
            conn.execute(text("SELECT 1"))
        in_tx = raw.connect()
        in_tx.execute(text("UPDATE pt_rows SET n = n + 1 WHERE id = 1"))  # InnoDB trx open
        idle = raw.connect()
        idle.execute(text("SELECT 1"))
        others += [in_tx, idle]

        def busy() -> None:
            with raw.connect() as conn:
                conn.execute(text("SELECT SLEEP(6)"))

        sleeper = threading.Thread(target=busy)
        sleeper.start()

        browser.wait_for(f"Number({metric('pool.default.checked_out')}) === 5")
        browser.wait_for(f"{db_count} >= {on_server + 3}")
        browser.wait_for(
            'document.querySelector(\'g[data-group="state"][data-key="idle in transaction"]\')'
            " !== null"
        )
        browser.wait_for(
            'document.querySelector(\'g[data-group="state"][data-key="active"]\') !== null'
        )
        assert int(browser.evaluate("Number(document.body.dataset.polls)")) > polls
        assert (
            int(browser.evaluate("Number(document.querySelector('svg.series').dataset.points)"))
            > points
        )
        last = "Number(document.querySelector('svg.series').dataset.last)"
        assert int(browser.evaluate(last)) == 5
        assert int(browser.evaluate(metric("pool.default.overflow"))) == 1
        assert int(browser.evaluate(metric("pool.default.high_water"))) >= 5
        assert int(browser.evaluate(metric("pool.default.leaks"))) >= 1
        html = browser.evaluate("document.documentElement.outerHTML")
        assert PASSWORD not in html
        assert browser.console == [], browser.console

        # and back down: the time series shows the rise and the fall
        for conn in held[2:]:
            conn.close()
        browser.wait_for(f"{last} === 2")
        polls = int(browser.evaluate("Number(document.body.dataset.polls)"))
        browser.wait_for(f"Number(document.body.dataset.polls) >= {polls + 3}")
        shot = tmp_path / "dashboard.png"
        browser.screenshot(shot)
    finally:
        for conn in held:
            conn.close()
        for conn in others:
            conn.rollback()
            conn.close()
        if sleeper is not None:
            sleeper.join(10)
        raw.dispose()

    data = shot.read_bytes()
    width, height = png_size(data)
    assert width == 1200
    assert height >= 700
    assert len(data) > 30_000  # charts and text, not a blank page
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "dashboard.png")
