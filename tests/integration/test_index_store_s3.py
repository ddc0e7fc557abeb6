"""The S3 adapter against moto, and the index store protocol over it.

The adapter tests run one body on both adapters (in-memory and boto3-on-moto), so the in-memory
adapter the unit tests rely on is held to S3's real conditional-request semantics.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError

from catalens.adapters.s3 import S3BlobStore
from catalens.index.build import build_snapshot
from catalens.index.cache import IndexCache
from catalens.index.store import IndexStore
from catalens.ports import (
    BatchDeleter,
    BlobNotFoundError,
    BlobSizeError,
    BlobStore,
    BlobStoreError,
    ConflictError,
    NotModifiedError,
    PreconditionFailedError,
)
from catalens_tools.in_memory.blobs import MemoryBlobStore
from tests.unit.test_index_store import (
    FINGERPRINT,
    del_event,
    expected_state,
    put_event,
    run_crash_matrix,
    view_state,
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


def test_copy_and_get_into_move_bytes_without_the_caller_holding_them_twice(blob_store: BlobStore) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: the S3 adapter uploads a memoryview this size through its reader
    etag = blob_store.put("a/src.bin", memoryview(big)[1:])
    assert blob_store.copy("a/src.bin", "a/dst.bin") == etag  # same bytes, same (single-part) ETag
    out = bytearray(len(big) - 1)
    assert blob_store.get_into("a/dst.bin", memoryview(out)) == len(out)
    assert out == big[1:]
    with pytest.raises(BlobSizeError):
        blob_store.get_into("a/dst.bin", memoryview(bytearray(10)))
    with pytest.raises(BlobNotFoundError):
        blob_store.get_into("a/nope", memoryview(bytearray(10)))
    with pytest.raises(BlobNotFoundError):
        blob_store.copy("a/nope", "a/other.bin")
    blob_store.put("a/small.bin", memoryview(b"xhix")[1:3])
    assert blob_store.get("a/small.bin").data == b"hi"


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
    assert isinstance(blob_store, BatchDeleter)
    blob_store.delete_many([*keys[:1003], "many/missing"])  # two DeleteObjects calls; a missing key is fine
    assert [info.key for info in blob_store.list("many/")] == keys[1003:]


def test_racing_conditional_writers_have_one_winner_and_readers_never_fail(blob_store: BlobStore) -> None:
    """S3's conditional writes are atomic: of writers racing on one key exactly one wins, the rest get 412.

    moto alone checks the condition and then writes, so several could win, and a reader of an object being
    overwritten could hit a closed buffer; the integration conftest makes moto's S3 requests atomic, as AWS's are.
    """
    writers, rounds = 8, 25
    failures: list[str] = []
    for round_ in range(rounds):
        base = blob_store.put(f"m{round_}", b"base")
        winners: dict[str, list[int]] = {"if_match": [], "if_none_match": []}
        barrier = threading.Barrier(writers + 1)

        def writer(i: int, round_: int = round_, base: str = base, winners: dict = winners, barrier=barrier) -> None:
            barrier.wait()
            try:
                blob_store.put(f"m{round_}", str(i).encode(), if_match=base)
                winners["if_match"].append(i)
            except PreconditionFailedError:
                pass
            try:
                blob_store.put(f"n{round_}", str(i).encode(), if_none_match=True)
                winners["if_none_match"].append(i)
            except PreconditionFailedError:
                pass

        def reader(round_: int = round_, barrier=barrier) -> None:
            barrier.wait()
            try:
                for _ in range(writers):
                    assert blob_store.get(f"m{round_}").data in {b"base", *(str(i).encode() for i in range(writers))}
            except Exception as exc:  # a closed buffer in the emulator shows up here
                failures.append(repr(exc))

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
        threads.append(threading.Thread(target=reader))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners["if_match"]) == 1, f"round {round_}: If-Match winners {winners['if_match']}"
        assert len(winners["if_none_match"]) == 1, f"round {round_}: If-None-Match winners {winners['if_none_match']}"
        assert blob_store.get(f"m{round_}").data == str(winners["if_match"][0]).encode()
        assert blob_store.get(f"n{round_}").data == str(winners["if_none_match"][0]).encode()
    assert failures == []


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


# ----------------------------------------------------------------------------------------------- the store on S3


def test_duplicate_and_out_of_order_events_on_s3(s3_store: IndexStore) -> None:
    events = [put_event("a", "0010", "e1"), del_event("a", "20"), put_event("a", "30", "e1"), put_event("b", "1", "e")]
    for event in [events[2], events[0], events[3], events[1], events[2], events[0]]:  # shuffled, twice over
        s3_store.write_item(event)
    assert len(list(s3_store.blob.list("index/deltas/"))) == 4, "one object per distinct event"
    assert s3_store.write_item(events[1]) is False
    assert view_state(s3_store.load_view()) == expected_state(events) == {"a": "e1", "b": "e"}
    s3_store.compact(model_fingerprint=FINGERPRINT)
    s3_store.write_item(put_event("b", "0", "late"))  # older than what the snapshot holds
    s3_store.delete_item("a", sequencer="2f")
    assert view_state(s3_store.load_view()) == {"a": "e1", "b": "e"}
    assert s3_store.compact().noop


def test_compaction_race_rollback_and_gc_on_s3(s3_store: IndexStore) -> None:
    s3_store.write_item(put_event("a", "1", "e1"))
    v1 = s3_store.compact(model_fingerprint=FINGERPRINT).version
    rival = IndexStore(s3_store.blob, s3_store.prefix)
    overtaken = []

    def build_and_get_overtaken(records, **kwargs):
        if not overtaken:
            overtaken.append(True)
            s3_store.write_item(put_event("b", "2", "e1"))
            rival.compact()  # moves the manifest's ETag: our If-Match must get 412 from S3
            s3_store.write_item(put_event("c", "3", "e1"))
        return build_snapshot(records, **kwargs)

    s3_store.write_item(put_event("d", "1", "e1"))
    result = s3_store.compact(build_fn=build_and_get_overtaken)
    assert result.attempts == 2
    manifest, _ = s3_store.read_manifest()
    assert manifest.generation == 3
    everything = {"a": "e1", "b": "e1", "c": "e1", "d": "e1"}
    assert view_state(s3_store.load_view()) == everything
    gc = s3_store.gc(grace_seconds=5)
    assert len(gc.versions_deleted) == 1, "the abandoned build"
    s3_store.rollback(v1)
    assert view_state(s3_store.load_view()) == everything, "GC kept the deltas v1 lacks"


def test_cache_on_s3_revalidates_with_a_conditional_get(s3_store: IndexStore) -> None:
    now = [0.0]
    cache = IndexCache(s3_store, ttl_seconds=2, clock=lambda: now[0], background=False)
    s3_store.write_item(put_event("a", "1", "e"))
    s3_store.compact(model_fingerprint=FINGERPRINT)
    assert set(view_state(cache.view())) == {"a"}
    now[0] += 2
    cache.view()
    assert cache.stats.not_modified == 1, "S3 answered 304 to If-None-Match"
    s3_store.write_item(put_event("b", "2", "e"))
    version = s3_store.compact().version
    now[0] += 2
    assert set(view_state(cache.view())) == {"a", "b"}
    assert cache.version == version
    assert cache.stats.not_modified == 1


@pytest.mark.slow
def test_a_writer_killed_between_any_two_s3_writes_leaves_a_correct_index(s3_client: Any, s3_bucket: str) -> None:
    total = run_crash_matrix(S3BlobStore(s3_client, s3_bucket), grace_seconds=-5)
    assert total >= 14
