"""Ports: the small interfaces the core needs from the outside world.

The core (index store, cache, ingest) talks to blob storage only through :class:`BlobStore`.
Two adapters implement it with the same semantics: :mod:`catalens_tools.in_memory.blobs` (tests, local
runs) and :mod:`catalens.adapters.s3` (boto3). Conditional writes are the whole point of the port:
every shared object the index mutates is written either under a fresh key with
``if_none_match=True`` or over a known version with ``if_match=etag``, never blindly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from catalens.errors import CatalensError


class BlobStoreError(CatalensError):
    """Blob storage failed in a way the caller cannot fix by retrying the same call."""

    code = "blob_store_error"


class BlobNotFoundError(BlobStoreError):
    """The key does not exist (S3 ``NoSuchKey`` / 404)."""

    code = "blob_not_found"


class PreconditionFailedError(BlobStoreError):
    """A conditional write lost: the key exists (``if_none_match``) or changed/vanished (``if_match``); S3 412."""

    code = "precondition_failed"


class NotModifiedError(BlobStoreError):
    """A conditional read found the object unchanged (``if_none_match_etag`` matched); S3 304. Not a failure."""

    code = "not_modified"


class ConflictError(BlobStoreError):
    """Another conditional write to the same key was in flight (S3 409 ``ConditionalRequestConflict``).

    Unlike :class:`PreconditionFailedError` nothing is decided yet: the caller should retry the same
    call after a short, jittered pause.
    """

    code = "conditional_conflict"
    retryable = True


@dataclass(frozen=True)
class BlobInfo:
    """What a listing or a HEAD tells about an object (no body)."""

    key: str
    etag: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class Blob:
    """An object's body with the ETag it was read at (used for the next conditional write)."""

    key: str
    data: bytes
    etag: str
    last_modified: datetime


@runtime_checkable
class BlobStore(Protocol):
    """A flat key → bytes store with S3's conditional-request semantics.

    ETags are opaque strings compared verbatim (adapters keep S3's surrounding quotes).
    """

    def get(self, key: str, if_none_match_etag: str | None = None) -> Blob:
        """Read an object. Raises :class:`BlobNotFoundError`; :class:`NotModifiedError` when its ETag
        equals ``if_none_match_etag``."""
        ...

    def put(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> str:
        """Write an object and return its new ETag.

        ``if_none_match=True`` writes only when the key does not exist; ``if_match=etag`` only when
        the current object has that ETag (a missing key fails too). A lost condition raises
        :class:`PreconditionFailedError`; a concurrent conditional write may raise :class:`ConflictError`.
        """
        ...

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; deleting a missing key is not an error (S3 semantics)."""
        ...

    def head(self, key: str) -> BlobInfo:
        """Metadata of an object without its body. Raises :class:`BlobNotFoundError`."""
        ...


@runtime_checkable
class BatchDeleter(Protocol):
    """Optional extension of a BlobStore: delete many keys per request (S3 DeleteObjects, 1000 per call).

    GC uses it when the adapter has it; deleting a missing key is not an error.
    """

    def delete_many(self, keys: Sequence[str]) -> None: ...


def delete_all(blob: BlobStore, keys: Sequence[str]) -> None:
    """Delete ``keys`` with the adapter's batch delete when it has one, else one by one."""
    if isinstance(blob, BatchDeleter):
        blob.delete_many(keys)
    else:
        for key in keys:
            blob.delete(key)
