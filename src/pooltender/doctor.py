"""Deprecated: moved to :mod:`pooltender.server.doctor`; this alias goes in the next release.

Import from ``pooltender.server.doctor`` instead (same names).
"""

from __future__ import annotations

import warnings

from pooltender.server.doctor import *  # noqa: F403  (the alias re-exports the module)
from pooltender.server.doctor import __all__ as __all__

warnings.warn(
    "pooltender.doctor moved to pooltender.server.doctor; import it from there "
    "(the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
