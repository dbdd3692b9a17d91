"""/openapi.json documents exactly the API's routes, with the bodies they accept."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient

API = "/api/v1"


def flask_operations(app: Flask) -> set[tuple[str, str]]:
    ops = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(API):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                ops.add((method.lower(), path))
    return ops


def test_every_route_is_documented_and_every_documented_route_exists(
    app: Flask, client: FlaskClient
) -> None:
    spec = client.get("/openapi.json").get_json()
    documented = {
        (method, path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert documented == flask_operations(app)


def test_write_operations_document_their_request_bodies(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    missing = [
        f"{method.upper()} {path}"
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if method in ("post", "patch")
        and "requestBody" not in operation
        and not path.endswith("/rollback")  # a rollback takes no body
    ]
    assert missing == []


def test_redemption_body_schema_matches_what_the_route_requires(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    body = spec["paths"][f"{API}/redemptions"]["post"]["requestBody"]["content"]
    ref = body["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    schema = spec["components"]["schemas"][ref]
    assert set(schema["required"]) == {"code", "customer_id", "order_id", "order_total"}


def test_every_operation_documents_its_error_statuses_and_codes(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            assert "default" not in responses, (method, path)  # an unlisted status fails
            assert {"413", "422", "503"} <= set(responses), (method, path)
            if "requestBody" in operation:
                assert "400" in responses, (method, path)
            if operation.get("security"):
                assert "401" in responses, (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
            for status, answer in responses.items():
                if int(status) >= 400:
                    assert answer["x-error-codes"], (method, path, status)
                    assert all(code in answer["description"] for code in answer["x-error-codes"])
                    schema = answer["content"]["application/json"]["schema"]
                    code = schema["allOf"][1]["properties"]["error"]["properties"]["code"]
                    assert code["enum"] == answer["x-error-codes"]
    redeem = spec["paths"][f"{API}/redemptions"]["post"]["responses"]
    assert "coupon_exhausted" in redeem["409"]["x-error-codes"]
    assert redeem["503"]["x-error-codes"] == [
        "database_unavailable",
        "service_unavailable",
        "overloaded",
    ]
    assert "403" in spec["paths"][f"{API}/campaigns"]["post"]["responses"]  # admin only


def test_money_is_a_string_in_every_response_schema(client: FlaskClient) -> None:
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    money = {"discount_value", "min_order_total", "order_total", "discount", "discount_amount"}
    seen = 0
    for name, schema in schemas.items():
        for field, prop in schema.get("properties", {}).items():
            if field in money:
                seen += 1
                assert prop["type"] in ("string", ["string", "null"]), (name, field, prop)
    assert seen >= 10


def test_what_the_document_allows_is_accepted_or_forbidden(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    query = spec["paths"][f"{API}/campaigns"]["get"]["parameters"]
    cursor = next(p for p in query if p["name"] == "cursor")
    assert cursor["schema"]["minLength"] == 1  # "cursor=" is refused, so not allowed
    rollback = spec["paths"][f"{API}/redemptions/{{redemption_id}}/rollback"]["post"]
    key = next(p for p in rollback["parameters"] if p["name"] == "Idempotency-Key")
    assert key["schema"]["minLength"] == 1
    assert key["schema"]["pattern"] == r"\S"  # a blank key is refused
    ident = spec["paths"][f"{API}/campaigns/{{campaign_id}}"]["parameters"][0]["schema"]
    assert (ident["minimum"], ident["maximum"]) == (1, 2_147_483_647)


def test_generate_codes_takes_strict_integers_in_the_columns_range(
    app: Flask, client: FlaskClient, admin: dict[str, str]
) -> None:
    from coupons.models import Coupon
    from tests.conftest import count_rows, make_campaign

    campaign_id = make_campaign(app)
    url = f"{API}/campaigns/{campaign_id}/codes/generate"
    for body in (
        {"count": 1.5},
        {"count": "2"},
        {"count": True},
        {"count": 1, "max_uses": 1.5},
        {"count": 1, "max_uses": 2_147_483_648},
        {"count": 1, "max_uses": 0},
    ):
        response = client.post(url, json=body, headers=admin)
        assert response.status_code == 422, (body, response.get_json())
        assert response.get_json()["error"]["code"] == "validation_error"
    assert count_rows(app, Coupon) == 0
    accepted = client.post(url, json={"count": 2, "max_uses": 2_147_483_647}, headers=admin)
    assert accepted.status_code == 201, accepted.get_json()
    assert count_rows(app, Coupon) == 2


def test_an_id_beyond_the_columns_range_is_404_for_every_method(
    client: FlaskClient, admin: dict[str, str]
) -> None:
    big = 2_147_483_648
    for method, path in (
        ("get", f"/campaigns/{big}"),
        ("patch", f"/campaigns/{big}"),
        ("post", f"/campaigns/{big}/codes"),
        ("get", f"/redemptions/{big}"),
        ("post", f"/redemptions/{big}/rollback"),
        ("get", "/campaigns/0"),
    ):
        response = client.open(f"{API}{path}", method=method.upper(), json={}, headers=admin)
        assert response.status_code == 404, (method, path, response.get_json())
        assert response.get_json()["error"]["code"] == "not_found"


def test_the_document_states_the_window_rule_it_cannot_express(client: FlaskClient) -> None:
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    for name in ("Campaign", "CampaignPatch"):
        assert "strictly after starts_at" in schemas[name]["properties"]["ends_at"]["description"]
