"""``pooltender top [URL]``: a live view of who holds the server's connections.

On a terminal it is a full-screen view (rich) refreshed every ``--interval`` seconds: a header
with client connections against ``max_connections`` and the count per state, user and host,
then a table of connections sorted by ``--sort``. Keys: ``q`` quits, ``s`` cycles the sort
order, ``t`` / ``u`` / ``h`` / ``e`` sort by time / user / host / state.

Over a pipe (stdout not a terminal) it prints each snapshot as plain text (no ANSI codes)
every interval; ``--iterations N`` stops after N snapshots and ``--once`` after one.

The URL defaults to ``DATABASE_URL``; it is only ever shown with its password masked. Exit
codes: 0 done (or ``q``), 2 no URL or cannot connect.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

import click

from pooltender.text import first_line, mask_url, scrub

if TYPE_CHECKING:
    from rich.console import RenderableType
    from sqlalchemy.engine import Engine

    from pooltender.server.snapshot import ServerConnection, ServerSnapshot

EXIT_OK, EXIT_ERROR = 0, 2
SORTS = ("time", "user", "host", "state")
_SORT_KEYS = {"t": "time", "u": "user", "h": "host", "e": "state"}
#: How states sort under ``--sort state``: the ones that hold resources first.
_STATE_ORDER = {
    "idle in transaction": 0,
    "idle in transaction (aborted)": 0,
    "active": 1,
    "idle": 3,
}


class TopError(click.ClickException):
    """A usage or connection problem; its message never contains a password."""

    exit_code = EXIT_ERROR


def sort_connections(connections: Sequence[ServerConnection], sort: str) -> list[ServerConnection]:
    """Connections in display order: ``time`` longest in state first; ``user`` / ``host`` /
    ``state`` grouped by that column, longest in state first within a group."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")

    def age(c: ServerConnection) -> float:
        return -(c.seconds_in_state or 0.0)

    if sort == "time":
        return sorted(connections, key=lambda c: (age(c), str(c.id)))
    if sort == "state":
        return sorted(
            connections,
            key=lambda c: (_STATE_ORDER.get(c.state or "", 2), c.state or "", age(c)),
        )
    column = "user" if sort == "user" else "host"
    return sorted(connections, key=lambda c: (str(getattr(c, column) or ""), age(c)))


def _groups_line(counts: dict[str, int], limit: int = 6) -> str:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{k or '-'} {v}" for k, v in items[:limit])
    rest = sum(v for _, v in items[limit:])
    return shown + (f", others {rest}" if rest else "") if shown else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = round(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s / 3600:.1f}h"


def _one_line(text: str | None, width: int) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "~"


def _taken_at(snapshot: ServerSnapshot) -> str:
    value: Any = snapshot.taken_at
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def header_lines(snapshot: ServerSnapshot, sort: str) -> list[str]:
    """The summary above the table (the same in both modes)."""
    clients = len(snapshot.client_connections())
    limit = snapshot.max_connections
    if limit:
        usage = f"{clients} / {limit} max_connections ({clients * 100 // limit}%)"
    else:
        usage = f"{clients} / ? max_connections"
    if snapshot.reserved_connections:
        usage += f", {snapshot.reserved_connections} reserved"
    lines = [
        f"pooltender top - {snapshot.backend} {snapshot.server_version} - {snapshot.url}"
        f" - {_taken_at(snapshot)}",
        f"client connections: {usage}",
        f"by state: {_groups_line(snapshot.by_state())}",
        f"by user:  {_groups_line(snapshot.by_user())}",
        f"by host:  {_groups_line(snapshot.by_host())}",
    ]
    if snapshot.unreadable:
        lines.append(f"could not read: {_groups_line_unreadable(snapshot.unreadable)}")
    n = len(snapshot.connections)
    lines.append(f"sorted by {sort}; {n} connection{'' if n == 1 else 's'} in all")
    return lines


def _groups_line_unreadable(unreadable: Any) -> str:
    if isinstance(unreadable, dict):
        return "; ".join(f"{k} ({v})" for k, v in unreadable.items())
    return "; ".join(str(u) for u in unreadable)


_COLUMNS = ("id", "user", "host", "database", "state", "time", "xact", "query")


