"""Production serving: gunicorn's post_fork hook forgets connections inherited from the master."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import text

from coupons.db import db
from coupons.gunicorn_conf import post_fork


def test_post_fork_disposes_the_apps_engines(app: Flask) -> None:
    with app.app_context():
        db.session.execute(text("SELECT 1"))
        db.session.remove()
        pool = db.engine.pool
        assert pool.checkedin() == 1  # type: ignore[attr-defined]
        post_fork(server=None, worker=None)
        assert db.engine.pool is not pool  # a fresh pool: nothing inherited is reused
        assert db.engine.pool.checkedin() == 0  # type: ignore[attr-defined]
        pool.dispose()  # in a real fork the parent still owns these; here we are the parent
