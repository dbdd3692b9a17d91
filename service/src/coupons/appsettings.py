"""The :class:`~coupons.config.Settings` a Flask app was built with, kept on the app.

Its own module so that the factory (:mod:`coupons.app`, which imports the API) and the API
modules (which read the settings per request) both import it and not each other.
"""

from __future__ import annotations

from typing import Final

from flask import Flask

from coupons.config import Settings

_KEY: Final = "coupons.settings"


def attach_settings(app: Flask, settings: Settings) -> None:
    """Keep ``settings`` on ``app`` (the factory calls this once)."""
    app.extensions[_KEY] = settings


def settings_of(app: Flask) -> Settings:
    """The :class:`~coupons.config.Settings` an app was built with."""
    settings: Settings = app.extensions[_KEY]
    return settings
