"""The index storage protocol and the query-side cache, against the in-memory blob store.

The in-memory adapter is held to S3's semantics by tests/integration/test_index_store_s3.py; the
crash matrix below is run against moto there too (``run_crash_matrix``).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pytest

from catalens.index.build import build_snapshot
from catalens.index.cache import IndexCache
from catalens.index.deltas import delta_key
from catalens.index.errors import CorruptIndexError, InvalidRecordError, UnknownVersionError
from catalens.index.layout import DELTAS_DIR
from catalens.index.manifest import RetryPolicy
from catalens.index.records import ItemRecord, sequencer_key
from catalens.index.store import IndexStore
from catalens.index.view import SearchParams
from catalens.ports import Blob, BlobInfo, BlobStore
from catalens_tools.in_memory.blobs import MemoryBlobStore

# Compacted vectors are int8: within a few thousandths of the float32 ones (docs/design.md, invariant 5).
COMPACT_ATOL = 0.01

DIM = 8
FINGERPRINT = "test-model"


# ----------------------------------------------------------------------------------------------- helpers


def vector_for(item_id: str, etag: str) -> np.ndarray:
    """A deterministic vector per (item, photo version), so a view can be checked against the events."""
    seed = int.from_bytes(hashlib.sha256(f"{item_id}|{etag}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def put_event(item_id: str, seq: str, etag: str) -> ItemRecord:
    return ItemRecord(
        item_id=item_id,
        vector=vector_for(item_id, etag),
        fields={"title": f"{item_id} ({etag})", "price": len(etag)},
        image_key=f"photos/{item_id}.jpg",
        source_etag=etag,
        sequencer=seq,
    )


def del_event(item_id: str, seq: str) -> ItemRecord:
    return ItemRecord(item_id, None, {}, f"photos/{item_id}.jpg", "", seq, deleted=True)


def expected_state(events: list[ItemRecord]) -> dict[str, str]:
    """What S3 holds after ``events``: item → ETag of its photo (by the latest sequencer; absent when deleted)."""
    latest: dict[str, ItemRecord] = {}
    for event in events:
        current = latest.get(event.item_id)
        if current is None or sequencer_key(event.sequencer) > sequencer_key(current.sequencer):
            latest[event.item_id] = event
    return {item_id: e.source_etag for item_id, e in latest.items() if not e.deleted}


def view_state(view) -> dict[str, str]:
    """item → source ETag as the view answers it, checked three ways (len, search, get) to agree."""
    hits = view.search(np.ones(DIM, dtype=np.float32), k=len(view) + 10, strategy="exact") if len(view) else []
    ids = [hit.item_id for hit in hits]
    assert len(ids) == len(set(ids)), "an item came back twice"
    assert len(ids) == len(view)
    state = {}
    for item_id in ids:
        item = view.get(item_id)
        assert item is not None
        state[item_id] = item.source_etag
        expected = vector_for(item_id, item.source_etag)
        np.testing.assert_allclose(view.vector_of(item_id), expected / np.linalg.norm(expected), atol=COMPACT_ATOL)
    return state


def delta_keys(store: IndexStore) -> list[str]:
    return [info.key for info in store.blob.list(store.prefix + DELTAS_DIR)]


class FakeClock:
    """One settable time for both the blob store's LastModified and the store's wall clock."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


@pytest.fixture
def blob() -> MemoryBlobStore:
    return MemoryBlobStore()


@pytest.fixture
def store(blob: MemoryBlobStore) -> IndexStore:
    return IndexStore(blob, "index/", retry=RetryPolicy(base_delay=0.0))


def compact(store: IndexStore, **kwargs) -> object:
    return store.compact(model_fingerprint=FINGERPRINT, **kwargs)


# ----------------------------------------------------------------------------------------------- refused records


