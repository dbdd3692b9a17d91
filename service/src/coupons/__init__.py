"""The coupon service of the post-mortem, built correctly on pooltender.

``create_app`` is the entry point; nothing here touches a database at import time.
"""

from __future__ import annotations

from coupons.app import create_app

__all__ = ["create_app"]
