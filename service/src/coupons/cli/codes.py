"""``coupons generate-codes``: bulk code generation from the command line, with progress."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from coupons.cli.common import load_settings, long_work_settings
from coupons.errors import ServiceError
from coupons.services.codegen import DEFAULT_PATTERN, CodePattern, generate_codes, open_codes_export


@click.command("generate-codes")
@click.option("--campaign", "campaign_id", type=int, required=True, help="Campaign id.")
@click.option("--count", type=int, required=True, help="How many codes (1..1,000,000).")
@click.option(
    "--pattern",
    default=DEFAULT_PATTERN,
    show_default=True,
    help="'#' = one random character; A-Z, 0-9 and '-' are literal.",
)
@click.option("--prefix", default=None, help="Literal text put before the pattern.")
@click.option("--max-uses", type=int, default=None, help="Uses per code (default: unlimited).")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the generated codes to this CSV file.",
)
def generate_codes_command(
    campaign_id: int,
    count: int,
    pattern: str,
    prefix: str | None,
    max_uses: int | None,
    csv_path: Path | None,
) -> None:
    """Generate COUNT unique codes for a campaign, all in one transaction (or none).

    Exits with status 1 and writes nothing on bad input: unknown campaign, bad pattern,
    a pattern too small for COUNT, COUNT out of range.
    """
    from coupons import create_app
    from coupons.db import db

    if csv_path is not None:
        directory = csv_path.resolve().parent
        if not directory.is_dir() or not os.access(directory, os.W_OK):
            raise click.ClickException(f"cannot write the CSV file {csv_path}")
    try:
        parsed = CodePattern.parse(pattern, prefix)  # fail before connecting
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None

    app = create_app(long_work_settings(load_settings()))
    console = Console(stderr=True)
    with app.app_context():
        try:
            with Progress(
                TextColumn("generating"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                task = progress.add_task("codes", total=count)
                result = generate_codes(
                    campaign_id,
                    count,
                    pattern=parsed,
                    max_uses=max_uses,
                    on_progress=lambda done, total: progress.update(
                        task, completed=done, total=total
                    ),
                )
            click.echo(
                f"generated {result.generated:,} codes for campaign {campaign_id} "
                f"(pattern {result.pattern}); e.g. {', '.join(result.sample[:3])}"
            )
            if csv_path is not None:
                rows = 0
                with csv_path.open("w", encoding="utf-8", newline="") as out:
                    for chunk in open_codes_export(campaign_id, after_id=result.id_floor):
                        out.write(chunk)
                        rows += chunk.count("\n")
                click.echo(f"wrote {rows - 1:,} codes to {csv_path}")
        except ServiceError as exc:
            raise click.ClickException(exc.message) from None
        finally:
            db.engine.dispose()  # a one-shot process: close the pool's connections now


def register(main: click.Group) -> None:
    """Attach ``generate-codes`` to the ``coupons`` command group."""
    main.add_command(generate_codes_command)
