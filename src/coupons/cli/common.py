"""Helpers shared by the CLI commands."""

from __future__ import annotations

import click

from coupons.config import ConfigError, Settings


def load_settings() -> Settings:
    """Settings from the environment, or a clean CLI error naming the bad variable."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
