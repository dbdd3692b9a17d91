"""The ``pooltender`` console script (and ``python -m pooltender``): start the command line.

The command line lives in :mod:`pooltender.cli` and needs click and rich, which only the
``[cli]`` extra installs. This module imports nothing else at module level, so that in an
environment with the core alone the script still starts and says, in one line on stderr
and with exit status 2 (as for any other missing dependency of a subcommand), which extra
to install -- instead of a traceback ending in ``No module named 'click'``. Both are
checked: ``[flask]`` brings click (Flask's own dependency) but not rich, and the
subcommands' output needs rich.
"""

from __future__ import annotations

import sys

#: what the script prints when click is missing (tests/test_distributions.py reads it)
MISSING_CLI = "pooltender's command line needs: pip install 'pooltender[cli]'"
EXIT_MISSING_DEPENDENCY = 2


def main() -> None:
    """Run :func:`pooltender.cli.main`, or exit 2 with one line when click or rich is not
    installed."""
    try:
        import click  # noqa: F401  (only to know whether [cli] is installed)
        import rich  # noqa: F401
    except ImportError:
        print(MISSING_CLI, file=sys.stderr)
        raise SystemExit(EXIT_MISSING_DEPENDENCY) from None
    from pooltender.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
