"""``coupons serve``: production serving through gunicorn, with Prometheus multiprocess mode.

gunicorn runs in a child interpreter (``python -m gunicorn -c python:coupons.gunicorn_conf
coupons.wsgi:app``) started with ``PROMETHEUS_MULTIPROC_DIR`` already in its environment:
prometheus-client picks its value class when it is first imported, and this CLI process has
imported it long before a subcommand runs, so the variable must be set "from a start-up
script, not directly from Python" (prometheus-client's multiprocess documentation) -- this
process is that script. The directory is a fresh temporary one per start, removed when
gunicorn exits, unless the user set ``PROMETHEUS_MULTIPROC_DIR`` (then it is used as is and
left alone: wipe it before each start, as prometheus-client asks). Dead workers are handled in
:func:`coupons.gunicorn_conf.child_exit`. Signals sent to this process (TERM, INT, HUP, TTIN,
TTOU, USR1, USR2, QUIT) are passed on to gunicorn's master.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import click

#: Worker classes ``coupons serve`` offers: gthread (threads, the default), gevent
#: (greenlets; the ``gevent`` extra), sync (one request at a time per worker).
WORKER_CLASSES = ("gthread", "gevent", "sync")
#: gthread is pooltender's subclass, which answers admission refusals from its poller thread
#: instead of a pool thread (pooltender.gthread: 5 us instead of 0.29 ms per refusal)
WORKER_CLASS_PATHS = {"gthread": "pooltender.gthread.ThreadWorker"}
#: Signals gunicorn's master acts on, forwarded to it from this process.
FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


@contextmanager
def prometheus_multiproc_dir() -> Iterator[Path]:
    """The multiprocess directory for one run: the user's ``PROMETHEUS_MULTIPROC_DIR`` (created
    if missing, never removed) or a fresh temporary one, removed on the way out."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="coupons-metrics-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def gunicorn_argv(host: str, port: int, workers: int, threads: int, worker_class: str) -> list[str]:
    """The gunicorn command line; everything else comes from :mod:`coupons.gunicorn_conf`."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:coupons.gunicorn_conf",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        # gunicorn turns sync into gthread if threads > 1; gevent ignores threads
        "--threads",
        str(threads if worker_class == "gthread" else 1),
        "--worker-class",
        WORKER_CLASS_PATHS.get(worker_class, worker_class),
        "coupons.wsgi:app",
    ]


def run_gunicorn(
    host: str, port: int, workers: int, threads: int, worker_class: str = "gthread"
) -> None:
    """Serve ``coupons.wsgi:app`` with gunicorn until it exits (module docstring)."""
    with prometheus_multiproc_dir() as metrics_dir:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        child = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
            gunicorn_argv(host, port, workers, threads, worker_class), env=env
        )

        def forward(signum: int, _frame: FrameType | None) -> None:
            child.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
        try:
            status = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if child.poll() is None:  # we are leaving on an exception: do not orphan it
                child.terminate()
                child.wait(timeout=60)
    if status != 0:
        raise click.ClickException(f"gunicorn exited with status {status}")


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
