"""What the fault tests share: a migrated private MariaDB, and one code to redeem.

Every fault test that stops, freezes or kills a server does it to a server of its own
(:class:`~tests.pooltender._servers.PrivateMariaDB`), never to the shared one.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask.testing import FlaskClient

from coupons.migrate import upgrade
from tests.pooltender._servers import PrivateMariaDB

API = "/api/v1"


def migrated_private_mariadb() -> Iterator[PrivateMariaDB]:
    """A private MariaDB with the schema migrated (wrap it in a module-scoped fixture)."""
    with PrivateMariaDB() as private:
        upgrade(private.url)
        yield private


def uncapped_code(client: FlaskClient, admin: dict[str, str], name: str, code: str) -> int:
    """Create a campaign of 1.00 EUR off with no cap and one code ``code`` in it (no per-code
    cap either), through the API as ``admin``; return the campaign's id."""
    created = client.post(
        f"{API}/campaigns",
        json={"name": name, "discount_type": "fixed", "discount_value": "1.00", "currency": "EUR"},
        headers=admin,
    )
    assert created.status_code == 201, created.get_json()
    campaign_id: int = created.get_json()["id"]
    added = client.post(f"{API}/campaigns/{campaign_id}/codes", json={"code": code}, headers=admin)
    assert added.status_code == 201, added.get_json()
    return campaign_id
