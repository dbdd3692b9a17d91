"""Idempotency keys survive a real SIGKILL: the retry runs at once, nothing applies twice.

A child process (its own interpreter, its own connections) claims a key and runs the
redemption under it, then stops inside the transaction, before COMMIT; the test SIGKILLs it.
The server rolls the transaction back when the connection drops (SQLite: the OS releases
the file lock), so the client's retry with the same key and body must redeem at once,
not answer 409 for the old 120 s lease, and a second retry must replay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from coupons.config import Settings
from coupons.models import IdempotencyKey, Redemption
from coupons.services.auth import decode_access_token

Headers = dict[str, str]
API = "/api/v1"

CHILD = """
import datetime as dt, json, os, sys, time
from decimal import Decimal
from coupons import create_app
from coupons.config import Settings
from coupons.services import idempotency
from coupons.services.coupon import redeem_in_transaction
from coupons.models import utcnow

url, user_id, key, raw, marker = sys.argv[1:6]
user_id, body = int(user_id), json.loads(raw)
app = create_app(Settings(database_url=url, environment="test", secret_key="x" * 40))
with app.app_context():
    claimed = idempotency.claim(
        user_id=user_id, key=key, endpoint="POST /api/v1/redemptions",
        request_hash=idempotency.request_fingerprint(body), ttl=3600,
    )
    assert isinstance(claimed, idempotency.Claim), claimed

    def effect():
        redeem_in_transaction(
            code=body["code"], customer_id=body["customer_id"], order_id=body["order_id"],
            order_total=Decimal(body["order_total"]), now=utcnow(),
        )
        open(marker, "w").close()  # the redemption is written, not committed
        time.sleep(120)
        raise SystemExit("not killed")

    idempotency.execute(claimed, effect, lambda exc: None)
"""


@pytest.fixture
def code(client: FlaskClient, admin: Headers) -> str:
    created = client.post(
        f"{API}/campaigns",
        json={"name": "K", "discount_type": "percent", "discount_value": "10", "currency": "EUR"},
        headers=admin,
    )
    assert created.status_code == 201
    made = client.post(
        f"{API}/campaigns/{created.get_json()['id']}/codes", json={"code": "KILL-1"}, headers=admin
    )
    assert made.status_code == 201
    return "KILL-1"


@pytest.mark.fault
def test_a_worker_killed_mid_effect_leaves_no_stuck_key(
    app: Flask,
    client: FlaskClient,
    service: Headers,
    settings: Settings,
    code: str,
    rows: Callable[[Any], int],
    tmp_path: Path,
) -> None:
    body = {"code": code, "customer_id": "c-kill", "order_id": "o-kill", "order_total": "40.00"}
    principal = decode_access_token(
        service["Authorization"].removeprefix("Bearer "), app.config["SECRET_KEY"]
    )
    marker = tmp_path / "inside"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            settings.database_url,
            str(principal.user_id),
            "killed-key",
            json.dumps(body),
            str(marker),
        ],
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the child died before its effect"
            assert time.monotonic() < deadline, "the child never reached its effect"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert rows(IdempotencyKey) == 0  # nothing committed
    assert rows(Redemption) == 0

    started = time.monotonic()
    headers = {**service, "Idempotency-Key": "killed-key"}
    retry = client.post(f"{API}/redemptions", json=body, headers=headers)
    took = time.monotonic() - started
    assert retry.status_code == 201, retry.get_json()
    assert "Idempotent-Replayed" not in retry.headers
    assert took < 5, f"the retry waited {took:.1f} s for the dead worker's transaction"
    again = client.post(f"{API}/redemptions", json=body, headers=headers)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == retry.get_json()
    assert rows(Redemption) == 1
    assert rows(IdempotencyKey) == 1
