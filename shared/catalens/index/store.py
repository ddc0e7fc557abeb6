"""The index's storage protocol over a :class:`~catalens.ports.BlobStore` (S3 in production).

Layout under ``prefix``::

    manifest.json                                   the one mutable object: names the current version
    versions/<version>/snapshot/<file>              Snapshot.to_files(), immutable, written before the manifest
    versions/<version>/ledger.json                  per item: the (sequencer, deleted) the version holds (for GC)
    deltas/<item-id>/<sequencer>-<put|del>-<event-hash>.json   one per S3 event, written by ingest
    queries/samples/<fingerprint[:16]>/<YYYY-MM-DD>/<unix-ms>-<uuid4hex>.npy   raw query embeddings (float16), search
    queries/reference/<sha256[:24]>.npz             a query-domain reference (immutable), named by the manifest

Why it is lossless under concurrency (DESIGN invariant 1):

- **Ingest only creates objects.** A delta's key is a pure function of (item, sequencer, source ETag,
  kind) and is written with ``If-None-Match: *``, so a duplicate delivery writes nothing and changes
  nothing, and two ingests never overwrite each other. Ingest never touches the manifest.
- **Order comes from the S3 sequencer, not from arrival.** Readers and the builder fold an item's
  states with :func:`~catalens.index.records.is_newer`, and a snapshot keeps every item's sequencer
  and the tombstones of deleted items. A delta therefore counts only while it is newer than what the
  version holds: a late, older create cannot resurrect a deleted item, a late, older delete cannot hide
  a newer photo, and a delta folded into a version changes nothing if it is read again.
- **Compaction needs no bookkeeping of "done" deltas.** The per-item sequencers of the new version are
  its watermark; deltas written while it builds are newer than it and stay live.
- **The manifest is the only read-modify-write, and it is guarded.** It is swapped with ``If-Match`` on
  the ETag it was read at (``If-None-Match`` the first time); a lost race re-reads and rebuilds, with
  bounded, jittered retries.

Atomic visibility (invariant 2): a version's files are immutable and written before the manifest names
them; readers verify every file's size and sha256 against the manifest entry and the item count. GC
deletes only what no retained manifest entry references, after a grace period, so a reader holding an
older manifest can still load it; it deletes a delta only once every retained version covers it, so
a rollback loses no ingest.

Query-domain calibration (:mod:`catalens.query_domain`) rides on the same protocol: search writes query samples under
fresh keys, the builder folds the newest into an immutable, content-addressed reference object and swaps the
manifest to name it (the same guarded swap). Compaction and rollback carry the manifest's entry over untouched.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import random
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote

import numpy as np

from catalens.errors import CatalensError
from catalens.index.records import ItemRecord, sequencer_key
from catalens.ports import (
    BlobNotFoundError,
    BlobStore,
    ConflictError,
    PreconditionFailedError,
    delete_all,
)
from catalens.query_domain import DEFAULT_BETA, MAX_REFERENCE, QueryDomain

if TYPE_CHECKING:
    from catalens.index.snapshot import Snapshot
    from catalens.index.view import IndexView

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST_NAME = "manifest.json"
VERSIONS_DIR = "versions/"
DELTAS_DIR = "deltas/"
SNAPSHOT_DIR = "snapshot/"
LEDGER_NAME = "ledger.json"
QUERIES_DIR = "queries/"
QUERY_SAMPLES_DIR = QUERIES_DIR + "samples/"
QUERY_REFERENCE_DIR = QUERIES_DIR + "reference/"
QUERY_SAMPLE_MAX_AGE_DAYS = 30
QUERY_SAMPLE_READ_FACTOR = 4  # refresh reads up to this × max_reference newest samples
_SEQ_WIDTH = 32  # S3 sequencers are ~16-20 hex digits; padding only makes keys sort nicely, order uses sequencer_key


class IndexStoreError(CatalensError):
    """The index in blob storage cannot be read or written as asked."""

    code = "index_store_error"


class InvalidRecordError(IndexStoreError):
    """An ItemRecord handed to the store is malformed (bad sequencer, vector on a tombstone, ...)."""

    code = "invalid_record"


class CorruptIndexError(IndexStoreError):
    """A stored object does not match what the manifest says (checksum, size, item count, format)."""

    code = "corrupt_index"


class ManifestConflictError(IndexStoreError):
    """The manifest (or a delta key) kept changing under us: the bounded retries ran out."""

    code = "manifest_conflict"


class UnknownVersionError(IndexStoreError):
    """A rollback named a version the manifest does not retain."""

    code = "unknown_version"


# --------------------------------------------------------------------------------------------- keys and codecs


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


# ---------------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class VersionEntry:
    """What the manifest says about one immutable version; enough to verify it was read whole."""

    version: str
    generation: int
    created_at: str
    items: int
    model_fingerprint: str
    snapshot_version: str
    files: dict[str, dict[str, Any]]  # relative name → {"sha256", "size"}
    deltas_included: int
    deltas_digest: str  # sha256 of the sorted keys of the deltas folded in by this build

    @property
    def checksum(self) -> str:
        """Binds the version name, its item count and every file's sha256 together."""
        body = {"version": self.version, "items": self.items, "files": self.files}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "generation": self.generation,
            "created_at": self.created_at,
            "items": self.items,
            "model_fingerprint": self.model_fingerprint,
            "snapshot_version": self.snapshot_version,
            "files": self.files,
            "checksum": self.checksum,
            "deltas": {"included": self.deltas_included, "digest": self.deltas_digest},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VersionEntry:
        entry = cls(
            version=d["version"],
            generation=int(d["generation"]),
            created_at=d["created_at"],
            items=int(d["items"]),
            model_fingerprint=d["model_fingerprint"],
            snapshot_version=d["snapshot_version"],
            files={name: dict(meta) for name, meta in d["files"].items()},
            deltas_included=int(d["deltas"]["included"]),
            deltas_digest=d["deltas"]["digest"],
        )
        if d.get("checksum") != entry.checksum:
            raise CorruptIndexError(f"manifest entry of version {entry.version} has a wrong checksum")
        return entry


