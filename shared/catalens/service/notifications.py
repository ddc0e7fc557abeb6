"""S3 event notifications, as they arrive in SQS message bodies, turned into :class:`ObjectEvent`.

Two shapes reach us and both are handled:

- real AWS records (``eventVersion`` 2.x): the key URL-encoded (``+`` for space), ``eTag``/``size`` on
  creates only, ``versionId`` on versioned buckets, and a hex ``sequencer`` that orders the events of
  one key;
- moto's records: the same envelope without ``sequencer``, ``versionId``, ``userIdentity`` and friends, and
  with an ``eTag`` on deletes too. Without a sequencer the order falls back to ``eventTime`` (ms), and ingest
  reads the object's current state, so a late event never resurrects or hides an item.

S3 also sends one ``s3:TestEvent`` message when a notification configuration is saved; it parses to no events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

from catalens.errors import CatalensError

EventKind = Literal["created", "removed", "ignored"]


class NotificationError(CatalensError):
    """A message that is not an S3 event notification we understand (recorded, then sent to the DLQ)."""

    code = "invalid_notification"


@dataclass(frozen=True)
class ObjectEvent:
    """One S3 object event with the key decoded."""

    kind: EventKind
    event_name: str
    bucket: str
    key: str
    sequencer: str
    etag: str | None = None
    version_id: str | None = None
    size: int | None = None
    event_time: str = ""


def parse_notification(body: str | bytes | dict[str, Any]) -> list[ObjectEvent]:
    """Every object event in one SQS message body (real S3 sends one record per message; moto too)."""
    message = _load(body)
    if message.get("Event") == "s3:TestEvent":
        return []
    records = message.get("Records")
    if not isinstance(records, list):
        raise NotificationError("the message is neither an S3 event notification (no 'Records') nor an s3:TestEvent")
    return [parse_record(record) for record in records]


def parse_record(record: Any) -> ObjectEvent:
    """One S3 event record (AWS or moto shape)."""
    if not isinstance(record, dict) or not isinstance(record.get("s3"), dict):
        raise NotificationError("an event record has no 's3' object")
    event_name = str(record.get("eventName", ""))
    s3 = record["s3"]
    bucket = (s3.get("bucket") or {}).get("name")
    obj = s3.get("object") or {}
    raw_key = obj.get("key")
    if not isinstance(bucket, str) or not bucket or not isinstance(raw_key, str) or not raw_key:
        raise NotificationError(f"event {event_name!r} names no bucket or key")
    key = unquote_plus(raw_key)
    event_time = str(record.get("eventTime", ""))
    sequencer = obj.get("sequencer") or _sequencer_from_time(event_time)
    etag = obj.get("eTag") or None
    size = obj.get("size")
    return ObjectEvent(
        kind=_kind(event_name, key),
        event_name=event_name,
        bucket=bucket,
        key=key,
        sequencer=str(sequencer),
        etag=str(etag).strip('"') if etag else None,
        version_id=obj.get("versionId") or None,
        size=int(size) if isinstance(size, int | float) else None,
        event_time=event_time,
    )


def _load(body: str | bytes | dict[str, Any]) -> dict[str, Any]:
    if isinstance(body, dict):
        return body
    try:
        message = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise NotificationError(f"the message body is not JSON: {str(exc)[:120]}") from exc
    if not isinstance(message, dict):
        raise NotificationError("the message body is not a JSON object")
    return message


def _kind(event_name: str, key: str) -> EventKind:
    if key.endswith("/"):  # a "folder" placeholder made by consoles and sync tools
        return "ignored"
    if event_name.startswith("ObjectCreated:"):
        return "created"
    if event_name.startswith(("ObjectRemoved:", "LifecycleExpiration:")):
        return "removed"
    return "ignored"


def _sequencer_from_time(event_time: str) -> str:
    """Order events without a sequencer (moto) by their time in microseconds, as a hex string."""
    try:
        when = datetime.fromisoformat(event_time.replace("Z", "+00:00"))
    except ValueError as exc:
        raise NotificationError(f"event has neither a sequencer nor a valid eventTime ({event_time[:40]!r})") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    micros = int(when.timestamp() * 1_000_000)
    return format(micros, "X")
