"""``coupons demo``: migrate, seed and serve, so a fresh clone runs with one command."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import click
from sqlalchemy import select, update

from coupons.config import Settings
from coupons.db import db, transaction

DEMO_EMAIL = "admin@example.com"
DEMO_CAMPAIGN = "Demo spring sale"
DEMO_CODES = 1000


def demo_secret_key(var_dir: Path) -> str:
    """The demo's SECRET_KEY: generated once, kept in var/ so every worker signs alike."""
    path = var_dir / "demo-secret-key"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def seed(settings: Settings) -> tuple[str, str, int]:
    """Create (or refresh) the demo admin, campaign and codes.

    Returns the admin password (new on every run), a sample code and the campaign id.
    """
    from coupons import create_app
    from coupons.models import Campaign, Coupon, User
    from coupons.services.auth import create_user, hash_password
    from coupons.services.codegen import generate_codes
    from coupons.services.coupon import create_campaign

    password = secrets.token_urlsafe(12)
    app = create_app(settings)
    with app.app_context():
        user_id = db.session.scalar(select(User.id).where(User.email == DEMO_EMAIL))
        db.session.rollback()
        if user_id is None:
            create_user(DEMO_EMAIL, password, "admin")
        else:
            password_hash = hash_password(password)  # no connection held while hashing
            transaction(
                lambda: db.session.execute(
                    update(User).where(User.id == user_id).values(password_hash=password_hash)
                )
            )
        campaign_id = db.session.scalar(select(Campaign.id).where(Campaign.name == DEMO_CAMPAIGN))
        db.session.rollback()
        if campaign_id is None:
            campaign_id = create_campaign(
                name=DEMO_CAMPAIGN,
                discount_type="percent",
                discount_value=Decimal("10"),
                currency="EUR",
                max_redemptions=500,
                per_customer_limit=1,
                min_order_total=Decimal("20.00"),
            ).id
            generate_codes(campaign_id, DEMO_CODES, pattern="SPRING-####-####")
        sample = db.session.scalar(
            select(Coupon.code)
            .where(Coupon.campaign_id == campaign_id, Coupon.use_count == 0)
            .order_by(Coupon.id)
            .limit(1)
        )
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()
    return password, sample or "", int(campaign_id)


def dashboard_path() -> str:
    """Where the extension mounts the dashboard (``POOLTENDER_DASHBOARD_PATH``), no slash."""
    from pooltender.dashboard import DEFAULT_DASHBOARD_PATH

    return os.environ.get("POOLTENDER_DASHBOARD_PATH", DEFAULT_DASHBOARD_PATH).rstrip("/")


@click.command("demo")
@click.option(
    "--port", default=8000, envvar="PORT", show_default=True, type=click.IntRange(1, 65535)
)
@click.option("--no-serve", is_flag=True, help="Seed and print, but do not start the server.")
def demo(port: int, no_serve: bool) -> None:
    """Migrate a SQLite file under ./var/, seed demo data, print how to use it, and serve.

    Seeds an admin user (a new password on every run, printed below), a campaign
    and 1,000 codes, then serves the API on 127.0.0.1:PORT with gunicorn.
    """
    from coupons.api.signin import SIGN_IN_PATH
    from coupons.cli.common import load_settings
    from coupons.cli.serve import run_gunicorn
    from coupons.migrate import upgrade

    var_dir = Path.cwd() / "var"
    os.environ.setdefault("SECRET_KEY", demo_secret_key(var_dir))
    # A broker both processes reach without RabbitMQ: kombu's SQLAlchemy transport on SQLite.
    os.environ.setdefault("BROKER_URL", f"sqla+sqlite:///{var_dir / 'broker.db'}")
    os.environ.setdefault("POOLTENDER_DASHBOARD", "true")  # the banner points at it (issue 13)
    settings = load_settings()
    upgrade(settings.database_url)
    password, code, campaign_id = seed(settings)
    base = f"http://127.0.0.1:{port}"
    login = f'{{"email": "{DEMO_EMAIL}", "password": "{password}"}}'
    click.echo(
        f"""
coupons demo
  database      {settings.masked_database_url}
  admin login   {DEMO_EMAIL} / {password}
  campaign      {campaign_id} ({DEMO_CAMPAIGN}: 10% off orders from 20.00 EUR, {DEMO_CODES} codes)
  API           {base}/api/v1
  OpenAPI       {base}/openapi.json
  health        {base}/healthz   {base}/readyz
  dashboard     {base}{dashboard_path()}/  (admins; pool only on SQLite)
  sign in       {base}{SIGN_IN_PATH}  (the admin login above; a browser is sent there)
  pool stats    {base}/pooltender/stats   metrics  {base}/metrics

Try it (copy and paste):

  TOKEN=$(curl -s -X POST {base}/api/v1/auth/login -H 'Content-Type: application/json' \\
    -d '{login}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -s -X POST {base}/api/v1/coupons/{code}/validate -H "Authorization: Bearer $TOKEN" \\
    -H 'Content-Type: application/json' -d '{{"customer_id": "c-1", "order_total": "80.00"}}'
  curl -s -X POST {base}/api/v1/redemptions -H "Authorization: Bearer $TOKEN" \\
    -H 'Content-Type: application/json' -H "Idempotency-Key: demo-order-o-1" \\
    -d '{{"code": "{code}", "customer_id": "c-1", "order_id": "o-1", "order_total": "80.00"}}'

Open the dashboard in a browser: it sends you to the sign-in page, where the admin login
above lets you in for ACCESS_TOKEN_TTL (15 min; then sign in again). From the shell, the
dashboard and the stats page take the token (Authorization: Bearer $TOKEN):

  curl -s {base}{dashboard_path()}/data -H "Authorization: Bearer $TOKEN"

Order events (a consumer runs beside the API on {settings.masked_broker_url}):

  BROKER_URL={settings.masked_broker_url} .venv/bin/coupons publish-demo-orders 10 --cancel 2
"""
    )
    if no_serve:
        return
    consumer = subprocess.Popen(  # noqa: S603 - our own console script, fixed arguments
        [str(Path(sys.executable).with_name("coupons")), "consume", "--stats-interval", "60"]
    )
    try:
        run_gunicorn("127.0.0.1", port, workers=2, threads=4)
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(timeout=30)


def register(main: click.Group) -> None:
    main.add_command(demo)
