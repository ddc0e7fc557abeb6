"""Deltas: one small immutable object per S3 event, written by ingest, folded into a version by the builder.

Why it is lossless under concurrency (docs/design.md, invariant 1):

- **Ingest only creates objects.** A delta's key is a pure function of (item, sequencer, source ETag, kind) and is
  written with ``If-None-Match: *``, so a duplicate delivery writes nothing and changes nothing, and two ingests
  never overwrite each other. Ingest never touches the manifest.
- **Order comes from the S3 sequencer, not from arrival.** Readers and the builder fold an item's states with
  :func:`~catalens.index.records.is_newer`, and a snapshot keeps every item's sequencer and the tombstones of
  deleted items. A delta therefore counts only while it is newer than what the version holds (its
  :class:`Coverage`): a late, older create cannot resurrect a deleted item, a late, older delete cannot hide a newer
  photo, and a delta folded into a version changes nothing if it is read again.
- **Compaction needs no bookkeeping of "done" deltas.** The per-item sequencers of the new version are its
  watermark; deltas written while it builds are newer than it and stay live.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote

import numpy as np

from catalens.index.errors import CorruptIndexError, InvalidRecordError
from catalens.index.layout import DELTAS_DIR, FORMAT
from catalens.index.records import ItemRecord, sequencer_key

if TYPE_CHECKING:
    from catalens.index.snapshot import Snapshot

_SEQ_WIDTH = 32  # S3 sequencers are ~16-20 hex digits; padding only makes keys sort nicely, order uses sequencer_key


def normalize_sequencer(seq: str) -> str:
    """Lower-case hex without leading zeros ("0" for zero); raises InvalidRecordError when not hex."""
    try:
        length, digits = sequencer_key(seq)
    except ValueError as exc:
        raise InvalidRecordError(str(exc)) from exc
    return digits if length else "0"


def _newer(seq_a: str, deleted_a: bool, seq_b: str, deleted_b: bool) -> bool:
    """Event a supersedes event b: the rule of records.is_newer, on bare (sequencer, deleted)."""
    key_a, key_b = sequencer_key(seq_a), sequencer_key(seq_b)
    if key_a != key_b:
        return key_a > key_b
    return deleted_a and not deleted_b


@dataclass(frozen=True)
class DeltaKey:
    """What a delta's key tells without reading it: enough to decide whether a version already covers it."""

    item_id: str
    sequencer: str
    deleted: bool

    @classmethod
    def of(cls, record: ItemRecord) -> DeltaKey:
        return cls(item_id=record.item_id, sequencer=normalize_sequencer(record.sequencer), deleted=record.deleted)

    @classmethod
    def parse(cls, relative_key: str) -> DeltaKey | None:
        """``deltas/<quoted item id>/<seq>-<put|del>-<event>.json`` → DeltaKey; None for anything else."""
        parts = relative_key.split("/")
        if len(parts) != 3 or parts[0] + "/" != DELTAS_DIR or not parts[2].endswith(".json"):
            return None
        pieces = parts[2][: -len(".json")].split("-")
        if len(pieces) != 3 or pieces[1] not in ("put", "del"):
            return None
        try:
            sequencer = normalize_sequencer(pieces[0])
        except InvalidRecordError:
            return None
        return cls(item_id=unquote(parts[1]), sequencer=sequencer, deleted=pieces[1] == "del")


def delta_key(record: ItemRecord) -> str:
    """Deterministic key of one S3 event's delta (relative to the store prefix).

    It includes the sequencer, not only the source ETag: re-uploading identical bytes after a delete
    is a new event with the same ETag, and must not be mistaken for a duplicate of the first upload.
    The item id is percent-encoded whole (ids are S3 keys: they may hold '/', spaces, unicode).
    """
    seq = normalize_sequencer(record.sequencer)
    kind = "del" if record.deleted else "put"
    event = "\0".join([record.item_id, seq, record.source_etag, kind])
    event_hash = hashlib.sha256(event.encode("utf-8")).hexdigest()[:16]
    return f"{DELTAS_DIR}{quote(record.item_id, safe='')}/{seq.zfill(_SEQ_WIDTH)}-{kind}-{event_hash}.json"