def test_malformed_records_are_refused(store: IndexStore) -> None:
    with pytest.raises(InvalidRecordError):
        store.write_item(put_event("a", "not-hex", "e"))
    with pytest.raises(InvalidRecordError):
        store.write_item(ItemRecord("a", np.ones(DIM, np.float32), {}, "k", "e", "01", deleted=True))
    with pytest.raises(InvalidRecordError):
        store.write_item(ItemRecord("a", None, {}, "k", "e", "01", deleted=False))
    with pytest.raises(InvalidRecordError):
        store.write_item(ItemRecord("a", np.full(DIM, np.nan, np.float32), {}, "k", "e", "01"))
    assert delta_keys(store) == []


# ----------------------------------------------------------------------------------------------- idempotency, order


def test_duplicate_delivery_writes_one_delta_and_changes_nothing(store: IndexStore) -> None:
    event = put_event("shoe", "0100", "e1")
    assert store.write_item(event) is True
    before = view_state(store.load_view())
    assert store.write_item(event) is False
    assert len(delta_keys(store)) == 1
    assert view_state(store.load_view()) == before == {"shoe": "e1"}

    compact(store)
    assert store.write_item(event) is False, "still a duplicate while the delta object exists"
    store.gc(grace_seconds=-1)  # covered by every retained version: deleted
    assert delta_keys(store) == []
    store.write_item(event)  # a very late redelivery after GC: written again, but covered by the snapshot
    assert view_state(store.load_view()) == {"shoe": "e1"}
    assert compact(store).noop


ORDERINGS = [
    [put_event("a", "10", "e1"), del_event("a", "20")],
    [put_event("a", "10", "e1"), del_event("a", "20"), put_event("a", "30", "e1")],  # same bytes re-uploaded
    [put_event("a", "10", "e1"), put_event("a", "0F", "e0"), put_event("a", "011", "e2"), del_event("a", "12")],
    [del_event("a", "09"), put_event("a", "0a", "e1"), put_event("b", "01", "e9"), del_event("b", "2")],
]


@pytest.mark.parametrize("events", ORDERINGS)
def test_out_of_order_delivery_follows_the_sequencer(events: list[ItemRecord]) -> None:
    """Every delivery order, with a compaction after every possible prefix, ends in the S3 state."""
    expected = expected_state(events)
    for order in itertools.permutations(events):
        for compact_after in range(len(order) + 1):
            store = IndexStore(MemoryBlobStore())
            for i, event in enumerate(order):
                if i == compact_after:
                    compact(store)
                store.write_item(event)
            assert view_state(store.load_view()) == expected, (order, compact_after)
            compact(store)
            assert view_state(store.load_view()) == expected, (order, compact_after)
            store.gc(grace_seconds=-1)
            assert view_state(store.load_view()) == expected, (order, compact_after)


def test_late_events_cannot_resurrect_or_hide_after_compaction_and_gc(store: IndexStore) -> None:
    store.write_item(put_event("gone", "10", "e1"))
    store.delete_item("gone", sequencer="20")
    store.write_item(put_event("kept", "20", "e2"))
    compact(store)
    store.gc(grace_seconds=-1)
    assert delta_keys(store) == [], "both compacted and covered: GC removed every delta"

    store.write_item(put_event("gone", "15", "e-late"))  # older create, delivered late
    store.delete_item("kept", sequencer="19")  # older delete, delivered late
    assert view_state(store.load_view()) == {"kept": "e2"}
    assert compact(store).noop, "stale events change nothing"

    store.write_item(put_event("gone", "21", "e3"))  # a genuinely newer upload
    assert view_state(store.load_view()) == {"kept": "e2", "gone": "e3"}


# ----------------------------------------------------------------------------------------------- compaction


def test_compaction_publishes_a_version_equal_to_the_live_view(store: IndexStore) -> None:
    events = [put_event(f"i{n}", f"{n + 1:x}", "e1") for n in range(30)] + [del_event("i3", "ff")]
    for event in events:
        store.write_item(event)
    live = view_state(store.load_view())
    result = compact(store)
    assert (result.generation, result.items, result.deltas_included, result.noop) == (1, 29, 31, False)
    manifest, _ = store.read_manifest()
    loaded = store.load_version(manifest.current)
    assert loaded.snapshot.version == manifest.current.version == result.version
    assert len(loaded.snapshot) == manifest.current.items == 29
    assert view_state(store.load_view()) == live == expected_state(events)
    assert compact(store).noop


