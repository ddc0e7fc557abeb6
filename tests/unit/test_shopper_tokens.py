"""Shopper tokens (pure core): minting, verification and who a request may act for."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from catalens.service.errors import HTTP_STATUS, http_status_for
from catalens.service.requests import SearchOptions, SearchRequest
from catalens.service.shopper_tokens import (
    LEEWAY_SECONDS,
    MAX_TTL_SECONDS,
    InvalidTokenError,
    ShopperAuth,
    ShopperKeysUnavailableError,
    ShopperTokenRequiredError,
    SigningKeys,
    TokenExpiredError,
    TokenUserMismatchError,
    mint,
    verify,
)

KEY = "k" * 40
OTHER_KEY = "o" * 40
NOW = 1_700_000_000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_valid_token_names_its_user() -> None:
    token = mint("alice", KEY, ttl_seconds=600, now=NOW)
    assert token.startswith("v1.")
    assert verify(token, KEY, now=NOW + 599) == "alice"


def test_unicode_user_ids_round_trip() -> None:
    assert verify(mint("jörg/ß 1", KEY, now=NOW), KEY, now=NOW) == "jörg/ß 1"


def test_an_expired_token_is_refused_after_the_leeway() -> None:
    token = mint("alice", KEY, ttl_seconds=600, now=NOW)
    assert verify(token, KEY, now=NOW + 600 + LEEWAY_SECONDS) == "alice"  # clock skew between signer and API
    with pytest.raises(TokenExpiredError) as caught:
        verify(token, KEY, now=NOW + 600 + LEEWAY_SECONDS + 1)
    assert http_status_for(caught.value) == 401


def test_a_token_signed_with_another_key_is_refused() -> None:
    with pytest.raises(InvalidTokenError, match="signature"):
        verify(mint("alice", OTHER_KEY, now=NOW), KEY, now=NOW)


def test_a_tampered_payload_is_refused() -> None:
    version, payload, signature = mint("alice", KEY, now=NOW).split(".")
    forged = b64(json.dumps({"sub": "bob", "exp": NOW + 600}, separators=(",", ":"), sort_keys=True).encode())
    assert forged != payload
    with pytest.raises(InvalidTokenError, match="signature"):
        verify(f"{version}.{forged}.{signature}", KEY, now=NOW)


def test_a_longer_expiry_signed_in_the_token_is_refused() -> None:
    """The shop's backend signing a month-long token would make a leak a standing credential."""
    payload = b64(json.dumps({"sub": "alice", "exp": NOW + MAX_TTL_SECONDS + LEEWAY_SECONDS + 1}).encode())
    signature = b64(hmac.new(KEY.encode(), f"v1.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(InvalidTokenError, match="longer than"):
        verify(f"v1.{payload}.{signature}", KEY, now=NOW)
    with pytest.raises(ValueError, match="ttl_seconds"):
        mint("alice", KEY, ttl_seconds=MAX_TTL_SECONDS + 1, now=NOW)


@pytest.mark.parametrize(
    "token",
    ["", "v1", "v1.abc", "v2.e30.c2ln", "v1.e30.c2ln.extra", "v1.e=30.c2ln", "v1.e30.c2ln" + "A" * 3000, "v1..", "..."],
)
def test_malformed_tokens_are_invalid(token: str) -> None:
    with pytest.raises(InvalidTokenError):
        verify(token, KEY, now=NOW)


def test_key_rotation_the_first_key_signs_every_key_verifies() -> None:
    old_token = mint("alice", KEY, now=NOW)
    rotated = f"{OTHER_KEY}\n{KEY}"
    new_token = mint("alice", rotated, now=NOW)
    assert verify(new_token, OTHER_KEY, now=NOW) == "alice"  # signed with the new, first key
    assert verify(old_token, rotated, now=NOW) == "alice"  # still valid until the old key is dropped
    assert SigningKeys.parse(f" {OTHER_KEY}, {KEY} ").all == (OTHER_KEY.encode(), KEY.encode())
    with pytest.raises(ValueError, match="at least 32"):
        SigningKeys.parse("short")


# ---------------------------------------------------------------------------------------------------------- policy
def auth(*, trust_unsigned: bool = False) -> ShopperAuth:
    keys = SigningKeys.parse(KEY)
    return ShopperAuth(lambda: keys, trust_unsigned=trust_unsigned, clock=lambda: NOW)


def headers(user: str | None = None, *, key: str = KEY) -> dict[str, str]:
    return {} if user is None else {"x-shopper-token": mint(user, key, now=NOW)}


def test_the_token_names_the_user_to_personalise_for() -> None:
    request = SearchRequest(item_id="sku-1")
    assert auth().search(request, headers("alice")).options.user_id == "alice"
    named = SearchRequest(item_id="sku-1", options=SearchOptions(user_id="alice"))
    assert auth().search(named, headers("alice")).options.user_id == "alice"  # a matching user_id is fine


def test_a_token_for_another_user_is_403() -> None:
    named = SearchRequest(item_id="sku-1", options=SearchOptions(user_id="alice"))
    with pytest.raises(TokenUserMismatchError) as caught:
        auth().search(named, headers("bob"))
    assert http_status_for(caught.value) == 403
    with pytest.raises(TokenUserMismatchError):
        auth().erasable("alice", headers("bob"))


def test_an_unsigned_user_id_is_401_unless_the_deployment_trusts_its_callers() -> None:
    named = SearchRequest(item_id="sku-1", options=SearchOptions(user_id="alice"))
    with pytest.raises(ShopperTokenRequiredError) as caught:
        auth().search(named, {})
    assert http_status_for(caught.value) == 401
    with pytest.raises(ShopperTokenRequiredError):
        auth().erasable("alice", {})
    assert auth(trust_unsigned=True).search(named, {}).options.user_id == "alice"
    assert auth(trust_unsigned=True).erasable("alice", {}) == "alice"
    with pytest.raises(TokenUserMismatchError):  # trusting bare ids does not let a token name someone else
        auth(trust_unsigned=True).erasable("alice", headers("bob"))


def test_anonymous_requests_stay_anonymous_and_bad_tokens_are_refused_anyway() -> None:
    assert auth().search(SearchRequest(item_id="sku-1"), {}).options.user_id is None
    with pytest.raises(InvalidTokenError):
        auth().search(SearchRequest(item_id="sku-1"), headers("alice", key=OTHER_KEY))


def test_a_deployment_without_keys_cannot_verify_tokens() -> None:
    with pytest.raises(ShopperKeysUnavailableError) as caught:
        ShopperAuth(None).search(SearchRequest(item_id="sku-1"), headers("alice"))
    assert http_status_for(caught.value) == 503


def test_every_token_code_has_its_status() -> None:
    assert {code: HTTP_STATUS[code] for code in ("invalid_token", "token_expired", "shopper_token_required")} == {
        "invalid_token": 401,
        "token_expired": 401,
        "shopper_token_required": 401,
    }
    assert HTTP_STATUS["token_user_mismatch"] == 403
