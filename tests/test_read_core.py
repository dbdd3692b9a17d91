"""coupons.db.read_core: the hot reads on a connection of their own, still one per request."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import text

from coupons.db import db, read_core
from coupons.models import Coupon
from coupons.services.validation import get_coupon
from pooltender.watch import watch_of
from tests.conftest import make_campaign


def test_read_core_ends_the_sessions_transaction_before_it_checks_out(app: Flask) -> None:
    campaign_id = make_campaign(app)
    with app.app_context():
        db.session.add(Coupon(campaign_id=campaign_id, code="CORE-1", use_count=0))
        db.session.commit()
        watch = watch_of(db.engine)
        assert watch is not None
        db.session.execute(text("SELECT 1"))  # a read left open: the session holds one
        assert db.session().in_transaction()
        assert watch.held_by_current_owner() == 1

        def held_inside(connection: object) -> int:
            return watch.held_by_current_owner()

        assert read_core(held_inside) == 1  # its own, the session's is back in the pool
        assert not db.session().in_transaction()
        assert watch.held_by_current_owner() == 0  # and its own is back before it returns
        assert get_coupon("core-1").code == "CORE-1"
        assert watch.held_by_current_owner() == 0
        db.session.remove()


def test_read_core_refuses_unflushed_changes(app: Flask) -> None:
    campaign_id = make_campaign(app)
    with app.app_context():
        db.session.add(Coupon(campaign_id=campaign_id, code="CORE-2", use_count=0))
        with pytest.raises(RuntimeError, match="unflushed changes"):
            read_core(lambda connection: None)
        db.session.rollback()
        db.session.remove()