def test_first_compaction_needs_a_model_fingerprint(store: IndexStore) -> None:
    store.write_item(put_event("a", "1", "e"))
    with pytest.raises(Exception, match="model_fingerprint"):
        store.compact()


def test_deltas_from_another_model_are_left_out(store: IndexStore) -> None:
    store.write_item(put_event("ours", "1", "e"), model_fingerprint=FINGERPRINT)
    compact(store)
    store.write_item(put_event("theirs", "2", "e"), model_fingerprint="other-model")
    assert set(view_state(store.load_view())) == {"ours"}
    result = compact(store)
    assert result.noop
    assert result.deltas_skipped == 1


def test_deltas_written_during_a_build_are_not_lost(store: IndexStore) -> None:
    for n in range(5):
        store.write_item(put_event(f"old{n}", "1", "e1"))
    compact(store)

    def build_while_ingesting(records, **kwargs):
        store.write_item(put_event("new", "5", "e1"))  # lands after the compactor listed the deltas
        store.delete_item("old0", sequencer="6")
        store.write_item(put_event("old1", "7", "e2"))
        return build_snapshot(records, **kwargs)

    store.write_item(put_event("before", "3", "e1"))
    compact(store, build_fn=build_while_ingesting)
    expected = {"old1": "e2", "old2": "e1", "old3": "e1", "old4": "e1", "before": "e1", "new": "e1"}
    assert view_state(store.load_view()) == expected
    manifest, _ = store.read_manifest()
    assert "new" not in {hit for hit in store.load_version(manifest.current).snapshot.item_ids.astype(str)}
    store.gc(grace_seconds=-1)  # must not delete the three deltas the current version does not cover
    assert view_state(store.load_view()) == expected
    compact(store)
    assert view_state(store.load_view()) == expected
    manifest, _ = store.read_manifest()
    assert set(store.load_version(manifest.current).snapshot.item_ids.astype(str)) == set(expected)


def test_a_lost_manifest_race_rebuilds_from_the_winner(store: IndexStore) -> None:
    store.write_item(put_event("a", "1", "e1"))
    compact(store)
    rival = IndexStore(store.blob, store.prefix)
    raced = []

    def build_and_get_overtaken(records, **kwargs):
        if not raced:
            raced.append(True)
            store.write_item(put_event("b", "2", "e1"))
            rival.compact()  # publishes first (with b and c): our If-Match on the old ETag must fail
            store.write_item(put_event("d", "4", "e1"))  # so the retry has something left to fold in
        return build_snapshot(records, **kwargs)

    store.write_item(put_event("c", "3", "e1"))
    result = compact(store, build_fn=build_and_get_overtaken)
    assert result.attempts == 2
    manifest, _ = store.read_manifest()
    assert manifest.generation == 3
    assert [e.generation for e in manifest.retained] == [3, 2, 1]
    assert view_state(store.load_view()) == {"a": "e1", "b": "e1", "c": "e1", "d": "e1"}
    versions = {info.key.split("/")[2] for info in store.blob.list("index/versions/")}
    assert len(versions) == 4, "the abandoned build's files stay until GC"
    gc = store.gc(grace_seconds=-1)
    assert len(gc.versions_deleted) == 1
    assert gc.versions_deleted[0].startswith("00000002-")
    assert {info.key.split("/")[2] for info in store.blob.list("index/versions/")} == {
        e.version for e in manifest.retained
    }
    assert view_state(store.load_view()) == {"a": "e1", "b": "e1", "c": "e1", "d": "e1"}


def test_racing_compactors_both_finish_and_lose_nothing(blob: MemoryBlobStore) -> None:
    stores = [IndexStore(blob, "ix", retry=RetryPolicy(attempts=20, base_delay=0.001)) for _ in range(3)]
    events = [put_event(f"i{n}", f"{n + 1:x}", "e") for n in range(60)]
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for event in events[k::3]:
                stores[k].write_item(event)
                if int(event.sequencer, 16) % 7 == 0:
                    compact(stores[k])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    compact(stores[0])
    assert view_state(stores[0].load_view()) == expected_state(events)


