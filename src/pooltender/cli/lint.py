"""``pooltender lint``: the post-mortem's SQLAlchemy anti-patterns, found and (safely) fixed.

:func:`lint` is the command and the API: typed arguments in, a :class:`LintOutcome` out; the
click command only parses flags, calls it and prints. Exit codes: 0 clean, 1 something was
found (an error-severity finding, or a warning whose code was selected by name), 2 usage
error (unknown code in ``--select``/``--ignore``, missing path, bad configuration).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from pooltender.lint.base import Violation
from pooltender.lint.config import ConfigError, LintConfig, load_config
from pooltender.lint.engine import LintReport, PathError, lint_paths
from pooltender.lint.output import FORMATS, OutputFormat, render

EXIT_CLEAN, EXIT_FOUND, EXIT_ERROR = 0, 1, 2


class LintUsageError(click.ClickException):
    """A bad flag, path or configuration: exit 2 with the message."""

    exit_code = EXIT_ERROR


@dataclass(frozen=True)
class LintOutcome:
    """What :func:`lint` found; ``failing`` decides the exit code."""

    report: LintReport
    config: LintConfig

    @property
    def violations(self) -> list[Violation]:
        return self.report.violations

    @property
    def failing(self) -> list[Violation]:
        """Errors, plus warnings (POL900) only when their code was selected by name."""
        return [
            v
            for v in self.violations
            if v.severity == "error" or v.code in self.config.explicitly_selected
        ]

    @property
    def exit_code(self) -> int:
        return EXIT_FOUND if self.failing else EXIT_CLEAN


def lint(
    paths: list[Path],
    *,
    fix: bool = False,
    unsafe_fixes: bool = False,
    select: list[str] | None = None,
    ignore: list[str] | None = None,
    exclude: list[str] | None = None,
    config_file: Path | None = None,
    jobs: int | None = None,
) -> LintOutcome:
    """Lint ``paths`` with the configuration from ``config_file`` (or the nearest
    pyproject.toml) overridden by ``select``/``ignore``/``exclude``; with ``fix``, rewrite files
    with the safe fixes (and the unsafe ones with ``unsafe_fixes``).

    Raises :class:`LintUsageError` for an unknown code, a missing path or a bad configuration.
    """
    try:
        config = load_config(
            config_file,
            search_from=paths[0] if paths else None,
            select=select or (),
            ignore=ignore or (),
            exclude=exclude or (),
        )
        report = lint_paths(paths, config, fix=fix, unsafe_fixes=unsafe_fixes, jobs=jobs)
    except (ConfigError, PathError) as exc:
        raise LintUsageError(str(exc)) from exc
    return LintOutcome(report, config)


def register(main: click.Group) -> None:
    """Add ``lint`` to the ``pooltender`` command group."""

    @main.command("lint")
    @click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.option("--fix", is_flag=True, help="Apply safe fixes in place.")
    @click.option("--unsafe-fixes", is_flag=True, help="With --fix, also apply unsafe fixes.")
    @click.option(
        "--format",
        "output_format",
        type=click.Choice(FORMATS),
        default="text",
        show_default=True,
        help="Output format.",
    )
    @click.option("--select", multiple=True, help="Codes or prefixes to check (comma-separated).")
    @click.option("--ignore", multiple=True, help="Codes or prefixes to skip (comma-separated).")
    @click.option("--exclude", multiple=True, help="Extra glob of paths to skip.")
    @click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path),
        default=None,
        help="pyproject.toml to read [tool.pooltender.lint] from (default: nearest one).",
    )
    @click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, help="Processes.")
    def lint_command(
        paths: tuple[Path, ...],
        fix: bool,
        unsafe_fixes: bool,
        output_format: OutputFormat,
        select: tuple[str, ...],
        ignore: tuple[str, ...],
        exclude: tuple[str, ...],
        config_file: Path | None,
        jobs: int | None,
    ) -> None:
        """Find (and with --fix, fix) SQLAlchemy / Flask-SQLAlchemy session and pool misuse.

        Prints `path:line:col: CODE message` sorted; exit 1 when something is found, 0 when
        clean, 2 on usage error. Suppress a line with `# noqa: POL001`. Rules:
        docs/rules/README.md.
        """
        outcome = lint(
            list(paths),
            fix=fix,
            unsafe_fixes=unsafe_fixes,
            select=list(select),
            ignore=list(ignore),
            exclude=list(exclude),
            config_file=config_file,
            jobs=jobs,
        )
        click.echo(render(outcome.violations, output_format), nl=False)
        report = outcome.report
        summary = f"{len(outcome.violations)} finding(s) in {report.files} file(s)"
        if fix:
            summary += f", {report.fixes_applied} fix(es) applied"
        fixable = sum(1 for v in outcome.violations if v.fix_safety is not None)
        if fixable:
            summary += f", {fixable} fixable (--fix; unsafe ones need --unsafe-fixes)"
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(summary, err=True)
        raise SystemExit(outcome.exit_code)
