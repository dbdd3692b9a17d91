"""Where this checkout's two source trees are, for code that must run the checkout's own
pooltender and coupons rather than whatever copy is installed.

The repository holds two distributions (docs/adopting.md): ``pooltender`` from ``src/`` and
``pooltender-coupons`` (the ``coupons`` package) from ``service/src/``. A child process that
runs ``coupons`` or ``pooltender`` from the checkout needs both on its ``PYTHONPATH``; this
module is the one place that says so, for tests/ and bench/ alike (bench/ puts the
repository root on ``sys.path`` to import it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the ``pooltender`` distribution's packages
LIBRARY_SRC = ROOT / "src"
#: the ``pooltender-coupons`` distribution's packages (``coupons``)
SERVICE_SRC = ROOT / "service" / "src"
SOURCE_TREES: tuple[Path, ...] = (LIBRARY_SRC, SERVICE_SRC)


def pythonpath(*after: str | None) -> str:
    """A ``PYTHONPATH`` value naming both source trees, then each non-empty entry of ``after``
    (typically ``os.environ.get("PYTHONPATH")``, to keep what the caller already had)."""
    return os.pathsep.join([*(str(tree) for tree in SOURCE_TREES), *(p for p in after if p)])


def use_source_trees() -> None:
    """Put both source trees at the front of this process's ``sys.path`` (idempotent)."""
    for tree in reversed(SOURCE_TREES):
        if str(tree) in sys.path:
            sys.path.remove(str(tree))
        sys.path.insert(0, str(tree))
