"""The ``POL`` code prefix: clear of ruff's registry, old ``PT`` codes accepted as aliases."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pooltender.lint.config import ConfigError, load_config
from pooltender.lint.rules import ALIASES, ALL_CODES, PREFIX, canonical_code


def _ruff() -> str:
    beside = Path(sys.executable).with_name("ruff")
    found = str(beside) if beside.exists() else shutil.which("ruff")
    assert found, "ruff is a dev dependency; it must be installed for this check"
    return found


def test_prefix_begins_no_ruff_code() -> None:
    out = subprocess.run(
        [_ruff(), "rule", "--all", "--output-format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    codes = [r["code"] for r in json.loads(out.stdout) if r.get("code")]
    assert len(codes) > 500  # the registry really was read
    assert not [c for c in codes if c.startswith(PREFIX)]
    # nor is one of ruff's linter prefixes a prefix of ours (ruff's `select = ["P..."]`)
    linters = {m.group() for c in codes if (m := re.match(r"[A-Z]+", c))}
    assert not [p for p in linters if PREFIX.startswith(p)]
    assert 2 <= len(PREFIX) <= 4
    assert all(c.startswith(PREFIX) for c in ALL_CODES)


def test_old_codes_are_aliases() -> None:
    assert ALIASES["PT003"] == "POL003"
    assert ALIASES["PT999"] == "POL999"
    assert canonical_code("pt010") == "POL010"
    assert canonical_code("POL001") == "POL001"
    assert canonical_code("PT011") == "PT011"  # flake8-pytest-style's, not ours


def test_select_and_ignore_accept_old_codes(tmp_path: Path) -> None:
    config = load_config(search_from=tmp_path, select=["PT003,PT00"], ignore=["PT004"])
    assert "POL003" in config.select
    assert "POL001" in config.select
    assert "POL004" not in config.select
    assert "POL003" in config.explicitly_selected


@pytest.mark.parametrize("flag", ["select", "ignore"])
def test_unknown_code_lists_valid_ones(tmp_path: Path, flag: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(search_from=tmp_path, **{flag: ["POL042"]})  # type: ignore[arg-type]
    message = str(info.value)
    assert "'POL042'" in message
    for code in ("POL001", "POL010", "POL999"):
        assert code in message