# ----------------------------------------------------------------------------------------------- rollback, GC


def test_rollback_restores_an_old_version_and_keeps_later_ingests(store: IndexStore) -> None:
    store.write_item(put_event("a", "1", "e1"))
    v1 = compact(store).version
    store.write_item(put_event("b", "2", "e1"))
    store.write_item(put_event("a", "3", "e2"))
    v2 = compact(store).version
    store.gc(grace_seconds=-1)  # must keep the deltas v1 lacks: a rollback to v1 needs them
    manifest = store.rollback(v1)
    assert manifest.current.version == v1
    assert [e.version for e in manifest.history] == [v2]
    assert view_state(store.load_view()) == {"a": "e2", "b": "e1"}
    store.rollback(v2)
    assert view_state(store.load_view()) == {"a": "e2", "b": "e1"}
    with pytest.raises(UnknownVersionError):
        store.rollback("00000009-nope")


def test_history_is_bounded_and_gc_deletes_only_unreferenced_old_objects() -> None:
    clock = FakeClock()
    blob = MemoryBlobStore(clock=clock.utc)
    store = IndexStore(blob, "", keep_versions=2, wall_clock=clock)
    versions = []
    for n in range(4):
        store.write_item(put_event(f"i{n}", f"{n + 1}", "e"))
        versions.append(compact(store).version)
        clock.now += 10
    manifest, _ = store.read_manifest()
    assert [e.version for e in manifest.retained] == versions[:1:-1]
    with pytest.raises(UnknownVersionError):
        store.rollback(versions[0])

    assert store.gc(grace_seconds=60).versions_deleted == [], "nothing is old enough yet"
    clock.now += 25  # objects of v0 and i0 are now 65 s old, those of v1 and i1 55 s
    result = store.gc(grace_seconds=60)
    assert result.versions_deleted == [versions[0]]
    assert (result.deltas_deleted, result.deltas_kept) == (1, 3), "only i0's delta is both old and covered"
    clock.now += 100
    result = store.gc(grace_seconds=60)
    assert result.versions_deleted == [versions[1]]
    assert (result.deltas_deleted, result.deltas_kept) == (2, 1), "i3's delta stays: retained v2 lacks it"
    assert view_state(store.load_view()) == {f"i{n}": "e" for n in range(4)}
    dry = store.gc(grace_seconds=0, dry_run=True)
    assert dry.deltas_kept == 1
    assert dry.objects_deleted == 0


def test_a_tampered_version_is_refused_whole(store: IndexStore) -> None:
    for n in range(3):
        store.write_item(put_event(f"i{n}", f"{n + 1}", "e"))
    version = compact(store).version
    key = f"index/versions/{version}/snapshot/full-chunk.00000.npy"
    data = bytearray(store.blob.get(key).data)
    data[-1] ^= 0xFF
    store.blob.put(key, bytes(data))
    with pytest.raises(CorruptIndexError, match=r"full-chunk\.00000\.npy"):
        store.load_view()
    store.blob.delete(key)
    with pytest.raises(CorruptIndexError, match="missing"):
        store.load_view()


def test_a_tampered_manifest_is_refused(store: IndexStore) -> None:
    store.write_item(put_event("a", "1", "e"))
    compact(store)
    text = store.blob.get("index/manifest.json").data.replace(b'"items": 1', b'"items": 2')
    store.blob.put("index/manifest.json", text)
    with pytest.raises(CorruptIndexError):
        store.load_view()


# ----------------------------------------------------------------------------------------------- the cache


