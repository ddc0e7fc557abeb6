"""Where moto's S3 notifications differ from AWS's in ways the system depends on, the local stack closes the gap.

Applied once, in the ``catalens local`` process only (it runs moto's server in-process); tests that use ``mock_aws``
elsewhere see plain moto. Each fix makes the emulator do what AWS documents:

1. **Deleting from a versioned bucket notifies.** AWS sends ``s3:ObjectRemoved:DeleteMarkerCreated`` when a DELETE
   without a version id puts a delete marker on a key (the catalog bucket is versioned, and the template subscribes
   the queue to ``s3:ObjectRemoved:*``); moto 5 sends nothing, so a deleted photo would stay searchable forever.
2. **Records carry a ``sequencer`` and the ``versionId``.** AWS puts a hex ``sequencer`` in every record (it orders
   the events of one key) and the ``versionId`` on versioned buckets; moto omits both. The sequencer here is a
   process-wide increasing counter seeded from the clock, so it also orders events across restarts.
3. **Removal records have no ``size``/``eTag``**, as on AWS (moto copies them from the deleted object).
4. **Each S3 request is atomic** (:func:`make_s3_requests_atomic`). S3 is strongly consistent and its conditional
   writes are atomic: of two racing ``PUT``s with ``If-None-Match: *`` one wins and the other gets 412. moto checks the
   condition and then writes, so both can "win"; and on overwrite it closes the old object's buffer while another
   thread may still read it (``ValueError: I/O operation on closed file``). Serialising S3 requests removes both.
   This one also matters in-process under ``mock_aws`` whenever threads share moto, so the integration tests apply it.
5. **Each DynamoDB operation is atomic** (:func:`make_dynamodb_operations_atomic`). moto's ``transact_write_items``
   deep-copies the tables and, when a condition fails, restores that copy, erasing any write another thread committed
   in between (a lost update serialisable DynamoDB transactions cannot produce); and an ``ADD`` to a new item stores
   the bare key before the attribute, so a concurrent read can see half an item. One lock around moto's reads and
   writes removes those artefacts without hiding a lost update of ours: an updater's read and its conditional write
   are separate operations, and other writes still interleave between them.

6. **S3 Vectors answers ``QueryVectors``** (:func:`make_s3vectors_queryable`). moto 5.2 creates vector buckets and
   indexes and stores vectors but has no ``QueryVectors``. The fix adds it as AWS documents it: an exact search by
   the index's ``distanceMetric`` (cosine: distance = 1 − cosine; euclidean: the L2 distance), ``topK`` 1..100,
   the documented metadata filter operators (:mod:`catalens_tools.local.vector_query`), ``returnDistance`` and
   ``returnMetadata``, and AWS's errors (``NotFoundException`` for a missing index, ``ValidationException`` for a
   bad ``topK``, query dimension or filter). Exact where AWS is approximate: a test that passes here asserts what
   an exact index answers. The integration tests apply it too.

(ingest also accepts moto's raw shape — it falls back to ``eventTime`` — and its tests cover both shapes.)
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

_applied = False
_originals: tuple[Any, Any] | None = None  # moto's own event builder and delete_object, to put back
_lock = threading.Lock()
_counter = itertools.count(time.time_ns() // 1000)


def next_sequencer() -> str:
    """An increasing hex sequencer, 16+ digits like S3's (``0055AED6DCD90281E5``)."""
    return f"{next(_counter):018X}"


_serialised: set[str] = set()