def encode_delta(record: ItemRecord, *, model_fingerprint: str = "") -> bytes:
    """One delta as JSON; the vector as base64 little-endian float32 (no pickle, one atomic object)."""
    if record.deleted != (record.vector is None):
        raise InvalidRecordError(
            f"item {record.item_id!r}: a tombstone has no vector and a live record needs one "
            f"(deleted={record.deleted}, vector={'None' if record.vector is None else 'set'})"
        )
    if not record.item_id or "\0" in record.item_id:
        raise InvalidRecordError(f"item id {record.item_id!r} must be non-empty and free of NUL characters")
    body: dict[str, Any] = {
        "format": FORMAT,
        "item_id": record.item_id,
        "image_key": record.image_key,
        "source_etag": record.source_etag,
        "sequencer": record.sequencer,
        "deleted": record.deleted,
        "updated_at": record.updated_at,
        "fields": record.fields,
        "model_fingerprint": model_fingerprint,
    }
    if record.vector is not None:
        vector = np.asarray(record.vector, dtype="<f4")
        if vector.ndim != 1 or not np.all(np.isfinite(vector)):
            raise InvalidRecordError(f"item {record.item_id!r}: vector must be 1-D and finite, got {vector.shape}")
        body["dim"] = int(vector.shape[0])
        body["vector"] = base64.b64encode(vector.tobytes()).decode("ascii")
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidRecordError(f"item {record.item_id!r}: fields are not JSON-serialisable: {exc}") from exc


@dataclass(frozen=True)
class Delta:
    """A decoded delta: the record plus the fingerprint of the model that made its vector."""

    record: ItemRecord
    model_fingerprint: str


def decode_delta(data: bytes, *, key: str = "") -> Delta:
    try:
        body = json.loads(data)
        if body.get("format") != FORMAT:
            raise ValueError(f"unknown delta format {body.get('format')!r}")
        vector = None
        if not body["deleted"]:
            vector = np.frombuffer(base64.b64decode(body["vector"]), dtype="<f4").astype(np.float32)
            if vector.shape != (body["dim"],):
                raise ValueError(f"vector has {vector.shape[0]} values, header says {body['dim']}")
        record = ItemRecord(
            item_id=body["item_id"],
            vector=vector,
            fields=body["fields"],
            image_key=body["image_key"],
            source_etag=body["source_etag"],
            sequencer=body["sequencer"],
            deleted=bool(body["deleted"]),
            updated_at=float(body["updated_at"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptIndexError(f"delta {key!r} cannot be decoded: {exc}") from exc
    return Delta(record=record, model_fingerprint=str(body.get("model_fingerprint", "")))


# -------------------------------------------------------------------------------------------------- coverage


class Coverage(Protocol):
    """Which deltas a version already covers: folded in, or older than what it folded in."""

    def covers(self, keys: Sequence[DeltaKey]) -> list[bool]: ...


class SnapshotCoverage:
    """Coverage read from the snapshot itself (its per-row sequencers and its tombstones).

    The query side and the compactor use this: the snapshot is loaded anyway, and a delta it covers
    need not even be fetched.
    """

    def __init__(self, snapshot: Snapshot | None) -> None:
        self.snapshot = snapshot

    def covers(self, keys: Sequence[DeltaKey]) -> list[bool]:
        snapshot = self.snapshot
        if snapshot is None or not keys:
            return [False] * len(keys)
        rows = snapshot.rows_of([k.item_id for k in keys]).tolist()
        result = []
        for key, row in zip(keys, rows, strict=True):
            if row >= 0:
                result.append(not _newer(key.sequencer, key.deleted, snapshot.sequencer_of(row), False))
                continue
            tombstone = snapshot.tombstone_of(key.item_id)
            result.append(tombstone is not None and not _newer(key.sequencer, key.deleted, tombstone.sequencer, True))
        return result


class Ledger:
    """Per item, the newest (sequencer, deleted) a version holds, tombstones included.

    Written beside each version so GC can decide, from every retained version's small ledger and
    without loading their snapshots, which deltas all of them cover.
    """

    def __init__(self, entries: Mapping[str, tuple[str, bool]] | None = None) -> None:
        self._entries: dict[str, tuple[str, bool]] = dict(entries or {})

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> Ledger:
        entries = {snapshot.item_id(row): (snapshot.sequencer_of(row), False) for row in range(len(snapshot))}
        for tombstone in snapshot.tombstones:
            entries[tombstone.item_id] = (tombstone.sequencer, True)
        return cls(entries)

    def covers(self, keys: Sequence[DeltaKey]) -> list[bool]:
        result = []
        for key in keys:
            entry = self._entries.get(key.item_id)
            result.append(entry is not None and not _newer(key.sequencer, key.deleted, entry[0], entry[1]))
        return result

    def live_item_ids(self) -> set[str]:
        return {item_id for item_id, (_, deleted) in self._entries.items() if not deleted}

    def to_bytes(self) -> bytes:
        rows = {item_id: [seq, int(deleted)] for item_id, (seq, deleted) in sorted(self._entries.items())}
        return json.dumps({"format": FORMAT, "items": rows}, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Ledger:
        body = json.loads(data)
        if body.get("format") != FORMAT:
            raise CorruptIndexError(f"unknown ledger format {body.get('format')!r}")
        return cls({item_id: (seq, bool(deleted)) for item_id, (seq, deleted) in body["items"].items()})
