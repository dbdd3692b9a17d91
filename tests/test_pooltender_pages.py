"""coupons adopts pooltender: its pool pages are admin-only; the dashboard is off by default."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from coupons import create_app
from coupons.app import ADMIN_PAGE_COOKIE
from coupons.config import Settings
from coupons.db import db
from coupons.models import Role
from pooltender.shedding import SheddingQueuePool
from tests.conftest import make_settings


def test_pool_stats_are_for_admins(
    client: FlaskClient, admin: dict[str, str], service: dict[str, str]
) -> None:
    assert client.get("/pooltender/stats").status_code == 401
    assert client.get("/pooltender/stats", headers=service).status_code == 403
    response = client.get("/pooltender/stats", headers=admin)
    assert response.status_code == 200
    assert "default" in response.get_json()["engines"]


def test_the_service_runs_on_pooltenders_pool(app: Flask) -> None:
    with app.app_context():
        pool = db.engine.pool
        assert isinstance(pool, SheddingQueuePool)
        assert (pool.size(), pool._max_overflow) == (4, 2)  # Little's-law default, not 20/50
    assert "/pooltender/dashboard/" not in {r.rule for r in app.url_map.iter_rules()}


@pytest.fixture
def dashboard_app(database_url: str) -> Iterator[Flask]:
    settings: Settings = make_settings(
        database_url, pooltender_config={"POOLTENDER_DASHBOARD": "true"}
    )
    application = create_app(settings)
    yield application
    with application.app_context():
        db.engine.dispose()


def test_the_dashboard_is_admin_only_and_opens_with_the_cookie(
    dashboard_app: Flask, auth_header: Callable[..., dict[str, str]]
) -> None:
    client = dashboard_app.test_client()
    assert client.get("/pooltender/dashboard/").status_code == 401
    admin = auth_header(Role.ADMIN)
    assert client.get("/pooltender/dashboard/", headers=admin).status_code == 200
    token = admin["Authorization"].split(" ", 1)[1]
    client.set_cookie(ADMIN_PAGE_COOKIE, token)
    assert client.get("/pooltender/dashboard/").status_code == 200
    assert client.get("/pooltender/dashboard/data").status_code == 200
    client.set_cookie(ADMIN_PAGE_COOKIE, "not-a-token")
    assert client.get("/pooltender/dashboard/").status_code == 401
