"""pooltender: keep a SQLAlchemy / Flask-SQLAlchemy fleet inside its database's connection
budget.

Public names are imported lazily (on first attribute access), so ``import pooltender`` is
cheap and does nothing: no I/O, no environment reads, no SQLAlchemy import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pooltender.budget import (
        BudgetError,
        BudgetReport,
        ConnectionBudget,
        FleetShape,
        PoolRecommendation,
        Recommendation,
        WorkerModel,
        check_startup,
        enforce,
        littles_law,
        recommend_pool,
    )
    from pooltender.server.limits import ServerLimits, read_server_limits
    from pooltender.settings import PoolSettings, SettingsError

_EXPORTS: dict[str, str] = {
    "PoolSettings": "pooltender.settings",
    "SettingsError": "pooltender.settings",
    "ServerLimits": "pooltender.server.limits",
    "read_server_limits": "pooltender.server.limits",
    "BudgetError": "pooltender.budget",
    "BudgetReport": "pooltender.budget",
    "ConnectionBudget": "pooltender.budget",
    "FleetShape": "pooltender.budget",
    "PoolRecommendation": "pooltender.budget",
    "Recommendation": "pooltender.budget",
    "WorkerModel": "pooltender.budget",
    "check_startup": "pooltender.budget",
    "enforce": "pooltender.budget",
    "littles_law": "pooltender.budget",
    "recommend_pool": "pooltender.budget",
}

__all__ = [
    "BudgetError",
    "BudgetReport",
    "ConnectionBudget",
    "FleetShape",
    "PoolRecommendation",
    "PoolSettings",
    "Recommendation",
    "ServerLimits",
    "SettingsError",
    "WorkerModel",
    "check_startup",
    "enforce",
    "littles_law",
    "read_server_limits",
    "recommend_pool",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pooltender' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
