"""pooltender.server is a package; the modules that moved into it keep their old import
path for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import pytest

import pooltender.server
from pooltender.server import doctor, killer, limits, snapshot


@pytest.mark.parametrize(
    ("old", "new"),
    [("pooltender.limits", limits), ("pooltender.doctor", doctor), ("pooltender.killer", killer)],
)
def test_old_module_paths_warn_and_keep_every_public_name(old: str, new: ModuleType) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to {new.__name__}"):
        alias = importlib.import_module(old)
    names = new.__all__
    assert names
    for name in names:
        assert getattr(alias, name) is getattr(new, name)
    sys.modules.pop(old, None)


def test_the_old_server_module_names_still_import_from_the_package() -> None:
    for name in pooltender.server.__all__:
        value = getattr(pooltender.server, name)
        home = limits if name in limits.__all__ else snapshot
        assert value is getattr(home, name)
    from pooltender.server import ServerSnapshot, take_snapshot  # the names users import

    assert ServerSnapshot is snapshot.ServerSnapshot
    assert take_snapshot is snapshot.take_snapshot
    with pytest.raises(AttributeError):
        pooltender.server.no_such_name  # noqa: B018


def test_top_level_package_exports_the_limits_from_their_new_home() -> None:
    import pooltender

    assert pooltender.ServerLimits is limits.ServerLimits
    assert pooltender.read_server_limits is limits.read_server_limits
