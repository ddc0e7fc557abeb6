"""What can go wrong between the index and its blob storage (every index storage module raises these)."""

from __future__ import annotations

from catalens.errors import CatalensError


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