class CountingBlob:
    """Delegates to a blob store, counting calls and optionally blocking GETs of some keys."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.gets: list[str] = []
        self.lists = 0
        self.block_prefix: str | None = None
        self.block_once: str | None = None  # the first GET of this key blocks (on its own events)
        self.once_blocked = threading.Event()
        self.once_release = threading.Event()
        self.block_lists = False
        self.release = threading.Event()
        self.blocked = threading.Event()
        self.fail = False

    def _before_get(self, key: str) -> None:
        if self.fail:
            raise OSError("network down")
        self.gets.append(key)
        if key == self.block_once:
            self.block_once = None
            self.once_blocked.set()
            assert self.once_release.wait(30), "test never released the blocked GET"
        if self.block_prefix and key.startswith(self.block_prefix):
            self.blocked.set()
            assert self.release.wait(30), "test never released the blocked load"

    def get(self, key: str, if_none_match_etag: str | None = None) -> Blob:
        self._before_get(key)
        return self.inner.get(key, if_none_match_etag)

    def get_into(self, key: str, out: memoryview) -> int:
        self._before_get(key)
        return self.inner.get_into(key, out)

    def put(
        self, key: str, data: bytes | memoryview, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        return self.inner.put(key, data, if_match=if_match, if_none_match=if_none_match)

    def copy(self, source_key: str, dest_key: str) -> str:
        return self.inner.copy(source_key, dest_key)

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        if self.fail:
            raise OSError("network down")
        self.lists += 1
        if self.block_lists:
            self.blocked.set()
            assert self.release.wait(30), "test never released the blocked LIST"
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def head(self, key: str) -> BlobInfo:
        return self.inner.head(key)


@dataclass
class CacheRig:
    writer: IndexStore
    counting: CountingBlob
    cache: IndexCache
    clock: FakeClock = field(default_factory=FakeClock)


def make_rig(
    background: bool, refresh_wait_seconds: float = 30.0, search_params: SearchParams | None = None
) -> CacheRig:
    """A writer and a cache over one in-memory bucket; the cache's reads are counted (and can be blocked)."""
    inner = MemoryBlobStore()
    counting = CountingBlob(inner)
    clock = FakeClock()
    writer = IndexStore(inner, "ix")
    cache = IndexCache(
        IndexStore(counting, "ix", search_params=search_params),
        ttl_seconds=2,
        clock=clock,
        background=background,
        refresh_wait_seconds=refresh_wait_seconds,
    )
    return CacheRig(writer, counting, cache, clock)


def test_cache_revalidates_at_most_every_ttl_and_uses_the_cheap_path() -> None:
    rig = make_rig(background=False)
    rig.writer.write_item(put_event("a", "1", "e"))
    compact(rig.writer)
    assert set(view_state(rig.cache.view())) == {"a"}
    gets_after_load = len(rig.counting.gets)
    for _ in range(50):
        rig.cache.view()
    rig.clock.now += 1.9
    rig.cache.view()
    assert len(rig.counting.gets) == gets_after_load, "no I/O inside the TTL"
    assert rig.counting.lists == 1

    rig.clock.now += 0.2
    rig.cache.view()
    assert rig.counting.gets[gets_after_load:] == ["ix/manifest.json"], "one conditional GET, answered 304"
    assert rig.cache.stats.not_modified == 1
    assert rig.counting.lists == 2


def test_cache_picks_up_a_new_photo_and_a_delete_within_one_ttl() -> None:
    rig = make_rig(background=False)
    rig.writer.write_item(put_event("a", "1", "e"))
    rig.writer.write_item(put_event("b", "1", "e"))
    compact(rig.writer)
    assert set(view_state(rig.cache.view())) == {"a", "b"}
    rig.writer.write_item(put_event("c", "2", "e"))
    rig.writer.delete_item("a", sequencer="2")
    assert set(view_state(rig.cache.view())) == {"a", "b"}, "inside the TTL the cached view answers"
    rig.clock.now += 2
    assert set(view_state(rig.cache.view())) == {"b", "c"}
    fetched = [k for k in rig.counting.gets if "/deltas/" in k]
    assert len(fetched) == 2, "only the two new deltas were fetched; compacted ones are skipped by their key"
    rig.clock.now += 2
    rig.cache.view()
    assert len([k for k in rig.counting.gets if "/deltas/" in k]) == 2, "known deltas are never fetched again"


