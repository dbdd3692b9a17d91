"""Bulk code generation and CSV export: services/codegen.py and api/codes.py."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select, update

from coupons.db import db
from coupons.errors import NotFound, Unprocessable
from coupons.models import Coupon
from coupons.services import codegen
from coupons.services.codegen import (
    DEFAULT_ALPHABET,
    CodePattern,
    InvalidPattern,
    check_count,
    check_space,
    generate_codes,
    open_codes_export,
)
from tests.conftest import make_campaign

# ---------------------------------------------------------------- helpers


def insert_codes(app: Flask, campaign_id: int, codes: list[str]) -> None:
    with app.app_context():
        db.session.execute(insert(Coupon), [{"campaign_id": campaign_id, "code": c} for c in codes])
        db.session.commit()


def codes_of(app: Flask, campaign_id: int) -> list[str]:
    with app.app_context():
        return list(
            db.session.scalars(select(Coupon.code).where(Coupon.campaign_id == campaign_id))
        )


def seeded_bytes(seed: int) -> Callable[[int], bytes]:
    """A deterministic stand-in for secrets.token_bytes."""
    return random.Random(seed).randbytes


# ---------------------------------------------------------------- patterns (no database)


def test_parse_pattern_and_prefix() -> None:
    pattern = CodePattern.parse(" spring-####-#### ")
    assert pattern.template == "SPRING-####-####"
    assert pattern.slots == 8
    assert pattern.space == 32**8
    assert pattern.alphabet == DEFAULT_ALPHABET
    prefixed = CodePattern.parse("####", prefix="vip-")
    assert prefixed.template == "VIP-####"
    code = prefixed.draw()
    assert prefixed.matches(code)
    assert code.startswith("VIP-")


def test_default_alphabet_has_no_lookalikes() -> None:
    # Codes are upper-case, so only 0/O and 1/I are confusable; upper-case L stays (the
    # brief's alphabet), which keeps 32 = 2**5 characters: every random byte is usable.
    assert len(DEFAULT_ALPHABET) == len(set(DEFAULT_ALPHABET)) == 32
    assert not set("0O1I") & set(DEFAULT_ALPHABET)


@pytest.mark.parametrize(
    ("pattern", "prefix", "fragment"),
    [
        ("", None, "empty"),
        ("SPRING", None, "no '#'"),
        ("SPRING_####", None, "'_'"),
        ("SPR ING-##", None, "' '"),
        ("ÄB-##", None, "'Ä'"),
        ("%##", None, "'%'"),
        ("#" * 65, None, "65 characters"),
        ("#" * 60, "ABCDE", "65 characters"),
        ("-####", None, "not '-'"),
        ("####", "A#", "literal"),
        ("####", "A_B", "prefix may contain only"),
    ],
)
def test_bad_patterns_are_refused_clearly(pattern: str, prefix: str | None, fragment: str) -> None:
    with pytest.raises(InvalidPattern) as info:
        CodePattern.parse(pattern, prefix)
    assert fragment in info.value.message
    assert info.value.code == "invalid_pattern"
    assert info.value.status == 422
    assert isinstance(info.value, ValueError)


def test_longest_pattern_is_accepted() -> None:
    assert CodePattern.parse("#" * 64).slots == 64


def test_space_rule_is_ten_times_the_count() -> None:
    pattern = CodePattern.parse("X-##")  # 32^2 = 1024 codes
    check_space(pattern, 102)  # 1020 <= 1024
    with pytest.raises(Unprocessable) as info:
        check_space(pattern, 103)
    assert info.value.code == "pattern_space_too_small"
    assert "1,024" in info.value.message
    assert "1,030" in info.value.message
    assert info.value.details == {"space": 1024, "required": 1030, "existing": 0}
    with pytest.raises(Unprocessable):
        check_space(pattern, 100, existing=3)


@pytest.mark.parametrize("count", [0, -1, 1_000_001])
def test_count_out_of_range(count: int) -> None:
    with pytest.raises(Unprocessable) as info:
        check_count(count)
    assert info.value.code == "invalid_count"


def test_rejection_sampling_has_no_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    # Alphabet of 3: bytes 0..254 map evenly (85 each), byte 255 must be dropped.
    pattern = CodePattern.parse("#", alphabet="ABC")
    feed = iter([bytes(range(256)), bytes(range(256))])
    monkeypatch.setattr(codegen, "_random_bytes", lambda n: next(feed))
    codes = pattern.draw_many(255)
    assert {c: codes.count(c) for c in "ABC"} == {"A": 85, "B": 85, "C": 85}


_literal = st.sampled_from("ABCXYZ0123456789-")
_piece = st.one_of(st.just("#"), _literal)


@settings(max_examples=60, deadline=None)
@given(
    body=st.lists(_piece, min_size=1, max_size=40).map("".join),
    prefix=st.text(alphabet="ABZ09", max_size=8),
)
def test_every_drawn_code_matches_its_pattern(body: str, prefix: str) -> None:
    template = prefix + body
    if "#" not in template or template.startswith("-"):
        with pytest.raises(InvalidPattern):
            CodePattern.parse(body, prefix)
        return
    pattern = CodePattern.parse(body, prefix)
    for code in pattern.draw_many(25):
        assert pattern.matches(code)
        assert len(code) == len(template) <= 64
        for char, slot in zip(code, template, strict=True):
            assert char in DEFAULT_ALPHABET if slot == "#" else char == slot


# ---------------------------------------------------------------- generation (3 databases)


def test_generates_exactly_n_unique_codes(app: Flask, rows: Callable[[Any], int]) -> None:
    campaign_id = make_campaign(app)
    progress: list[tuple[int, int]] = []
    with app.app_context():
        result = generate_codes(
            campaign_id,
            2_500,
            pattern="spring-####-####",
            max_uses=3,
            chunk_size=1_000,
            on_progress=lambda done, total: progress.append((done, total)),
        )
    assert result.generated == 2_500
    assert progress == [(1_000, 2_500), (2_000, 2_500), (2_500, 2_500)]
    codes = codes_of(app, campaign_id)
    assert len(codes) == len(set(codes)) == 2_500
    pattern = CodePattern.parse("SPRING-####-####")
    assert all(pattern.matches(code) for code in codes)
    assert set(result.sample) <= set(codes)
    assert len(result.sample) == 5
    with app.app_context():
        stats = db.session.execute(
            select(func.min(Coupon.max_uses), func.max(Coupon.max_uses), func.sum(Coupon.use_count))
        ).one()
    assert tuple(stats) == (3, 3, 0)
    assert rows(Coupon) == 2_500


def test_hundred_thousand_codes(app: Flask) -> None:
    """100k codes are routine on every database (a few seconds each here)."""
    campaign_id = make_campaign(app)
    with app.app_context():
        result = generate_codes(campaign_id, 100_000)
        stored = db.session.scalar(
            select(func.count(func.distinct(Coupon.code))).where(Coupon.campaign_id == campaign_id)
        )
    assert result.generated == stored == 100_000


def test_collisions_with_stored_codes_and_within_a_chunk_are_redrawn(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Q-### has 32,768 codes: 3,000 random ones repeat each other ~130 times (birthday),
    # and the seeded draw is made to hit five codes stored by another campaign.
    pattern = CodePattern.parse("Q-###")
    monkeypatch.setattr(codegen, "_random_bytes", seeded_bytes(7))
    predicted = pattern.draw_many(3_000)  # what the first (only) chunk will draw
    assert len(set(predicted)) < 3_000  # the draw does repeat itself
    taken = list(dict.fromkeys(predicted))[:5]
    other = make_campaign(app, name="other")
    insert_codes(app, other, taken)

    campaign_id = make_campaign(app)
    monkeypatch.setattr(codegen, "_random_bytes", seeded_bytes(7))  # same draw again
    with app.app_context():
        result = generate_codes(campaign_id, 3_000, pattern="Q-###", chunk_size=3_000)
    codes = codes_of(app, campaign_id)
    assert result.generated == len(codes) == len(set(codes)) == 3_000
    assert not set(codes) & set(taken)
    assert set(predicted) - set(taken) <= set(codes)  # the seeded draw was really used


def test_codes_a_concurrent_writer_took_are_redrawn_after_the_unique_index_refuses(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot read cannot see codes committed meanwhile (MariaDB REPEATABLE READ):
    simulate it, so the INSERT itself meets the unique index, inside its savepoint."""
    pattern = CodePattern.parse("R-####")
    monkeypatch.setattr(codegen, "_random_bytes", seeded_bytes(11))
    taken = pattern.draw_many(100)[:4]  # in the first chunk's draw
    other = make_campaign(app, name="other")
    insert_codes(app, other, taken)

    real = codegen._existing_codes
    locking_reads: list[int] = []

    def blind_snapshot(codes: Any, *, locking: bool = False) -> set[str]:
        if not locking:
            return set()
        locking_reads.append(1)
        return real(codes, locking=True)

    monkeypatch.setattr(codegen, "_existing_codes", blind_snapshot)
    monkeypatch.setattr(codegen, "_random_bytes", seeded_bytes(11))
    campaign_id = make_campaign(app)
    with app.app_context():
        result = generate_codes(campaign_id, 300, pattern="R-####", chunk_size=100)
    codes = codes_of(app, campaign_id)
    assert result.generated == len(set(codes)) == 300
    assert not set(codes) & set(taken)
    assert locking_reads  # the savepoint path ran


