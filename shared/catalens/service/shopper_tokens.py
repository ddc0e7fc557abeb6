"""Shopper tokens: the shop's backend vouches for a shopper, so a public API key cannot act as anyone.

The app's API key sits in the clear in a shop's web page, so anyone can call the API. Personalising a search and
erasing a profile act on one shopper's data (design invariant 8), so they need more than the key: a token the shop's
backend signed, with a secret only it and this deployment hold, for that shopper and for a short time — the idea of
hosted search services' "secured API keys".

Format (version 1)::

    v1.<base64url(JSON {"sub": user id, "exp": epoch seconds})>.<base64url(HMAC-SHA256(key, "v1." + payload))>

The version prefix is signed too, so a later format cannot be confused with this one. Tokens are bearer tokens:
short-lived (:data:`DEFAULT_TTL_SECONDS`), and refused when their expiry lies further out than
:data:`MAX_TTL_SECONDS` (a leaked long-lived token would be a standing credential). :data:`LEEWAY_SECONDS` absorbs
clock skew between the signer and the verifier. They travel in the ``X-Shopper-Token`` header, never in the URL
(access logs, browser history and ``Referer`` headers keep URLs).

Key rotation: the secret's value holds one or more keys separated by whitespace or commas; the first signs, all
verify. Rotate without refusing a token: append the new key (``OLD NEW``) so every verifier learns it, move it first
(``NEW OLD``) once they have, and drop the old key once the tokens it signed have expired.

Nothing here knows AWS: the secret comes from an adapter (:mod:`catalens.adapters.ssm`) as text.

>>> token = mint("alice", "k" * 32, ttl_seconds=600, now=1_000_000)
>>> verify(token, "k" * 32, now=1_000_100)
'alice'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from catalens.errors import CatalensError
from catalens.service.requests import SearchOptions, SearchRequest

VERSION = "v1"
HEADER = "X-Shopper-Token"
DEFAULT_TTL_SECONDS = 3600
MAX_TTL_SECONDS = 24 * 3600
LEEWAY_SECONDS = 60
MIN_KEY_LENGTH = 32  # characters of a key: 32 url-safe base64 characters carry 192 bits
MAX_TOKEN_LENGTH = 2048  # a 512-character user id, JSON-escaped and base64-encoded, fits with room to spare
MAX_USER_ID_LENGTH = 512  # as catalens.service.requests.MAX_ID_LENGTH
_KEY_SEPARATORS = re.compile(r"[\s,]+")
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


class ShopperTokenError(CatalensError):
    """A shopper-token check failed; the code says which (the API answers 401 or 403)."""

    code = "invalid_token"


class InvalidTokenError(ShopperTokenError):
    """Malformed, unknown version, or a signature none of the keys made (tampered or signed elsewhere)."""

    code = "invalid_token"


class TokenExpiredError(ShopperTokenError):
    """The token's expiry has passed (beyond the clock-skew leeway): the shop's backend must sign a fresh one."""

    code = "token_expired"


class TokenUserMismatchError(ShopperTokenError):
    """A valid token, but for another shopper than the request names (403: who you are is known, not allowed)."""

    code = "token_user_mismatch"


class ShopperTokenRequiredError(ShopperTokenError):
    """The request names a shopper without a token, and this deployment does not trust unsigned user ids."""

    code = "shopper_token_required"


class ShopperKeysUnavailableError(CatalensError):
    """The deployment's signing keys cannot be read (503: the deployment's fault, not the caller's)."""

    code = "shopper_keys_unavailable"


# ---------------------------------------------------------------------------------------------------------- keys
@dataclass(frozen=True)
class SigningKeys:
    """The keys of one secret value: ``current`` signs, every key in ``all`` verifies."""

    all: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.all:
            raise ValueError("a shopper-token secret needs at least one key")
        short = [n for n, key in enumerate(self.all) if len(key) < MIN_KEY_LENGTH]
        if short:
            raise ValueError(f"shopper-token keys must have at least {MIN_KEY_LENGTH} characters (key {short[0]})")

    @property
    def current(self) -> bytes:
        return self.all[0]

    @classmethod
    def parse(cls, secret: str | bytes | SigningKeys) -> SigningKeys:
        """Keys from a secret's value: ``"new-key old-key"`` (whitespace or commas between keys; first signs)."""
        if isinstance(secret, SigningKeys):
            return secret
        text = secret.decode("utf-8") if isinstance(secret, bytes) else secret
        return cls(tuple(key.encode("utf-8") for key in _KEY_SEPARATORS.split(text.strip()) if key))


Secret = str | bytes | SigningKeys


# ---------------------------------------------------------------------------------------------------------- tokens
def mint(user_id: str, secret: Secret, ttl_seconds: int = DEFAULT_TTL_SECONDS, now: float | None = None) -> str:
    """A token for ``user_id`` that expires ``ttl_seconds`` from ``now`` (what the shop's backend does)."""
    if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID_LENGTH:
        raise ValueError(f"user_id must be a string of 1 to {MAX_USER_ID_LENGTH} characters")
    if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}, got {ttl_seconds}")
    issued = time.time() if now is None else now
    claims = {"sub": user_id, "exp": int(issued) + int(ttl_seconds)}
    payload = _b64encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    signature = _sign(SigningKeys.parse(secret).current, payload)
    return f"{VERSION}.{payload}.{signature}"


