"""``coupons serve``: production serving through gunicorn."""

from __future__ import annotations

import importlib.util
from typing import Any

import click

#: Worker classes ``coupons serve`` offers: gthread (threads, the default), gevent
#: (greenlets; the ``gevent`` extra), sync (one request at a time per worker).
WORKER_CLASSES = ("gthread", "gevent", "sync")


def run_gunicorn(
    host: str, port: int, workers: int, threads: int, worker_class: str = "gthread"
) -> None:
    """Serve ``coupons.wsgi:app`` with gunicorn, engines disposed after fork."""
    from gunicorn.app.base import BaseApplication

    from coupons import gunicorn_conf

    class _App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            if worker_class == "gthread":  # gunicorn turns sync into gthread if threads > 1
                self.cfg.set("threads", threads)
            self.cfg.set("worker_class", worker_class)
            self.cfg.set("accesslog", "-")
            self.cfg.set("graceful_timeout", gunicorn_conf.graceful_timeout)
            self.cfg.set("post_fork", gunicorn_conf.post_fork)

        def load(self) -> Any:
            from coupons.wsgi import app

            return app

    _App().run()


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="HOST")
@click.option(
    "--port", default=8000, show_default=True, envvar="PORT", type=click.IntRange(1, 65535)
)
@click.option(
    "--workers", default=2, show_default=True, envvar="WEB_WORKERS", type=click.IntRange(1)
)
@click.option(
    "--threads",
    default=4,
    show_default=True,
    envvar="WEB_THREADS",
    type=click.IntRange(1),
    help="Threads per gthread worker (ignored by gevent and sync).",
)
@click.option(
    "--worker-class",
    default="gthread",
    show_default=True,
    envvar="WEB_WORKER_CLASS",
    type=click.Choice(WORKER_CLASSES),
    help="gthread: --threads per worker; gevent: greenlets (pip install 'pooltender[gevent]').",
)
def serve(host: str, port: int, workers: int, threads: int, worker_class: str) -> None:
    """Serve the API with gunicorn (gthread workers unless --worker-class says otherwise).

    Connections the fleet can open: workers x (POOLTENDER_POOL_SIZE + POOLTENDER_MAX_OVERFLOW).
    Each worker admits at most POOLTENDER_ADMISSION_MAX requests at once, whatever the worker
    class (pooltender.admission); with gevent, the waiting ones are greenlets.
    """
    from coupons.cli.common import load_settings
    from pooltender.admission import AdmissionSettings
    from pooltender.settings import SettingsError

    settings = load_settings()  # fail fast, with a clean message, on a bad setting
    try:  # the workers read these when they build the app; check them here, once, cleanly
        AdmissionSettings.from_mapping(
            settings.pooltender_config, pool_cap=settings.pool.per_process_cap
        )
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    if worker_class == "gevent" and importlib.util.find_spec("gevent") is None:
        raise click.ClickException(
            "--worker-class gevent needs gevent: pip install 'pooltender[gevent]'"
        )
    run_gunicorn(host, port, workers, threads, worker_class)


def register(main: click.Group) -> None:
    main.add_command(serve)
