"""Where the Flask extension reads its settings (issue 13): the ``settings=`` argument, then
app.config, then the environment, then the defaults, one strict parser for every source; and
the app's own ``SQLALCHEMY_ENGINE_OPTIONS`` pool options adopted, refused only when they
conflict with a value the user set. On a SQLite file (a real QueuePool)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from pooltender.flask import Pooltender
from pooltender.settings import PoolSettings, SettingsError
from pooltender.watch import watch_of


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Any]:
    """``build(settings=None, **config)``: an app with the extension; engines disposed after."""
    built: list[tuple[Flask, SQLAlchemy]] = []

    def build(settings: PoolSettings | None = None, **config: Any) -> tuple[Flask, SQLAlchemy]:
        db = SQLAlchemy()
        app = Flask(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'config.db'}"
        app.config.update(config)
        Pooltender(app, db, settings=settings, protect=lambda: None)
        built.append((app, db))
        return app, db

    yield build
    for app, db in built:
        with app.app_context():
            db.engine.dispose()


def pool_size(app: Flask, db: SQLAlchemy) -> int:
    with app.app_context():
        return int(db.engine.pool.size())  # type: ignore[attr-defined]


def test_the_environment_is_read(apps: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The newcomer's case: POOLTENDER_LEAK_THRESHOLD=2 in the environment was ignored."""
    monkeypatch.setenv("POOLTENDER_LEAK_THRESHOLD", "2")
    monkeypatch.setenv("POOLTENDER_POOL_SIZE", "3")
    monkeypatch.setenv("POOLTENDER_RETRY_AFTER", "7")
    app, db = apps()
    with app.app_context():
        watch = watch_of(db.engine)
        assert watch is not None
        assert watch.leak_threshold == 2.0
    assert pool_size(app, db) == 3
    assert app.extensions["pooltender"].options.retry_after == 7


def test_precedence_settings_then_config_then_environment(
    apps: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOLTENDER_POOL_SIZE", "3")
    assert pool_size(*apps(POOLTENDER_POOL_SIZE=5)) == 5  # app.config beats the environment
    assert pool_size(*apps(PoolSettings(pool_size=7), POOLTENDER_POOL_SIZE=5)) == 7
    monkeypatch.delenv("POOLTENDER_POOL_SIZE")
    assert pool_size(*apps()) == PoolSettings().pool_size  # then the default


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("POOLTENDER_SHED", "ture", "must be true or false"),
        ("POOLTENDER_RETRY_AFTER", "abc", "must be a whole number"),
        ("POOLTENDER_LEAK_THRESHOLD", "", "is empty"),
        ("POOLTENDER_LEAK_THRESHLD", "2", "did you mean POOLTENDER_LEAK_THRESHOLD"),
    ],
)
def test_the_environment_is_parsed_strictly(
    apps: Any, monkeypatch: pytest.MonkeyPatch, key: str, raw: str, message: str
) -> None:
    monkeypatch.setenv(key, raw)
    with pytest.raises(SettingsError, match=message) as caught:
        apps()
    assert key in str(caught.value)


def test_budget_cli_keys_in_the_environment_are_not_the_extensions(
    apps: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOLTENDER_SERVER_MAX_CONNECTIONS", "151")  # pooltender budget's
    monkeypatch.setenv("POOLTENDER_LOAD_THROUGHPUT", "100")
    assert pool_size(*apps()) == PoolSettings().pool_size


def test_the_apps_own_pool_options_are_adopted(apps: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The newcomer's case: SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 10} was refused as
    clashing with POOLTENDER_POOL_SIZE=4, which they never set."""
    with caplog.at_level(logging.INFO, logger="pooltender.flask"):
        app, db = apps(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 10, "pool_recycle": 600})
    assert pool_size(app, db) == 10
    state = app.extensions["pooltender"]
    assert state.settings.pool_size == 10
    assert state.settings.pool_recycle == 600
    with app.app_context():
        assert db.engine.pool._recycle == 600  # type: ignore[attr-defined]
    said = [r.getMessage() for r in caplog.records if "adopted" in r.getMessage()]
    assert any("'pool_size'" in m and "POOLTENDER_POOL_SIZE" in m for m in said), said


@pytest.mark.parametrize("where", ["config", "environment"])
def test_a_pool_option_conflicting_with_a_value_the_user_set_is_refused(
    apps: Any, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    config: dict[str, Any] = {"SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": 10}}
    if where == "config":
        config["POOLTENDER_POOL_SIZE"] = 4
    else:
        monkeypatch.setenv("POOLTENDER_POOL_SIZE", "4")
    with pytest.raises(SettingsError, match=r"\['pool_size'\]=10: clashes with ") as caught:
        apps(**config)
    assert "POOLTENDER_POOL_SIZE=" in str(caught.value)
    # the same value in both places is no conflict
    config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_size": 4}
    assert pool_size(*apps(**config)) == 4


def test_a_pool_option_conflicting_with_the_settings_argument_is_refused(apps: Any) -> None:
    with pytest.raises(SettingsError, match=r"clashes with settings=PoolSettings\(pool_size=4\)"):
        apps(PoolSettings(pool_size=4), SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 10})


def test_a_config_key_the_settings_argument_overrides_is_logged(
    apps: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """app.config's POOLTENDER_SHED_WAIT next to settings=PoolSettings(...) was ignored
    without a word (a test that meant a 20 s shed wait ran with 0.5 s): the argument still
    wins (the documented precedence), and a warning names both."""
    with caplog.at_level(logging.WARNING, logger="pooltender.flask"):
        apps(PoolSettings(shed_wait=0.5), POOLTENDER_SHED_WAIT="20", POOLTENDER_POOL_SIZE=4)
    warned = [r.getMessage() for r in caplog.records if "is overridden by" in r.getMessage()]
    assert warned == [
        "app.config POOLTENDER_SHED_WAIT='20' is overridden by "
        "settings=PoolSettings(shed_wait=0.5) passed to Pooltender; set it in one place"
    ]  # POOLTENDER_POOL_SIZE=4 is the settings' own value: nothing to say
    with pytest.raises(SettingsError, match="POOLTENDER_POOL_SIZE='ten'"):
        apps(PoolSettings(), POOLTENDER_POOL_SIZE="ten")  # checked by the one parser
    # the environment is not checked: an app passing settings= read them from there
    caplog.clear()
    monkeypatch.setenv("POOLTENDER_SHED_WAIT", "20")
    with caplog.at_level(logging.WARNING, logger="pooltender.flask"):
        assert pool_size(*apps(PoolSettings(pool_size=3))) == 3
    assert not [r for r in caplog.records if "is overridden by" in r.getMessage()]


def test_an_adopted_value_is_validated_under_its_own_name(apps: Any) -> None:
    with pytest.raises(SettingsError, match=r"SQLALCHEMY_ENGINE_OPTIONS\['pool_size'\]=0"):
        apps(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 0})
