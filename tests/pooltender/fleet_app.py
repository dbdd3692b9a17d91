"""A small Flask + Flask-SQLAlchemy app reproducing the post-mortem's coupon service, for the
fleet tests (``test_fleet.py``), served by real gunicorn workers.

``GET /redeem`` does what the post-mortem's BEFORE ``CouponService`` did: a short query on
``db.session`` (whose connection stays checked out until the request ends) and, when
``FLEET_SECOND_SESSION`` is on, a second ``Session(bind=db.engine)`` doing another short query
*while the first connection is still held*: two connections per request. Each query sleeps
(``SELECT SLEEP(s)`` / ``SELECT pg_sleep(s)``) to hold its connection like real work.

A database error is answered with status 500 and a JSON body carrying the driver's message
(``(1040, 'Too many connections')``, ``sorry, too many clients already``), and logged, so the
load generator can count refusals from the bodies.

Configuration, all from the environment (so one gunicorn command line serves every variant):

``FLEET_DATABASE_URL``         SQLAlchemy URL (required)
``FLEET_SECOND_SESSION``       ``1``: also open ``Session(bind=db.engine)`` per request (BEFORE)
``FLEET_HOLD_SECONDS``         seconds each query sleeps (default 0.05)
``POOLTENDER_*``               pool settings, read by :meth:`PoolSettings.from_env`
``FLEET_BUDGET_MODE``          ``fail`` / ``warn`` / ``off`` (default): run
                               :func:`pooltender.budget.check_startup` when the app is built;
                               under gunicorn a refused budget makes the worker fail to boot
``FLEET_HOSTS``, ``FLEET_PROCESSES``, ``FLEET_WORKER_MODEL``, ``FLEET_CONCURRENCY``
                               the :class:`FleetShape` declared to the check (concurrency
                               empty = unbounded); connections per request follow
                               ``FLEET_SECOND_SESSION`` (2 or 1)

Run it as gunicorn does: ``gunicorn 'fleet_app:create_app()'`` with this directory on the path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from pooltender.budget import FleetShape, WorkerModel, check_startup
from pooltender.settings import PoolSettings

logger = logging.getLogger("fleet_app")

db = SQLAlchemy()

_TRUE = ("1", "true", "yes", "on")


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in _TRUE


def fleet_shape(environ: Mapping[str, str]) -> FleetShape:
    """The fleet shape declared in ``environ`` (see the module doc)."""
    concurrency = environ.get("FLEET_CONCURRENCY", "").strip()
    return FleetShape(
        hosts=int(environ.get("FLEET_HOSTS", "1")),
        processes_per_host=int(environ.get("FLEET_PROCESSES", "1")),
        worker_model=WorkerModel(environ.get("FLEET_WORKER_MODEL", "threads")),
        concurrency=int(concurrency) if concurrency else None,
        connections_per_request=2 if _flag(environ, "FLEET_SECOND_SESSION") else 1,
    )


def _sleep_sql(dialect: str) -> str:
    return "SELECT pg_sleep(:s)" if dialect == "postgresql" else "SELECT SLEEP(:s)"


def create_app(environ: Mapping[str, str] | None = None) -> Flask:
    """Build the app from ``environ`` (``os.environ`` by default); run the budget check if
    ``FLEET_BUDGET_MODE`` asks for it (a refusal raises :class:`BudgetError`)."""
    env = os.environ if environ is None else environ
    url = env["FLEET_DATABASE_URL"]
    settings = PoolSettings.from_env(env)
    second_session = _flag(env, "FLEET_SECOND_SESSION")
    hold = float(env.get("FLEET_HOLD_SECONDS", "0.05"))

    options = settings.engine_options(url)
    if make_url(url).get_driver_name() == "pymysql":
        # PyMySQL >= 1.2 tries TLS by default and builds a fresh SSL context (loading the CA
        # store, ~30-50 ms of CPU) on every connect; under gevent that blocks the whole hub
        # and serializes connects. The private loopback servers have no TLS: turn it off.
        options["connect_args"] = {"ssl_disabled": True}

    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=url, SQLALCHEMY_ENGINE_OPTIONS=options)
    db.init_app(app)

    with app.app_context():
        engine = db.engine
        sleep = text(_sleep_sql(engine.dialect.name))
        mode = env.get("FLEET_BUDGET_MODE", "off")
        if mode != "off":
            report = check_startup(engine, settings, fleet_shape(env), mode)  # type: ignore[arg-type]
            logger.warning("pooltender budget: %s", report.summary())

    @app.get("/redeem")
    def redeem() -> ResponseReturnValue:
        # db.session checks a connection out and keeps it until the request ends.
        db.session.execute(sleep, {"s": hold})
        if second_session:
            # The post-mortem's WRONG pattern: a Session of its own, a second connection.
            extra = Session(bind=db.engine)
            try:
                extra.execute(sleep, {"s": hold})
                extra.commit()
            finally:
                extra.close()
        db.session.commit()
        return jsonify(ok=True, pid=os.getpid())

    @app.errorhandler(DBAPIError)
    def database_error(exc: DBAPIError) -> ResponseReturnValue:
        message = str(exc.orig)
        logger.error("database error: %s", message)
        return jsonify(error=message, pid=os.getpid()), 500

    return app