def _refused(app: Flask, campaign_id: int, **kwargs: Any) -> Exception:
    with app.app_context(), pytest.raises(Exception) as info:  # noqa: PT011
        generate_codes(campaign_id, **kwargs)
    return info.value


def test_refusals_write_nothing(app: Flask, rows: Callable[[Any], int]) -> None:
    campaign_id = make_campaign(app)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"count": 200, "pattern": "X-##"}, Unprocessable, "pattern_space_too_small"),
        ({"count": 5, "pattern": "NOSLOTS"}, InvalidPattern, "invalid_pattern"),
        ({"count": 0}, Unprocessable, "invalid_count"),
        ({"count": 1_000_001}, Unprocessable, "invalid_count"),
        ({"count": 5, "max_uses": 0}, Unprocessable, "invalid_max_uses"),
    ]
    for kwargs, kind, code in cases:
        exc = _refused(app, campaign_id, **kwargs)
        assert isinstance(exc, kind)
        assert getattr(exc, "code", None) == code
    exc = _refused(app, campaign_id + 999, count=5)
    assert isinstance(exc, NotFound)
    assert exc.code == "campaign_not_found"
    assert rows(Coupon) == 0


def test_space_rule_counts_codes_already_stored(app: Flask, rows: Callable[[Any], int]) -> None:
    campaign_id = make_campaign(app)
    insert_codes(app, campaign_id, [f"Z-{a}{b}" for a in "ABCDE" for b in "23"])  # 10 codes
    exc = _refused(app, campaign_id, count=100, pattern="Z-##")  # 10 * 110 > 1024
    assert isinstance(exc, Unprocessable)
    assert exc.code == "pattern_space_too_small"
    assert exc.details["existing"] == 10
    assert rows(Coupon) == 10


