"""The S3 adapter against moto, and the index store protocol over it.

The adapter tests run one body on both adapters (in-memory and boto3-on-moto), so the in-memory
adapter the unit tests rely on is held to S3's real conditional-request semantics.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError
from catalens.adapters.memory import MemoryBlobStore
from catalens.adapters.s3 import S3BlobStore
from catalens.ports import (
    BlobNotFoundError,
    BlobStore,
    BlobStoreError,
    ConflictError,
    NotModifiedError,
    PreconditionFailedError,
)


@pytest.fixture(params=["memory", "s3"])
def blob_store(request: pytest.FixtureRequest) -> BlobStore:
    if request.param == "memory":
        return MemoryBlobStore()
    client = request.getfixturevalue("s3_client")
    bucket = request.getfixturevalue("s3_bucket")
    return S3BlobStore(client, bucket)


def test_adapters_implement_the_port(blob_store: BlobStore) -> None:
    assert isinstance(blob_store, BlobStore)


def test_put_get_head_round_trip_with_one_etag(blob_store: BlobStore) -> None:
    etag = blob_store.put("a/b.bin", b"hello")
    blob = blob_store.get("a/b.bin")
    info = blob_store.head("a/b.bin")
    assert blob.data == b"hello"
    assert blob.etag == etag == info.etag
    assert info.size == 5
    assert blob_store.put("a/c.bin", b"hello") == etag, "same bytes, same ETag (S3 single-part MD5)"
    assert blob_store.put("a/b.bin", b"other") != etag


def test_missing_key_raises_not_found(blob_store: BlobStore) -> None:
    with pytest.raises(BlobNotFoundError):
        blob_store.get("nope")
    with pytest.raises(BlobNotFoundError):
        blob_store.head("nope")
    blob_store.delete("nope")  # deleting a missing key is fine, as on S3


def test_if_none_match_writes_only_a_new_key(blob_store: BlobStore) -> None:
    blob_store.put("k", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailedError):
        blob_store.put("k", b"second", if_none_match=True)
    assert blob_store.get("k").data == b"first"


def test_if_match_writes_only_over_the_expected_version(blob_store: BlobStore) -> None:
    etag1 = blob_store.put("m", b"v1", if_none_match=True)
    etag2 = blob_store.put("m", b"v2", if_match=etag1)
    with pytest.raises(PreconditionFailedError):
        blob_store.put("m", b"v3", if_match=etag1)  # stale ETag
    assert blob_store.get("m").data == b"v2"
    blob_store.delete("m")
    with pytest.raises(PreconditionFailedError):
        blob_store.put("m", b"v4", if_match=etag2)  # the version we expected is gone
    with pytest.raises(BlobNotFoundError):
        blob_store.get("m")


def test_conditional_get_answers_not_modified(blob_store: BlobStore) -> None:
    etag = blob_store.put("m", b"v1")
    with pytest.raises(NotModifiedError):
        blob_store.get("m", if_none_match_etag=etag)
    new_etag = blob_store.put("m", b"v2")
    blob = blob_store.get("m", if_none_match_etag=etag)
    assert (blob.data, blob.etag) == (b"v2", new_etag)


def test_list_is_by_prefix_in_key_order_and_delete_removes(blob_store: BlobStore) -> None:
    for key in ["p/b", "p/a", "p/c/d", "q/a", "pz"]:
        blob_store.put(key, key.encode())
    assert [info.key for info in blob_store.list("p/")] == ["p/a", "p/b", "p/c/d"]
    blob_store.delete("p/b")
    infos = list(blob_store.list("p/"))
    assert [info.key for info in infos] == ["p/a", "p/c/d"]
    assert all(info.last_modified.tzinfo is not None for info in infos)


def test_list_pages_through_more_than_one_s3_page(blob_store: BlobStore) -> None:
    keys = [f"many/{i:05d}" for i in range(1005)]  # S3 pages hold 1000 keys
    for key in keys:
        blob_store.put(key, b"x")
    assert [info.key for info in blob_store.list("many/")] == keys


def test_memory_adapter_racing_conditional_writers_have_one_winner() -> None:
    """Atomicity under threads (moto checks then writes without a lock, so this runs on memory only)."""
    store = MemoryBlobStore()
    base = store.put("m", b"base")
    winners: list[int] = []
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        barrier.wait()
        try:
            store.put("m", str(i).encode(), if_match=base)
            winners.append(i)
        except PreconditionFailedError:
            pass

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert store.get("m").data == str(winners[0]).encode()


def test_s3_adapter_translates_409_conflict_and_other_errors() -> None:
    """409 ConditionalRequestConflict (real S3, not emulated by moto) must surface as a retryable ConflictError."""

    class FailingClient:
        def __init__(self, code: str, status: int) -> None:
            self.error = ClientError(
                {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                "PutObject",
            )

        def put_object(self, **_: Any) -> dict[str, Any]:
            raise self.error

    with pytest.raises(ConflictError) as info:
        S3BlobStore(FailingClient("ConditionalRequestConflict", 409), "b").put("k", b"x", if_none_match=True)
    assert info.value.retryable
    with pytest.raises(PreconditionFailedError):
        S3BlobStore(FailingClient("PreconditionFailed", 412), "b").put("k", b"x", if_match='"e"')
    with pytest.raises(BlobStoreError) as other:
        S3BlobStore(FailingClient("AccessDenied", 403), "b").put("k", b"x")
    assert type(other.value) is BlobStoreError
    assert "AccessDenied" in str(other.value)
