"""Idempotency-Key on POST /redemptions and POST /redemptions/{id}/rollback (Stripe's rules)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import insert, select, update

from coupons.config import Settings
from coupons.db import db
from coupons.models import Coupon, IdempotencyKey, Redemption, Role, utcnow
from coupons.services import idempotency
from coupons.services import redemptions as coupon_service
from coupons.services.auth import decode_access_token
from tests.conftest import make_settings

Headers = dict[str, str]
API = "/api/v1"


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Admission control off: the concurrency tests here count outcomes of a burst larger
    than the admission limit on one hot row, where production would rightly shed some
    (admission is tested in tests/pooltender/test_admission*.py)."""
    return make_settings(database_url, pooltender_config={"POOLTENDER_ADMISSION": "false"})


@pytest.fixture
def code(client: FlaskClient, admin: Headers) -> str:
    response = client.post(
        f"{API}/campaigns",
        json={
            "name": "Keys",
            "discount_type": "percent",
            "discount_value": "20",
            "currency": "EUR",
            "per_customer_limit": 1,
        },
        headers=admin,
    )
    assert response.status_code == 201
    response = client.post(
        f"{API}/campaigns/{response.get_json()['id']}/codes",
        json={"code": "KEYED", "max_uses": 100},
        headers=admin,
    )
    assert response.status_code == 201
    return "KEYED"


def body(order: str = "o1", customer: str = "c1", total: str = "40.00") -> dict[str, Any]:
    return {"code": "KEYED", "customer_id": customer, "order_id": order, "order_total": total}


def keyed(headers: Headers, key: str) -> Headers:
    return {**headers, "Idempotency-Key": key}


def use_count(app: Flask) -> int:
    with app.app_context():
        n = db.session.execute(select(Coupon.use_count)).scalar_one()
        db.session.remove()
    return int(n)


def test_same_key_and_body_replays_the_first_response(
    client: FlaskClient, service: Headers, code: str, app: Flask, rows: Callable[[Any], int]
) -> None:
    first = client.post(f"{API}/redemptions", json=body(), headers=keyed(service, "k-1"))
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    # the order of the keys in the JSON body does not matter
    again_body = dict(reversed(list(body().items())))
    for _ in range(3):
        again = client.post(f"{API}/redemptions", json=again_body, headers=keyed(service, "k-1"))
        assert again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.get_json() == first.get_json()
    assert rows(Redemption) == 1
    assert use_count(app) == 1
    assert rows(IdempotencyKey) == 1


def test_refusals_replay_too(
    client: FlaskClient, service: Headers, code: str, app: Flask, rows: Callable[[Any], int]
) -> None:
    assert client.post(f"{API}/redemptions", json=body("o1")).status_code == 401
    ok = client.post(f"{API}/redemptions", json=body("o1"), headers=service)
    assert ok.status_code == 201
    # per-customer limit 1: a second order is refused, and the refusal is recorded
    refused = client.post(f"{API}/redemptions", json=body("o2"), headers=keyed(service, "k-2"))
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "customer_limit_reached"
    # free the customer's use: a new request would now succeed, the keyed retry must not
    rollback = client.post(f"{API}/redemptions/{ok.get_json()['id']}/rollback", headers=service)
    assert rollback.status_code == 200
    replay = client.post(f"{API}/redemptions", json=body("o2"), headers=keyed(service, "k-2"))
    assert replay.status_code == 409
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == refused.get_json()
    assert rows(Redemption) == 1
    assert use_count(app) == 0


def test_same_key_different_body_is_refused(
    client: FlaskClient, service: Headers, code: str, app: Flask, rows: Callable[[Any], int]
) -> None:
    assert (
        client.post(f"{API}/redemptions", json=body(), headers=keyed(service, "k-3")).status_code
        == 201
    )
    response = client.post(
        f"{API}/redemptions", json=body(order="o2", customer="c2"), headers=keyed(service, "k-3")
    )
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "idempotency_key_reused"
    assert rows(Redemption) == 1
    assert use_count(app) == 1


