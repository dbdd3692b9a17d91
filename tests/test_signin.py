"""The admins' sign-in page opens the dashboard (issue 13: a browser got a JSON 401, the cookie
the pages want being set by nothing, and an access token lasting 15 minutes to paste).

Runs on each backend (the login throttle is rows in the database); the browser test signs in
with headless Chromium on SQLite (the demo's database: the pool-only dashboard).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from coupons import create_app
from coupons.api.signin import ADMIN_PAGE_COOKIE, SIGN_IN_PATH
from coupons.db import db
from coupons.migrate import upgrade
from coupons.services import auth
from tests._serve import run_demo
from tests.conftest import empty_tables, make_settings

PASSWORD = "Sign-in-pass-8c1f-not-logged"
WRONG = "Wrong-pass-77d2-not-logged-either"
DASHBOARD = "/pooltender/dashboard/"
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.fixture(autouse=True)
def fast_hasher(monkeypatch: pytest.MonkeyPatch) -> None:
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16, salt_len=16)
    monkeypatch.setattr(auth, "hasher", cheap)


def dashboard_app(database_url: str, **overrides: Any) -> Flask:
    settings = make_settings(
        database_url, pooltender_config={"POOLTENDER_DASHBOARD": "true"}, **overrides
    )
    return create_app(settings)


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    """The service with the dashboard on; an admin and a service user with real passwords."""
    application = dashboard_app(database_url, login_max_failures=3)
    with application.app_context():
        auth.create_user("admin@example.test", PASSWORD, "admin")
        auth.create_user("checkout@example.test", PASSWORD, "service")
    yield application
    with application.app_context():
        db.session.remove()
        empty_tables()
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def sign_in(client: FlaskClient, email: str, password: str, **form: str) -> TestResponse:
    return client.post(
        SIGN_IN_PATH, data={"email": email, "password": password, **form}, headers=HTML
    )


def set_cookie_headers(response: TestResponse) -> list[str]:
    return response.headers.getlist("Set-Cookie")


def test_the_sign_in_page_is_a_form(client: FlaskClient) -> None:
    page = client.get(SIGN_IN_PATH, headers=HTML)
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert f'method="post" action="{SIGN_IN_PATH}"' in html
    assert 'name="email"' in html
    assert 'name="password" type="password"' in html
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert not set_cookie_headers(page)


def test_an_admin_signs_in_and_the_cookie_opens_the_pages(client: FlaskClient) -> None:
    response = sign_in(client, " Admin@Example.test ", PASSWORD)
    assert response.status_code == 303
    assert response.headers["Location"] == DASHBOARD
    (header,) = set_cookie_headers(response)
    morsel = SimpleCookie(header)[ADMIN_PAGE_COOKIE]
    assert morsel.value.count(".") == 2  # the access token (a JWT)
    assert morsel["path"] == "/pooltender"  # pooltender's pages only, never the API
    assert morsel["max-age"] == "900"  # ACCESS_TOKEN_TTL
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["secure"] is True  # COUPONS_ENV=test is not development

    assert client.get_cookie(ADMIN_PAGE_COOKIE, path="/pooltender") is not None
    page = client.get(DASHBOARD, headers=HTML)
    assert page.status_code == 200
    assert 'id="pool-card"' in page.get_data(as_text=True)  # the dashboard itself
    assert client.get("/pooltender/dashboard/data").status_code == 200
    assert client.get("/pooltender/stats").status_code == 200
    # the cookie is not an API credential
    assert client.get("/api/v1/auth/me").status_code == 401


def test_in_development_the_cookie_is_not_secure(database_url: str) -> None:
    application = dashboard_app(database_url, environment="development")
    try:
        with application.app_context():
            auth.create_user("dev@example.test", PASSWORD, "admin")
        response = sign_in(application.test_client(), "dev@example.test", PASSWORD)
        assert response.status_code == 303
        (header,) = set_cookie_headers(response)
        assert not SimpleCookie(header)[ADMIN_PAGE_COOKIE]["secure"]
    finally:
        with application.app_context():
            db.session.remove()
            empty_tables()
            db.engine.dispose()


def test_a_wrong_password_shows_the_page_again_with_no_cookie_and_no_password_logged(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = sign_in(client, "admin@example.test", WRONG)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "The email or password is not correct." in html
    assert 'value="admin@example.test"' in html  # the email is kept, the password is not
    assert WRONG not in html
    assert not set_cookie_headers(response)
    assert client.get_cookie(ADMIN_PAGE_COOKIE, path="/pooltender") is None
    assert client.get(DASHBOARD, headers=HTML).status_code == 302

    unknown = sign_in(client, "nobody@example.test", WRONG)
    assert "The email or password is not correct." in unknown.get_data(as_text=True)
    assert not set_cookie_headers(unknown)
    assert sign_in(client, "admin@example.test", PASSWORD).status_code == 303
    for text in (caplog.text, *(str(r.args) for r in caplog.records)):
        assert WRONG not in text
        assert PASSWORD not in text


def test_failed_sign_ins_are_throttled_like_logins(client: FlaskClient) -> None:
    for _ in range(3):  # LOGIN_MAX_FAILURES=3 in this app
        assert sign_in(client, "admin@example.test", WRONG).status_code == 200
    locked = sign_in(client, "admin@example.test", PASSWORD)  # even the right password
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) >= 1
    assert "Too many failed sign-ins" in locked.get_data(as_text=True)
    assert not set_cookie_headers(locked)


def test_a_service_account_is_not_let_in(client: FlaskClient) -> None:
    response = sign_in(client, "checkout@example.test", PASSWORD)
    assert response.status_code == 403
    assert "for admins only" in response.get_data(as_text=True)
    assert not set_cookie_headers(response)


def test_an_empty_form_asks_for_both_fields(client: FlaskClient) -> None:
    response = sign_in(client, "", "")
    assert response.status_code == 200
    assert "Enter your email and password." in response.get_data(as_text=True)
    assert not set_cookie_headers(response)


def test_a_form_posted_from_another_site_is_refused(client: FlaskClient) -> None:
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        response = client.post(
            SIGN_IN_PATH,
            data={"email": "admin@example.test", "password": PASSWORD},
            headers={**HTML, **headers},
        )
        assert response.status_code == 403
        assert not set_cookie_headers(response)
    same = client.post(
        SIGN_IN_PATH,
        data={"email": "admin@example.test", "password": PASSWORD},
        headers={**HTML, "Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
    )
    assert same.status_code == 303


def test_a_browser_without_the_cookie_is_sent_to_sign_in_and_back(client: FlaskClient) -> None:
    response = client.get(DASHBOARD, headers=HTML)
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == SIGN_IN_PATH
    assert parse_qs(location.query)["next"] == [DASHBOARD]
    form = client.get(response.headers["Location"], headers=HTML).get_data(as_text=True)
    assert f'name="next" value="{DASHBOARD}"' in form

    stats = client.get("/pooltender/stats", headers=HTML)
    assert stats.status_code == 302
    back = sign_in(client, "admin@example.test", PASSWORD, next="/pooltender/stats")
    assert back.headers["Location"] == "/pooltender/stats"


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/pooltender", "/api/v1/campaigns", "x"]
)
def test_next_never_leaves_the_pages(client: FlaskClient, target: str) -> None:
    response = sign_in(client, "admin@example.test", PASSWORD, next=target)
    assert response.headers["Location"] == DASHBOARD


def test_api_clients_keep_the_json_401(client: FlaskClient) -> None:
    for headers in (
        {},  # no Accept
        {"Accept": "application/json"},
        {"Accept": "*/*"},  # curl, and the dashboard's own fetch() polling
        {**HTML, "Authorization": "Bearer not-a-token"},
    ):
        for path in (DASHBOARD, "/pooltender/dashboard/data", "/pooltender/stats"):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.get_json()["error"]["code"] in ("missing_token", "invalid_token")


def test_a_stale_cookie_sends_the_browser_to_sign_in_and_is_dropped(
    client: FlaskClient,
) -> None:
    client.set_cookie(ADMIN_PAGE_COOKIE, "not-a-token", path="/pooltender")
    response = client.get(DASHBOARD, headers=HTML)
    assert response.status_code == 302
    (header,) = set_cookie_headers(response)
    morsel = SimpleCookie(header)[ADMIN_PAGE_COOKIE]
    assert morsel.value == ""
    assert morsel["path"] == "/pooltender"
    assert client.get("/pooltender/dashboard/data").status_code == 401  # JSON for scripts


def test_a_dashboard_elsewhere_gets_the_cookie_on_its_own_path(database_url: str) -> None:
    settings = make_settings(
        database_url,
        pooltender_config={
            "POOLTENDER_DASHBOARD": "true",
            "POOLTENDER_DASHBOARD_PATH": "/ops/pool",
        },
    )
    application = create_app(settings)
    try:
        with application.app_context():
            auth.create_user("ops@example.test", PASSWORD, "admin")
        client = application.test_client()
        sent = client.get("/ops/pool/", headers=HTML)
        assert sent.status_code == 302
        assert parse_qs(urlsplit(sent.headers["Location"]).query)["next"] == ["/ops/pool/"]
        response = sign_in(client, "ops@example.test", PASSWORD)
        assert response.headers["Location"] == "/ops/pool/"
        (header,) = set_cookie_headers(response)
        assert SimpleCookie(header)[ADMIN_PAGE_COOKIE]["path"] == "/ops/pool"
        assert client.get("/ops/pool/", headers=HTML).status_code == 200
        # the stats page is outside the cookie's path: JSON, not a redirect that would loop
        assert client.get("/pooltender/stats", headers=HTML).status_code == 401
    finally:
        with application.app_context():
            db.session.remove()
            empty_tables()
            db.engine.dispose()


# --------------------------------------------------------------------------- in a browser


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[Flask]:
    url = f"sqlite:///{tmp_path / 'signin.db'}"
    upgrade(url)
    application = dashboard_app(url)
    with application.app_context():
        auth.create_user("admin@example.test", PASSWORD, "admin")
    yield application
    with application.app_context():
        db.session.remove()
        db.engine.dispose()


def test_in_chromium_an_admin_signs_in_and_sees_the_dashboard(
    sqlite_app: Flask, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.pooltender.test_dashboard import Browser, LiveServer, chromium_path

    caplog.set_level(logging.DEBUG)
    live = LiveServer(sqlite_app)
    browser = Browser(chromium_path(), tmp_path)
    try:
        browser.call("Page.navigate", url=live.url(DASHBOARD))
        browser.wait_for(f"location.pathname === {SIGN_IN_PATH!r} && !!document.forms[0]")
        wrong: Callable[[str], str] = lambda password: (  # noqa: E731
            "(() => { const f = document.forms[0];"
            " f.email.value = 'admin@example.test';"
            f" f.password.value = {password!r}; f.submit(); return true; }})()"
        )
        browser.evaluate(wrong(WRONG))
        browser.wait_for("!!document.getElementById('message')")
        assert "not correct" in browser.evaluate("document.getElementById('message').textContent")
        assert browser.evaluate("location.pathname") == SIGN_IN_PATH

        browser.evaluate(wrong(PASSWORD))
        browser.wait_for(f"location.pathname === {DASHBOARD!r}")
        browser.wait_for("Number(document.body.dataset.polls) >= 1")  # its script polled /data
        assert browser.evaluate("document.getElementById('pool-card') !== null")
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
        cookies = browser.call("Network.getAllCookies")["cookies"]
        (cookie,) = [c for c in cookies if c["name"] == ADMIN_PAGE_COOKIE]
        assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (
            True,
            True,
            "Strict",
        )
        assert cookie["path"] == "/pooltender"
        browser.screenshot(tmp_path / "signed-in.png")
    finally:
        browser.close()
        live.stop()
    assert PASSWORD not in caplog.text
    assert WRONG not in caplog.text


# --------------------------------------------------------------------------- where to find it


def test_the_demo_banner_and_the_readme_give_the_sign_in_url(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    done = run_demo(tmp_path)
    match = re.search(r"^  sign in +http://127\.0\.0\.1:8765(/\S+) ", done.stdout, re.M)
    assert match, done.stdout
    assert match.group(1) == SIGN_IN_PATH
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert f"http://127.0.0.1:8765{SIGN_IN_PATH}" in readme  # the demo's output, as printed
    assert f"`{SIGN_IN_PATH}`" in readme  # the dashboard section
