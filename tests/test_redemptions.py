"""Redemptions and rollbacks over HTTP, on every backend.

Each refusal is checked for status, error code, and that no counter moved and no row was
written (``State`` snapshots every counter and row count before and after).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from coupons.db import db
from coupons.models import Campaign, Coupon, CustomerUsage, Redemption

Headers = dict[str, str]
API = "/api/v1"
NOW = dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class State:
    use_counts: dict[str, int]
    redemption_counts: dict[int, int]
    usage: dict[tuple[int, str], int]
    ledger: tuple[tuple[int, str, str | None], ...]


def state(app: Flask) -> State:
    with app.app_context():
        s = db.session
        result = State(
            use_counts=dict(s.query(Coupon.code, Coupon.use_count).all()),
            redemption_counts=dict(s.query(Campaign.id, Campaign.redemption_count).all()),
            usage={(u.campaign_id, u.customer_id): u.count for u in s.query(CustomerUsage).all()},
            ledger=tuple(
                s.query(Redemption.id, Redemption.status, Redemption.active_order_key)
                .order_by(Redemption.id)
                .all()
            ),
        )
        db.session.remove()
    return result


def new_campaign(client: FlaskClient, admin: Headers, **fields: Any) -> int:
    body: dict[str, Any] = {
        "name": "Campaign",
        "discount_type": "percent",
        "discount_value": "10",
        "currency": "EUR",
    }
    body.update(fields)
    response = client.post(f"{API}/campaigns", json=body, headers=admin)
    assert response.status_code == 201, response.get_json()
    campaign_id: int = response.get_json()["id"]
    return campaign_id


def new_code(client: FlaskClient, admin: Headers, campaign_id: int, code: str, **body: Any) -> None:
    response = client.post(
        f"{API}/campaigns/{campaign_id}/codes", json={"code": code, **body}, headers=admin
    )
    assert response.status_code == 201, response.get_json()


def redeem(
    client: FlaskClient,
    headers: Headers,
    code: str,
    customer: str = "cust-1",
    order: str = "order-1",
    total: Any = "50.00",
) -> Any:
    return client.post(
        f"{API}/redemptions",
        json={"code": code, "customer_id": customer, "order_id": order, "order_total": total},
        headers=headers,
    )


def error_code(response: Any) -> str:
    code: str = response.get_json()["error"]["code"]
    return code


@pytest.fixture
def setup(client: FlaskClient, admin: Headers) -> Callable[..., int]:
    """``setup(code, campaign fields..., max_uses=...)`` -> the new campaign's id."""

    def _setup(code: str, *, max_uses: int | None = None, **campaign: Any) -> int:
        campaign_id = new_campaign(client, admin, **campaign)
        new_code(client, admin, campaign_id, code, max_uses=max_uses)
        return campaign_id

    return _setup


# --------------------------------------------------------------------------- happy path


def test_redeem_returns_the_ledger_row(
    client: FlaskClient, service: Headers, setup: Callable[..., int], app: Flask
) -> None:
    campaign_id = setup("TEN-OFF", max_uses=5, max_redemptions=10, per_customer_limit=3)
    response = redeem(client, service, "ten-off", total=125.55)
    assert response.status_code == 201
    data = response.get_json()
    assert data["id"] > 0
    assert data["code"] == "TEN-OFF"
    assert data["campaign_id"] == campaign_id
    assert (data["customer_id"], data["order_id"]) == ("cust-1", "order-1")
    assert data["order_total"] == "125.55"
    assert data["discount_amount"] == "12.56"
    assert data["currency"] == "EUR"
    assert data["status"] == "redeemed"
    assert data["rolled_back_at"] is None
    assert abs(dt.datetime.fromisoformat(data["redeemed_at"]) - NOW) < dt.timedelta(minutes=5)

    after = state(app)
    assert after.use_counts == {"TEN-OFF": 1}
    assert after.redemption_counts == {campaign_id: 1}
    assert after.usage == {(campaign_id, "cust-1"): 1}
    assert after.ledger == ((data["id"], "redeemed", "order-1"),)

    response = client.get(f"{API}/redemptions/{data['id']}", headers=service)
    assert response.status_code == 200
    assert response.get_json() == data


def test_fixed_discount_never_exceeds_the_order(
    client: FlaskClient, service: Headers, setup: Callable[..., int]
) -> None:
    setup("FIVER", discount_type="fixed", discount_value="25.00", currency="USD")
    response = redeem(client, service, "FIVER", total="19.99")
    assert response.status_code == 201
    assert response.get_json()["discount_amount"] == "19.99"
    assert response.get_json()["currency"] == "USD"


