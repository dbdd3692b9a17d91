"""Hostile input at the one input layer (api/common.py's guard, api/schemas.py's fields).

Every case answers a 4xx with the JSON error shape, and nothing is written: the row counts
of every table are the same before and after, on SQLite, MariaDB and PostgreSQL. Each
target route has a code, a campaign and a user ready, so a request that slipped through
validation *would* write a row.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

from coupons.db import db
from coupons.services.auth import ISSUER
from tests.conftest import TEST_SECRET

Headers = dict[str, str]
API = "/api/v1"
CODE = "HOSTILE-1"


def table_counts(app: Flask) -> dict[str, int]:
    with app.app_context():
        counts = {
            table.name: int(db.session.query(table).count()) for table in db.metadata.sorted_tables
        }
        db.session.remove()
    return counts


@pytest.fixture
def ready(client: FlaskClient, admin: Headers) -> int:
    """A campaign with the code CODE; returns the campaign id."""
    body = {"name": "Base", "discount_type": "percent", "discount_value": "10", "currency": "EUR"}
    created = client.post(f"{API}/campaigns", json=body, headers=admin)
    assert created.status_code == 201, created.get_json()
    campaign_id: int = created.get_json()["id"]
    code = client.post(f"{API}/campaigns/{campaign_id}/codes", json={"code": CODE}, headers=admin)
    assert code.status_code == 201, code.get_json()
    return campaign_id


def send(client: FlaskClient, method: str, path: str, raw: str | bytes, headers: Headers) -> Any:
    return client.open(
        path, method=method, data=raw, headers={**headers, "Content-Type": "application/json"}
    )


def assert_refused(response: Any, statuses: tuple[int, ...]) -> None:
    assert response.status_code in statuses, (response.status_code, response.get_data()[:300])
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body


def redemption(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": CODE,
        "customer_id": "cust-1",
        "order_id": "order-1",
        "order_total": "80.00",
    }
    body.update(changes)
    return body


def campaign(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Spring",
        "discount_type": "fixed",
        "discount_value": "5.00",
        "currency": "EUR",
    }
    body.update(changes)
    return body


LONE_SURROGATE = "\\ud800"  # JSON text: a lone high surrogate escape

#: (route kind, JSON text). Route kinds: login, user, campaign, redeem, validate, code, patch.
BODIES: list[tuple[str, str]] = [
    # lone surrogates, in every kind of string
    ("login", f'{{"email": "a{LONE_SURROGATE}@example.test", "password": "x"}}'),
    ("login", f'{{"email": "a@example.test", "password": "pw{LONE_SURROGATE}xxxxxxxxxxxx"}}'),
    (
        "user",
        f'{{"email": "n{LONE_SURROGATE}@example.test", "password": "long enough pw", '
        '"role": "service"}',
    ),
    (
        "user",
        f'{{"email": "new@example.test", "password": "long enough {LONE_SURROGATE}", '
        '"role": "service"}',
    ),
    ("campaign", json.dumps(campaign()).replace('"Spring"', f'"Spr{LONE_SURROGATE}ing"')),
    ("redeem", json.dumps(redemption()).replace('"cust-1"', f'"c{LONE_SURROGATE}"')),
    ("redeem", json.dumps(redemption()).replace('"order-1"', f'"o{LONE_SURROGATE}"')),
    ("validate", f'{{"customer_id": "c{LONE_SURROGATE}", "order_total": "80.00"}}'),
    ("code", f'{{"code": "AB{LONE_SURROGATE}CD"}}'),
    # control characters: NUL, CR/LF (a forged log line), tab, DEL
    ("redeem", json.dumps(redemption(customer_id="cust\u00001"))),
    ("redeem", json.dumps(redemption(order_id="order-1\r\nINFO forged line"))),
    ("redeem", json.dumps(redemption(customer_id="cust\t1"))),
    ("redeem", json.dumps(redemption(order_id="order\x7f1"))),
    ("campaign", json.dumps(campaign(name="Spring\nSale"))),
    (
        "user",
        json.dumps(
            {"email": "x\u0000@example.test", "password": "long enough pw", "role": "service"}
        ),
    ),
    ("login", json.dumps({"email": "a@example.test\r\n", "password": "long enough pw"})),
    # money: only ASCII digits with at most two decimals
    ("redeem", json.dumps(redemption(order_total="\u0668\u0660"))),
    ("redeem", json.dumps(redemption(order_total="\uff18\uff10.\uff10\uff10"))),
    ("redeem", json.dumps(redemption(order_total="8_0.00"))),
    ("redeem", json.dumps(redemption(order_total="1e2"))),
    ("redeem", json.dumps(redemption(order_total=" 80.00"))),
    ("redeem", json.dumps(redemption(order_total=True))),
    ("validate", json.dumps({"customer_id": "c", "order_total": "\u0668\u0660"})),
    ("campaign", json.dumps(campaign(discount_value="\u0665"))),
    ("campaign", json.dumps(campaign(min_order_total="1e2"))),
    # strict integers and booleans; integer ranges of the columns
    ("campaign", json.dumps(campaign(max_redemptions=1.5))),
    ("campaign", json.dumps(campaign(max_redemptions="5"))),
    ("campaign", json.dumps(campaign(max_redemptions=True))),
    ("campaign", json.dumps(campaign(max_redemptions=2**31))),
    ("campaign", json.dumps(campaign(per_customer_limit=2**63))),
    ("campaign", json.dumps(campaign(is_active="false"))),
    ("campaign", json.dumps(campaign(is_active=0))),
    ("code", json.dumps({"code": "RANGE-1", "max_uses": 2**31})),
    ("code", json.dumps({"code": "RANGE-2", "max_uses": 1.5})),
    ("patch", json.dumps({"is_active": "false"})),
    ("patch", json.dumps({"max_redemptions": 2.5})),
    # datetimes at the edges of the range, with offsets
    ("campaign", json.dumps(campaign(starts_at="0001-01-01T00:00:00+14:00"))),
    ("campaign", json.dumps(campaign(ends_at="9999-12-31T23:59:59-14:00"))),
    ("campaign", json.dumps(campaign(starts_at="1969-12-31T23:59:59Z"))),
    ("patch", json.dumps({"ends_at": "0001-01-01T00:00:00+14:00"})),
    ("campaign", json.dumps(campaign(starts_at=1700000000))),
]


def route(kind: str, campaign_id: int) -> tuple[str, str, str]:
    """(method, path, role) for a route kind; role '' is anonymous."""
    return {
        "login": ("POST", f"{API}/auth/login", ""),
        "user": ("POST", f"{API}/users", "admin"),
        "campaign": ("POST", f"{API}/campaigns", "admin"),
        "patch": ("PATCH", f"{API}/campaigns/{campaign_id}", "admin"),
        "redeem": ("POST", f"{API}/redemptions", "service"),
        "validate": ("POST", f"{API}/coupons/{CODE}/validate", "service"),
        "code": ("POST", f"{API}/campaigns/{campaign_id}/codes", "admin"),
    }[kind]


def test_hostile_bodies_are_refused_and_write_nothing(
    app: Flask, client: FlaskClient, admin: Headers, service: Headers, ready: int
) -> None:
    headers = {"admin": admin, "service": service, "": {}}
    before = table_counts(app)
    for kind, raw in BODIES:
        method, path, role = route(kind, ready)
        response = send(client, method, path, raw.encode(), headers[role])
        assert_refused(response, (400, 422))
        assert response.status_code == 422, (kind, raw, response.get_json())
    assert table_counts(app) == before
    # the same routes still accept a clean body (so the refusals above are the input's fault)
    ok = send(client, "POST", f"{API}/redemptions", json.dumps(redemption()), service)
    assert ok.status_code == 201, ok.get_json()
    ok = send(
        client,
        "POST",
        f"{API}/campaigns",
        json.dumps(campaign(max_redemptions=2**31 - 1, starts_at="2030-01-01T00:00:00+14:00")),
        admin,
    )
    assert ok.status_code == 201, ok.get_json()


@pytest.mark.parametrize("kind", ["login", "campaign", "redeem", "user"])
def test_deep_and_huge_json_is_refused_before_parsing(
    app: Flask, client: FlaskClient, admin: Headers, service: Headers, ready: int, kind: str
) -> None:
    headers = {"admin": admin, "service": service, "": {}}
    method, path, role = route(kind, ready)
    before = table_counts(app)
    deep = send(client, method, path, b"[" * 100_000, headers[role])
    assert_refused(deep, (413,))  # above the size limit: refused before it is even read
    deep = send(client, method, path, b"[" * 50_000, headers[role])
    assert_refused(deep, (400,))  # within the size limit, too deep: refused before parsing
    nested = send(client, method, path, b'{"a":' * 40 + b"1" + b"}" * 40, headers[role])
    assert_refused(nested, (400,))
    huge = send(client, method, path, b'{"name": "' + b"x" * 200_000 + b'"}', headers[role])
    assert_refused(huge, (413,))
    assert table_counts(app) == before


def test_brackets_inside_strings_do_not_count_as_depth(
    client: FlaskClient, admin: Headers, ready: int
) -> None:
    body = json.dumps(campaign(name="[" * 60 + "{" * 60))
    response = send(client, "POST", f"{API}/campaigns", body, admin)
    assert response.status_code == 201, response.get_json()


@pytest.mark.parametrize("digit", ["\u0661", "\uff11", "\u00b9"])
def test_route_integers_are_ascii_only(
    app: Flask, client: FlaskClient, admin: Headers, ready: int, digit: str
) -> None:
    assert ready == 1 or ready > 0
    response = client.get(f"{API}/campaigns/{digit}", headers=admin)
    assert_refused(response, (404,))
    before = table_counts(app)
    response = client.post(f"{API}/campaigns/{digit}/codes", json={"code": "UNI-1"}, headers=admin)
    assert_refused(response, (404,))
    assert table_counts(app) == before


def test_control_characters_in_the_query_are_refused(client: FlaskClient, admin: Headers) -> None:
    response = client.get(f"{API}/coupons?status=active%00", headers=admin)
    assert_refused(response, (422,))


def _signed(claims: dict[str, Any]) -> Headers:
    now = dt.datetime.now(dt.UTC)
    full = {"iss": ISSUER, "iat": now, "exp": now + dt.timedelta(minutes=5), "typ": "access"}
    full.update(claims)
    full = {k: v for k, v in full.items() if v is not None}
    return {"Authorization": f"Bearer {jwt.encode(full, TEST_SECRET, algorithm='HS256')}"}


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "1", "email": None, "role": "admin"},
        {"sub": "abc", "email": "a@example.test", "role": "admin"},
        {"sub": "\u0661", "email": "a@example.test", "role": "admin"},
        {"sub": "1", "email": "a@example.test", "role": "root"},
        {"sub": "1", "email": "a@example.test", "role": None},
        {"sub": "1", "email": 5, "role": "admin"},
        {"sub": "9" * 40, "email": "a@example.test", "role": "admin"},
    ],
)
def test_a_validly_signed_token_with_bad_claims_is_401(
    app: Flask, client: FlaskClient, claims: dict[str, Any]
) -> None:
    before = table_counts(app)
    response = client.post(f"{API}/campaigns", json=campaign(), headers=_signed(claims))
    assert_refused(response, (401,))
    assert table_counts(app) == before


Rows = Callable[[Any], int]


def test_a_wrong_method_is_405_with_allow(client: FlaskClient, admin: Headers) -> None:
    response = client.delete(f"{API}/campaigns", headers=admin)
    assert_refused(response, (405,))
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_the_document_describes_the_error_shape_we_send(
    client: FlaskClient, admin: Headers, ready: int
) -> None:
    spec = client.get("/openapi.json").get_json()
    components = spec["components"]
    assert "Error" not in components["schemas"], "flask-smorest's error shape is not ours"
    for operations in spec["paths"].values():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema["allOf"][0] == {"$ref": "#/components/schemas/ApiError"}
    body_schema = components["schemas"]["ApiErrorBody"]
    answers = [
        send(client, "POST", f"{API}/campaigns", json.dumps(campaign(is_active=0)), admin),
        client.get(f"{API}/campaigns/999999", headers=admin),
        client.get(f"{API}/campaigns"),
        client.delete(f"{API}/campaigns", headers=admin),
    ]
    for response in answers:
        body = response.get_json()
        assert set(body) == {"error"}
        assert set(body_schema["required"]) <= set(body["error"])
        for key, value in body["error"].items():
            if key in body_schema["properties"]:
                kind = body_schema["properties"][key]["type"]
                assert isinstance(value, {"string": str, "object": dict}[kind]), (key, value)


@pytest.mark.parametrize("kind", ["redeem", "validate"])
def test_a_hot_route_parses_its_json_body_once(
    client: FlaskClient, service: Headers, ready: int, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The input guard's parse is the one the lean routes load (coupons.api.lean.json_body):
    one ``json.loads`` per request; and a body that is not UTF-8 is webargs' 400, as on the
    routes that parse through webargs."""
    method, path, _role = route(kind, ready)
    body = redemption() if kind == "redeem" else {"customer_id": "cust-1", "order_total": "80.00"}
    real_loads = json.loads
    calls: list[object] = []

    def counting_loads(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real_loads(*args, **kwargs)

    raw = json.dumps(body).encode()
    monkeypatch.setattr(json, "loads", counting_loads)
    response = send(client, method, path, raw, service)
    monkeypatch.setattr(json, "loads", real_loads)
    assert response.status_code in (200, 201), response.get_json()
    # (PyJWT's header and claims parses are the token's, not the body's)
    assert [c for c in calls if c in (raw, raw.decode())] == [raw.decode()]
    utf16 = send(client, method, path, json.dumps(body).encode("utf-16"), service)
    assert_refused(utf16, (400,))
    assert utf16.get_json()["error"]["code"] == "bad_request", utf16.get_json()
