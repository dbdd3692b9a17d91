"""Tables of the coupon service. Alembic migrations in ``coupons/migrations`` create them.

Counters (``Campaign.redemption_count``, ``Coupon.use_count``, ``CustomerUsage.count``) are
changed only by conditional ``UPDATE`` statements in :mod:`coupons.services.coupon`; see
docs/architecture.md for why that makes the caps exact under concurrency.
"""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine

from coupons.db import db

Money = Numeric(12, 2)
# BIGINT on MySQL/PostgreSQL; INTEGER on SQLite, where only INTEGER PRIMARY KEY autoincrements.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    """Timezone-aware now in UTC; every stored time is UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A UTC timestamp stored naive (MySQL and SQLite keep no zone), returned aware."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; pass a timezone-aware one")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


class Role(enum.StrEnum):
    ADMIN = "admin"
    SERVICE = "service"


class DiscountType(enum.StrEnum):
    PERCENT = "percent"
    FIXED = "fixed"


class RedemptionStatus(enum.StrEnum):
    REDEEMED = "redeemed"
    ROLLED_BACK = "rolled_back"


class User(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class RefreshToken(db.Model):  # type: ignore[name-defined,misc]
    """A refresh token, stored as its SHA-256; each use replaces it (rotation)."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class LoginThrottle(db.Model):  # type: ignore[name-defined,misc]
    """Failed-login counter per scope key (``account:<email>`` or ``address:<ip>``)."""

    __tablename__ = "login_throttle"

    scope_key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Campaign(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    discount_type: Mapped[str] = mapped_column(String(16))
    discount_value: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    starts_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ends_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    max_redemptions: Mapped[int | None] = mapped_column(Integer, nullable=True)
    redemption_count: Mapped[int] = mapped_column(Integer, default=0)
    per_customer_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    min_order_total: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    coupons: Mapped[list[Coupon]] = relationship(back_populates="campaign", lazy="raise_on_sql")


class Coupon(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "coupons"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(64), unique=True)
    max_uses: Mapped[int | None] = mapped_column(Integer, nullable=True)
    use_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    campaign: Mapped[Campaign] = relationship(back_populates="coupons", lazy="raise_on_sql")

    __table_args__ = (Index("ix_coupons_campaign_id_id", "campaign_id", "id"),)


class CustomerUsage(db.Model):  # type: ignore[name-defined,misc]
    """Redemptions per customer per campaign, for the per-customer limit."""

    __tablename__ = "customer_usage"

    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class Redemption(db.Model):  # type: ignore[name-defined,misc]
    """The ledger: one row per redemption, never deleted; rollback changes its status.

    ``active_order_key`` equals ``order_id`` while the redemption stands and is NULL once
    rolled back; the unique constraint on (campaign_id, active_order_key) is what makes a
    second redemption for the same order fail as ``already_redeemed`` on every database
    (all three allow many NULLs in a unique index).
    """

    __tablename__ = "redemptions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    coupon_id: Mapped[int] = mapped_column(ForeignKey("coupons.id"), index=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    code: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[str] = mapped_column(String(64))
    active_order_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    order_total: Mapped[Decimal] = mapped_column(Money)
    discount_amount: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default=RedemptionStatus.REDEEMED.value)
    redeemed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    rolled_back_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("campaign_id", "active_order_key", name="uq_redemptions_active_order"),
        Index("ix_redemptions_order_id", "order_id"),
    )


class IdempotencyKey(db.Model):  # type: ignore[name-defined,misc]
    """A client's Idempotency-Key and the response it got (Stripe's semantics)."""

    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    endpoint: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)

    __table_args__ = (UniqueConstraint("user_id", "key", name="uq_idempotency_user_key"),)


class ProcessedMessage(db.Model):  # type: ignore[name-defined,misc]
    """Message ids a consumer has applied, written in the same transaction as the effect."""

    __tablename__ = "processed_messages"

    message_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64))
    processed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
