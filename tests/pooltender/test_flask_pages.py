"""Safe defaults for the extension's pages (issue 13): without ``protect`` or ``public=True``
the stats, health, metrics and dashboard pages are not registered and one warning says why;
every page goes through the guard, ``/metrics`` included; a scraper authenticates with
``POOLTENDER_METRICS_TOKEN`` (constant-time comparison, never logged). A SQLite file behind a
real QueuePool, requests through Flask's test client."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, abort, request
from flask_sqlalchemy import SQLAlchemy

from pooltender.flask import Pooltender
from pooltender.settings import ExtensionSettings, SettingsError

PAGES = ("/pooltender/stats", "/pooltender/health", "/metrics", "/pooltender/dashboard/")
TOKEN = secrets.token_urlsafe(32)


def admin_only() -> None:
    """The app's own guard: a header only its admin sends."""
    if request.headers.get("X-Admin") != "yes":
        abort(403)


@pytest.fixture
def build(tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    made: list[tuple[Flask, SQLAlchemy]] = []

    def make(**kwargs: Any) -> Flask:
        config = kwargs.pop("config", {})
        db = SQLAlchemy()
        app = Flask(__name__)
        app.config.update(
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'pages.db'}",
            POOLTENDER_DASHBOARD=True,
            **config,
        )
        Pooltender(app, db, **kwargs)
        made.append((app, db))
        return app

    yield make
    for app, db in made:
        with app.app_context():
            db.engine.dispose()


def statuses(app: Flask, **headers: str) -> dict[str, int]:
    with app.test_client() as client:
        return {page: client.get(page, headers=headers).status_code for page in PAGES}


def test_without_protect_or_public_no_page_is_served_and_one_warning_says_why(
    build: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pooltender.flask"):
        app = build()
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert not rules & {"/pooltender/stats", "/pooltender/health", "/metrics"}, rules
    assert not any(r.startswith("/pooltender/dashboard") for r in rules), rules
    assert set(statuses(app).values()) == {404}
    warned = [r.getMessage() for r in caplog.records if "not served" in r.getMessage()]
    assert len(warned) == 1, warned
    for page in PAGES:
        assert page in warned[0]
    assert "protect=" in warned[0]
    assert "public=True" in warned[0]


def test_public_serves_every_page_to_anyone(build: Callable[..., Flask]) -> None:
    assert set(statuses(build(public=True)).values()) == {200}


def test_every_page_goes_through_protect_metrics_included(build: Callable[..., Flask]) -> None:
    """/metrics never called the guard: it answered anyone even with protect given."""
    app = build(protect=admin_only)
    assert statuses(app) == dict.fromkeys(PAGES, 403)
    assert statuses(app, **{"X-Admin": "yes"}) == dict.fromkeys(PAGES, 200)


def test_a_scraper_authenticates_with_the_metrics_token(
    build: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        app = build(config={"POOLTENDER_METRICS_TOKEN": TOKEN})
        with app.test_client() as client:
            assert client.get("/metrics").status_code == 401
            refused = client.get("/metrics", headers={"Authorization": "Bearer wrong"})
            assert refused.status_code == 401
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert refused.get_json()["error"]["code"] == "unauthorized"
            scraped = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert scraped.status_code == 200
            assert "pooltender_pool_checkouts_total" in scraped.get_data(as_text=True)
            # the token opens /metrics only; the other pages still need an explicit choice
            assert client.get("/pooltender/stats").status_code == 404
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(app.extensions["pooltender"].options)


def test_the_token_or_the_apps_guard_opens_metrics(build: Callable[..., Flask]) -> None:
    app = build(protect=admin_only, config={"POOLTENDER_METRICS_TOKEN": TOKEN})
    with app.test_client() as client:
        assert client.get("/metrics").status_code == 403  # neither: the app's guard refuses
        assert client.get("/metrics", headers={"X-Admin": "yes"}).status_code == 200
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/metrics", headers=bearer).status_code == 200
        assert client.get("/pooltender/stats", headers=bearer).status_code == 403  # metrics only


def test_the_token_is_read_strictly_and_never_shown() -> None:
    short = "tooshort"
    with pytest.raises(SettingsError, match="at least 16 characters") as caught:
        ExtensionSettings.from_mapping({"POOLTENDER_METRICS_TOKEN": short})
    assert short not in str(caught.value)
    with pytest.raises(SettingsError, match="is empty"):
        ExtensionSettings.from_mapping({"POOLTENDER_METRICS_TOKEN": ""})
    assert ExtensionSettings.from_mapping({"POOLTENDER_METRICS_TOKEN": TOKEN}).metrics_token == (
        TOKEN
    )


def test_protect_and_public_together_is_a_mistake() -> None:
    with pytest.raises(TypeError, match="give one of them"):
        Pooltender(protect=admin_only, public=True)
