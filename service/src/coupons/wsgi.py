"""WSGI entry point for gunicorn: ``gunicorn -c python:coupons.gunicorn_conf coupons.wsgi:app``."""

from __future__ import annotations

from coupons.app import create_app

app = create_app()