def test_cache_loads_a_new_version_in_the_background_without_blocking_answers() -> None:
    rig = make_rig(background=True)
    rig.writer.write_item(put_event("a", "1", "e"))
    v1 = compact(rig.writer).version
    assert set(view_state(rig.cache.view())) == {"a"}
    rig.writer.write_item(put_event("b", "2", "e"))
    v2 = compact(rig.writer).version

    rig.counting.block_prefix = f"ix/versions/{v2}/"
    rig.clock.now += 2
    view = rig.cache.view()  # starts the load of v2, which blocks in the background
    assert rig.counting.blocked.wait(10)
    assert rig.cache.version == v1
    assert set(view_state(view)) == {"a", "b"}, "old version + live deltas already answer with the new photo"
    rig.clock.now += 2
    assert set(view_state(rig.cache.view())) == {"a", "b"}, "answers keep coming while the load is blocked"
    rig.counting.release.set()
    assert rig.cache.wait_idle(10)
    assert rig.cache.version == v2
    assert rig.cache.view().snapshot.version == v2
    assert set(view_state(rig.cache.view())) == {"a", "b"}


def test_background_cache_answers_fresh_when_the_refresh_is_quick() -> None:
    rig = make_rig(background=True)  # waits up to 30 s for the refresh: it takes microseconds here
    rig.writer.write_item(put_event("a", "1", "e"))
    assert set(view_state(rig.cache.view())) == {"a"}
    rig.writer.write_item(put_event("b", "2", "e"))
    rig.clock.now += 2
    assert set(view_state(rig.cache.view())) == {"a", "b"}, "the caller that triggered the refresh sees it"


def test_background_cache_does_not_hold_answers_for_a_slow_refresh() -> None:
    rig = make_rig(background=True, refresh_wait_seconds=0.01)
    rig.writer.write_item(put_event("a", "1", "e"))
    assert set(view_state(rig.cache.view())) == {"a"}
    rig.writer.write_item(put_event("b", "2", "e"))
    rig.counting.block_lists = True
    rig.clock.now += 2
    assert set(view_state(rig.cache.view())) == {"a"}, "answered from memory while the LIST hangs"
    assert rig.counting.blocked.is_set()
    rig.clock.now += 2
    assert set(view_state(rig.cache.view())) == {"a"}, "no second refresh piles up behind the first"
    assert rig.counting.lists == 2, "the initial load's LIST and the one blocked refresh"
    rig.counting.release.set()
    assert rig.cache.wait_idle(10)
    assert set(view_state(rig.cache.view())) == {"a", "b"}


def test_a_version_load_does_not_drop_a_delta_found_while_it_ran() -> None:
    """The loader LISTs the deltas, then (slowly) fetches one; a revalidation meanwhile finds a newer delta.
    Swapping in the new version must keep that delta, or the photo would vanish for a TTL."""
    params = SearchParams(ef=777)
    rig = make_rig(background=True, search_params=params)
    rig.writer.write_item(put_event("a", "1", "e"))
    compact(rig.writer)
    assert set(view_state(rig.cache.view())) == {"a"}
    rig.writer.write_item(put_event("b", "2", "e"))
    v2 = compact(rig.writer).version
    rig.counting.block_prefix = f"ix/versions/{v2}/"
    rig.clock.now += 2
    assert set(view_state(rig.cache.view())) == {"a", "b"}, "v1 + b while v2 loads"
    assert rig.counting.blocked.wait(10)

    slow = put_event("w", "3", "e")
    rig.writer.write_item(slow)  # unseen by any refresh yet: the loader will fetch it after its LIST
    rig.counting.block_once = f"ix/{delta_key(slow)}"
    rig.counting.block_prefix = None
    rig.counting.release.set()
    assert rig.counting.once_blocked.wait(10), "the loader listed and now hangs fetching w"
    rig.writer.write_item(put_event("x", "4", "e"))  # after the loader's LIST
    rig.clock.now += 2
    assert set(view_state(rig.cache.view())) == {"a", "b", "w", "x"}, "the revalidation found w and x"
    assert rig.cache.version != v2

    rig.counting.once_release.set()
    assert rig.cache.wait_idle(10)
    assert rig.cache.version == v2
    assert set(view_state(rig.cache.view())) == {"a", "b", "w", "x"}, "x survives the swap to v2"
    assert rig.cache.view().params is params, "and the view that carries it searches as configured"