def test_same_key_on_another_endpoint_is_refused(
    client: FlaskClient, service: Headers, code: str, app: Flask, rows: Callable[[Any], int]
) -> None:
    created = client.post(f"{API}/redemptions", json=body(), headers=keyed(service, "k-4"))
    assert created.status_code == 201
    rid = created.get_json()["id"]
    response = client.post(f"{API}/redemptions/{rid}/rollback", headers=keyed(service, "k-4"))
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "idempotency_key_reused"
    assert use_count(app) == 1
    with app.app_context():
        status = db.session.get(Redemption, rid).status
        db.session.remove()
    assert status == "redeemed"


def test_keys_belong_to_one_user(
    client: FlaskClient,
    service: Headers,
    auth_header: Callable[..., Headers],
    code: str,
    rows: Callable[[Any], int],
) -> None:
    other = auth_header(Role.SERVICE)
    a = client.post(f"{API}/redemptions", json=body("o1", "c1"), headers=keyed(service, "k-5"))
    b = client.post(f"{API}/redemptions", json=body("o2", "c2"), headers=keyed(other, "k-5"))
    assert (a.status_code, b.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in b.headers
    assert rows(Redemption) == 2
    assert rows(IdempotencyKey) == 2


def test_rollback_with_a_key_replays(
    client: FlaskClient, service: Headers, code: str, app: Flask
) -> None:
    rid = client.post(f"{API}/redemptions", json=body(), headers=service).get_json()["id"]
    first = client.post(f"{API}/redemptions/{rid}/rollback", headers=keyed(service, "rb-1"))
    assert first.status_code == 200
    assert first.get_json()["status"] == "rolled_back"
    again = client.post(f"{API}/redemptions/{rid}/rollback", headers=keyed(service, "rb-1"))
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert use_count(app) == 0
    missing = client.post(f"{API}/redemptions/999999/rollback", headers=keyed(service, "rb-2"))
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "redemption_not_found"


def test_expired_keys_can_be_reused(
    client: FlaskClient, service: Headers, code: str, app: Flask, rows: Callable[[Any], int]
) -> None:
    first = client.post(f"{API}/redemptions", json=body("o1", "c1"), headers=keyed(service, "old"))
    assert first.status_code == 201
    with app.app_context():
        db.session.execute(
            update(IdempotencyKey).values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
        db.session.commit()
        db.session.remove()
    # a different body is fine now: the key starts afresh
    second = client.post(f"{API}/redemptions", json=body("o2", "c2"), headers=keyed(service, "old"))
    assert second.status_code == 201
    assert "Idempotent-Replayed" not in second.headers
    assert second.get_json()["id"] != first.get_json()["id"]
    assert rows(Redemption) == 2
    assert rows(IdempotencyKey) == 1


def test_keys_expire_after_the_configured_ttl(
    client: FlaskClient, service: Headers, code: str, app: Flask
) -> None:
    assert (
        client.post(f"{API}/redemptions", json=body(), headers=keyed(service, "ttl")).status_code
        == 201
    )
    with app.app_context():
        row = db.session.execute(select(IdempotencyKey)).scalar_one()
        lifetime = row.expires_at - row.created_at
        db.session.remove()
    assert lifetime == dt.timedelta(hours=24)


def test_purge_expired_deletes_only_expired_rows(
    client: FlaskClient, service: Headers, code: str, app: Flask, rows: Callable[[Any], int]
) -> None:
    for n in range(3):
        response = client.post(
            f"{API}/redemptions", json=body(f"o{n}", f"c{n}"), headers=keyed(service, f"p{n}")
        )
        assert response.status_code == 201
    with app.app_context():
        db.session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key.in_(["p0", "p1"]))
            .values(expires_at=utcnow() - dt.timedelta(minutes=1))
        )
        db.session.commit()
        assert idempotency.purge_expired() == 2
        assert idempotency.purge_expired() == 0
        db.session.remove()
    assert rows(IdempotencyKey) == 1