def verify(token: str, secret: Secret, now: float | None = None) -> str:
    """The user id a valid token was signed for; raises :class:`ShopperTokenError` naming what is wrong.

    The signature is checked (in constant time, against every key) before the payload is even decoded, so
    nothing an attacker wrote is parsed unless one of the keys signed it.
    """
    keys = SigningKeys.parse(secret)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidTokenError(f"the shopper token is not a string of at most {MAX_TOKEN_LENGTH} characters")
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise InvalidTokenError(f"the shopper token is not a {VERSION} token ({VERSION}.<payload>.<signature>)")
    _, payload, signature = parts
    if not _B64URL.match(payload) or not _B64URL.match(signature):
        raise InvalidTokenError("the shopper token is not base64url")
    if not any(hmac.compare_digest(_sign(key, payload), signature) for key in keys.all):
        raise InvalidTokenError("the shopper token's signature does not match (tampered, or signed with another key)")
    try:
        claims = json.loads(_b64decode(payload))
    except (ValueError, binascii.Error) as exc:  # signed by us, so this is a bug on the signing side
        raise InvalidTokenError("the shopper token's payload is not JSON") from exc
    user_id, expires = _claims(claims)
    clock = time.time() if now is None else now
    if expires + LEEWAY_SECONDS < clock:
        raise TokenExpiredError(f"the shopper token expired {int(clock - expires)} s ago; ask the shop for a new one")
    if expires > clock + MAX_TTL_SECONDS + LEEWAY_SECONDS:
        raise InvalidTokenError(f"the shopper token lives longer than the {MAX_TTL_SECONDS} s this API accepts")
    return user_id


def _claims(claims: Any) -> tuple[str, int]:
    if not isinstance(claims, dict):
        raise InvalidTokenError("the shopper token's payload is not an object")
    user_id, expires = claims.get("sub"), claims.get("exp")
    if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID_LENGTH:
        raise InvalidTokenError("the shopper token names no valid user (sub)")
    if isinstance(expires, bool) or not isinstance(expires, int):
        raise InvalidTokenError("the shopper token has no integer expiry (exp)")
    return user_id, expires


def _sign(key: bytes, payload: str) -> str:
    return _b64encode(hmac.new(key, f"{VERSION}.{payload}".encode("ascii"), hashlib.sha256).digest())


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---------------------------------------------------------------------------------------------------------- policy
@dataclass
class ShopperAuth:
    """Who a request may act for: the user of a valid token, or (when trusted) the user id it names.

    Parameters
    ----------
    keys
        Returns the deployment's current :class:`SigningKeys` (an adapter caches and refreshes them); None when the
        deployment has no secret, so no token can be verified.
    trust_unsigned
        Accept a bare ``user_id`` (template parameter ``TrustUnsignedUserIds``): only for an API that no browser
        reaches, called server to server by a backend that authenticates shoppers itself.
    clock
        Epoch seconds (tests fix it).
    """

    keys: Callable[[], SigningKeys] | None
    trust_unsigned: bool = False
    clock: Callable[[], float] = time.time

    def user_for(self, token: str | None, claimed: str | None) -> str | None:
        """The shopper a request acts for, from its token and the ``user_id`` it names (either may be absent).

        A token wins and a named user must match it (403); a bad token is refused even when the request names
        nobody (the client meant to be someone; answering as anonymous would hide its bug); a bare user id needs
        ``trust_unsigned`` (401 otherwise). No token and no user: an anonymous request.
        """
        if token is not None and token != "":
            user_id = self.verify(token)
            if claimed is not None and claimed != user_id:
                raise TokenUserMismatchError("the shopper token was signed for another user than the request names")
            return user_id
        if claimed is None:
            return None
        if self.trust_unsigned:
            return claimed
        raise ShopperTokenRequiredError(
            f"user_id needs a shopper token: send the one the shop's backend signed for this shopper in {HEADER}"
        )

    def verify(self, token: str) -> str:
        if self.keys is None:
            raise ShopperKeysUnavailableError("this deployment has no shopper-token secret configured")
        return verify(token, self.keys(), now=self.clock())

    def search(self, request: SearchRequest, headers: Mapping[str, str]) -> SearchRequest:
        """``POST /search``: the request with ``options.user_id`` the shopper it may personalise for."""
        return replace(request, options=self.options(request.options, headers))

    def options(self, options: SearchOptions, headers: Mapping[str, str]) -> SearchOptions:
        """Search options with ``user_id`` the shopper they may personalise for (``GET /items/{id}/similar``)."""
        return replace(options, user_id=self.user_for(token_from(headers), options.user_id))

    def erasable(self, user_id: str, headers: Mapping[str, str]) -> str:
        """``DELETE /users/{user_id}/profile`` erases only with a token for that very user (or a trusted caller)."""
        self.user_for(token_from(headers), user_id)  # the token's user, which must be user_id, or a trusted user_id
        return user_id


def token_from(headers: Mapping[str, str]) -> str | None:
    """The shopper token of a request's headers (names lower-cased, as :class:`HttpRequest` keeps them)."""
    value = headers.get(HEADER.lower())
    return value.strip() if isinstance(value, str) else None
