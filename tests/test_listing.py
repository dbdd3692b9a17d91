"""List endpoints and the query library: keyset pagination, filters, no N+1."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, insert

from coupons.db import db
from coupons.errors import Unprocessable
from coupons.lib.query import InvalidCursor, check_limit, decode_cursor, encode_cursor
from coupons.models import Coupon
from coupons.services.auth import ACCOUNT_REFRESH_OPTION
from tests.conftest import make_campaign


def make_coupons(app: Flask, campaign_id: int, n: int, tag: str, **values: Any) -> None:
    rows = [{"campaign_id": campaign_id, "code": f"{tag}-{i:05d}", **values} for i in range(n)]
    with app.app_context():
        db.session.execute(insert(Coupon), rows)
        db.session.commit()


def fetch_all(
    client: FlaskClient,
    url: str,
    headers: dict[str, str],
    limit: int,
    **filters: Any,
) -> list[list[dict[str, Any]]]:
    """Follow next_cursor to the end; return the pages."""
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        query = {"limit": limit, **filters, **({"cursor": cursor} if cursor else {})}
        response = client.get(url, query_string=query, headers=headers)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 1000


@contextmanager
def statements(app: Flask) -> Iterator[list[str]]:
    """Every SQL statement the request sends on the app's engine while the block runs.

    The account cache's refresh (two statements, at most once a second per process, on the
    same engine and pool: coupons.services.auth.AccountCache) is left out: it runs in
    whichever request finds the snapshot stale, so counting it would make the request's own
    cost depend on the clock. It is recognised by its execution option, not its text."""
    seen: list[str] = []
    with app.app_context():
        engine = db.engine

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not conn.get_execution_options().get(ACCOUNT_REFRESH_OPTION):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


# ---------------------------------------------------------------- the cursor (no database)


def test_cursor_round_trip_is_opaque_and_url_safe() -> None:
    for last_id in (0, 1, 42, 2**53):
        cursor = encode_cursor(last_id)
        assert decode_cursor(cursor) == last_id
        assert "=" not in cursor
        assert set(cursor) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "x",
        "!!!!",
        "not a cursor",
        _b64(b"[1]"),
        _b64(b'{"id": 5}'),  # no version
        _b64(b'{"v": 1, "id": -1}'),
        _b64(b'{"v": 1, "id": true}'),
        _b64(b'{"v": 1, "id": "5"}'),
        _b64(b'{"v": 1, "id": 1.5}'),
        _b64(b'{"v": 2, "id": 5}'),
        _b64(b"\xff\xfe"),
        "A" * 500,
    ],
)
def test_bad_cursors_are_invalid(cursor: str) -> None:
    with pytest.raises(InvalidCursor) as info:
        decode_cursor(cursor)
    assert info.value.status == 400
    assert info.value.code == "invalid_cursor"


def test_limit_bounds() -> None:
    assert check_limit(None) == 50
    assert check_limit(1) == 1
    assert check_limit(500) == 500
    for bad in (0, 501, -3):
        with pytest.raises(Unprocessable):
            check_limit(bad)


# ---------------------------------------------------------------- GET /campaigns


def test_campaign_pages_cover_every_row_once(
    app: Flask, client: FlaskClient, service: dict[str, str]
) -> None:
    ids = [make_campaign(app, name=f"c{i}", is_active=i % 3 != 0) for i in range(8)]
    pages = fetch_all(client, "/api/v1/campaigns", service, limit=3)
    assert [len(page) for page in pages] == [3, 3, 2]
    assert [item["id"] for page in pages for item in page] == ids

    item = pages[0][0]
    assert item["discount_value"] == "10.00"
    assert item["min_order_total"] is None
    assert item["created_at"].endswith("+00:00")

    active = client.get("/api/v1/campaigns?active=true", headers=service).get_json()
    assert [c["id"] for c in active["items"]] == [ids[i] for i in range(8) if i % 3 != 0]
    assert active["next_cursor"] is None
    inactive = client.get("/api/v1/campaigns?active=false", headers=service).get_json()
    assert [c["id"] for c in inactive["items"]] == [ids[0], ids[3], ids[6]]


def test_exact_last_page_has_no_next_cursor(
    app: Flask, client: FlaskClient, admin: dict[str, str]
) -> None:
    for i in range(4):
        make_campaign(app, name=f"c{i}")
    pages = fetch_all(client, "/api/v1/campaigns", admin, limit=2)
    assert [len(page) for page in pages] == [2, 2]


@pytest.mark.parametrize("path", ["/api/v1/campaigns", "/api/v1/coupons"])
def test_list_errors(client: FlaskClient, service: dict[str, str], path: str) -> None:
    cases = [
        ({"cursor": "garbage"}, service, 400, "invalid_cursor"),
        ({"cursor": _b64(b'{"v": 1, "id": -4}')}, service, 400, "invalid_cursor"),
        ({"limit": 0}, service, 422, "validation_error"),
        ({"limit": 501}, service, 422, "validation_error"),
        ({"limit": "ten"}, service, 422, "validation_error"),
        ({}, {}, 401, "missing_token"),
        ({}, {"Authorization": "Bearer x.y.z"}, 401, "invalid_token"),
    ]
    for query, headers, status, code in cases:
        response = client.get(path, query_string=query, headers=headers)
        assert response.status_code == status, (query, response.get_json())
        error = response.get_json()["error"]
        assert error["code"] == code
        assert error["message"]


def test_limit_bounds_are_inclusive(client: FlaskClient, service: dict[str, str]) -> None:
    for limit in (1, 500):
        response = client.get(f"/api/v1/coupons?limit={limit}", headers=service)
        assert response.status_code == 200
        assert response.get_json() == {"items": [], "next_cursor": None}


# ---------------------------------------------------------------- GET /coupons


def test_coupons_embed_their_campaign_and_page_through(
    app: Flask, client: FlaskClient, service: dict[str, str]
) -> None:
    first = make_campaign(app, name="First", discount_type="fixed", discount_value=Decimal("5"))
    second = make_campaign(app, name="Second", currency="USD")
    make_coupons(app, first, 7, "AA", max_uses=3)
    make_coupons(app, second, 5, "BB")

    pages = fetch_all(client, "/api/v1/coupons", service, limit=5)
    items = [item for page in pages for item in page]
    assert [len(page) for page in pages] == [5, 5, 2]
    assert len({item["id"] for item in items}) == 12
    assert [item["id"] for item in items] == sorted(item["id"] for item in items)
    item = items[0]
    assert item["code"] == "AA-00000"
    assert item["max_uses"] == 3
    assert item["use_count"] == 0
    assert item["status"] == "available"
    assert item["created_at"].endswith("+00:00")
    assert item["campaign"] == {
        "id": first,
        "name": "First",
        "discount_type": "fixed",
        "discount_value": "5.00",
        "currency": "EUR",
    }
    assert items[-1]["campaign"]["currency"] == "USD"

    only_second = fetch_all(client, "/api/v1/coupons", service, limit=2, campaign_id=second)
    codes = [item["code"] for page in only_second for item in page]
    assert codes == [f"BB-{i:05d}" for i in range(5)]


def test_coupon_status_filter(app: Flask, client: FlaskClient, service: dict[str, str]) -> None:
    open_campaign = make_campaign(app, name="open")
    capped = make_campaign(app, name="capped", max_redemptions=10, redemption_count=10)
    make_coupons(app, open_campaign, 3, "FREE")  # no per-code limit
    make_coupons(app, open_campaign, 2, "LEFT", max_uses=2, use_count=1)
    make_coupons(app, open_campaign, 2, "USED", max_uses=2, use_count=2)
    make_coupons(app, capped, 2, "CAP")  # the campaign-wide cap is reached

    def codes(status: str) -> list[str]:
        response = client.get(f"/api/v1/coupons?status={status}&limit=100", headers=service)
        assert response.status_code == 200
        items = response.get_json()["items"]
        assert {item["status"] for item in items} <= {status}
        return [item["code"].split("-")[0] for item in items]

    assert codes("available") == ["FREE"] * 3 + ["LEFT"] * 2
    assert codes("exhausted") == ["USED"] * 2 + ["CAP"] * 2
    bad = client.get("/api/v1/coupons?status=gone", headers=service)
    assert bad.status_code == 422
    assert bad.get_json()["error"]["code"] == "validation_error"


def test_listing_coupons_costs_a_bounded_number_of_statements(
    app: Flask, client: FlaskClient, service: dict[str, str]
) -> None:
    """No N+1: the campaigns come with the coupons, whatever the page size."""
    costs = {}
    for n in (10, 100):
        campaign_ids = [make_campaign(app, name=f"n{n}-{i}") for i in range(n)]
        for i, campaign_id in enumerate(campaign_ids):  # one coupon per campaign: worst case
            make_coupons(app, campaign_id, 1, f"N{n}X{i}")
        with statements(app) as seen:
            response = client.get(
                "/api/v1/coupons", query_string={"limit": n, "status": "available"}, headers=service
            )
        assert response.status_code == 200
        body = response.get_json()
        # The first run's 10 coupons come first; the second page size shows 100 rows.
        assert len(body["items"]) == n
        assert all(item["campaign"]["name"].startswith("n") for item in body["items"])
        costs[n] = len(seen)
    assert costs[10] == costs[100] <= 3, costs


def test_list_campaigns_statement_count(
    app: Flask, client: FlaskClient, service: dict[str, str]
) -> None:
    for i in range(30):
        make_campaign(app, name=f"c{i}")
    with statements(app) as seen:
        response = client.get("/api/v1/campaigns?limit=30", headers=service)
    assert response.status_code == 200
    assert len(response.get_json()["items"]) == 30
    assert len(seen) <= 3


def test_openapi_documents_the_list_routes(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    for path, params in (
        ("/api/v1/campaigns", {"active", "limit", "cursor"}),
        ("/api/v1/coupons", {"campaign_id", "status", "limit", "cursor"}),
    ):
        operation = paths[path]["get"]
        assert operation["security"] == [{"bearerAuth": []}]
        assert {p["name"] for p in operation["parameters"]} >= params
        limit = next(p for p in operation["parameters"] if p["name"] == "limit")
        assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 500)