def test_every_view_a_store_hands_out_searches_with_its_params() -> None:
    """A deployment's candidate pool (SEARCH_CANDIDATES) holds for the uncached view and for every view the cache
    builds: deltas only, a first version (loaded in two stages), new deltas on the cheap path, the next version."""
    inner = MemoryBlobStore()
    writer = IndexStore(inner, "ix")
    params = SearchParams(ef=777)
    reader = IndexStore(inner, "ix", search_params=params)
    clock = FakeClock()
    cache = IndexCache(reader, ttl_seconds=2, clock=clock, background=False, stage_above_bytes=0)
    writer.write_item(put_event("a", "1", "e"))
    seen = [cache.view(), reader.load_view()]
    compact(writer)
    clock.now += 2
    seen.append(cache.view())
    writer.write_item(put_event("b", "2", "e"))
    clock.now += 2
    seen.append(cache.view())
    compact(writer)
    clock.now += 2
    seen += [cache.view(), reader.load_view()]
    assert [set(view_state(view)) for view in seen] == [{"a"}] * 3 + [{"a", "b"}] * 3
    assert cache.stats.full_vectors_loaded == 2, "each version's second stage built its own view"
    assert all(view.params is params for view in seen)
    assert writer.load_view().params == SearchParams(), "a store without params keeps the defaults"


def test_cache_keeps_answering_when_storage_fails() -> None:
    rig = make_rig(background=False)
    rig.writer.write_item(put_event("a", "1", "e"))
    compact(rig.writer)
    before = view_state(rig.cache.view())
    rig.counting.fail = True
    rig.clock.now += 5
    assert view_state(rig.cache.view()) == before
    assert rig.cache.stats.refresh_errors == 1
    rig.counting.fail = False
    rig.writer.write_item(put_event("b", "2", "e"))
    rig.clock.now += 5
    assert set(view_state(rig.cache.view())) == {"a", "b"}


def test_cache_before_the_first_compaction_serves_deltas_and_follows_the_first_version() -> None:
    rig = make_rig(background=False)
    assert len(rig.cache.view()) == 0
    rig.writer.write_item(put_event("a", "1", "e"))
    rig.clock.now += 2
    assert set(view_state(rig.cache.view())) == {"a"}
    version = compact(rig.writer).version
    rig.clock.now += 2
    assert set(view_state(rig.cache.view())) == {"a"}
    assert rig.cache.version == version


def test_cache_follows_a_rollback() -> None:
    rig = make_rig(background=False)
    rig.writer.write_item(put_event("a", "1", "e1"))
    v1 = compact(rig.writer).version
    rig.writer.write_item(put_event("a", "2", "e2"))
    compact(rig.writer)
    assert view_state(rig.cache.view()) == {"a": "e2"}
    rig.writer.rollback(v1)
    rig.clock.now += 2
    assert view_state(rig.cache.view()) == {"a": "e2"}, "the newer photo's delta is still live on top of v1"
    assert rig.cache.version == v1


# ----------------------------------------------------------------------------------------------- crash matrix


class SimulatedCrashError(Exception):
    """The writer process died here."""


