"""The manifest: the one mutable object of the index, and the guarded swap that is its only write.

It names the current version, the earlier ones kept for rollback, and the query-domain reference. Everything it
names is immutable and written before it. A writer reads it with its ETag, builds the next one, and swaps it with
``If-Match`` on that ETag (``If-None-Match`` the first time); a lost race re-reads and rebuilds, with bounded,
jittered retries (:class:`RetryPolicy`). Readers verify every file they load against their manifest entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from catalens.index.errors import CorruptIndexError
from catalens.index.layout import FORMAT, MANIFEST_NAME, QUERY_REFERENCE_DIR
from catalens.ports import BlobNotFoundError, BlobStore, ConflictError, PreconditionFailedError

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with full jitter (sleep uniform in [0, min(cap, base·2^attempt)])."""

    attempts: int = 8
    base_delay: float = 0.05
    max_delay: float = 2.0

    def pause(self, attempt: int, sleep: Callable[[float], None]) -> None:
        sleep(random.uniform(0.0, min(self.max_delay, self.base_delay * (2**attempt))))


DEFAULT_RETRY = RetryPolicy()


class ManifestStore:
    """Reads the manifest with its ETag and swaps it only on that ETag: every writer of the manifest goes through here.

    Parameters
    ----------
    blob:
        Any :class:`~catalens.ports.BlobStore` (S3 or in-memory).
    prefix:
        Key prefix of the index (``"index/"``, ending in "/"); "" for the bucket root.
    """

    def __init__(self, blob: BlobStore, prefix: str = "") -> None:
        self.blob = blob
        self.key = prefix + MANIFEST_NAME

    def read(self, if_none_match_etag: str | None = None) -> tuple[Manifest, str | None]:
        """The manifest and its ETag; an empty manifest (ETag None) before the first compaction.

        Raises :class:`~catalens.ports.NotModifiedError` when it still has ``if_none_match_etag``.
        """
        try:
            blob = self.blob.get(self.key, if_none_match_etag=if_none_match_etag)
        except BlobNotFoundError:
            return Manifest(), None
        return Manifest.from_bytes(blob.data), blob.etag

    def swap(self, manifest: Manifest, etag: str | None) -> bool:
        """The only write of the manifest: conditional on the ETag it was read at. False on a lost race."""
        try:
            if etag is None:
                self.blob.put(self.key, manifest.to_bytes(), if_none_match=True)
            else:
                self.blob.put(self.key, manifest.to_bytes(), if_match=etag)
        except (PreconditionFailedError, ConflictError):
            return False
        return True
