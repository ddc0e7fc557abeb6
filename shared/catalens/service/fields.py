"""Product fields of a catalog photo: read from S3 object metadata and/or a sidecar ``<key>.json``, validated.

Merchants write fields two ways: as object metadata (``x-amz-meta-title: Red shoe``; S3 hands them to us
lower-cased, without the prefix, ASCII-only unless RFC 2047-encoded) or as a sidecar JSON object uploaded
next to the photo. The sidecar wins per field. Everything a merchant can get wrong raises
:class:`~catalens.service.errors.FieldError` with a message naming the field, so ingest can record it.

>>> parse_product_fields({"title": "Red shoe", "price": "19.90", "currency": "eur"}, None)
{'title': 'Red shoe', 'price': 19.9, 'currency': 'EUR'}
"""

from __future__ import annotations

import email.header
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from catalens.service.errors import FieldError

TEXT_LIMITS = {
    "title": 300,
    "description": 5000,
    "category": 120,
    "brand": 120,
    "sku": 120,
    "color": 60,
    "url": 2048,
    "image_url": 2048,
}
STANDARD_FIELDS = frozenset({*TEXT_LIMITS, "price", "currency", "tags"})
RESERVED_FIELDS = frozenset({"item_id", "near_duplicates", "read_text", "image_key", "score", "vector", "deleted"})
MAX_EXTRA_FIELDS = 30
MAX_EXTRA_TEXT = 1000
MAX_TAGS = 50
MAX_SIDECAR_BYTES = 64 * 1024
MAX_PRICE = 1e12
FIELD_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,63}$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
# Metadata a client library adds by itself; not product fields.
IGNORED_METADATA = frozenset({"content-md5", "mtime", "s3cmd-attrs", "sha256", "md5chksum", "uid", "gid", "mode"})


def parse_sidecar(data: bytes) -> dict[str, Any]:
    """Decode a sidecar file: a UTF-8 JSON object of at most 64 KiB."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise FieldError(f"the sidecar JSON is {len(data)} bytes; the limit is {MAX_SIDECAR_BYTES}")
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FieldError(f"the sidecar is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise FieldError(f"the sidecar must be a JSON object, got {type(value).__name__}")
    return value


def parse_product_fields(metadata: Mapping[str, str], sidecar: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge metadata and sidecar (sidecar wins), normalise and validate every field."""
    raw: dict[str, Any] = {}
    for name, value in metadata.items():
        key = name.lower().strip()
        if key in IGNORED_METADATA:
            continue
        raw[key.replace("-", "_")] = _decode_rfc2047(value)
    for name, value in (sidecar or {}).items():
        raw[str(name).strip().lower()] = value
    fields: dict[str, Any] = {}
    extras = 0
    for name, value in raw.items():
        if value is None:
            continue
        if not FIELD_NAME.match(name):
            raise FieldError(f"field name {name[:64]!r} must be lower-case letters, digits, '_' or '-' (max 64)")
        if name in RESERVED_FIELDS:
            raise FieldError(f"field {name!r} is reserved and cannot be set by the catalog")
        if name in TEXT_LIMITS:
            fields[name] = _text(name, value, TEXT_LIMITS[name])
        elif name == "price":
            fields[name] = _price(value)
        elif name == "currency":
            fields[name] = _currency(value)
        elif name == "tags":
            fields[name] = _tags(value)
        else:
            extras += 1
            if extras > MAX_EXTRA_FIELDS:
                raise FieldError(f"at most {MAX_EXTRA_FIELDS} extra fields per item")
            fields[name] = _extra(name, value)
    for name in ("url", "image_url"):
        if name in fields:
            _check_url(name, fields[name])
    return fields


def _decode_rfc2047(value: str) -> str:
    """Metadata values are ASCII; clients send other text as ``=?UTF-8?B?...?=`` (RFC 2047)."""
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return value


def _text(name: str, value: Any, limit: int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise FieldError(f"field {name!r} must be text, got {type(value).__name__}")
    text = str(value).strip()
    if len(text) > limit:
        raise FieldError(f"field {name!r} is {len(text)} characters; the limit is {limit}")
    if any(ord(ch) < 0x20 and ch not in "\t\n" for ch in text):
        raise FieldError(f"field {name!r} contains control characters")
    return text


def _price(value: Any) -> float:
    if isinstance(value, bool):
        raise FieldError("field 'price' must be a number, got a boolean")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(Decimal(value.strip()))
        except (InvalidOperation, ValueError) as exc:
            raise FieldError(f"field 'price' must be a number like 19.90, got {value[:40]!r}") from exc
    else:
        raise FieldError(f"field 'price' must be a number, got {type(value).__name__}")
    if not math.isfinite(number) or number < 0 or number > MAX_PRICE:
        raise FieldError(f"field 'price' must be a finite number between 0 and {MAX_PRICE:g}, got {value!r}")
    return number


def _currency(value: Any) -> str:
    if not isinstance(value, str) or not CURRENCY.match(value.strip().upper()):
        raise FieldError(f"field 'currency' must be an ISO 4217 code such as EUR or USD, got {str(value)[:20]!r}")
    return value.strip().upper()


def _tags(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise FieldError("field 'tags' must be a list of strings or a comma-separated string")
    tags = [_text("tags", item, 100) for item in items]
    tags = [tag for tag in tags if tag]
    if len(tags) > MAX_TAGS:
        raise FieldError(f"field 'tags' has {len(tags)} tags; the limit is {MAX_TAGS}")
    return tags


def _extra(name: str, value: Any) -> str | int | float | bool:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FieldError(f"field {name!r} must be a finite number")
        return value
    if isinstance(value, str):
        return _text(name, value, MAX_EXTRA_TEXT)
    raise FieldError(f"field {name!r} must be text, a number or a boolean, got {type(value).__name__}")


def _check_url(name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FieldError(f"field {name!r} must be an http(s) URL, got {url[:80]!r}")
