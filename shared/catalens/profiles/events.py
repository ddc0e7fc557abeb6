"""One shopper event, as the shop app writes it to the events table.

Events table item shape (DynamoDB; the stream carries ``NEW_IMAGE``)::

    user_id    S   partition key — the shopper
    event_key  S   sort key — "<epoch ms, 13 digits zero-padded>#<event id>", e.g.
                   "1732600000123#01JDXK3M8Q5V4Y2Z7R9T0W1A2B"; lexicographic order is time order,
                   and the event id (a ULID or uuid4, unique per event) makes it unique
    type       S   view | click | add_to_cart | purchase | dismiss
    item_id    S   the product the event is about
    dwell_ms   N   optional: time spent on the item (views)
    query_id   S   optional: the search that showed the item
    ttl        N   epoch seconds after which DynamoDB may delete the event (table TTL attribute)

The event time and id live only in ``event_key`` (one source of truth). The sort key doubles as
the profile's idempotency key: applying the same ``event_key`` twice changes nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from catalens.errors import CatalensError

EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", "dismiss")
ENGAGED_TYPES: frozenset[str] = frozenset({"click", "add_to_cart", "purchase"})

_EVENT_KEY = re.compile(r"^(\d{13})#([A-Za-z0-9_\-:.]{1,64})$")
_MAX_ID_CHARS = 256
DEFAULT_RETENTION_DAYS = 90


class ShopperEventError(CatalensError):
    """A stream record is not a valid shopper event (missing or malformed attribute)."""

    code = "invalid_event"


@dataclass(frozen=True)
class ShopperEvent:
    """A validated shopper event; ``key`` ("ts#id") orders and de-duplicates events of one user."""

    user_id: str
    event_id: str
    ts_ms: int
    type: str
    item_id: str
    dwell_ms: int | None = None
    query_id: str | None = None

    @property
    def key(self) -> str:
        return event_key(self.ts_ms, self.event_id)

    def to_item(self, *, retention_days: int = DEFAULT_RETENTION_DAYS) -> dict[str, Any]:
        """The events-table item (resource-style Python types), with a TTL ``retention_days`` after the event."""
        item: dict[str, Any] = {
            "user_id": self.user_id,
            "event_key": self.key,
            "type": self.type,
            "item_id": self.item_id,
            "ttl": self.ts_ms // 1000 + retention_days * 86_400,
        }
        if self.dwell_ms is not None:
            item["dwell_ms"] = self.dwell_ms
        if self.query_id is not None:
            item["query_id"] = self.query_id
        return item

    @classmethod
    def new(cls, user_id: str, type: str, item_id: str, *, ts_ms: int, **optional: Any) -> ShopperEvent:
        """A fresh event with a random id (what a client library would do), validated."""
        return event_from_item(
            {"user_id": user_id, "event_key": event_key(ts_ms, uuid.uuid4().hex), "type": type, "item_id": item_id}
            | optional
        )


def event_key(ts_ms: int, event_id: str) -> str:
    """The sort key: zero-padded epoch milliseconds, '#', event id (string order == time order)."""
    return f"{ts_ms:013d}#{event_id}"


def _text(item: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = item.get(name)
    if value is None:
        if required:
            raise ShopperEventError(f"event attribute {name!r} is missing")
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_ID_CHARS:
        raise ShopperEventError(f"event attribute {name!r} must be a non-empty string of at most {_MAX_ID_CHARS} chars")
    return value


def _whole_number(item: Mapping[str, Any], name: str) -> int | None:
    value = item.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ShopperEventError(f"event attribute {name!r} must be a number, got {type(value).__name__}")
    if value != value or value < 0 or value > 10**12 or int(value) != value:  # NaN, negative, absurd, fractional
        raise ShopperEventError(f"event attribute {name!r} must be a non-negative whole number, got {value}")
    return int(value)


def event_from_item(item: Mapping[str, Any]) -> ShopperEvent:
    """Validate an events-table item (e.g. a stream ``NewImage``, deserialised) into a :class:`ShopperEvent`.

    Raises :class:`ShopperEventError` naming the first problem; a record that fails here is poison and
    is reported as a batch item failure.
    """
    user_id = _text(item, "user_id", required=True)
    key = _text(item, "event_key", required=True)
    match = _EVENT_KEY.match(key or "")
    if match is None:
        raise ShopperEventError(f"event_key {key!r} must look like '<13-digit epoch ms>#<event id>'")
    event_type = _text(item, "type", required=True)
    if event_type not in EVENT_TYPES:
        raise ShopperEventError(f"event type {event_type!r} is not one of {', '.join(EVENT_TYPES)}")
    return ShopperEvent(
        user_id=user_id or "",
        event_id=match.group(2),
        ts_ms=int(match.group(1)),
        type=event_type,
        item_id=_text(item, "item_id", required=True) or "",
        dwell_ms=_whole_number(item, "dwell_ms"),
        query_id=_text(item, "query_id", required=False),
    )


_EVENT_ATTRIBUTES = ("user_id", "event_key", "type", "item_id", "dwell_ms", "query_id")


def event_from_stream_image(image: Mapping[str, Any] | None) -> ShopperEvent:
    """Validate a stream record's ``NewImage`` (DynamoDB JSON, ``{"name": {"S": "..."}}``) into a :class:`ShopperEvent`.

    Only the attributes an event has are read, each typed value checked here, so a hostile or broken one
    (``{"N": "not-a-number"}``) is an :class:`ShopperEventError` naming it rather than a decoder's exception.
    """
    if not isinstance(image, Mapping):
        raise ShopperEventError("the stream record has no NewImage (the stream must be NEW_IMAGE)")
    item: dict[str, Any] = {}
    for name in _EVENT_ATTRIBUTES:
        if name in image:
            item[name] = _attribute_value(name, image[name])
    return event_from_item(item)


def _attribute_value(name: str, typed: Any) -> Any:
    if not isinstance(typed, Mapping) or len(typed) != 1:
        raise ShopperEventError(f"event attribute {name!r} is not a DynamoDB typed value")
    ((kind, raw),) = typed.items()
    if kind == "S" and isinstance(raw, str):
        return raw
    if kind == "N" and isinstance(raw, str):
        try:
            return Decimal(raw)
        except ArithmeticError as exc:
            raise ShopperEventError(f"event attribute {name!r} is not a number: {raw[:40]!r}") from exc
    if kind == "NULL":
        return None
    raise ShopperEventError(f"event attribute {name!r} has type {str(kind)[:8]!r}; expected a string or a number")