def _row(c: ServerConnection) -> tuple[str, ...]:
    ident = f"{c.id}*" if c.is_self else str(c.id)
    state = c.state or c.command or ""
    if c.kind != "client":
        state = f"{state} [{c.kind}]"
    return (
        ident,
        str(c.user or ""),
        str(c.host or ""),
        str(c.database or ""),
        state,
        _duration(c.seconds_in_state),
        _duration(c.transaction_age),
        _one_line(c.query, 60),
    )


def render_text(snapshot: ServerSnapshot, sort: str = "time") -> str:
    """One snapshot as plain text: header lines, then an aligned table (``*`` = this tool)."""
    rows = [_COLUMNS, *(_row(c) for c in sort_connections(snapshot.connections, sort))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
    table = [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]
    return "\n".join([*header_lines(snapshot, sort), "", *(line.rstrip() for line in table)])


def render_rich(snapshot: ServerSnapshot, sort: str, max_rows: int | None = None) -> RenderableType:
    """The terminal view: the header, a bar against max_connections, the table."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = header_lines(snapshot, sort)
    title = Text(head[0], style="bold")
    clients = len(snapshot.client_connections())
    limit = snapshot.max_connections or 0
    bar = Text()
    if limit:
        width = 50
        filled = min(width, round(clients / limit * width))
        share = clients / limit
        style = "red" if share >= 0.9 else "yellow" if share >= 0.7 else "green"
        bar.append("[" + "#" * filled, style=style)
        bar.append("." * (width - filled) + "]  ")
    bar.append(head[1].removeprefix("client connections: "), style="bold")
    table = Table(box=None, header_style="bold reverse", pad_edge=False, expand=True)
    for name in _COLUMNS:
        table.add_column(
            name,
            no_wrap=True,
            justify="right" if name in ("time", "xact") else "left",
            ratio=4 if name == "query" else None,
            overflow="ellipsis",
        )
    shown = sort_connections(snapshot.connections, sort)
    if max_rows is not None:
        shown = shown[:max_rows]
    for c in shown:
        row_style: str | None = None
        if c.is_self:
            row_style = "cyan"
        elif c.kind != "client":
            row_style = "dim"
        elif (c.state or "").startswith("idle in transaction"):
            row_style = "red"
        elif c.state == "active":
            row_style = "green"
        table.add_row(*_row(c), style=row_style)
    keys = Text("q quit  s cycle sort  t/u/h/e sort by time/user/host/state", style="dim")
    return Group(title, bar, *(Text(line) for line in head[2:]), table, keys)


# --------------------------------------------------------------------------- the loop


@contextlib.contextmanager
def _cbreak(stream: IO[str]) -> Iterator[Callable[[float], str | None]]:
    """Put the terminal in cbreak mode; yield ``read_key(timeout) -> key or None``."""
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read_key(timeout: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
        if not ready:
            return None
        data = os.read(fd, 32)
        return data.decode(errors="replace")[:1] if data else "q"  # EOF quits

    try:
        yield read_key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def connect(url: str) -> Engine:
    """The inspection engine for ``url`` (checked with one snapshot); errors masked, exit 2."""
    from pooltender.server.snapshot import connect_for_inspection

    try:
        return connect_for_inspection(url)
    except Exception as exc:
        raise TopError(_problem("cannot connect to", exc, url)) from None


def snapshot_of(engine: Engine, url: str) -> ServerSnapshot:
    from pooltender.server.snapshot import take_snapshot

    try:
        return take_snapshot(engine, url=url)
    except Exception as exc:
        raise TopError(_problem("cannot inspect", exc, url)) from None


def _problem(what: str, exc: BaseException, url: str) -> str:
    """A one-line, password-free message (InspectionError's own is masked already)."""
    from pooltender.server.snapshot import InspectionError

    if isinstance(exc, InspectionError):
        return scrub(first_line(exc, with_type=False), url)
    return f"{what} {mask_url(url)}: {scrub(first_line(exc), url)}"


def run_plain(
    engine: Engine,
    url: str,
    *,
    interval: float,
    sort: str,
    iterations: int | None,
    out: IO[str],
) -> int:
    """Pipe mode: print a snapshot every ``interval`` seconds, ``iterations`` times."""
    done = 0
    while iterations is None or done < iterations:
        if done:
            time.sleep(interval)
        try:
            text = render_text(snapshot_of(engine, url), sort)
        except TopError as exc:
            if not done:
                raise
            text = f"error: {exc.message}"  # a later failure is reported; top keeps trying
        if done:
            out.write("\n")
        out.write(text + "\n")
        out.flush()
        done += 1
    return EXIT_OK


def run_live(
    engine: Engine,
    url: str,
    *,
    interval: float,
    sort: str,
    iterations: int | None,
) -> int:
    """Terminal mode: a full-screen rich view; keys read in cbreak mode."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console()
    snapshot = snapshot_of(engine, url)
    error: str | None = None

    def view() -> RenderableType:
        from rich.console import Group

        rows = max(console.size.height - 12, 3)
        body = render_rich(snapshot, sort, max_rows=rows)
        return Group(Text(error, style="bold red"), body) if error else body

    done = 1
    stdin_tty = sys.stdin.isatty()
    keys = _cbreak(sys.stdin) if stdin_tty else contextlib.nullcontext(None)
    with keys as read_key, Live(view(), console=console, screen=True, auto_refresh=False) as live:
        live.refresh()
        while iterations is None or done < iterations:
            deadline = time.monotonic() + interval
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if read_key is None:
                    time.sleep(remaining)
                    break
                key = read_key(remaining)
                if key is None:
                    break
                if key in ("q", "Q", "\x1b"):
                    return EXIT_OK
                if key == "s":
                    sort = SORTS[(SORTS.index(sort) + 1) % len(SORTS)]
                elif key in _SORT_KEYS:
                    sort = _SORT_KEYS[key]
                else:
                    continue
                live.update(view(), refresh=True)
            try:
                snapshot, error = snapshot_of(engine, url), None
            except TopError as exc:
                error = exc.message
            live.update(view(), refresh=True)
            done += 1
    return EXIT_OK


def top(
    url: str | None,
    *,
    interval: float = 2.0,
    sort: str = "time",
    once: bool = False,
    iterations: int | None = None,
    out: IO[str] | None = None,
    live: bool | None = None,
) -> int:
    """The command as an API; ``live`` None = a full-screen view when stdout is a terminal."""
    stream = out if out is not None else sys.stdout
    url = url or os.environ.get("DATABASE_URL") or None
    if not url:
        raise TopError("no database URL: pass one or set DATABASE_URL")
    if once:
        iterations = 1
    if iterations is not None and iterations < 1:
        raise TopError("--iterations must be at least 1")
    engine = connect(url)
    try:
        if live is None:
            live = out is None and stream.isatty()
        if live and not once:
            return run_live(engine, url, interval=interval, sort=sort, iterations=iterations)
        if live:  # --once on a terminal: one rich rendering, no screen switch
            from rich.console import Console

            Console(file=stream).print(render_rich(snapshot_of(engine, url), sort))
            return EXIT_OK
        return run_plain(
            engine, url, interval=interval, sort=sort, iterations=iterations, out=stream
        )
    finally:
        engine.dispose()


def register(main: click.Group) -> None:
    @main.command("top")
    @click.argument("url", required=False, envvar="DATABASE_URL")
    @click.option(
        "--interval",
        type=click.FloatRange(min=0.1),
        default=2.0,
        show_default=True,
        help="Seconds between snapshots.",
    )
    @click.option(
        "--sort",
        type=click.Choice(SORTS),
        default="time",
        show_default=True,
        help="Order of the connection table (time = longest in its state first).",
    )
    @click.option("--once", is_flag=True, help="Print one snapshot and exit.")
    @click.option(
        "--iterations",
        type=click.IntRange(min=1),
        default=None,
        help="Stop after this many snapshots.",
    )
    def top_command(
        url: str | None, interval: float, sort: str, once: bool, iterations: int | None
    ) -> None:
        """A live view of the server's connections: who holds them, in which state, for how
        long, against max_connections. Quits on q; over a pipe it prints plain snapshots.

        URL defaults to DATABASE_URL; its password is never shown. Exit 2 when there is no
        URL or the server cannot be reached.
        """
        try:
            code = top(url, interval=interval, sort=sort, once=once, iterations=iterations)
        except KeyboardInterrupt:
            code = EXIT_OK
        raise SystemExit(code)