def _serialise(owner: type, names: tuple[str, ...]) -> None:
    """Wrap ``owner``'s methods ``names`` in one re-entrant lock (once per class; re-entrant because moto's
    operations call each other)."""
    with _lock:
        if owner.__qualname__ in _serialised:
            return
        lock = threading.RLock()
        for name in names:
            original = getattr(owner, name)

            def serialised(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
                with lock:
                    return _original(self, *args, **kwargs)

            serialised.__name__ = name
            setattr(owner, name, serialised)
        _serialised.add(owner.__qualname__)


def make_s3_requests_atomic() -> None:
    """Run each S3 request in moto under one lock, so check-then-write is atomic as on AWS (idempotent).

    Wraps the three entry points moto's S3 URL map dispatches to (bucket, key, and the ambiguous path-style one
    that calls either); in-process and server mode both go through them.
    """
    from moto.s3.responses import S3Response

    _serialise(S3Response, ("ambiguous_response", "bucket_response", "key_response"))


def make_dynamodb_operations_atomic() -> None:
    """Run each of moto's DynamoDB reads and writes under one lock, as DynamoDB's are atomic (idempotent)."""
    from moto.dynamodb.models import DynamoDBBackend

    _serialise(
        DynamoDBBackend,
        ("transact_write_items", "put_item", "update_item", "delete_item", "get_item", "query", "scan"),
    )


def make_s3vectors_queryable() -> None:
    """Teach moto's S3 Vectors ``QueryVectors`` (idempotent); in-process and server mode both route through it."""
    from catalens_tools.local.vector_query import install

    install()


def apply() -> None:
    """Install the fixes (idempotent)."""
    global _applied, _originals
    make_s3_requests_atomic()
    make_dynamodb_operations_atomic()
    make_s3vectors_queryable()
    with _lock:
        if _applied:
            return
        from moto.s3 import models, notifications

        original_event = notifications._get_s3_event
        original_delete = models.S3Backend.delete_object
        _originals = (original_event, original_delete)

        def aws_shaped_event(event_name: str, bucket: Any, key: Any, notification_id: str) -> dict[str, Any]:
            if not hasattr(key, "etag"):  # a delete marker: no bytes, no ETag
                placeholder = _MarkerView(key)
                record = original_event(event_name, bucket, placeholder, notification_id)
            else:
                record = original_event(event_name, bucket, key, notification_id)
            obj = record["Records"][0]["s3"]["object"]
            obj["sequencer"] = next_sequencer()
            version_id = getattr(key, "version_id", None)
            if getattr(bucket, "is_versioned", False) and version_id and version_id != "null":
                obj["versionId"] = str(version_id)
            if "ObjectRemoved" in event_name:
                obj.pop("size", None)
                obj.pop("eTag", None)
            return record

        def delete_object(self: Any, bucket_name: str, key_name: str, version_id: str | None = None, **kw: Any) -> Any:
            result = original_delete(self, bucket_name, key_name, version_id=version_id, **kw)
            _, meta = result
            if version_id is None and meta.get("delete-marker") == "true":
                bucket = self.get_bucket(bucket_name)
                marker = bucket.keys.get(key_name)
                if marker is not None:
                    notifications.send_event(
                        self.account_id,
                        notifications.S3NotificationEvent.OBJECT_REMOVED_DELETE_MARKER_CREATED_EVENT,
                        bucket,
                        marker,
                    )
            return result

        notifications._get_s3_event = aws_shaped_event
        models.S3Backend.delete_object = delete_object
        _applied = True


def notifications_shaped() -> bool:
    """True while moto's S3 notifications carry the AWS shape (:func:`apply` installed it)."""
    return _applied


def remove_notification_shape() -> None:
    """Give moto its own S3 notification shape back.

    A server started inside a test process (benchmarks and their tests run one in-process) must not change what
    the later ``mock_aws`` tests of that process see; the local stack's own process never needs this.
    """
    global _applied, _originals
    with _lock:
        if not _applied or _originals is None:
            return
        from moto.s3 import models, notifications

        notifications._get_s3_event, models.S3Backend.delete_object = _originals
        _applied, _originals = False, None


class _MarkerView:
    """What moto's event builder reads from a key, for a delete marker (which has no size or ETag)."""

    def __init__(self, marker: Any) -> None:
        self.name = marker.name
        self.size = 0
        self.etag = ""
        self.version_id = marker.version_id
