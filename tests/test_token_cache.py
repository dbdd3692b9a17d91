"""The per-process cache of verified access tokens (coupons.services.auth.VerifiedTokens).

That a cached token still follows its account (disabled user, logged-out session) is
tests/test_auth.py's ``..._loses_access_within_2_s...`` tests: they send one token
repeatedly, so every request after the first is answered from this cache.
"""

from __future__ import annotations

import time

import jwt
import pytest

from coupons.errors import Unauthorized
from coupons.services.auth import (
    Principal,
    VerifiedTokens,
    decode_access_token,
    issue_access_token,
    verified_tokens,
)

SECRET = "test-secret-key-that-is-long-enough-for-hs256"
ALICE = Principal(user_id=7, email="alice@example.test", role="service", family="f" * 32)


def test_a_verified_token_is_answered_from_the_cache_with_the_same_principal() -> None:
    token = issue_access_token(ALICE, SECRET, 300)
    first = decode_access_token(token, SECRET)
    assert first == ALICE
    assert verified_tokens.get(token, SECRET) is not None
    assert decode_access_token(token, SECRET) is first


def test_a_cached_token_still_expires_on_time() -> None:
    token = issue_access_token(ALICE, SECRET, 1)
    assert decode_access_token(token, SECRET) == ALICE  # now cached
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(Unauthorized) as raised:
        decode_access_token(token, SECRET)
    assert raised.value.code == "token_expired"


def test_a_token_is_cached_per_secret() -> None:
    token = issue_access_token(ALICE, SECRET, 300)
    decode_access_token(token, SECRET)
    with pytest.raises(Unauthorized) as raised:
        decode_access_token(token, SECRET + "-rotated")
    assert raised.value.code == "invalid_token"


def test_a_refused_token_is_not_cached() -> None:
    token = issue_access_token(ALICE, SECRET + "-other", 300)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            decode_access_token(token, SECRET)
    assert verified_tokens.get(token, SECRET) is None


def test_the_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = VerifiedTokens(maxsize=3)
    far = time.time() + 300
    for name in ("a", "b", "c"):
        cache.put(name, SECRET, far, ALICE)
    assert cache.get("a", SECRET) is not None  # "a" is now the most recently used
    cache.put("d", SECRET, far, ALICE)
    assert len(cache) == 3
    assert cache.get("b", SECRET) is None  # evicted: the least recently used
    assert all(cache.get(name, SECRET) is not None for name in ("a", "c", "d"))
