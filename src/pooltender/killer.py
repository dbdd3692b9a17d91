"""Deprecated: moved to :mod:`pooltender.server.killer`; this alias goes in the next release.

Import from ``pooltender.server.killer`` instead (same names).
"""

from __future__ import annotations

import warnings

from pooltender.server.killer import *  # noqa: F403  (the alias re-exports the module)
from pooltender.server.killer import __all__ as __all__

warnings.warn(
    "pooltender.killer moved to pooltender.server.killer; import it from there "
    "(the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