def test_failure_midway_rolls_everything_back(app: Flask, rows: Callable[[Any], int]) -> None:
    campaign_id = make_campaign(app)

    def fail_on_third_chunk(done: int, total: int) -> None:
        if done >= 300:
            raise RuntimeError("disk full")

    with app.app_context(), pytest.raises(RuntimeError, match="disk full"):
        generate_codes(campaign_id, 500, chunk_size=100, on_progress=fail_on_third_chunk)
    assert rows(Coupon) == 0


# ---------------------------------------------------------------- CSV export


def test_csv_export_streams_every_code_page_by_page(app: Flask) -> None:
    campaign_id = make_campaign(app)
    other = make_campaign(app, name="other")
    with app.app_context():
        generate_codes(campaign_id, 25, max_uses=2)
        generate_codes(other, 7)
        db.session.execute(
            update(Coupon).where(Coupon.campaign_id == campaign_id).values(use_count=1)
        )
        db.session.commit()
        pages = open_codes_export(campaign_id, page_size=10)
        assert next(pages) == "code,max_uses,use_count,created_at\r\n"
        first = next(pages)
        # Between pages nothing is held: a slow client costs no connection.
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        text = first + "".join(pages)
    records = list(csv.reader(io.StringIO(text)))
    assert len(records) == 25
    assert sorted(r[0] for r in records) == sorted(codes_of(app, campaign_id))
    assert {(r[1], r[2]) for r in records} == {("2", "1")}
    assert all(r[3].endswith("+00:00") and "T" in r[3] for r in records)


