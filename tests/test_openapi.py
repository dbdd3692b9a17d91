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
