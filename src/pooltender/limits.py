"""Deprecated: moved to :mod:`pooltender.server.limits`; this alias goes in the next release.

Import from ``pooltender.server.limits`` instead (same names).
"""

from __future__ import annotations

import warnings

from pooltender.server.limits import *  # noqa: F403  (the alias re-exports the module)
from pooltender.server.limits import __all__ as __all__

warnings.warn(
    "pooltender.limits moved to pooltender.server.limits; import it from there "
    "(the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
