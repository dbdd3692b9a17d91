"""Traps a new user fell into (issue 13, tried as a newcomer would), each pinned by a test that
failed on the code before the fix.

- The dashboard on SQLite (the demo's database) showed a red ``InspectionError ... cannot
  inspect a 'sqlite' server`` over an empty panel; it now says it is a pool-only view and why.
- The demo banner did not print the dashboard's URL, nor did the README.
- The library's core modules import no optional dependency at module level.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from pooltender.dashboard import DEFAULT_DASHBOARD_PATH
from pooltender.flask import Pooltender
from tests._paths import pythonpath
from tests._serve import newcomer_env, run_demo

ROOT = Path(__file__).resolve().parents[1]
SRC = pythonpath()  # both source trees: pooltender and coupons


# ---------------------------------------------------------------- the dashboard on SQLite


def sqlite_dashboard_app(tmp_path: Path) -> tuple[Flask, SQLAlchemy]:
    db = SQLAlchemy()
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'newcomer.db'}",
        POOLTENDER_DASHBOARD=True,
    )
    Pooltender(app, db, protect=lambda: None)
    return app, db


def test_the_dashboard_on_sqlite_is_a_pool_only_view_that_says_why(tmp_path: Path) -> None:
    app, db = sqlite_dashboard_app(tmp_path)
    try:
        with app.test_client() as client:
            with app.app_context():
                db.session.execute(text("SELECT 1"))
                db.session.remove()
            data = client.get(f"{DEFAULT_DASHBOARD_PATH}/data").get_json()
            page = client.get(f"{DEFAULT_DASHBOARD_PATH}/")
            html = page.get_data(as_text=True)
    finally:
        with app.app_context():
            db.engine.dispose()
    assert data["server"] is None
    assert data["server_error"] is None  # not an error: there is no server to inspect
    assert "SQLite has no database server to inspect" in data["pool_only"]
    assert data["pool"]["default"]["checkouts"] >= 1  # the pool half is there
    assert page.status_code == 200
    assert "InspectionError" not in html
    assert 'class="status down"' not in html
    assert 'class="status pool-only"' in html
    assert "no server panel" in html
    assert 'id="server-card" hidden' in html


# ---------------------------------------------------------------- the demo banner and the README


def test_the_demo_banner_prints_the_dashboard_url_and_it_is_served(tmp_path: Path) -> None:
    done = run_demo(tmp_path)
    match = re.search(r"^  dashboard +http://127\.0\.0\.1:8765(/\S+/) ", done.stdout, re.M)
    assert match, done.stdout
    path = match.group(1)

    # the app the demo serves (same environment) mounts the dashboard there
    from coupons.app import create_app
    from coupons.config import Settings

    demo_env = {**newcomer_env(), "DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'coupons.db'}"}
    demo_env.update(
        POOLTENDER_DASHBOARD="true",
        SECRET_KEY=(tmp_path / "var" / "demo-secret-key").read_text().strip(),
    )
    app = create_app(Settings.from_env(demo_env))
    try:
        adapter = app.url_map.bind("127.0.0.1")
        assert adapter.match(path)[0] == "pooltender_dashboard.page"
    finally:
        from coupons.db import db

        with app.app_context():
            db.engine.dispose()


def test_the_readme_gives_the_dashboard_url() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"http://127.0.0.1:8765{DEFAULT_DASHBOARD_PATH}/" in readme  # in the demo's output
    assert f"`{DEFAULT_DASHBOARD_PATH}/`" in readme  # in the adoption section


# ---------------------------------------------------------------- optional dependencies

#: A meta-path finder that makes the named top-level packages unimportable, as in a fresh
#: virtual environment without them.
BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    for module in sys.argv[2].split(","):
        __import__(module)
    print("ok")
    """
)
NOT_IN_CORE = (
    "flask,flask_sqlalchemy,prometheus_client,rich,click,libcst,kombu,gunicorn,argon2,jwt,"
    "flask_smorest,marshmallow,alembic,opentelemetry,coupons"
)


def import_without(blocked: str, modules: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, blocked, modules],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": SRC},
        check=False,
    )


def test_the_core_imports_with_sqlalchemy_only() -> None:
    done = import_without(NOT_IN_CORE, "pooltender.settings,pooltender.watch,pooltender.budget")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_blocker_does_block() -> None:  # so the test above can fail
    done = import_without("prometheus_client", "pooltender.metrics")
    assert done.returncode != 0
    assert "blocked" in done.stderr


def test_otel_needs_only_the_api() -> None:
    done = import_without("opentelemetry.sdk,flask,prometheus_client", "pooltender.otel")
    assert done.returncode == 0, done.stderr


def test_the_flask_integration_imports_without_prometheus_client() -> None:
    done = import_without("prometheus_client,rich,libcst", "pooltender.flask")
    assert done.returncode == 0, done.stderr


#: An app under the blocker: without prometheus-client /metrics is not registered, the rest is,
#: and one warning names the extra to install.
FLASK_WITHOUT_PROMETHEUS = textwrap.dedent(
    """
    import logging, sys
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    from pooltender.flask import Pooltender

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("pooltender").addHandler(handler)
    app = Flask("newcomer")
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + sys.argv[3]
    db = SQLAlchemy()
    Pooltender(app, db, protect=lambda: None)
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert "/metrics" not in rules, rules
    assert "/pooltender/stats" in rules, rules
    with app.test_client() as client:
        assert client.get("/pooltender/stats").status_code == 200
        assert client.get("/metrics").status_code == 404
    warned = [r.getMessage() for r in records if "prometheus" in r.getMessage()]
    assert len(warned) == 1, warned
    print(warned[0])
    """
)


def test_without_prometheus_client_metrics_is_not_served_and_one_warning_says_why(
    tmp_path: Path,
) -> None:
    script = BLOCKER.replace('print("ok")', FLASK_WITHOUT_PROMETHEUS)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "prometheus_client",
            "pooltender.flask",
            str(tmp_path / "a.db"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": SRC},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'pooltender[prometheus]'" in done.stdout