def _legacy_claim(app: Flask, service: Headers, key: str, created_at: dt.datetime) -> None:
    """A claim committed "in progress" by the earlier protocol (a worker of the previous
    release during a rolling deploy): response_status NULL."""
    token = service["Authorization"].removeprefix("Bearer ")
    principal = decode_access_token(token, app.config["SECRET_KEY"])
    with app.app_context():
        db.session.execute(
            insert(IdempotencyKey).values(
                user_id=principal.user_id,
                key=key,
                endpoint=f"POST {API}/redemptions",
                request_hash=idempotency.request_fingerprint(body()),
                response_status=None,
                response_body=None,
                created_at=created_at,
                expires_at=created_at + dt.timedelta(hours=1),
            )
        )
        db.session.commit()
        db.session.remove()


def test_a_claim_writes_nothing_until_its_effect_commits(
    app: Flask, service: Headers, code: str, rows: Callable[[Any], int]
) -> None:
    token = service["Authorization"].removeprefix("Bearer ")
    principal = decode_access_token(token, app.config["SECRET_KEY"])
    with app.app_context():
        claimed = idempotency.claim(
            user_id=principal.user_id,
            key="nothing-yet",
            endpoint=f"POST {API}/redemptions",
            request_hash=idempotency.request_fingerprint(body()),
            ttl=3600,
        )
        db.session.remove()
    assert isinstance(claimed, idempotency.Claim)
    assert rows(IdempotencyKey) == 0


def test_a_legacy_key_in_flight_is_409(
    client: FlaskClient, service: Headers, code: str, app: Flask, rows: Callable[[Any], int]
) -> None:
    _legacy_claim(app, service, "busy", utcnow())
    response = client.post(f"{API}/redemptions", json=body(), headers=keyed(service, "busy"))
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "idempotency_key_in_progress"
    assert rows(Redemption) == 0
    assert use_count(app) == 0


def test_an_abandoned_legacy_claim_is_taken_over_after_the_lease(
    client: FlaskClient, service: Headers, code: str, app: Flask, rows: Callable[[Any], int]
) -> None:
    claimed_at = utcnow() - idempotency.IN_PROGRESS_LEASE - dt.timedelta(seconds=1)
    _legacy_claim(app, service, "orphan", claimed_at)
    response = client.post(f"{API}/redemptions", json=body(), headers=keyed(service, "orphan"))
    assert response.status_code == 201
    assert rows(Redemption) == 1
    assert use_count(app) == 1
    replay = client.post(f"{API}/redemptions", json=body(), headers=keyed(service, "orphan"))
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert rows(Redemption) == 1


