from __future__ import annotations

from flask.testing import FlaskClient


def test_healthz_needs_no_database(client: FlaskClient) -> None:
    for path in ("/healthz", "/api/v1/healthz"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.get_json() == {"status": "ok"}


def test_readyz_reaches_the_database(client: FlaskClient) -> None:
    response = client.get("/api/v1/readyz")
    assert response.status_code == 200
    assert response.get_json()["database"] == "ok"


def test_unknown_route_is_a_json_404(client: FlaskClient) -> None:
    response = client.get("/api/v1/nope")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_openapi_document_is_served(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/healthz" in spec["paths"]
