"""POOLTENDER_ADMISSION* settings: defaults from the pool's cap, and every invalid value
refused with a SettingsError naming the key, the value and what is valid."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from pooltender.admission import DEFAULT_EXEMPT, AdmissionSettings, build_limiter
from pooltender.admission.limits import AIMDLimit, FixedLimit, Gradient2Limit, VegasLimit
from pooltender.flask import Pooltender
from pooltender.settings import SettingsError


def test_defaults_follow_the_pool_cap() -> None:
    settings = AdmissionSettings.from_mapping({}, pool_cap=3)
    assert settings.enabled is True
    assert settings.limit == "gradient2"
    # the floor is the pool's cap: the pool, not the latency, is the resource (settings.py)
    assert (settings.initial, settings.minimum, settings.maximum) == (3, 3, 6)
    assert settings.jitter is None  # Retry-After jittered by POOLTENDER_RETRY_AFTER seconds
    assert (settings.target, settings.interval, settings.timeout) == (0.02, 0.1, 0.05)
    assert settings.queue == 64
    assert settings.backlog == 1  # one waiter under a standing queue; the rest refused at once
    assert settings.exempt == DEFAULT_EXEMPT == ("/healthz", "/readyz", "/metrics", "/pooltender")
    # a maximum below the cap pulls the derived initial limit down with it
    low = AdmissionSettings.from_mapping({"POOLTENDER_ADMISSION_MAX": "2"}, pool_cap=6)
    assert (low.initial, low.minimum, low.maximum) == (2, 2, 2)
    # an explicit initial below the cap (a fixed limit of 1) lowers the derived floor too
    one = AdmissionSettings.from_mapping({"POOLTENDER_ADMISSION_INITIAL": "1"}, pool_cap=2)
    assert (one.initial, one.minimum, one.maximum) == (1, 1, 4)
    wide = AdmissionSettings.from_mapping(
        {"POOLTENDER_ADMISSION_INITIAL": "8", "POOLTENDER_ADMISSION_MAX": "32"}, pool_cap=2
    )
    assert (wide.initial, wide.minimum, wide.maximum) == (8, 2, 32)


def test_environment_strings_are_parsed() -> None:
    settings = AdmissionSettings.from_mapping(
        {
            "POOLTENDER_ADMISSION": "off",
            "POOLTENDER_ADMISSION_LIMIT": " Vegas ",
            "POOLTENDER_ADMISSION_INITIAL": "4",
            "POOLTENDER_ADMISSION_MIN": "2",
            "POOLTENDER_ADMISSION_MAX": "9",
            "POOLTENDER_ADMISSION_QUEUE": "0",
            "POOLTENDER_ADMISSION_TARGET": "0.01",
            "POOLTENDER_ADMISSION_INTERVAL": "0.2",
            "POOLTENDER_ADMISSION_TIMEOUT": "1",
            "POOLTENDER_ADMISSION_EXEMPT": "/healthz, /status",
            "UNRELATED": "ignored",
        },
        pool_cap=6,
    )
    assert settings.enabled is False
    assert settings.limit == "vegas"
    assert (settings.initial, settings.minimum, settings.maximum, settings.queue) == (4, 2, 9, 0)
    assert (settings.target, settings.interval, settings.timeout) == (0.01, 0.2, 1.0)
    assert settings.exempt == ("/healthz", "/status")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("gradient2", Gradient2Limit),
        ("vegas", VegasLimit),
        ("aimd", AIMDLimit),
        ("fixed", FixedLimit),
    ],
)
def test_each_algorithm_name_builds_its_limit(name: str, kind: type) -> None:
    limiter = build_limiter(AdmissionSettings(limit=name, initial=3, maximum=8))
    assert isinstance(limiter.algorithm, kind)
    assert limiter.limit == 3


@pytest.mark.parametrize(
    ("values", "key", "says"),
    [
        ({"POOLTENDER_ADMISSION": ""}, "POOLTENDER_ADMISSION", "is empty"),
        ({"POOLTENDER_ADMISSION": "maybe"}, "POOLTENDER_ADMISSION", "true or false"),
        ({"POOLTENDER_ADMISSION_LIMIT": ""}, "POOLTENDER_ADMISSION_LIMIT", "is empty"),
        ({"POOLTENDER_ADMISSION_LIMIT": "gradient"}, "POOLTENDER_ADMISSION_LIMIT", "gradient2"),
        ({"POOLTENDER_ADMISSION_INITIAL": "six"}, "POOLTENDER_ADMISSION_INITIAL", "whole number"),
        ({"POOLTENDER_ADMISSION_MIN": "0"}, "POOLTENDER_ADMISSION_MIN", "at least 1"),
        (
            {"POOLTENDER_ADMISSION_MIN": "4", "POOLTENDER_ADMISSION_MAX": "3"},
            "POOLTENDER_ADMISSION_MAX",
            "POOLTENDER_ADMISSION_MIN=4",
        ),
        (
            {"POOLTENDER_ADMISSION_INITIAL": "20", "POOLTENDER_ADMISSION_MAX": "10"},
            "POOLTENDER_ADMISSION_INITIAL",
            "POOLTENDER_ADMISSION_MAX=10",
        ),
        ({"POOLTENDER_ADMISSION_QUEUE": "-1"}, "POOLTENDER_ADMISSION_QUEUE", "0"),
        ({"POOLTENDER_ADMISSION_TARGET": "0"}, "POOLTENDER_ADMISSION_TARGET", "more than 0"),
        ({"POOLTENDER_ADMISSION_TARGET": "nan"}, "POOLTENDER_ADMISSION_TARGET", "finite"),
        (
            {"POOLTENDER_ADMISSION_TARGET": "0.2", "POOLTENDER_ADMISSION_INTERVAL": "0.1"},
            "POOLTENDER_ADMISSION_TARGET",
            "POOLTENDER_ADMISSION_INTERVAL=0.1",
        ),
        ({"POOLTENDER_ADMISSION_INTERVAL": "-1"}, "POOLTENDER_ADMISSION_INTERVAL", "more than 0"),
        ({"POOLTENDER_ADMISSION_TIMEOUT": "0.001"}, "POOLTENDER_ADMISSION_TIMEOUT", "at least"),
        ({"POOLTENDER_ADMISSION_EXEMPT": ""}, "POOLTENDER_ADMISSION_EXEMPT", "is empty"),
        ({"POOLTENDER_ADMISSION_EXEMPT": "/a,,/b"}, "POOLTENDER_ADMISSION_EXEMPT", "empty path"),
        ({"POOLTENDER_ADMISSION_EXEMPT": "healthz"}, "POOLTENDER_ADMISSION_EXEMPT", "with '/'"),
        ({"POOLTENDER_ADMISSION_TARGTE": "0.01"}, "POOLTENDER_ADMISSION_TARGTE", "did you mean"),
        ({"POOLTENDER_ADMISSION_JITTER": "-1"}, "POOLTENDER_ADMISSION_JITTER", "0"),
        ({"POOLTENDER_ADMISSION_BACKLOG": "-1"}, "POOLTENDER_ADMISSION_BACKLOG", "0"),
        ({"POOLTENDER_ADMISSION_BACKLOG": "one"}, "POOLTENDER_ADMISSION_BACKLOG", "whole number"),
        ({"POOLTENDER_ADMISSION_BACKLOG": ""}, "POOLTENDER_ADMISSION_BACKLOG", "empty"),
    ],
)
def test_invalid_settings_are_refused(values: dict[str, Any], key: str, says: str) -> None:
    with pytest.raises(SettingsError) as refused:
        AdmissionSettings.from_mapping(values, pool_cap=6)
    assert refused.value.key == key
    assert says in str(refused.value)
    assert refused.value.code == "pooltender-settings"


def test_a_typed_flask_config_is_checked_too() -> None:
    with pytest.raises(SettingsError, match="POOLTENDER_ADMISSION_QUEUE"):
        AdmissionSettings.from_mapping({"POOLTENDER_ADMISSION_QUEUE": 2.5}, pool_cap=6)
    with pytest.raises(SettingsError, match="POOLTENDER_ADMISSION_MIN"):
        AdmissionSettings(minimum=0)


def test_the_extension_refuses_bad_admission_settings_before_building_engines() -> None:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", POOLTENDER_ADMISSION_LIMIT="adaptive")
    db = SQLAlchemy()
    with pytest.raises(SettingsError, match="POOLTENDER_ADMISSION_LIMIT"):
        Pooltender(app, db, public=True)
    assert "sqlalchemy" not in app.extensions  # nothing was built
    assert "pooltender" not in app.extensions


def test_the_standing_backlog_setting_reaches_the_limiter() -> None:
    """POOLTENDER_ADMISSION_BACKLOG=1: under a standing queue one request may wait, the next
    newcomer is refused at once (0 s waited); unset, the backlog is the limit."""
    import threading
    import time

    from pooltender.admission import Overloaded

    settings = AdmissionSettings.from_mapping(
        {
            "POOLTENDER_ADMISSION_LIMIT": "fixed",
            "POOLTENDER_ADMISSION_INITIAL": "2",
            "POOLTENDER_ADMISSION_BACKLOG": "1",
            "POOLTENDER_ADMISSION_TARGET": "0.05",
            "POOLTENDER_ADMISSION_INTERVAL": "0.1",
            "POOLTENDER_ADMISSION_TIMEOUT": "5",
        },
        pool_cap=2,
    )
    assert settings.backlog == 1
    assert settings.as_json()["backlog"] == 1
    limiter = build_limiter(settings)
    assert limiter.standing_backlog == 1
    held = [limiter.acquire(), limiter.acquire()]  # the limit of 2 in flight
    outcomes: list[str] = []

    def wait_for_a_slot() -> None:
        try:
            limiter.acquire().release()
            outcomes.append("admitted")
        except Overloaded as exc:
            outcomes.append(exc.reason)

    early = threading.Thread(target=wait_for_a_slot)
    early.start()
    time.sleep(0.3)  # the queue has been non-empty for longer than the interval: standing
    with pytest.raises(Overloaded) as refused:  # a second waiter is beyond the backlog of 1
        limiter.acquire()
    assert (refused.value.reason, refused.value.waited) == ("standing_queue", 0.0)
    held.pop().release()  # the slot goes to the waiter
    early.join(10)
    held.pop().release()
    assert outcomes == ["admitted"]
    unset = AdmissionSettings.from_mapping({}, pool_cap=2)
    assert build_limiter(unset).standing_backlog == 1  # the default