def test_admin_may_redeem_too(
    client: FlaskClient, admin: Headers, setup: Callable[..., int]
) -> None:
    setup("ADMIN-OK")
    assert redeem(client, admin, "ADMIN-OK").status_code == 201


# --------------------------------------------------------------------------- refusals


def _refused(
    client: FlaskClient, app: Flask, response_factory: Callable[[], Any], status: int, code: str
) -> None:
    before = state(app)
    response = response_factory()
    assert response.status_code == status, response.get_json()
    assert error_code(response) == code
    assert response.get_json()["error"]["message"]
    assert state(app) == before


@pytest.mark.parametrize(
    ("campaign", "total", "code"),
    [
        ({"is_active": False}, "50", "campaign_inactive"),
        ({"starts_at": (NOW + dt.timedelta(hours=1)).isoformat()}, "50", "coupon_not_yet_valid"),
        (
            {
                "starts_at": (NOW - dt.timedelta(days=2)).isoformat(),
                "ends_at": (NOW - dt.timedelta(seconds=1)).isoformat(),
            },
            "50",
            "coupon_expired",
        ),
        ({"min_order_total": "50.01"}, "50.00", "order_total_below_minimum"),
    ],
)
def test_unusable_coupons_are_422(
    client: FlaskClient,
    service: Headers,
    setup: Callable[..., int],
    app: Flask,
    campaign: dict[str, Any],
    total: str,
    code: str,
) -> None:
    setup("RULES", **campaign)
    _refused(client, app, lambda: redeem(client, service, "RULES", total=total), 422, code)


@pytest.mark.parametrize("code", ["NOPE-NOPE", "x", "bad code!"])
def test_unknown_code_is_422(
    client: FlaskClient, service: Headers, setup: Callable[..., int], app: Flask, code: str
) -> None:
    setup("REAL-CODE")
    _refused(client, app, lambda: redeem(client, service, code), 422, "coupon_not_found")


def test_code_uses_exhausted(
    client: FlaskClient, service: Headers, setup: Callable[..., int], app: Flask
) -> None:
    setup("ONCE", max_uses=1)
    assert redeem(client, service, "ONCE", "a", "o1").status_code == 201
    _refused(
        client, app, lambda: redeem(client, service, "ONCE", "b", "o2"), 409, "coupon_exhausted"
    )


def test_campaign_cap_is_shared_by_its_codes(
    client: FlaskClient, admin: Headers, service: Headers, app: Flask
) -> None:
    campaign_id = new_campaign(client, admin, max_redemptions=2)
    for code in ("SHARED-A", "SHARED-B", "SHARED-C"):
        new_code(client, admin, campaign_id, code)
    assert redeem(client, service, "SHARED-A", "a", "o1").status_code == 201
    assert redeem(client, service, "SHARED-B", "b", "o2").status_code == 201
    _refused(
        client,
        app,
        lambda: redeem(client, service, "SHARED-C", "c", "o3"),
        409,
        "coupon_exhausted",
    )
    assert state(app).use_counts == {"SHARED-A": 1, "SHARED-B": 1, "SHARED-C": 0}


def test_customer_limit(
    client: FlaskClient, service: Headers, setup: Callable[..., int], app: Flask
) -> None:
    campaign_id = setup("LIMITED", per_customer_limit=2)
    assert redeem(client, service, "LIMITED", "alice", "o1").status_code == 201
    assert redeem(client, service, "LIMITED", "alice", "o2").status_code == 201
    _refused(
        client,
        app,
        lambda: redeem(client, service, "LIMITED", "alice", "o3"),
        409,
        "customer_limit_reached",
    )
    # another customer is not affected
    assert redeem(client, service, "LIMITED", "bob", "o4").status_code == 201
    assert state(app).usage == {(campaign_id, "alice"): 2, (campaign_id, "bob"): 1}


