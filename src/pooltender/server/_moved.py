"""The old import paths of modules that moved into :mod:`pooltender.server`, for one release.

Each old module (``pooltender.limits``, ``pooltender.doctor``, ``pooltender.killer``) is three
lines calling :func:`moved`, which warns once at import (``DeprecationWarning`` naming the
new path) and answers every name from the new module.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def moved(old: str, new: str, namespace: dict[str, Any]) -> Callable[[str], Any]:
    """Warn that ``old`` moved to ``new``; give ``namespace`` (the old module's globals) the
    new module's ``__all__`` and return its module-level ``__getattr__``."""
    warnings.warn(
        f"{old} moved to {new}; import it from there (the old path goes in the next release)",
        DeprecationWarning,
        stacklevel=3,
    )
    target = importlib.import_module(new)
    namespace["__all__"] = list(target.__all__)

    def __getattr__(name: str) -> Any:
        return getattr(target, name)

    return __getattr__