def test_csv_export_of_unknown_campaign_is_404(app: Flask) -> None:
    with app.app_context(), pytest.raises(NotFound):
        open_codes_export(12345)


# ---------------------------------------------------------------- HTTP


def test_generate_endpoint(
    app: Flask, client: FlaskClient, admin: dict[str, str], rows: Callable[[Any], int]
) -> None:
    campaign_id = make_campaign(app)
    response = client.post(
        f"/api/v1/campaigns/{campaign_id}/codes/generate",
        json={"count": 40, "pattern": "sale-####", "prefix": "x", "max_uses": 1},
        headers=admin,
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["campaign_id"] == campaign_id
    assert body["generated"] == 40
    assert body["pattern"] == "XSALE-####"
    assert len(body["sample"]) == 5
    assert all(code.startswith("XSALE-") for code in body["sample"])
    assert rows(Coupon) == 40


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"count": 10, "pattern": "NO-SLOTS"}, 422, "invalid_pattern"),
        ({"count": 10, "pattern": "a_#"}, 422, "invalid_pattern"),
        ({"count": 200, "pattern": "X-##"}, 422, "pattern_space_too_small"),
        ({"count": 0}, 422, "validation_error"),
        ({"count": 1_000_001}, 422, "validation_error"),
        ({"count": 10, "max_uses": 0}, 422, "validation_error"),
        ({"pattern": "####"}, 422, "validation_error"),
        ({"count": 10, "pattern": "#" * 65}, 422, "validation_error"),
    ],
)
def test_generate_endpoint_refusals_write_nothing(
    app: Flask,
    client: FlaskClient,
    admin: dict[str, str],
    rows: Callable[[Any], int],
    payload: dict[str, Any],
    status: int,
    code: str,
) -> None:
    campaign_id = make_campaign(app)
    response = client.post(
        f"/api/v1/campaigns/{campaign_id}/codes/generate", json=payload, headers=admin
    )
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert rows(Coupon) == 0


def test_generate_endpoint_auth_and_unknown_campaign(
    app: Flask,
    client: FlaskClient,
    admin: dict[str, str],
    service: dict[str, str],
    rows: Callable[[Any], int],
) -> None:
    campaign_id = make_campaign(app)
    url = f"/api/v1/campaigns/{campaign_id}/codes/generate"
    cases = [
        (client.post(url, json={"count": 5}), 401, "missing_token"),
        (
            client.post(url, json={"count": 5}, headers={"Authorization": "Bearer nope"}),
            401,
            "invalid_token",
        ),
        (client.post(url, json={"count": 5}, headers=service), 403, "forbidden"),
        (
            client.post(
                f"/api/v1/campaigns/{campaign_id + 99}/codes/generate",
                json={"count": 5},
                headers=admin,
            ),
            404,
            "campaign_not_found",
        ),
    ]
    for response, status, code in cases:
        assert response.status_code == status
        assert response.get_json()["error"]["code"] == code
    assert rows(Coupon) == 0


def test_csv_endpoint(
    app: Flask, client: FlaskClient, admin: dict[str, str], service: dict[str, str]
) -> None:
    campaign_id = make_campaign(app)
    with app.app_context():
        generate_codes(campaign_id, 12)
    url = f"/api/v1/campaigns/{campaign_id}/codes.csv"
    response = client.get(url, headers=admin)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="campaign-{campaign_id}-codes.csv"'
    )
    lines = response.get_data(as_text=True).splitlines()
    assert lines[0] == "code,max_uses,use_count,created_at"
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(codes_of(app, campaign_id))

    assert client.get(url).status_code == 401
    forbidden = client.get(url, headers=service)
    assert forbidden.status_code == 403
    assert forbidden.get_json()["error"]["code"] == "forbidden"
    missing = client.get(f"/api/v1/campaigns/{campaign_id + 99}/codes.csv", headers=admin)
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "campaign_not_found"


def test_openapi_documents_the_code_routes(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    generate = paths["/api/v1/campaigns/{campaign_id}/codes/generate"]["post"]
    assert generate["security"] == [{"bearerAuth": []}]
    assert "201" in generate["responses"]
    export = paths["/api/v1/campaigns/{campaign_id}/codes.csv"]["get"]
    assert "text/csv" in export["responses"]["200"]["content"]
