"""PoolSettings: parsing, one validate() with precise messages, engine options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pytest
from sqlalchemy import create_engine, text

from pooltender.server.limits import ServerLimits
from pooltender.settings import (
    WATCHED_PING_AFTER_IDLE,
    ExtensionSettings,
    PoolSettings,
    SettingsError,
    from_mapping,
    is_sqlite_memory,
    parse_value,
    settings_from_config,
)


def test_defaults_are_small_and_valid() -> None:
    settings = PoolSettings()
    assert (settings.pool_size, settings.max_overflow) == (4, 2)
    assert settings.per_process_cap == 6
    assert settings.shed_wait < settings.pool_timeout
    assert settings.shed_wait <= 1.0


def test_from_mapping_parses_strings() -> None:
    settings = PoolSettings.from_mapping(
        {
            "POOLTENDER_POOL_SIZE": "10",
            "POOLTENDER_MAX_OVERFLOW": " 5 ",
            "POOLTENDER_POOL_TIMEOUT": "2.5",
            "POOLTENDER_POOL_PRE_PING": "off",
            "POOLTENDER_ECHO": "YES",
            "POOLTENDER_SHED_WAIT": "1",
            "SQLALCHEMY_DATABASE_URI": "ignored: no prefix",
        }
    )
    assert settings.pool_size == 10
    assert settings.max_overflow == 5
    assert settings.pool_timeout == 2.5
    assert settings.pool_pre_ping is False
    assert settings.echo is True
    assert settings.shed_wait == 1.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("on", True), ("false", False), ("0", False), ("no", False)],
)
def test_bool_spellings(raw: str, expected: bool) -> None:
    assert PoolSettings.from_mapping({"POOLTENDER_ECHO_POOL": raw}).echo_pool is expected


def test_typed_flask_config_values_pass_through() -> None:
    settings = PoolSettings.from_mapping(
        {"POOLTENDER_POOL_SIZE": 8, "POOLTENDER_ECHO": True, "POOLTENDER_POOL_TIMEOUT": 5}
    )
    assert (settings.pool_size, settings.echo, settings.pool_timeout) == (8, True, 5.0)


def test_custom_prefix_names_keys_in_messages() -> None:
    with pytest.raises(SettingsError) as info:
        PoolSettings.from_mapping({"DB_POOL_SIZE": "0"}, prefix="DB_")
    assert info.value.key == "DB_POOL_SIZE"
    assert "DB_POOL_SIZE=0" in str(info.value)


def test_unknown_key_lists_valid_keys_and_suggests() -> None:
    with pytest.raises(SettingsError) as info:
        PoolSettings.from_mapping({"POOLTENDER_POOL_SIZ": "5"})
    message = str(info.value)
    assert "POOLTENDER_POOL_SIZ" in message
    assert "did you mean POOLTENDER_POOL_SIZE?" in message
    assert "POOLTENDER_SHED_WAIT" in message  # the list of valid keys


@pytest.mark.parametrize(
    ("key", "raw", "fragment"),
    [
        ("POOLTENDER_POOL_SIZE", "ten", "whole number"),
        ("POOLTENDER_POOL_SIZE", "", "is empty"),
        ("POOLTENDER_ECHO", "maybe", "true or false"),
        ("POOLTENDER_SHED_WAIT", "soon", "number of seconds"),
        ("POOLTENDER_SHED_WAIT", "nan", "finite"),
    ],
)
def test_unparsable_values_name_key_value_and_what_is_valid(
    key: str, raw: str, fragment: str
) -> None:
    with pytest.raises(SettingsError) as info:
        PoolSettings.from_mapping({key: raw})
    message = str(info.value)
    assert key in message
    assert repr(raw) in message
    assert fragment in message
    assert info.value.code == "pooltender-settings"


@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        ({"pool_size": 0}, "POOLTENDER_POOL_SIZE", "at least 1"),
        ({"pool_size": -3}, "POOLTENDER_POOL_SIZE", "at least 1"),
        ({"max_overflow": -1}, "POOLTENDER_MAX_OVERFLOW", "0 or more"),
        ({"pool_timeout": 0}, "POOLTENDER_POOL_TIMEOUT", "more than 0"),
        ({"pool_recycle": 0}, "POOLTENDER_POOL_RECYCLE", "-1 (never recycle)"),
        ({"pool_recycle": -5}, "POOLTENDER_POOL_RECYCLE", "-1 (never recycle)"),
        ({"leak_threshold": -1.0}, "POOLTENDER_LEAK_THRESHOLD", "0 (leak detection off)"),
        ({"shed_wait": 0}, "POOLTENDER_SHED_WAIT", "more than 0"),
        ({"shed_wait": 40.0}, "POOLTENDER_SHED_WAIT", "must not exceed POOLTENDER_POOL_TIMEOUT"),
        ({"ping_after_idle": -0.1}, "POOLTENDER_PING_AFTER_IDLE", "0 (ping on every checkout)"),
        (
            {"ping_after_idle": 1.0, "pool_pre_ping": False},
            "POOLTENDER_PING_AFTER_IDLE",
            "only applies when POOLTENDER_POOL_PRE_PING is true",
        ),
        (
            {"ping_after_idle": 100.0, "pool_recycle": 60},
            "POOLTENDER_PING_AFTER_IDLE",
            "below POOLTENDER_POOL_RECYCLE=60",
        ),
        ({"pool_size": True}, "POOLTENDER_POOL_SIZE", "whole number"),
        ({"echo": "yes"}, "POOLTENDER_ECHO", "true or false"),
    ],
)
def test_validate_names_key_and_never_clamps(
    changes: dict[str, Any], key: str, fragment: str
) -> None:
    with pytest.raises(SettingsError) as info:
        PoolSettings(**changes)
    assert info.value.key == key
    assert fragment in str(info.value)


def test_all_problems_reported_together() -> None:
    with pytest.raises(SettingsError) as info:
        PoolSettings.from_mapping({"POOLTENDER_POOL_SIZE": "0", "POOLTENDER_MAX_OVERFLOW": "-1"})
    keys = {p.key for p in info.value.problems}
    assert keys == {"POOLTENDER_POOL_SIZE", "POOLTENDER_MAX_OVERFLOW"}


def test_zero_leak_threshold_means_off_and_is_valid() -> None:
    assert PoolSettings(leak_threshold=0).leak_threshold == 0


def test_from_env_reads_given_environ() -> None:
    settings = PoolSettings.from_env({"POOLTENDER_POOL_SIZE": "7", "PATH": "/bin"})
    assert settings.pool_size == 7


def test_engine_options_pre_ping_only_without_idle_window() -> None:
    assert PoolSettings().engine_options()["pool_pre_ping"] is True
    assert PoolSettings(ping_after_idle=0.5).engine_options()["pool_pre_ping"] is False
    assert PoolSettings(pool_pre_ping=False).engine_options()["pool_pre_ping"] is False


def test_engine_options_build_a_real_queue_pool(tmp_path: Any) -> None:
    options = PoolSettings(pool_size=3, max_overflow=1).engine_options(
        f"sqlite:///{tmp_path / 'x.db'}"
    )
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}", **options)
    try:
        assert engine.pool.size() == 3  # type: ignore[attr-defined]
        assert engine.pool._max_overflow == 1  # type: ignore[attr-defined]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_engine_options_skip_sizing_for_sqlite_memory(url: str) -> None:
    options = PoolSettings().engine_options(url)
    assert "pool_size" not in options
    assert "max_overflow" not in options
    engine = create_engine(url, **options)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_check_against_server_wait_timeout() -> None:
    limits = ServerLimits(
        backend="mysql", server_version="x", max_connections=151, wait_timeout=600
    )
    problems = PoolSettings(pool_recycle=1800).check_against_server(limits)
    assert [p.key for p in problems] == ["POOLTENDER_POOL_RECYCLE"]
    assert "wait_timeout=600" in problems[0].message
    assert "set it to 300" in problems[0].message
    assert PoolSettings(pool_recycle=-1).check_against_server(limits)
    assert not PoolSettings(pool_recycle=300).check_against_server(limits)


def test_check_against_server_single_process_over_limit() -> None:
    limits = ServerLimits.declared(20)
    problems = PoolSettings(pool_size=200, max_overflow=500).check_against_server(limits)
    assert any("700" in p.message and "at most 20" in p.message for p in problems)


def test_with_values_revalidates() -> None:
    with pytest.raises(SettingsError):
        PoolSettings().with_values(pool_size=0)


def test_as_mapping_round_trips() -> None:
    settings = PoolSettings(pool_size=9, shed_wait=0.25)
    assert PoolSettings.from_mapping(settings.as_mapping()) == settings


# ---------------------------------------------------------------------------- one parser


@pytest.mark.parametrize(
    ("key", "raw", "valid"),
    [
        ("POOLTENDER_SHED", "ture", "true or false"),
        ("POOLTENDER_SHED", "", "is empty"),
        ("POOLTENDER_DASHBOARD", "enabled", "true or false"),
        ("POOLTENDER_DASHBOARD", 2, "true or false"),
        ("POOLTENDER_RETRY_AFTER", "abc", "whole number"),
        ("POOLTENDER_RETRY_AFTER", "1.5", "whole number"),
        ("POOLTENDER_RETRY_AFTER", "0", "at least 1"),
        ("POOLTENDER_BUDGET_CHECK", "fial", "one of fail, warn, off, auto"),
        ("POOLTENDER_METRICS_PATH", "", "is empty"),
        ("POOLTENDER_METRICS_PATH", "metrics", "a path below /"),
        ("POOLTENDER_ENDPOINTS", "/", "a path below /"),
        ("POOLTENDER_DASHBOARD_PATH", None, "must be text"),
    ],
)
def test_extension_keys_are_parsed_strictly(key: str, raw: object, valid: str) -> None:
    with pytest.raises(SettingsError) as info:
        ExtensionSettings.from_mapping({key: raw})
    assert info.value.key == key
    assert (repr(raw) if isinstance(raw, str) and raw.strip() != "0" else str(raw)) in str(
        info.value
    )
    assert valid in str(info.value)


def test_extension_keys_parse_and_default() -> None:
    assert ExtensionSettings.from_mapping({}) == ExtensionSettings()
    options = ExtensionSettings.from_mapping(
        {
            "POOLTENDER_SHED": "off",
            "POOLTENDER_RETRY_AFTER": " 3 ",
            "POOLTENDER_ENDPOINTS": "/ops/",
            "POOLTENDER_METRICS_PATH": "OFF",
            "POOLTENDER_DASHBOARD": True,
            "POOLTENDER_BUDGET_CHECK": "Fail",
            "POOLTENDER_POOL_SIZE": "not read here",
        }
    )
    assert options.shed is False
    assert options.retry_after == 3
    assert options.path("endpoints") == "/ops"
    assert options.path("metrics_path") is None
    assert options.dashboard is True
    assert options.budget_check == "fail"
    assert ExtensionSettings().budget_mode(has_fleet_shape=True) == "warn"
    assert ExtensionSettings().budget_mode(has_fleet_shape=False) == "off"


def test_pool_settings_ignore_the_extension_and_fleet_keys_but_suggest_them() -> None:
    settings = PoolSettings.from_mapping(
        {"POOLTENDER_SHED": "true", "POOLTENDER_FLEET_HOSTS": "3", "POOLTENDER_POOL_SIZE": "5"}
    )
    assert settings.pool_size == 5
    with pytest.raises(SettingsError, match="did you mean POOLTENDER_RETRY_AFTER"):
        PoolSettings.from_mapping({"POOLTENDER_RETRY_AFTR": "2"})


def test_parse_value_is_the_one_strict_parser() -> None:
    assert parse_value(bool, "Yes", "K") is True
    assert parse_value(bool, 0, "K") is False
    assert parse_value(int, " 7 ", "K") == 7
    assert parse_value(float, 2, "K") == 2.0
    assert parse_value(str, " x ", "K") == "x"
    for kind, raw in [(bool, "ture"), (bool, ""), (int, "abc"), (int, True), (float, "inf")]:
        with pytest.raises(SettingsError) as info:
            parse_value(kind, raw, "MY_KEY")
        assert info.value.key == "MY_KEY"


@dataclass(frozen=True, kw_only=True)
class _Service:
    workers: int = 2
    debug: bool = False
    mode: Literal["fast", "safe"] = "safe"


def test_from_mapping_reads_any_dataclass() -> None:
    read = from_mapping(_Service, {"SVC_WORKERS": "4", "SVC_MODE": "FAST", "OTHER": "x"}, "SVC_")
    assert read == _Service(workers=4, mode="fast")
    with pytest.raises(SettingsError) as info:
        from_mapping(_Service, {"SVC_WORKER": "4", "SVC_DEBUG": "maybe"}, "SVC_")
    assert [p.key for p in info.value.problems] == ["SVC_WORKER", "SVC_DEBUG"]
    assert "did you mean SVC_WORKERS" in str(info.value)
    assert from_mapping(_Service, {"SVC_UNKNOWN": "1"}, "SVC_", unknown="ignore") == _Service()


def test_settings_from_config_and_memory_detection() -> None:
    assert settings_from_config({}).ping_after_idle == WATCHED_PING_AFTER_IDLE
    assert settings_from_config({"POOLTENDER_PING_AFTER_IDLE": "0"}).ping_after_idle == 0
    assert is_sqlite_memory("sqlite://")
    assert is_sqlite_memory("sqlite:///:memory:")
    assert not is_sqlite_memory("sqlite:///var/app.db")
    assert not is_sqlite_memory(None)


@pytest.mark.parametrize(
    ("key", "raw"), [("POOLTENDER_SHED", "ture"), ("POOLTENDER_RETRY_AFTER", "abc")]
)
def test_the_extension_refuses_to_start_on_a_misspelt_value(key: str, raw: str) -> None:
    """Before: ``ture`` silently turned shedding off and ``abc`` escaped as a bare ValueError."""
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from pooltender.flask import Pooltender

    app = Flask(__name__)
    app.config.update({"SQLALCHEMY_DATABASE_URI": "sqlite://", key: raw})
    with pytest.raises(SettingsError) as info:
        Pooltender(app, SQLAlchemy())
    assert info.value.key == key
    assert "pooltender" not in app.extensions
