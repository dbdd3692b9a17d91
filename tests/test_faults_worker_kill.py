"""A gunicorn worker SIGKILLed under load: the other workers keep serving, the clients see at
most connection errors for the requests that worker had in flight, and the ledger is exact.

``coupons serve`` (3 gthread workers, 2 threads each) runs on a private MariaDB
(tests/pooltender/_servers.py). 16 client threads redeem one order after another over HTTP,
each with its own Idempotency-Key, retrying an order (same key and body) after a connection
error or a 503 until it gets a final answer, as a checkout backend would. One worker is
SIGKILLed, :data:`KILLS` times (gunicorn starts a replacement). The killed worker's open
transactions are rolled back by the server when its connections drop, and the key row is
written in the effect's transaction, so a retry either replays a committed redemption or
runs afresh (docs/reliability.md 3).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.pool import NullPool

from coupons import create_app
from coupons.db import db
from coupons.models import Campaign, Coupon, IdempotencyKey, Redemption, Role
from tests._faults import migrated_private_mariadb, uncapped_code
from tests._serve import children, coupons_serve, serve_env
from tests.conftest import TEST_SECRET, make_settings
from tests.pooltender._servers import PrivateMariaDB, free_port
from tests.test_faults import user_headers

CLIENTS = 16
WORKERS = 3
KILLS = 2
API = "/api/v1"


server = pytest.fixture(scope="module", name="server")(migrated_private_mariadb)


def _workers(process: subprocess.Popen[bytes]) -> list[int]:
    masters = children(process.pid)
    return sorted(children(masters[0])) if masters else []


@pytest.fixture
def served(server: PrivateMariaDB, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = serve_env(server.url, SECRET_KEY=TEST_SECRET)
    args = ["--workers", str(WORKERS), "--threads", "2"]
    ready = lambda process: len(_workers(process)) == WORKERS  # noqa: E731
    with coupons_serve(port, args, env, tmp_path / "gunicorn.log", ready=ready) as process:
        yield process, port


@pytest.mark.fault
@pytest.mark.slow
def test_a_worker_killed_under_load_loses_nothing(
    server: PrivateMariaDB, served: tuple[subprocess.Popen[bytes], int]
) -> None:
    process, port = served
    app = create_app(make_settings(server.url))
    client = app.test_client()
    admin = user_headers(app, Role.ADMIN)
    service = user_headers(app, Role.SERVICE)
    uncapped_code(client, admin, "W", "WKILL")
    with app.app_context():
        db.engine.dispose()

    statuses: dict[int | str, int] = {}
    bad: list[tuple[int, object]] = []
    told: dict[str, int] = {}
    successes_at: list[float] = []
    errors_at: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def post(body: dict[str, str], key: str) -> tuple[int, dict[str, object] | None]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(
                "POST",
                f"{API}/redemptions",
                body=json.dumps(body),
                headers={**service, "Idempotency-Key": key, "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    def run(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            order = f"w{worker}-o{n}"
            body = {"code": "WKILL", "customer_id": order, "order_id": order, "order_total": "5"}
            while True:
                try:
                    status, payload = post(body, f"key-{order}")
                except (OSError, http.client.HTTPException):
                    with lock:
                        statuses["connection error"] = statuses.get("connection error", 0) + 1
                        errors_at.append(time.monotonic())
                    time.sleep(0.05)
                    continue
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status not in (201, 503):
                        bad.append((status, payload))
                    if status == 201 and payload is not None:
                        told[order] = int(str(payload["id"]))
                        successes_at.append(time.monotonic())
                if status != 503:
                    break
                time.sleep(0.05)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    kills: list[float] = []
    try:
        for _ in range(KILLS):
            time.sleep(1.5)
            victim = _workers(process)[0]
            os.kill(victim, signal.SIGKILL)
            kills.append(time.monotonic())
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                workers = _workers(process)
                if victim not in workers and len(workers) == WORKERS:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("gunicorn did not replace the killed worker")
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
    assert not any(thread.is_alive() for thread in threads)
    errors = statuses.get("connection error", 0)
    after_kill = [sum(1 for at in successes_at if kill < at <= kill + 0.5) for kill in kills]
    print(
        f"statuses {statuses}; successes in the 0.5 s after each kill {after_kill}; "
        f"{len(told)} orders redeemed"
    )
    assert bad == [], bad[:5]
    # only the requests the killed worker held (running or accepted into its queue) fail,
    # at the kill: none later, and never more than one per client per kill
    assert errors <= KILLS * CLIENTS, statuses
    assert all(any(kill <= at <= kill + 1.0 for kill in kills) for at in errors_at), (
        kills,
        errors_at,
    )
    assert all(count > 0 for count in after_kill), "the other workers stopped serving"

    engine = create_engine(server.url, poolclass=NullPool)
    with engine.connect() as conn:
        ledger = {row.order_id: row.id for row in conn.execute(select(Redemption))}
        stuck = conn.execute(
            select(IdempotencyKey.key).where(IdempotencyKey.response_status.is_(None))
        ).all()
        use_count = conn.execute(select(Coupon.use_count)).scalar_one()
        redemption_count = conn.execute(select(Campaign.redemption_count)).scalar_one()
    engine.dispose()
    assert stuck == []
    assert ledger == told, "every 201 has exactly its row, and no other order left one"
    assert use_count == redemption_count == len(ledger)