@dataclass(frozen=True)
class QueryDomainEntry:
    """What the manifest says about the query-domain reference object: enough to verify it was read whole.

    ``key`` is relative to the store prefix (``queries/reference/<sha256[:24]>.npz``); ``model_fingerprint`` is the
    model that embedded the reference queries (a domain from another model is not applied).
    """

    key: str
    sha256: str
    size: int
    count: int
    beta: float
    model_fingerprint: str
    created_at: str

    def same_reference(self, other: QueryDomainEntry | None) -> bool:
        """Same object, temperature and model: swapping one for the other would change nothing."""
        return other is not None and (self.sha256, self.beta, self.model_fingerprint) == (
            other.sha256,
            other.beta,
            other.model_fingerprint,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "sha256": self.sha256,
            "size": self.size,
            "count": self.count,
            "beta": self.beta,
            "model_fingerprint": self.model_fingerprint,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QueryDomainEntry:
        entry = cls(
            key=str(d["key"]),
            sha256=str(d["sha256"]),
            size=int(d["size"]),
            count=int(d["count"]),
            beta=float(d["beta"]),
            model_fingerprint=str(d["model_fingerprint"]),
            created_at=str(d["created_at"]),
        )
        if not entry.key.startswith(QUERY_REFERENCE_DIR) or ".." in entry.key:
            raise ValueError(f"query-domain key {entry.key!r} is not under {QUERY_REFERENCE_DIR}")
        return entry


@dataclass(frozen=True)
class Manifest:
    """The current version and the previous ones kept for rollback (newest first), and the query domain."""

    generation: int = 0
    current: VersionEntry | None = None
    history: tuple[VersionEntry, ...] = ()
    updated_at: str = ""
    query_domain: QueryDomainEntry | None = None  # absent from the JSON when None (older manifests have none)

    @property
    def retained(self) -> tuple[VersionEntry, ...]:
        return ((self.current,) if self.current else ()) + self.history

    def find(self, version: str) -> VersionEntry | None:
        return next((e for e in self.retained if e.version == version), None)

    def to_bytes(self) -> bytes:
        body = {
            "format": FORMAT,
            "generation": self.generation,
            "updated_at": self.updated_at,
            "current": self.current.to_dict() if self.current else None,
            "history": [e.to_dict() for e in self.history],
        }
        if self.query_domain is not None:
            body["query_domain"] = self.query_domain.to_dict()
        return json.dumps(body, indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            body = json.loads(data)
            if body.get("format") != FORMAT:
                raise CorruptIndexError(f"unknown manifest format {body.get('format')!r}")
            return cls(
                generation=int(body["generation"]),
                current=VersionEntry.from_dict(body["current"]) if body["current"] else None,
                history=tuple(VersionEntry.from_dict(e) for e in body["history"]),
                updated_at=body.get("updated_at", ""),
                query_domain=_decode_query_domain_entry(body.get("query_domain")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptIndexError(f"manifest cannot be decoded: {exc}") from exc


def _decode_query_domain_entry(raw: Any) -> QueryDomainEntry | None:
    """The manifest's query-domain entry; a malformed one is logged and ignored (searches work without it)."""
    if raw is None:
        return None
    try:
        return QueryDomainEntry.from_dict(raw)
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring the manifest's malformed query_domain entry %r", raw, exc_info=True)
        return None


# ------------------------------------------------------------------------------------------------ retry policy


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with full jitter (sleep uniform in [0, min(cap, base·2^attempt)])."""

    attempts: int = 8
    base_delay: float = 0.05
    max_delay: float = 2.0

    def pause(self, attempt: int, sleep: Callable[[float], None]) -> None:
        sleep(random.uniform(0.0, min(self.max_delay, self.base_delay * (2**attempt))))


# -------------------------------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class LoadedVersion:
    """A whole, verified version in memory."""

    entry: VersionEntry
    snapshot: Snapshot

    @property
    def coverage(self) -> SnapshotCoverage:
        return SnapshotCoverage(self.snapshot)


@dataclass(frozen=True)
class CompactionResult:
    version: str | None  # None when there was nothing to compact and no version yet
    generation: int
    items: int
    deltas_included: int
    deltas_skipped: int  # deltas whose vectors came from another model
    attempts: int
    build_seconds: float
    noop: bool = False


@dataclass
class GcResult:
    versions_deleted: list[str] = field(default_factory=list)
    objects_deleted: int = 0
    deltas_deleted: int = 0
    deltas_kept: int = 0
    query_samples_deleted: int = 0
    query_references_deleted: int = 0


class IndexStore:
    """The index protocol over a blob store: ingest writes deltas, the builder compacts, readers load views.

    Parameters
    ----------
    blob:
        Any :class:`~catalens.ports.BlobStore` (S3 or in-memory).
    prefix:
        Key prefix of this index (``"index/"``); "" for the bucket root.
    keep_versions:
        How many versions the manifest retains (current + history) for rollback.
    retry:
        Bounded, jittered retries of manifest swaps (412/409) and of 409 on delta writes.
    fetch_workers:
        Threads fetching deltas and version files in parallel (S3 latency, not CPU, is the limit).
    wall_clock, sleep:
        Injected by tests.
    """

    def __init__(
        self,
        blob: BlobStore,
        prefix: str = "",
        *,
        keep_versions: int = 5,
        retry: RetryPolicy = RetryPolicy(),
        fetch_workers: int = 16,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if keep_versions < 1:
            raise ValueError("keep_versions must be at least 1")
        self.blob = blob
        self.prefix = prefix
        self.keep_versions = keep_versions
        self.retry = retry
        self.fetch_workers = max(1, fetch_workers)
        self._wall_clock = wall_clock
        self._sleep = sleep

    # ---- keys

    @property
    def manifest_key(self) -> str:
        return self.prefix + MANIFEST_NAME

    def version_key(self, version: str, name: str) -> str:
        return f"{self.prefix}{VERSIONS_DIR}{version}/{name}"

    # ---- ingest side

    def write_item(self, record: ItemRecord, *, model_fingerprint: str = "") -> bool:
        """Record one S3 event for one item. Idempotent: returns False (and writes nothing) for a duplicate.

        One conditional PUT of a fresh, deterministic key; never a read-modify-write. Whether the event
        wins over others for the same item is decided by readers from the sequencer, not here.
        """
        key = self.prefix + delta_key(record)
        body = encode_delta(record, model_fingerprint=model_fingerprint)
        for attempt in range(self.retry.attempts):
            try:
                self.blob.put(key, body, if_none_match=True)
                return True
            except PreconditionFailedError:
                return False  # the same event was recorded before (duplicate delivery)
            except ConflictError:
                self.retry.pause(attempt, self._sleep)  # a twin delivery is writing the same key right now
        raise ManifestConflictError(f"delta {key!r}: conditional writes kept conflicting (409)")

    def delete_item(self, item_id: str, *, sequencer: str, image_key: str = "", updated_at: float = 0.0) -> bool:
        """Record an ObjectRemoved event: a tombstone ordered by ``sequencer`` (same idempotency as write_item)."""
        tombstone = ItemRecord(
            item_id=item_id,
            vector=None,
            fields={},
            image_key=image_key,
            source_etag="",
            sequencer=sequencer,
            deleted=True,
            updated_at=updated_at,
        )
        return self.write_item(tombstone)

    # ---- reading

    def read_manifest(self, if_none_match_etag: str | None = None) -> tuple[Manifest, str | None]:
        """The manifest and its ETag; an empty manifest (ETag None) before the first compaction.

        Raises :class:`~catalens.ports.NotModifiedError` when it still has ``if_none_match_etag``.
        """
        try:
            blob = self.blob.get(self.manifest_key, if_none_match_etag=if_none_match_etag)
        except BlobNotFoundError:
            return Manifest(), None
        return Manifest.from_bytes(blob.data), blob.etag

    def load_version(self, entry: VersionEntry) -> LoadedVersion:
        """Fetch a version's snapshot files, verify each against the manifest entry, and decode them."""
        from catalens.index.snapshot import Snapshot, SnapshotError

        names = [name for name in entry.files if name.startswith(SNAPSHOT_DIR)]
        files = self._fetch_all({name: self.version_key(entry.version, name) for name in names})
        for name, data in files.items():
            if data is None:
                raise CorruptIndexError(f"version {entry.version}: file {name!r} named by the manifest is missing")
            _verify(entry, name, data)
        try:
            # Every file was just checked against the manifest's sha256; the snapshot's own hashes would
            # only hash the same bytes again (sizes and presence it still checks).
            snapshot = Snapshot.from_files(
                {name[len(SNAPSHOT_DIR) :]: data for name, data in files.items()}, verify=False
            )
        except SnapshotError as exc:
            raise CorruptIndexError(f"version {entry.version}: {exc}") from exc
        if len(snapshot) != entry.items:
            raise CorruptIndexError(f"version {entry.version}: {len(snapshot)} items, manifest says {entry.items}")
        return LoadedVersion(entry=entry, snapshot=snapshot)

    def load_ledger(self, entry: VersionEntry) -> Ledger:
        """The small per-item ledger of a version (GC reads these instead of whole snapshots)."""
        try:
            data = self.blob.get(self.version_key(entry.version, LEDGER_NAME)).data
        except BlobNotFoundError as exc:
            raise CorruptIndexError(f"version {entry.version}: ledger named by the manifest is missing") from exc
        _verify(entry, LEDGER_NAME, data)
        return Ledger.from_bytes(data)

    def list_deltas(self) -> dict[str, DeltaKey]:
        """Every delta object (full key → what its name says), from one LIST of the deltas prefix."""
        found: dict[str, DeltaKey] = {}
        for info in self.blob.list(self.prefix + DELTAS_DIR):
            parsed = DeltaKey.parse(info.key[len(self.prefix) :])
            if parsed is not None:
                found[info.key] = parsed
        return found

    def fetch_deltas(
        self, listing: Mapping[str, DeltaKey], coverage: Coverage, known: Mapping[str, Delta] | None = None
    ) -> dict[str, Delta]:
        """The deltas of ``listing`` that ``coverage`` does not cover, reusing ``known`` ones (deltas are immutable).

        A delta deleted by GC between LIST and GET was covered by every retained version: it is skipped.
        """
        known = known or {}
        keys = list(listing)
        covered = coverage.covers([listing[k] for k in keys])
        wanted = [k for k, done in zip(keys, covered, strict=True) if not done]
        result = {k: known[k] for k in wanted if k in known}
        fetched = self._fetch_all({k: k for k in wanted if k not in known})
        for key, data in fetched.items():
            if data is None:
                continue
            try:
                result[key] = decode_delta(data, key=key)
            except CorruptIndexError:
                log.warning("skipping undecodable delta %s", key, exc_info=True)
        return result

    def load_view(self) -> IndexView:
        """The current index as one consistent view: verified snapshot + live deltas (uncached)."""
        manifest, _ = self.read_manifest()
        loaded = self.load_version(manifest.current) if manifest.current else None
        coverage = loaded.coverage if loaded else SnapshotCoverage(None)
        deltas = self.fetch_deltas(self.list_deltas(), coverage).values()
        return make_view(loaded, deltas, query_domain=self.query_domain_of(manifest))

    def query_domain_of(self, manifest: Manifest) -> QueryDomain | None:
        """The query domain ``manifest`` names for its current version, or None (none, another model's, or bad).

        Never raises for a missing or corrupt reference: it is logged and searches go uncalibrated.
        """
        entry = manifest.query_domain
        if entry is None or manifest.current is None:
            return None
        if entry.model_fingerprint != manifest.current.model_fingerprint:
            current = manifest.current.model_fingerprint
            log.info("query domain of model %s, the index's is %s: not applied", entry.model_fingerprint, current)
            return None
        try:
            return self.load_query_domain(entry)
        except Exception:  # a reference is an optimisation: searching uncalibrated beats failing
            log.warning("query domain %s cannot be loaded; searching uncalibrated", entry.key, exc_info=True)
            return None

    # ---- builder side

    def compact(
        self,
        build_fn: Callable[..., Snapshot] | None = None,
        *,
        model_fingerprint: str | None = None,
        force: bool = False,
        **build_options: Any,
    ) -> CompactionResult:
        """Fold the live deltas into a new immutable version and swap the manifest to it.

        ``build_fn(records, model_fingerprint=..., previous=..., version=..., **build_options)`` defaults to
        :func:`catalens.index.build.build_snapshot` (it imports pynndescent only for a graph). Deltas
        written while it runs are newer than the new version and stay live. On a lost manifest race the
        whole compaction is redone from the new manifest (bounded, jittered); the abandoned version's
        files are left for GC. Without live deltas nothing is written unless ``force``.
        """
        if build_fn is None:
            from catalens.index.build import build_snapshot as build_fn
        loaded: LoadedVersion | None = None
        for attempt in range(self.retry.attempts):
            manifest, etag = self.read_manifest()
            if manifest.current is None:
                loaded = None
            elif loaded is None or loaded.entry.version != manifest.current.version:
                loaded = self.load_version(manifest.current)
            deltas = self.fetch_deltas(self.list_deltas(), loaded.coverage if loaded else SnapshotCoverage(None))
            fingerprint = model_fingerprint or (loaded.snapshot.model_fingerprint if loaded else None)
            if not fingerprint:
                raise IndexStoreError("the first compaction needs model_fingerprint (no snapshot to take it from)")
            usable = {k: d for k, d in deltas.items() if d.model_fingerprint in ("", fingerprint)}
            skipped = len(deltas) - len(usable)
            if skipped:
                log.warning("compaction skips %d deltas embedded by another model than %s", skipped, fingerprint)
            if not usable and not force:
                current = manifest.current
                return CompactionResult(
                    version=current.version if current else None,
                    generation=manifest.generation,
                    items=current.items if current else 0,
                    deltas_included=0,
                    deltas_skipped=skipped,
                    attempts=attempt + 1,
                    build_seconds=0.0,
                    noop=True,
                )
            generation = manifest.generation + 1
            version = f"{generation:08d}-{uuid.uuid4().hex[:12]}"  # unique even when two builders race
            started = time.perf_counter()
            snapshot = build_fn(
                [usable[k].record for k in sorted(usable)],
                model_fingerprint=fingerprint,
                previous=loaded.snapshot if loaded else None,
                version=version,
                **build_options,
            )
            build_seconds = time.perf_counter() - started
            now = self._wall_clock()
            entry = self._write_version(version, snapshot, generation, sorted(usable), now)
            published = Manifest(
                generation=generation,
                current=entry,
                history=manifest.retained[: self.keep_versions - 1],
                updated_at=_iso(now),
                query_domain=manifest.query_domain,
            )
            if self._swap_manifest(published, etag):
                return CompactionResult(
                    version=entry.version,
                    generation=published.generation,
                    items=entry.items,
                    deltas_included=len(usable),
                    deltas_skipped=skipped,
                    attempts=attempt + 1,
                    build_seconds=build_seconds,
                )
            log.info("manifest changed while compacting (attempt %d); rebuilding from the new one", attempt + 1)
            self.retry.pause(attempt, self._sleep)
        raise ManifestConflictError(f"compaction lost the manifest race {self.retry.attempts} times")

    def rollback(self, version: str) -> Manifest:
        """Make a retained earlier version current again (conditional swap, retried on a lost race).

        Deltas newer than that version become live again, so ingests since then are kept.
        """
        for attempt in range(self.retry.attempts):
            manifest, etag = self.read_manifest()
            target = manifest.find(version)
            if target is None:
                retained = [e.version for e in manifest.retained]
                raise UnknownVersionError(f"version {version!r} is not retained by the manifest (have {retained})")
            if manifest.current is not None and manifest.current.version == version:
                return manifest
            history = tuple(e for e in manifest.retained if e.version != version)
            published = Manifest(
                generation=manifest.generation + 1,
                current=target,
                history=history[: self.keep_versions - 1],
                updated_at=_iso(self._wall_clock()),
                query_domain=manifest.query_domain,
            )
            if self._swap_manifest(published, etag):
                return published
            self.retry.pause(attempt, self._sleep)
        raise ManifestConflictError(f"rollback to {version!r} lost the manifest race {self.retry.attempts} times")

    # ---- query domain (search writes samples; the builder refreshes the reference)

    def write_query_sample(self, vector: np.ndarray, *, model_fingerprint: str, now: float | None = None) -> str:
        """Store one raw query embedding (float16, nothing else) for the next reference; returns the blob key.

        A fresh key per sample (time + uuid), written with If-None-Match: samples never overwrite each other.
        Raises :class:`InvalidRecordError` for a vector that is not 1-D, finite and non-zero.
        """
        sample = _query_sample(vector)
        if not model_fingerprint:
            raise InvalidRecordError("a query sample needs the fingerprint of the model that embedded it")
        now = self._wall_clock() if now is None else now
        day = datetime.fromtimestamp(now, UTC).date().isoformat()
        key = (
            f"{self.prefix}{QUERY_SAMPLES_DIR}{_fingerprint_dir(model_fingerprint)}/{day}/"
            f"{int(now * 1000):013d}-{uuid.uuid4().hex}.npy"
        )
        buffer = io.BytesIO()
        np.save(buffer, sample, allow_pickle=False)
        self.blob.put(key, buffer.getvalue(), if_none_match=True)
        return key

    def recent_query_samples(
        self,
        *,
        model_fingerprint: str,
        limit: int,
        max_age_days: int = QUERY_SAMPLE_MAX_AGE_DAYS,
        now: float | None = None,
    ) -> list[np.ndarray]:
        """Up to ``limit`` samples of ``model_fingerprint``, at most ``max_age_days`` old, newest first (float32).

        Lists one day's folder at a time from today backwards and stops once ``limit`` are found, so a busy
        month costs the LISTs of the last day or two. Samples deleted meanwhile or undecodable are skipped.
        """
        if limit <= 0:
            return []
        now = self._wall_clock() if now is None else now
        oldest_ms = int((now - max_age_days * 86400) * 1000)
        base = f"{self.prefix}{QUERY_SAMPLES_DIR}{_fingerprint_dir(model_fingerprint)}/"
        day = datetime.fromtimestamp(now, UTC).date() + timedelta(days=1)  # a writer's clock may run a bit ahead
        last_day = datetime.fromtimestamp(oldest_ms / 1000, UTC).date()
        chosen: list[tuple[int, str]] = []
        while day >= last_day and len(chosen) < limit:
            found = [(_sample_millis(info.key), info.key) for info in self.blob.list(f"{base}{day.isoformat()}/")]
            chosen.extend(sorted(((ms, key) for ms, key in found if ms is not None and ms >= oldest_ms), reverse=True))
            day -= timedelta(days=1)
        keys = [key for _, key in chosen[:limit]]
        fetched = self._fetch_all({key: key for key in keys})
        samples: list[np.ndarray] = []
        for key in keys:
            data = fetched[key]
            if data is None:
                continue
            try:
                sample = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
            except (ValueError, TypeError, OSError, EOFError):
                log.warning("skipping undecodable query sample %s", key, exc_info=True)
                continue
            if sample.ndim != 1:
                log.warning("skipping query sample %s of shape %s", key, sample.shape)
                continue
            samples.append(sample)
        return samples

    def load_query_domain(self, entry: QueryDomainEntry) -> QueryDomain:
        """The reference the manifest names, verified against its size and sha256 (CorruptIndexError if not)."""
        try:
            data = self.blob.get(self.prefix + entry.key).data
        except BlobNotFoundError as exc:
            raise CorruptIndexError(f"query-domain reference {entry.key!r} named by the manifest is missing") from exc
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise CorruptIndexError(f"query-domain reference {entry.key!r} does not match the manifest's checksum")
        try:
            domain = QueryDomain(decode_query_reference(data), beta=entry.beta)
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise CorruptIndexError(f"query-domain reference {entry.key!r} cannot be decoded: {exc}") from exc
        if len(domain) != entry.count:
            raise CorruptIndexError(
                f"query-domain reference {entry.key!r}: {len(domain)} rows, manifest says {entry.count}"
            )
        return domain

    def refresh_query_domain(
        self, *, max_reference: int = MAX_REFERENCE, beta: float = DEFAULT_BETA, now: float | None = None
    ) -> QueryDomainEntry | None:
        """Build the reference from the newest samples of the current model and make the manifest name it.

        Returns None when there is no current version or fewer than ``MIN_REFERENCE`` usable samples (the manifest
        is left as it is); otherwise the entry the manifest now names. An unchanged reference is not swapped
        again. The object is written before the manifest names it; the swap is the manifest's usual If-Match
        write, redone from a fresh read on a lost race (bounded, jittered).
        """
        now = self._wall_clock() if now is None else now
        built: tuple[str, QueryDomain] | None = None  # (model fingerprint, domain) of the samples read
        written: str | None = None  # sha256 of the reference object written by this call
        for attempt in range(self.retry.attempts):
            manifest, etag = self.read_manifest()
            if manifest.current is None:
                return None
            fingerprint = manifest.current.model_fingerprint
            if built is None or built[0] != fingerprint:
                samples = self.recent_query_samples(
                    model_fingerprint=fingerprint, limit=QUERY_SAMPLE_READ_FACTOR * max_reference, now=now
                )
                domain = QueryDomain.from_samples(samples, beta=beta, max_reference=max_reference)
                if domain is None:
                    log.info(
                        "query domain not refreshed: %d samples of model %s are too few", len(samples), fingerprint
                    )
                    return None
                built = (fingerprint, domain)
            domain = built[1]
            data = encode_query_reference(domain.reference)
            digest = hashlib.sha256(data).hexdigest()
            entry = QueryDomainEntry(
                key=f"{QUERY_REFERENCE_DIR}{digest[:24]}.npz",
                sha256=digest,
                size=len(data),
                count=len(domain),
                beta=float(domain.beta),
                model_fingerprint=fingerprint,
                created_at=_iso(now),
            )
            if entry.same_reference(manifest.query_domain):
                return manifest.query_domain
            if written != digest:
                # Content-addressed: rewriting identical bytes changes nothing but LastModified, which GC's
                # grace period counts from, so an old unreferenced copy is not collected under the new manifest.
                self.blob.put(self.prefix + entry.key, data)
                written = digest
            published = replace(manifest, generation=manifest.generation + 1, updated_at=_iso(now), query_domain=entry)
            if self._swap_manifest(published, etag):
                return entry
            log.info("manifest changed while refreshing the query domain (attempt %d); retrying", attempt + 1)
            self.retry.pause(attempt, self._sleep)
        raise ManifestConflictError(f"query-domain refresh lost the manifest race {self.retry.attempts} times")

    def gc(
        self,
        grace_seconds: float = 3600.0,
        *,
        dry_run: bool = False,
        max_sample_age_days: int = QUERY_SAMPLE_MAX_AGE_DAYS,
    ) -> GcResult:
        """Delete what no retained version needs, once older than ``grace_seconds`` (by LastModified).

        - the files of versions the manifest no longer retains (all of a version's files must be older
          than the grace: a compaction in progress writes young files, a slow reader may still load it);
        - deltas that every retained version covers (while one still needs a delta, a rollback to it
          must find it);
        - query-domain references the manifest does not name, and query samples older than
          ``max_sample_age_days`` (by the time in their key; refresh would not read them any more).
        Nothing is deleted before the first compaction.
        """
        manifest, _ = self.read_manifest()
        result = GcResult()
        if manifest.current is None:
            return result
        now = self._wall_clock()
        cutoff = now - grace_seconds
        retained = {e.version for e in manifest.retained}

        by_version: dict[str, list[tuple[str, float]]] = {}
        for info in self.blob.list(self.prefix + VERSIONS_DIR):
            version = info.key[len(self.prefix + VERSIONS_DIR) :].split("/", 1)[0]
            by_version.setdefault(version, []).append((info.key, info.last_modified.timestamp()))
        doomed: list[str] = []
        for version, objects in sorted(by_version.items()):
            if version in retained or max(ts for _, ts in objects) >= cutoff:
                continue
            result.versions_deleted.append(version)
            doomed.extend(key for key, _ in objects)
        result.objects_deleted = len(doomed)

        ledgers = [self.load_ledger(e) for e in manifest.retained]
        listing = list(self.blob.list(self.prefix + DELTAS_DIR))
        infos = [info for info in listing if info.last_modified.timestamp() < cutoff]
        parsed = [(info.key, DeltaKey.parse(info.key[len(self.prefix) :])) for info in infos]
        parsed_keys = [(key, p) for key, p in parsed if p is not None]
        covered = [True] * len(parsed_keys)
        for ledger in ledgers:
            covered = [a and b for a, b in zip(covered, ledger.covers([p for _, p in parsed_keys]), strict=True)]
        covered_deltas = [key for (key, _), done in zip(parsed_keys, covered, strict=True) if done]
        result.deltas_deleted = len(covered_deltas)
        result.deltas_kept = len(listing) - result.deltas_deleted

        named = self.prefix + manifest.query_domain.key if manifest.query_domain else None
        references = [
            info.key
            for info in self.blob.list(self.prefix + QUERY_REFERENCE_DIR)
            if info.key != named and info.last_modified.timestamp() < cutoff
        ]
        sample_cutoff = now - max_sample_age_days * 86400
        samples = []
        for info in self.blob.list(self.prefix + QUERY_SAMPLES_DIR):
            millis = _sample_millis(info.key)
            stamped = millis / 1000 if millis is not None else info.last_modified.timestamp()
            if stamped < sample_cutoff:
                samples.append(info.key)
        result.query_references_deleted = len(references)
        result.query_samples_deleted = len(samples)
        if not dry_run:
            delete_all(self.blob, doomed + covered_deltas + references + samples)
        return result

    # ---- internals

    def _write_version(
        self, version: str, snapshot: Snapshot, generation: int, included_keys: Sequence[str], now: float
    ) -> VersionEntry:
        """Write every file of a new version under a fresh name (If-None-Match); the manifest comes after."""
        files = {SNAPSHOT_DIR + name: data for name, data in snapshot.to_files().items()}
        files[LEDGER_NAME] = Ledger.from_snapshot(snapshot).to_bytes()
        meta: dict[str, dict[str, Any]] = {}
        for name, data in sorted(files.items()):
            self.blob.put(self.version_key(version, name), data, if_none_match=True)
            meta[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        digest = hashlib.sha256("\n".join(included_keys).encode("utf-8")).hexdigest()
        return VersionEntry(
            version=version,
            generation=generation,
            created_at=_iso(now),
            items=len(snapshot),
            model_fingerprint=snapshot.model_fingerprint,
            snapshot_version=str(snapshot.version),
            files=meta,
            deltas_included=len(included_keys),
            deltas_digest=digest,
        )

    def _swap_manifest(self, manifest: Manifest, etag: str | None) -> bool:
        """The only write of the manifest: conditional on the ETag it was read at. False on a lost race."""
        try:
            if etag is None:
                self.blob.put(self.manifest_key, manifest.to_bytes(), if_none_match=True)
            else:
                self.blob.put(self.manifest_key, manifest.to_bytes(), if_match=etag)
        except (PreconditionFailedError, ConflictError):
            return False
        return True

    def _fetch_all(self, keys: Mapping[str, str]) -> dict[str, bytes | None]:
        """GET many keys in parallel; a missing key maps to None."""

        def fetch(key: str) -> bytes | None:
            try:
                return self.blob.get(key).data
            except BlobNotFoundError:
                return None

        names = list(keys)
        if len(names) <= 2 or self.fetch_workers == 1:
            return {name: fetch(keys[name]) for name in names}
        with ThreadPoolExecutor(max_workers=min(self.fetch_workers, len(names))) as pool:
            return dict(zip(names, pool.map(fetch, [keys[n] for n in names]), strict=True))


def make_view(
    loaded: LoadedVersion | None, deltas: Iterable[Delta], *, query_domain: QueryDomain | None = None
) -> IndexView:
    """IndexView over a whole version plus deltas (IndexView resolves each item by sequencer).

    Deltas whose vectors come from another model than the snapshot's are left out (they would not
    be comparable); the builder skips them the same way. ``query_domain`` (as loaded, model space) is
    handed to the view for calibrated photo searches.
    """
    from catalens.index.view import IndexView

    fingerprint = loaded.snapshot.model_fingerprint if loaded else None
    records = [d.record for d in deltas if not fingerprint or d.model_fingerprint in ("", fingerprint)]
    return IndexView(loaded.snapshot if loaded else None, records, query_domain=query_domain)


def _verify(entry: VersionEntry, name: str, data: bytes) -> None:
    expected = entry.files[name]
    if len(data) != expected["size"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise CorruptIndexError(f"version {entry.version}: file {name!r} does not match the manifest's checksum")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


# ------------------------------------------------------------------------------------------------ query domain


def _fingerprint_dir(model_fingerprint: str) -> str:
    return quote(model_fingerprint[:16], safe="")


def _sample_millis(key: str) -> int | None:
    """The unix-ms a sample's key was stamped with (``.../<unix-ms>-<uuid>.npy``); None for anything else."""
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(".npy"):
        return None
    stamp = name.split("-", 1)[0]
    return int(stamp) if stamp.isdigit() else None


def _query_sample(vector: np.ndarray) -> np.ndarray:
    """``vector`` as the float16 row a sample stores; InvalidRecordError when it could not serve as a reference."""
    try:
        sample = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidRecordError(f"query sample is not a numeric vector: {exc}") from exc
    if sample.ndim != 1 or sample.size == 0:
        raise InvalidRecordError(f"query sample must be a non-empty 1-D vector, got shape {sample.shape}")
    if not np.isfinite(sample).all():
        raise InvalidRecordError("query sample has non-finite values")
    with np.errstate(over="ignore"):
        half = sample.astype("<f2")
    if not np.isfinite(half).all():
        raise InvalidRecordError("query sample has values beyond float16's range (is it an unnormalised embedding?)")
    if not np.any(half):
        raise InvalidRecordError("query sample is the zero vector")
    return half


def encode_query_reference(reference: np.ndarray) -> bytes:
    """A reference as an ``.npz`` holding one array ``reference`` (float16 [R, d]) that ``np.load`` reads.

    Written like ``np.savez`` (stored, not compressed) but with a fixed zip timestamp, so the same reference always
    gives the same bytes: the object is content-addressed, and an unchanged reference is not swapped in again.
    """
    array = np.ascontiguousarray(reference, dtype="<f2")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        info = zipfile.ZipInfo("reference.npy", date_time=(1980, 1, 1, 0, 0, 0))
        with archive.open(info, "w", force_zip64=True) as member:
            np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def decode_query_reference(data: bytes) -> np.ndarray:
    """The float32 ``[R, d]`` reference of an object written by :func:`encode_query_reference` (no pickle)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        reference = archive["reference"]
    if reference.ndim != 2:
        raise ValueError(f"reference has shape {reference.shape}, expected [R, d]")
    return reference.astype(np.float32)
