"""Helpers shared by the CLI commands: settings, and one-line answers to failures.

:class:`CouponsGroup` is the ``coupons`` command group: any command that meets a database
or broker failure ends with one line naming the variable, its (masked) value and the cause,
and exit status 1 -- never a traceback. The classification is pooltender's
(:mod:`pooltender.failures`), the same the API uses for its 503s.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import click
from kombu.exceptions import KombuError
from sqlalchemy import exc as sa_exc

from coupons.config import ConfigError, Settings, default_database_url, mask_url
from pooltender.failures import Failure, classify, describe
from pooltender.text import one_line


def load_settings() -> Settings:
    """Settings from the environment, or a clean CLI error naming the bad variable."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


#: Read/write bound of one-shot bulk commands (generate-codes): one statement, or the COMMIT
#: of a million-row transaction, may legitimately take longer than the web's 10 s, and an
#: operator is watching. The connect timeout stays as configured.
LONG_WORK_TIMEOUT = 600


def long_work_settings(settings: Settings) -> Settings:
    """``settings`` with the driver read/write timeouts raised for long, legitimate work (the
    per-caller override of ``POOLTENDER_READ_TIMEOUT``), unless they are off (0)."""
    pool = settings.pool
    changes = {
        name: max(getattr(pool, name), LONG_WORK_TIMEOUT)
        for name in ("read_timeout", "write_timeout")
        if getattr(pool, name) > 0
    }
    return replace(settings, pool=pool.with_values(**changes)) if changes else settings


def database_failure_message(error: BaseException) -> str:
    """``DATABASE_URL=mysql://app:***@db/x: database unavailable: (2003, "Can't connect...")``."""
    url = mask_url(os.environ.get("DATABASE_URL") or default_database_url())
    kind = classify(error)
    if kind is Failure.UNAVAILABLE:
        what = "database unavailable"
    elif kind is Failure.POOL_EXHAUSTED:
        what = "no database connection free"
    else:
        what = "database error"
    return f"DATABASE_URL={url}: {what}: {describe(error)}"


def broker_failure_message(error: BaseException) -> str:
    """``BROKER_URL=amqp://guest:***@host//: broker unavailable: [Errno 111] ...``."""
    url = mask_url(os.environ.get("BROKER_URL") or "memory://")
    text = one_line(error, 500) or type(error).__name__
    return f"BROKER_URL={url}: broker unavailable: {text}"


class CouponsGroup(click.Group):
    """A click group whose commands answer database and broker failures in one line.

    Broker failures are kombu's errors and socket-level ``ConnectionError`` (the only
    sockets a coupons command opens besides the database's, which SQLAlchemy wraps).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (sa_exc.DBAPIError, sa_exc.DisconnectionError, sa_exc.TimeoutError) as exc:
            raise click.ClickException(database_failure_message(exc)) from None
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        except (KombuError, ConnectionError) as exc:
            raise click.ClickException(broker_failure_message(exc)) from None