def test_same_order_twice_in_a_campaign(
    client: FlaskClient, admin: Headers, service: Headers, app: Flask
) -> None:
    campaign_id = new_campaign(client, admin)
    new_code(client, admin, campaign_id, "FIRST")
    new_code(client, admin, campaign_id, "SECOND")
    assert redeem(client, service, "FIRST", "a", "order-9").status_code == 201
    for code in ("FIRST", "SECOND"):
        _refused(
            client,
            app,
            lambda code=code: redeem(client, service, code, "a", "order-9"),  # type: ignore[misc]
            409,
            "already_redeemed",
        )
    # the same order id in another campaign is a different redemption
    other = new_campaign(client, admin, name="Other")
    new_code(client, admin, other, "ELSEWHERE")
    assert redeem(client, service, "ELSEWHERE", "a", "order-9").status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {"order_total": "0"},
        {"order_total": "-10"},
        {"order_total": 0},
        {"order_total": "12.345"},
        {"order_total": "lots"},
        {"order_total": "1e400"},
        {"order_total": "NaN"},
        {"order_total": "10000000000.00"},
        {"customer_id": ""},
        {"customer_id": "   "},
        {"order_id": "o" * 65},
        {"code": None},
        {"extra": "field"},
    ],
)
def test_invalid_bodies_are_422_validation_error(
    client: FlaskClient,
    service: Headers,
    setup: Callable[..., int],
    app: Flask,
    body: dict[str, Any],
) -> None:
    setup("VALID")
    payload: dict[str, Any] = {
        "code": "VALID",
        "customer_id": "c",
        "order_id": "o",
        "order_total": "10",
    }
    payload.update(body)
    _refused(
        client,
        app,
        lambda: client.post(f"{API}/redemptions", json=payload, headers=service),
        422,
        "validation_error",
    )


def test_missing_fields_are_named(client: FlaskClient, service: Headers) -> None:
    response = client.post(f"{API}/redemptions", json={}, headers=service)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    assert set(response.get_json()["error"]["fields"]) == {
        "code",
        "customer_id",
        "order_id",
        "order_total",
    }


def test_redemption_routes_need_a_token(
    client: FlaskClient, setup: Callable[..., int], app: Flask
) -> None:
    setup("AUTH")
    _refused(client, app, lambda: redeem(client, {}, "AUTH"), 401, "missing_token")
    _refused(
        client,
        app,
        lambda: redeem(client, {"Authorization": "Bearer x.y.z"}, "AUTH"),
        401,
        "invalid_token",
    )
    for method, path in [("get", "/redemptions/1"), ("post", "/redemptions/1/rollback")]:
        response = getattr(client, method)(API + path)
        assert response.status_code == 401
        assert error_code(response) == "missing_token"


# --------------------------------------------------------------------------- rollback


def test_rollback_restores_every_count_once(
    client: FlaskClient, service: Headers, setup: Callable[..., int], app: Flask
) -> None:
    campaign_id = setup("UNDO", max_uses=1, max_redemptions=1, per_customer_limit=1)
    first = redeem(client, service, "UNDO", "alice", "o1").get_json()
    assert state(app).use_counts == {"UNDO": 1}

    response = client.post(f"{API}/redemptions/{first['id']}/rollback", headers=service)
    assert response.status_code == 200
    rolled = response.get_json()
    assert rolled["status"] == "rolled_back"
    assert rolled["rolled_back_at"] is not None
    assert {k: v for k, v in rolled.items() if k not in ("status", "rolled_back_at")} == {
        k: v for k, v in first.items() if k not in ("status", "rolled_back_at")
    }
    after = state(app)
    assert after.use_counts == {"UNDO": 0}
    assert after.redemption_counts == {campaign_id: 0}
    assert after.usage == {(campaign_id, "alice"): 0}
    assert after.ledger == ((first["id"], "rolled_back", None),)

    # the freed use and order can be redeemed again: the same order, a new ledger row
    second = redeem(client, service, "UNDO", "alice", "o1")
    assert second.status_code == 201
    assert second.get_json()["id"] != first["id"]

    # rolling the first one back again changes nothing and answers with its state
    before = state(app)
    again = client.post(f"{API}/redemptions/{first['id']}/rollback", headers=service)
    assert again.status_code == 200
    assert again.get_json() == rolled
    assert state(app) == before
    assert before.use_counts == {"UNDO": 1}


def test_rollback_unknown_redemption(
    client: FlaskClient, service: Headers, setup: Callable[..., int], app: Flask
) -> None:
    setup("UNKNOWN")
    _refused(
        client,
        app,
        lambda: client.post(f"{API}/redemptions/987654/rollback", headers=service),
        404,
        "redemption_not_found",
    )
    response = client.get(f"{API}/redemptions/987654", headers=service)
    assert response.status_code == 404
    assert error_code(response) == "redemption_not_found"


def test_openapi_describes_the_redemption_routes(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    post = spec["paths"][f"{API}/redemptions"]["post"]
    assert {"201", "409", "422"} <= set(post["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in post["parameters"])
    body = spec["components"]["schemas"]["RedeemRequest"]
    assert set(body["required"]) == {"code", "customer_id", "order_id", "order_total"}
    assert "post" in spec["paths"][f"{API}/redemptions/{{redemption_id}}/rollback"]