def test_a_duplicate_waits_for_the_first_request_and_replays_it(
    app: Flask, service: Headers, code: str, rows: Callable[[Any], int]
) -> None:
    """The first request holds its transaction open (key row inserted, not committed); the
    duplicate blocks on the key, and once the first commits it replays the same response."""
    inside = threading.Event()
    release = threading.Event()
    real = coupon_service.redeem_in_transaction

    def slow(**kwargs: Any) -> Any:
        result = real(**kwargs)
        if kwargs["order_id"] == "o1" and not inside.is_set():
            inside.set()
            assert release.wait(timeout=30)
        return result

    coupon_service.redeem_in_transaction = slow  # type: ignore[assignment]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(
                lambda: app.test_client().post(
                    f"{API}/redemptions", json=body(), headers=keyed(service, "wait")
                )
            )
            assert inside.wait(timeout=30)
            second = pool.submit(
                lambda: app.test_client().post(
                    f"{API}/redemptions", json=body(), headers=keyed(service, "wait")
                )
            )
            time.sleep(0.3)
            assert not second.done(), "the duplicate must wait for the first request"
            release.set()
            one, two = first.result(timeout=30), second.result(timeout=30)
    finally:
        coupon_service.redeem_in_transaction = real  # type: ignore[assignment]
    assert (one.status_code, two.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in one.headers
    assert two.headers["Idempotent-Replayed"] == "true"
    assert two.get_json() == one.get_json()
    assert rows(Redemption) == 1
    assert rows(IdempotencyKey) == 1


@pytest.mark.parametrize(("key", "error"), [("k" * 256, "idempotency_key_too_long"), ("  ", None)])
def test_bad_keys_are_400(
    client: FlaskClient,
    service: Headers,
    code: str,
    app: Flask,
    rows: Callable[[Any], int],
    key: str,
    error: str | None,
) -> None:
    response = client.post(f"{API}/redemptions", json=body(), headers=keyed(service, key))
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == (error or "invalid_idempotency_key")
    assert rows(Redemption) == 0
    assert rows(IdempotencyKey) == 0
    assert use_count(app) == 0
    # 255 characters is the limit, not over it
    ok = client.post(f"{API}/redemptions", json=body(), headers=keyed(service, "k" * 255))
    assert ok.status_code == 201


def test_validation_errors_do_not_burn_the_key(
    client: FlaskClient, service: Headers, code: str, rows: Callable[[Any], int]
) -> None:
    bad = client.post(f"{API}/redemptions", json=body(total="-1"), headers=keyed(service, "fix-me"))
    assert bad.status_code == 422
    assert bad.get_json()["error"]["code"] == "validation_error"
    assert rows(IdempotencyKey) == 0
    good = client.post(f"{API}/redemptions", json=body(), headers=keyed(service, "fix-me"))
    assert good.status_code == 201


def test_unexpected_failure_releases_the_key(
    client: FlaskClient,
    service: Headers,
    code: str,
    app: Flask,
    rows: Callable[[Any], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = coupon_service.redeem_in_transaction

    def broken(**kwargs: Any) -> Any:
        real(**kwargs)  # the redemption's writes happen, then the request dies
        raise RuntimeError("the process hit a bug")

    monkeypatch.setattr(coupon_service, "redeem_in_transaction", broken)
    response = client.post(f"{API}/redemptions", json=body(), headers=keyed(service, "retry"))
    assert response.status_code == 500
    assert rows(IdempotencyKey) == 0
    assert rows(Redemption) == 0
    assert use_count(app) == 0

    monkeypatch.setattr(coupon_service, "redeem_in_transaction", real)
    retried = client.post(f"{API}/redemptions", json=body(), headers=keyed(service, "retry"))
    assert retried.status_code == 201
    assert rows(Redemption) == 1


def test_concurrent_requests_with_one_key_redeem_once(
    app: Flask, service: Headers, code: str, rows: Callable[[Any], int]
) -> None:
    threads = 16
    start = threading.Barrier(threads)

    def send(_: int) -> tuple[int, Any, bool]:
        client = app.test_client()
        start.wait(timeout=30)
        response = client.post(f"{API}/redemptions", json=body(), headers=keyed(service, "race"))
        return (
            response.status_code,
            response.get_json(),
            response.headers.get("Idempotent-Replayed") == "true",
        )

    with ThreadPoolExecutor(max_workers=threads) as pool:
        replies = list(pool.map(send, range(threads)))

    statuses = Counter(status for status, _, _ in replies)
    # Duplicates wait for the first, then replay it. A waiting duplicate holds a connection,
    # so with 16 threads on a pool of 6 a late one may be shed (503, no effect): never 409.
    assert set(statuses) <= {201, 503}, replies
    assert statuses[201] >= 1
    created = [data for status, data, replayed in replies if status == 201 and not replayed]
    assert len(created) == 1
    assert sum(replayed for _, _, replayed in replies) == statuses[201] - 1
    for status, data, _ in replies:
        if status == 201:
            assert data == created[0]
        else:
            assert data["error"]["code"] == "service_unavailable"
    assert rows(Redemption) == 1
    assert use_count(app) == 1
