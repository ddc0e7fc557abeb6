"""In-memory :class:`~catalens.ports.BlobStore` with S3's conditional semantics, for tests and local runs.

Thread-safe: one lock makes every call atomic, the way S3 makes each request atomic. ETags are
quoted MD5 hex digests like S3's single-part ETags, so code never depends on an adapter's ETag shape.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from catalens.ports import (
    Blob,
    BlobInfo,
    BlobNotFoundError,
    BlobSizeError,
    NotModifiedError,
    PreconditionFailedError,
)


@dataclass(frozen=True)
class _Stored:
    data: bytes
    etag: str
    last_modified: datetime


def _utc_now() -> datetime:
    return datetime.now(UTC)


class MemoryBlobStore:
    """A dict of key → bytes that honours ``if_match`` / ``if_none_match`` exactly like S3.

    Parameters
    ----------
    clock:
        Returns the time stamped as ``last_modified``; tests inject one to age objects for GC.
    """

    def __init__(self, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._objects: dict[str, _Stored] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def get(self, key: str, if_none_match_etag: str | None = None) -> Blob:
        with self._lock:
            stored = self._objects.get(key)
        if stored is None:
            raise BlobNotFoundError(f"no object at key {key!r}")
        if if_none_match_etag is not None and if_none_match_etag == stored.etag:
            raise NotModifiedError(f"object {key!r} still has ETag {stored.etag}")
        return Blob(key=key, data=stored.data, etag=stored.etag, last_modified=stored.last_modified)

    def put(
        self, key: str, data: bytes | memoryview, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        data = bytes(data)
        etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
        with self._lock:
            current = self._objects.get(key)
            if if_none_match and current is not None:
                raise PreconditionFailedError(f"object {key!r} already exists (If-None-Match: *)")
            if if_match is not None and (current is None or current.etag != if_match):
                found = "is missing" if current is None else f"has ETag {current.etag}"
                raise PreconditionFailedError(f"object {key!r} {found}, expected {if_match} (If-Match)")
            self._objects[key] = _Stored(data=data, etag=etag, last_modified=self._clock())
        return etag

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        with self._lock:
            items = sorted((k, v) for k, v in self._objects.items() if k.startswith(prefix))
        for key, stored in items:
            yield BlobInfo(key=key, etag=stored.etag, size=len(stored.data), last_modified=stored.last_modified)

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def delete_many(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._objects.pop(key, None)

    def head(self, key: str) -> BlobInfo:
        with self._lock:
            stored = self._objects.get(key)
        if stored is None:
            raise BlobNotFoundError(f"no object at key {key!r}")
        return BlobInfo(key=key, etag=stored.etag, size=len(stored.data), last_modified=stored.last_modified)

    def copy(self, source_key: str, dest_key: str) -> str:
        with self._lock:
            stored = self._objects.get(source_key)
            if stored is None:
                raise BlobNotFoundError(f"no object at key {source_key!r} to copy")
            self._objects[dest_key] = _Stored(data=stored.data, etag=stored.etag, last_modified=self._clock())
        return stored.etag

    def get_into(self, key: str, out: memoryview) -> int:
        with self._lock:
            stored = self._objects.get(key)
        if stored is None:
            raise BlobNotFoundError(f"no object at key {key!r}")
        if len(stored.data) != len(out):
            raise BlobSizeError(f"object {key!r} has {len(stored.data)} bytes, the caller expected {len(out)}")
        out[:] = stored.data
        return len(stored.data)