class CrashingBlob:
    """Lets ``allowed`` mutations (put/delete) through, then crashes: before the next one lands, or just after."""

    def __init__(self, inner: BlobStore, allowed: int, *, after: bool) -> None:
        self.inner = inner
        self.allowed = allowed
        self.after = after
        self.mutations = 0

    def _mutate(self, action: Callable[[], object]) -> object:
        if self.mutations >= self.allowed:
            if self.after:
                action()  # the write landed, the writer died before it saw the answer
            raise SimulatedCrashError(f"killed at write {self.mutations + 1}")
        self.mutations += 1
        return action()

    def get(self, key: str, if_none_match_etag: str | None = None) -> Blob:
        return self.inner.get(key, if_none_match_etag)

    def get_into(self, key: str, out: memoryview) -> int:
        return self.inner.get_into(key, out)

    def put(
        self, key: str, data: bytes | memoryview, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        return self._mutate(lambda: self.inner.put(key, data, if_match=if_match, if_none_match=if_none_match))  # type: ignore[return-value]

    def copy(self, source_key: str, dest_key: str) -> str:
        return self._mutate(lambda: self.inner.copy(source_key, dest_key))  # type: ignore[return-value]

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._mutate(lambda: self.inner.delete(key))

    def head(self, key: str) -> BlobInfo:
        return self.inner.head(key)


BASE_EVENTS = [put_event(f"i{n}", f"{0x10 + n:x}", "e1") for n in range(6)]
LIVE_EVENTS = [put_event("i1", "40", "e2"), del_event("i2", "41")]
WRITER_EVENTS = [put_event("new", "50", "e1"), del_event("i3", "51")]


def run_writer(store: IndexStore, *, grace_seconds: float) -> None:
    """The writer under test: two ingests (one create, one delete), a compaction, and a GC."""
    for event in WRITER_EVENTS:
        store.write_item(event)
    compact(store)
    store.gc(grace_seconds=grace_seconds)


def run_crash_matrix(blob: BlobStore, *, grace_seconds: float = -1.0) -> int:
    """Kill the writer after every possible number of its writes (before and after the write lands).

    After each kill the index must load whole and answer exactly the events that landed; rerunning the
    writer must then complete it. Returns how many writes one full run makes.
    """
    full_state = expected_state(BASE_EVENTS + LIVE_EVENTS + WRITER_EVENTS)

    def fresh(prefix: str) -> IndexStore:
        store = IndexStore(blob, prefix, retry=RetryPolicy(base_delay=0.0))
        for event in BASE_EVENTS:
            store.write_item(event)
        compact(store)
        for event in LIVE_EVENTS:
            store.write_item(event)
        return store

    counter = CrashingBlob(blob, allowed=10**9, after=False)
    probe = fresh("probe/")
    run_writer(IndexStore(counter, probe.prefix), grace_seconds=grace_seconds)
    total = counter.mutations
    assert view_state(probe.load_view()) == full_state

    for after in (False, True):
        for allowed in range(total):
            prefix = f"crash-{int(after)}-{allowed}/"
            base = fresh(prefix)
            crashing = IndexStore(CrashingBlob(blob, allowed, after=after), prefix, retry=RetryPolicy(base_delay=0.0))
            with pytest.raises(SimulatedCrashError):
                run_writer(crashing, grace_seconds=grace_seconds)
            landed = [e for e in WRITER_EVENTS if _exists(blob, prefix, e)]
            expected = expected_state(BASE_EVENTS + LIVE_EVENTS + landed)
            assert view_state(base.load_view()) == expected, (after, allowed)
            manifest, _ = base.read_manifest()
            assert manifest.current is not None
            base.load_version(manifest.current)  # the current version is whole
            run_writer(base, grace_seconds=grace_seconds)  # the retry (SQS redelivers, the builder reruns)
            assert view_state(base.load_view()) == full_state, (after, allowed)
            manifest, _ = base.read_manifest()
            snapshot_ids = set(base.load_version(manifest.current).snapshot.item_ids.astype(str))
            assert snapshot_ids == set(full_state), (after, allowed)
            assert compact(base).noop, "the retry left nothing uncompacted"
    return total


def _exists(blob: BlobStore, prefix: str, event: ItemRecord) -> bool:
    key = prefix + delta_key(event)
    return any(info.key == key for info in blob.list(key))


def test_a_writer_killed_between_any_two_writes_leaves_a_correct_index() -> None:
    total = run_crash_matrix(MemoryBlobStore())
    assert total >= 2 + 11 + 1, "two deltas, the version files and ledger, the manifest, and GC deletes"
