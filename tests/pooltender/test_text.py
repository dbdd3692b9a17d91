"""pooltender.text: one definition of a masked URL, a scrubbed message and an error's line."""

from __future__ import annotations

import pytest

from pooltender.text import first_line, mask_url, scrub


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("mysql+mysqldb://app:s3cret@db:3306/app", "mysql+mysqldb://app:***@db:3306/app"),
        ("mysql://app@db/app?password=s3cret", "mysql://app@db/app?password=***"),
        (
            "mysql://app@db/app?charset=utf8mb4&passwd=s3cret",
            "mysql://app@db/app?charset=utf8mb4&passwd=***",
        ),
        (
            "postgresql://h/db?sslpassword=k3y&sslmode=require",
            "postgresql://h/db?sslmode=require&sslpassword=***",
        ),
        ("sqlite:///var/app.db", "sqlite:///var/app.db"),
        ("not a url", "<unparsable URL>"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_scrub_removes_every_secret_of_the_url_and_of_other_urls() -> None:
    url = "mysql://app:hunter2@db/app?password=other9"
    message = (
        f"(2003) can't connect with {url}: password hunter2 refused; "
        "also tried postgresql://x:zzz@elsewhere/db and mysql://h/db?PWD=abc&x=1"
    )
    cleaned = scrub(message, url)
    for secret in ("hunter2", "other9", "zzz", "abc"):
        assert secret not in cleaned
    assert "mysql://app:***@db/app?password=***" in cleaned
    assert "x=1" in cleaned
    assert scrub("nothing secret here") == "nothing secret here"
    assert "pw" not in scrub("bad url mysql://u:pw@h:notaport/db", "mysql://u:pw@h:notaport/db")


class _Empty(Exception):
    def __str__(self) -> str:
        return ""


def test_first_line() -> None:
    assert first_line(ValueError("first\nsecond")) == "ValueError: first"
    assert first_line(ValueError("\n\n  first  \nsecond")) == "ValueError: first"
    assert first_line(ValueError("first\nsecond"), with_type=False) == "first"
    assert first_line(_Empty()) == "_Empty"
    assert first_line(_Empty(), with_type=False) == "_Empty"
    assert first_line(RuntimeError()) == "RuntimeError"
