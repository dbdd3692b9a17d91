"""Campaigns, codes, coupon lookup and validation over HTTP, on every backend.

Every refused request is checked for its status, its error code and that it wrote nothing.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from coupons.db import db
from coupons.models import Campaign, Coupon, CustomerUsage, Redemption
from coupons.services.coupon import compute_discount

Headers = dict[str, str]
API = "/api/v1"


def campaign_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Spring sale",
        "discount_type": "percent",
        "discount_value": "10",
        "currency": "EUR",
    }
    body.update(overrides)
    return body


def new_campaign(client: FlaskClient, admin: Headers, **overrides: Any) -> dict[str, Any]:
    response = client.post(f"{API}/campaigns", json=campaign_body(**overrides), headers=admin)
    assert response.status_code == 201, response.get_json()
    data: dict[str, Any] = response.get_json()
    return data


def new_code(client: FlaskClient, admin: Headers, campaign_id: int, **body: Any) -> dict[str, Any]:
    response = client.post(f"{API}/campaigns/{campaign_id}/codes", json=body, headers=admin)
    assert response.status_code == 201, response.get_json()
    data: dict[str, Any] = response.get_json()
    return data


def error_code(response: Any) -> str:
    code: str = response.get_json()["error"]["code"]
    return code


def campaign_row(app: Flask, campaign_id: int) -> dict[str, Any]:
    with app.app_context():
        row = db.session.get(Campaign, campaign_id)
        assert row is not None
        values = {c.key: getattr(row, c.key) for c in Campaign.__table__.columns}
        db.session.remove()
    return values


def iso(when: dt.datetime) -> str:
    return when.isoformat()


NOW = dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------- create


def test_create_campaign_defaults_and_money_format(
    client: FlaskClient, admin: Headers, rows: Callable[[Any], int]
) -> None:
    response = client.post(
        f"{API}/campaigns",
        json=campaign_body(currency="usd", discount_value=12.5, min_order_total=20),
        headers=admin,
    )
    assert response.status_code == 201
    data = response.get_json()
    assert data["currency"] == "USD"
    assert data["discount_value"] == "12.50"
    assert data["min_order_total"] == "20.00"
    assert data["is_active"] is True
    assert data["redemption_count"] == 0
    assert data["max_redemptions"] is None
    assert data["starts_at"] is None
    assert rows(Campaign) == 1


def test_create_campaign_with_every_field(client: FlaskClient, admin: Headers) -> None:
    starts = NOW.replace(microsecond=0)
    ends = starts + dt.timedelta(days=30)
    data = new_campaign(
        client,
        admin,
        discount_type="fixed",
        discount_value="5.00",
        starts_at=iso(starts),
        ends_at=iso(ends),
        max_redemptions=100,
        per_customer_limit=2,
        min_order_total="0",
        is_active=False,
    )
    assert data["discount_type"] == "fixed"
    assert dt.datetime.fromisoformat(data["starts_at"]) == starts
    assert dt.datetime.fromisoformat(data["ends_at"]) == ends
    assert (data["max_redemptions"], data["per_customer_limit"]) == (100, 2)
    assert data["min_order_total"] == "0.00"
    assert data["is_active"] is False


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": ""}, "name"),
        ({"discount_type": "bogo"}, "discount_type"),
        ({"discount_value": "150"}, "discount_value"),
        ({"discount_value": "0"}, "discount_value"),
        ({"discount_value": "-5"}, "discount_value"),
        ({"discount_value": "1.234"}, "discount_value"),
        ({"discount_value": "ten"}, "discount_value"),
        ({"currency": "EURO"}, "currency"),
        ({"currency": "E1R"}, "currency"),
        ({"max_redemptions": 0}, "max_redemptions"),
        ({"per_customer_limit": -1}, "per_customer_limit"),
        ({"min_order_total": "-1"}, "min_order_total"),
        ({"starts_at": "not a date"}, "starts_at"),
        (
            {"starts_at": iso(NOW), "ends_at": iso(NOW - dt.timedelta(days=1))},
            "ends_at",
        ),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_create_campaign_refuses_invalid_values(
    client: FlaskClient,
    admin: Headers,
    rows: Callable[[Any], int],
    overrides: dict[str, Any],
    field: str,
) -> None:
    response = client.post(f"{API}/campaigns", json=campaign_body(**overrides), headers=admin)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    assert field in response.get_json()["error"]["fields"]
    assert rows(Campaign) == 0


def test_create_campaign_requires_fields(
    client: FlaskClient, admin: Headers, rows: Callable[[Any], int]
) -> None:
    response = client.post(f"{API}/campaigns", json={}, headers=admin)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    assert set(response.get_json()["error"]["fields"]) >= {
        "name",
        "discount_type",
        "discount_value",
        "currency",
    }
    assert rows(Campaign) == 0


# --------------------------------------------------------------------------- auth


def test_campaign_routes_need_a_token(client: FlaskClient, rows: Callable[[Any], int]) -> None:
    for method, path in [
        ("post", f"{API}/campaigns"),
        ("get", f"{API}/campaigns/1"),
        ("patch", f"{API}/campaigns/1"),
        ("post", f"{API}/campaigns/1/codes"),
        ("get", f"{API}/coupons/ABC"),
        ("post", f"{API}/coupons/ABC/validate"),
    ]:
        response = getattr(client, method)(path, json=campaign_body())
        assert response.status_code == 401, path
        assert error_code(response) == "missing_token"
    response = client.post(
        f"{API}/campaigns", json=campaign_body(), headers={"Authorization": "Bearer nope"}
    )
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"
    assert rows(Campaign) == 0


def test_service_token_cannot_manage_campaigns(
    client: FlaskClient, admin: Headers, service: Headers, app: Flask, rows: Callable[[Any], int]
) -> None:
    campaign = new_campaign(client, admin)
    cid = campaign["id"]
    response = client.post(f"{API}/campaigns", json=campaign_body(), headers=service)
    assert response.status_code == 403
    assert error_code(response) == "forbidden"
    response = client.patch(f"{API}/campaigns/{cid}", json={"name": "x"}, headers=service)
    assert response.status_code == 403
    response = client.post(f"{API}/campaigns/{cid}/codes", json={}, headers=service)
    assert response.status_code == 403
    assert rows(Campaign) == 1
    assert rows(Coupon) == 0
    assert campaign_row(app, cid)["name"] == "Spring sale"
    # reading is part of the service role
    assert client.get(f"{API}/campaigns/{cid}", headers=service).status_code == 200


# --------------------------------------------------------------------------- read


def test_get_campaign(client: FlaskClient, admin: Headers) -> None:
    campaign = new_campaign(client, admin)
    response = client.get(f"{API}/campaigns/{campaign['id']}", headers=admin)
    assert response.status_code == 200
    assert response.get_json() == campaign
    response = client.get(f"{API}/campaigns/999999", headers=admin)
    assert response.status_code == 404
    assert error_code(response) == "campaign_not_found"


# --------------------------------------------------------------------------- patch


def test_patch_changes_only_the_fields_sent(
    client: FlaskClient, admin: Headers, app: Flask
) -> None:
    campaign = new_campaign(client, admin, max_redemptions=10, per_customer_limit=1)
    cid = campaign["id"]
    response = client.patch(
        f"{API}/campaigns/{cid}",
        json={"name": "Renamed", "max_redemptions": 20, "per_customer_limit": None},
        headers=admin,
    )
    assert response.status_code == 200
    data = response.get_json()
    assert data["name"] == "Renamed"
    assert data["max_redemptions"] == 20
    assert data["per_customer_limit"] is None
    assert data["discount_value"] == campaign["discount_value"]
    assert data["currency"] == campaign["currency"]
    row = campaign_row(app, cid)
    assert (row["name"], row["max_redemptions"], row["per_customer_limit"]) == (
        "Renamed",
        20,
        None,
    )


@pytest.mark.parametrize(
    ("create", "patch", "code"),
    [
        ({}, {"discount_value": "100.01"}, "invalid_discount"),
        (
            {"discount_type": "fixed", "discount_value": "150"},
            {"discount_type": "percent"},
            "invalid_discount",
        ),
        (
            {"starts_at": iso(NOW)},
            {"ends_at": iso(NOW - dt.timedelta(hours=1))},
            "invalid_window",
        ),
    ],
)
def test_patch_checks_the_merged_campaign(
    client: FlaskClient,
    admin: Headers,
    app: Flask,
    create: dict[str, Any],
    patch: dict[str, Any],
    code: str,
) -> None:
    campaign = new_campaign(client, admin, **create)
    before = campaign_row(app, campaign["id"])
    response = client.patch(f"{API}/campaigns/{campaign['id']}", json=patch, headers=admin)
    assert response.status_code == 422
    assert error_code(response) == code
    assert campaign_row(app, campaign["id"]) == before


@pytest.mark.parametrize(
    "patch",
    [
        {"name": None},
        {"discount_value": "-1"},
        {"max_redemptions": 0},
        {"currency": "EURO"},
        {"is_active": "maybe"},
        {"redemption_count": 0},
    ],
)
def test_patch_refuses_invalid_fields(
    client: FlaskClient, admin: Headers, app: Flask, patch: dict[str, Any]
) -> None:
    campaign = new_campaign(client, admin)
    before = campaign_row(app, campaign["id"])
    response = client.patch(f"{API}/campaigns/{campaign['id']}", json=patch, headers=admin)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    assert campaign_row(app, campaign["id"]) == before


def test_patch_cannot_lower_the_cap_below_the_count(
    client: FlaskClient, admin: Headers, service: Headers, app: Flask
) -> None:
    campaign = new_campaign(client, admin, max_redemptions=5)
    cid = campaign["id"]
    new_code(client, admin, cid, code="CAP-1")
    for n in range(3):
        response = client.post(
            f"{API}/redemptions",
            json={"code": "CAP-1", "customer_id": f"c{n}", "order_id": f"o{n}", "order_total": 10},
            headers=service,
        )
        assert response.status_code == 201
    response = client.patch(f"{API}/campaigns/{cid}", json={"max_redemptions": 2}, headers=admin)
    assert response.status_code == 409
    assert error_code(response) == "max_redemptions_below_count"
    assert campaign_row(app, cid)["max_redemptions"] == 5
    response = client.patch(f"{API}/campaigns/{cid}", json={"max_redemptions": 3}, headers=admin)
    assert response.status_code == 200
    assert response.get_json()["max_redemptions"] == 3


def test_patch_unknown_campaign(client: FlaskClient, admin: Headers) -> None:
    response = client.patch(f"{API}/campaigns/424242", json={"name": "x"}, headers=admin)
    assert response.status_code == 404
    assert error_code(response) == "campaign_not_found"


# --------------------------------------------------------------------------- codes


def test_create_explicit_code_is_normalized(
    client: FlaskClient, admin: Headers, rows: Callable[[Any], int]
) -> None:
    campaign = new_campaign(client, admin)
    coupon = new_code(client, admin, campaign["id"], code="  spring-2025 ", max_uses=3)
    assert coupon["code"] == "SPRING-2025"
    assert coupon["max_uses"] == 3
    assert coupon["use_count"] == 0
    assert coupon["campaign_id"] == campaign["id"]
    assert coupon["campaign"]["name"] == "Spring sale"
    # the same code in another case, even in another campaign, is taken
    other = new_campaign(client, admin, name="Other")
    response = client.post(
        f"{API}/campaigns/{other['id']}/codes", json={"code": "Spring-2025"}, headers=admin
    )
    assert response.status_code == 409
    assert error_code(response) == "code_taken"
    assert rows(Coupon) == 1


def test_create_random_code(client: FlaskClient, admin: Headers) -> None:
    campaign = new_campaign(client, admin)
    codes = {new_code(client, admin, campaign["id"])["code"] for _ in range(5)}
    assert len(codes) == 5
    for code in codes:
        # codegen's alphabet: no 0/O, 1/I; L kept (32 symbols).
        assert re.fullmatch(r"[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}", code)


@pytest.mark.parametrize(
    "body",
    [{"code": "ab"}, {"code": "BAD CODE"}, {"code": "x" * 65}, {"code": "CAFÉ"}, {"max_uses": 0}],
)
def test_create_code_refuses_invalid_input(
    client: FlaskClient, admin: Headers, rows: Callable[[Any], int], body: dict[str, Any]
) -> None:
    campaign = new_campaign(client, admin)
    response = client.post(f"{API}/campaigns/{campaign['id']}/codes", json=body, headers=admin)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    assert rows(Coupon) == 0


def test_create_code_for_unknown_campaign(
    client: FlaskClient, admin: Headers, rows: Callable[[Any], int]
) -> None:
    response = client.post(f"{API}/campaigns/999999/codes", json={"code": "ABC"}, headers=admin)
    assert response.status_code == 404
    assert error_code(response) == "campaign_not_found"
    assert rows(Coupon) == 0


def test_get_coupon_is_case_insensitive(
    client: FlaskClient, admin: Headers, service: Headers
) -> None:
    campaign = new_campaign(client, admin)
    created = new_code(client, admin, campaign["id"], code="WELCOME-10")
    response = client.get(f"{API}/coupons/welcome-10", headers=service)
    assert response.status_code == 200
    data = response.get_json()
    assert data == created
    assert data["campaign"]["discount_value"] == "10.00"
    for missing in ("NOPE-NOPE", "x"):
        response = client.get(f"{API}/coupons/{missing}", headers=service)
        assert response.status_code == 404
        assert error_code(response) == "coupon_not_found"


# --------------------------------------------------------------------------- validate


def snapshot(app: Flask) -> tuple[Any, ...]:
    """Every counter and row count validation could conceivably touch."""
    with app.app_context():
        s = db.session
        state = (
            tuple(s.query(Coupon.id, Coupon.use_count).order_by(Coupon.id).all()),
            tuple(
                s.query(Campaign.id, Campaign.redemption_count, Campaign.updated_at)
                .order_by(Campaign.id)
                .all()
            ),
            s.query(CustomerUsage).count(),
            s.query(Redemption).count(),
        )
        db.session.remove()
    return state


def validate(client: FlaskClient, headers: Headers, code: str, total: Any = "50.00") -> Any:
    return client.post(
        f"{API}/coupons/{code}/validate",
        json={"customer_id": "cust-1", "order_total": total},
        headers=headers,
    )


def test_validate_returns_the_discount_and_writes_nothing(
    client: FlaskClient, admin: Headers, service: Headers, app: Flask
) -> None:
    campaign = new_campaign(
        client, admin, discount_value="12.5", min_order_total="10", per_customer_limit=1
    )
    new_code(client, admin, campaign["id"], code="HALF-UP", max_uses=1)
    before = snapshot(app)
    response = validate(client, service, "half-up", "10.05")
    assert response.status_code == 200
    assert response.get_json() == {
        "valid": True,
        "code": "HALF-UP",
        "campaign_id": campaign["id"],
        "order_total": "10.05",
        "discount": "1.26",  # 1.25625 rounded half up
        "currency": "EUR",
    }
    for _ in range(3):
        assert validate(client, service, "HALF-UP").get_json()["valid"] is True
    assert snapshot(app) == before


def _redeem(client: FlaskClient, service: Headers, code: str, customer: str, order: str) -> None:
    response = client.post(
        f"{API}/redemptions",
        json={"code": code, "customer_id": customer, "order_id": order, "order_total": "50"},
        headers=service,
    )
    assert response.status_code == 201, response.get_json()


def test_validate_names_the_reason(
    client: FlaskClient, admin: Headers, service: Headers, app: Flask
) -> None:
    later = NOW + dt.timedelta(days=1)
    earlier = NOW - dt.timedelta(days=1)
    cases = {
        "INACTIVE": ({"is_active": False}, {}),
        "FUTURE": ({"starts_at": iso(later)}, {}),
        "PAST": ({"starts_at": iso(earlier - dt.timedelta(days=1)), "ends_at": iso(earlier)}, {}),
        "MINIMUM": ({"min_order_total": "50.01"}, {}),
        "CODE-CAP": ({}, {"max_uses": 1}),
        "CAMPAIGN-CAP": ({"max_redemptions": 1}, {}),
        "PER-CUSTOMER": ({"per_customer_limit": 1}, {}),
    }
    for name, (campaign_fields, code_fields) in cases.items():
        campaign = new_campaign(client, admin, name=name, **campaign_fields)
        new_code(client, admin, campaign["id"], code=name, **code_fields)
    _redeem(client, service, "CODE-CAP", "someone", "o1")
    _redeem(client, service, "CAMPAIGN-CAP", "someone", "o2")
    _redeem(client, service, "PER-CUSTOMER", "cust-1", "o3")
    expected = {
        "NO-SUCH-CODE": "coupon_not_found",
        "!!": "coupon_not_found",
        "INACTIVE": "campaign_inactive",
        "FUTURE": "coupon_not_yet_valid",
        "PAST": "coupon_expired",
        "MINIMUM": "order_total_below_minimum",
        "CODE-CAP": "coupon_exhausted",
        "CAMPAIGN-CAP": "coupon_exhausted",
        "PER-CUSTOMER": "customer_limit_reached",
    }
    before = snapshot(app)
    for code, reason in expected.items():
        response = validate(client, service, code)
        assert response.status_code == 200, code
        data = response.get_json()
        assert data["valid"] is False, code
        assert data["reason"] == reason, code
        assert data["message"]
        assert "discount" not in data
    assert snapshot(app) == before


@pytest.mark.parametrize("total", ["0", "-1", "abc", "1.001", None, True])
def test_validate_refuses_bad_order_totals(
    client: FlaskClient, admin: Headers, service: Headers, total: Any
) -> None:
    campaign = new_campaign(client, admin)
    new_code(client, admin, campaign["id"], code="TOTALS")
    response = validate(client, service, "TOTALS", total)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"


# --------------------------------------------------------------------------- money


@pytest.mark.parametrize(
    ("kind", "value", "total", "discount"),
    [
        ("percent", "10", "125.55", "12.56"),  # 12.555 -> half up
        ("percent", "12.5", "10.05", "1.26"),
        ("percent", "33.33", "0.01", "0.00"),
        ("percent", "100", "19.99", "19.99"),
        ("fixed", "5", "19.99", "5.00"),
        ("fixed", "25", "19.99", "19.99"),  # never more than the order
    ],
)
def test_compute_discount(kind: str, value: str, total: str, discount: str) -> None:
    assert compute_discount(kind, Decimal(value), Decimal(total)) == Decimal(discount)


def test_openapi_describes_the_campaign_routes(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    paths = spec["paths"]
    assert {"post"} <= set(paths[f"{API}/campaigns"])
    assert {"get", "patch"} <= set(paths[f"{API}/campaigns/{{campaign_id}}"])
    assert "post" in paths[f"{API}/campaigns/{{campaign_id}}/codes"]
    assert "post" in paths[f"{API}/coupons/{{code}}/validate"]
    campaign = spec["components"]["schemas"]["Campaign"]
    assert set(campaign["required"]) == {"name", "discount_type", "discount_value", "currency"}
