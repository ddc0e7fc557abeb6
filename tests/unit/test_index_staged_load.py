"""The search cache loads a compact version in two stages and never holds two versions' worth of vectors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from catalens.index import IndexView
from catalens.index.build import BuildParams
from catalens.index.cache import IndexCache
from catalens.index.records import ItemRecord
from catalens.index.store import IndexStore
from catalens.ports import Blob
from catalens_tools.in_memory.blobs import MemoryBlobStore

# Wide enough that the full vectors outweigh the first stage, as at the serving dimension (there ~4 KB to ~0.7 KB)
DIM = 2048
ITEMS = 600
PARAMS = BuildParams(chunk_rows=32)  # many chunks from a few hundred items


class WatchedBlob(MemoryBlobStore):
    """Records every read; reads of full-vector chunks can be held until ``release`` is set, and each chunk read
    can call ``on_chunk_read`` first (to look at the cache while a chunk is being fetched)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.release = threading.Event()
        self.release.set()
        self.on_chunk_read = None
        self._lock = threading.Lock()

    def _seen(self, key: str) -> None:
        with self._lock:
            self.reads.append(key)
        if "/full-chunk." in key or "/snapshot/text." in key:  # the second stage: chunks and the lexical index
            if self.on_chunk_read is not None and "/full-chunk." in key:
                self.on_chunk_read(key)
            assert self.release.wait(10), "a second-stage read was never released"

    def get(self, key: str, if_none_match_etag: str | None = None) -> Blob:
        self._seen(key)
        return super().get(key, if_none_match_etag)

    def get_into(self, key: str, out: memoryview) -> int:
        self._seen(key)
        return super().get_into(key, out)


def vector(i: int, generation: int = 0) -> np.ndarray:
    return np.random.default_rng(1000 * generation + i).standard_normal(DIM).astype(np.float32)


def put(store: IndexStore, i: int, sequencer: int, generation: int = 0) -> None:
    record = ItemRecord(
        f"item-{i:04d}", vector(i, generation), {"n": i}, f"p/{i}.jpg", f"e{generation}", f"{sequencer:08X}"
    )
    store.write_item(record, model_fingerprint="m")


@pytest.fixture
def store() -> IndexStore:
    store = IndexStore(WatchedBlob(), "index/", fetch_workers=4)
    for i in range(ITEMS):
        put(store, i, i + 1)
    store.compact(model_fingerprint="m", params=PARAMS)
    return store


def test_a_cold_start_answers_from_the_first_stage_then_from_the_full_vectors(store: IndexStore) -> None:
    blob = store.blob
    assert isinstance(blob, WatchedBlob)
    expected = store.load_view()
    assert expected.stage == "full"
    blob.release.clear()  # the chunks do not come until released
    cache = IndexCache(store, background=True, stage_above_bytes=0)
    view = cache.view()
    assert view.stage == "first"
    assert len(view) == ITEMS
    query = vector(7)
    first_hits = view.search(query, 5)
    assert len(first_hits) == 5
    assert first_hits[0].item_id == "item-0007"  # the first stage already finds an exact match
    blob.release.set()
    assert cache.wait_idle(10)
    full = cache.view()
    assert full.stage == "full"
    assert cache.stats.full_vectors_loaded == 1
    assert [(h.item_id, h.score) for h in full.search(query, 10)] == [
        (h.item_id, h.score) for h in expected.search(query, 10)
    ]


def test_a_small_change_swaps_in_whole_and_shares_every_unchanged_chunk(store: IndexStore) -> None:
    blob = store.blob
    assert isinstance(blob, WatchedBlob)
    cache = IndexCache(store, background=False, ttl_seconds=0, stage_above_bytes=0)
    old = cache.view()
    assert old.stage == "full"
    chunks = len(old.snapshot.chunk_files())
    assert chunks >= 4
    put(store, 3, 1_000, generation=1)  # one item changes: one chunk
    new_version = store.compact(params=PARAMS).version
    blob.reads.clear()
    swapped = cache.view()
    assert swapped.version.startswith(new_version)
    assert swapped.stage == "full"
    assert cache.stats.swaps_through_first_stage == 0
    fetched = [key for key in blob.reads if "/full-chunk." in key]
    assert len(fetched) == 1  # the changed chunk; the others are the old version's buffers
    shared = sum(
        np.shares_memory(a, b) for a, b in zip(old.snapshot.table.chunks, swapped.snapshot.table.chunks, strict=True)
    )
    assert shared == chunks - 1
    np.testing.assert_allclose(swapped.vector_of("item-0003"), vector(3, 1) / np.linalg.norm(vector(3, 1)), atol=0.02)


def test_a_swap_that_would_hold_two_versions_lets_the_old_one_go_first(store: IndexStore) -> None:
    blob = store.blob
    assert isinstance(blob, WatchedBlob)
    cache = IndexCache(store, background=False, ttl_seconds=0, stage_above_bytes=0)
    old_version = cache.view().version
    for i in range(ITEMS):  # every item changes: every chunk would be new
        put(store, i, 1_000 + i, generation=2)
    new_version = store.compact(params=PARAMS).version
    seen_while_fetching: list[tuple[str, str]] = []

    def look(key: str) -> None:
        if new_version in key:
            state = cache._state
            seen_while_fetching.append((state.view.version, state.view.stage))

    blob.on_chunk_read = look
    swapped = cache.view()
    assert cache.stats.swaps_through_first_stage == 1
    assert seen_while_fetching  # the new chunks were fetched ...
    # ... while the cache already answered from the new version's first stage, the old version released
    assert {stage for _, stage in seen_while_fetching} == {"first"}
    assert all(version.startswith(new_version) for version, _ in seen_while_fetching)
    assert not any(version.startswith(old_version) for version, _ in seen_while_fetching)
    assert swapped.stage == "full"
    assert swapped.search(vector(5, 2), 1)[0].item_id == "item-0005"


def test_a_reader_that_stores_vectors_never_sees_the_first_stage(store: IndexStore) -> None:
    cache = IndexCache(store, background=True, staged=False)
    view = cache.view()
    assert view.stage == "full"
    assert isinstance(view, IndexView)
    np.testing.assert_allclose(view.vector_of("item-0009"), vector(9) / np.linalg.norm(vector(9)), atol=0.02)


def test_a_small_index_loads_whole_before_it_answers(store: IndexStore) -> None:
    blob = store.blob
    assert isinstance(blob, WatchedBlob)
    chunk_bytes = sum(
        meta["size"] for name, meta in store.read_manifest()[0].current.files.items() if "full-chunk" in name
    )
    cache = IndexCache(store, background=True, stage_above_bytes=chunk_bytes)
    assert cache.view().stage == "full"
    assert cache.stats.full_vectors_loaded == 1


class SlowListBlob(WatchedBlob):
    """A WatchedBlob whose LISTs from the revalidation thread wait for ``list_release`` (a slow store)."""

    def __init__(self) -> None:
        super().__init__()
        self.list_release = threading.Event()
        self.list_release.set()
        self.list_waiting = threading.Event()

    def list(self, prefix: str):
        if threading.current_thread().name == "index-refresh" and not self.list_release.is_set():
            self.list_waiting.set()
            assert self.list_release.wait(10), "a LIST was never released"
        return super().list(prefix)


def test_a_slow_revalidation_does_not_keep_the_old_version_alive_while_the_new_chunks_load() -> None:
    # The revalidation that starts a load goes on to LIST the deltas; it held the whole old state meanwhile, so with a
    # slow LIST (or a store busy with the new chunks) the old version's vectors stayed beside the new ones. The
    # installing thread too held it while the second stage started.
    import weakref

    blob = SlowListBlob()
    store = IndexStore(blob, "index/", fetch_workers=4)
    for i in range(ITEMS):
        put(store, i, i + 1)
    store.compact(model_fingerprint="m", params=PARAMS)
    cache = IndexCache(store, background=True, ttl_seconds=0, refresh_wait_seconds=0, stage_above_bytes=0)
    cache.view()
    assert cache.wait_idle(10)
    assert cache.view().stage == "full"
    assert cache.wait_idle(10)
    old_snapshot = weakref.ref(cache._state.loaded.snapshot)
    for i in range(ITEMS):  # every chunk changes: the swap goes through the first stage
        put(store, i, 1_000 + i, generation=2)
    new_version = store.compact(params=PARAMS).version
    old_alive_while_fetching: list[bool] = []

    def look(key: str) -> None:
        if new_version in key:
            old_alive_while_fetching.append(old_snapshot() is not None)

    blob.on_chunk_read = look
    blob.list_release.clear()
    cache.view()  # starts a revalidation, which starts the load and then waits in its LIST
    assert blob.list_waiting.wait(10)
    deadline = time.monotonic() + 30
    while cache.stats.full_vectors_loaded < 2:  # no view held here: only the cache may keep the old version
        assert time.monotonic() < deadline, "the new version's chunks never loaded"
        time.sleep(0.01)
    blob.list_release.set()
    assert cache.wait_idle(10)
    assert cache.stats.swaps_through_first_stage == 1
    assert old_alive_while_fetching
    assert not any(old_alive_while_fetching)
    assert cache.view().version.startswith(new_version)


WORDS = ("oat milk", "whole milk", "oat drink barista", "creme fraiche", "lactose free milk", "rye bread")


def put_titled(store: IndexStore, i: int, sequencer: int) -> None:
    record = ItemRecord(
        f"item-{i:04d}",
        vector(i),
        {"n": i, "title": f"{WORDS[i % len(WORDS)]} {i}"},
        f"p/{i}.jpg",
        "e",
        f"{sequencer:08X}",
    )
    store.write_item(record, model_fingerprint="m")


def test_a_cold_start_loads_the_word_index_in_the_second_stage_and_503s_text_until_then() -> None:
    from catalens.service.errors import http_status_for
    from catalens.text.catalog import TextIndexLoadingError
    from catalens.text.lexical import LexicalIndex

    blob = WatchedBlob()
    store = IndexStore(blob, "index/", fetch_workers=4)
    for i in range(ITEMS):
        put_titled(store, i, i + 1)
    store.compact(model_fingerprint="m", params=PARAMS)
    blob.release.clear()
    blob.reads.clear()
    cache = IndexCache(store, background=True, stage_above_bytes=0)
    view = cache.view()
    assert view.stage == "first"
    assert view.search(vector(7), 1)[0].item_id == "item-0007"  # the first (photo) answer ...
    assert not [key for key in blob.reads if "/snapshot/text." in key]  # ... read no word-index file
    assert view.words == "loading"
    with pytest.raises(TextIndexLoadingError) as caught:
        view.search_text("oat milk", 5)
    assert caught.value.code == "index_unavailable"
    assert http_status_for(caught.value) == 503
    with pytest.raises(TextIndexLoadingError):
        view.text_scores("oat", ["item-0001"])  # photo + words waits for it too
    blob.release.set()
    assert cache.wait_idle(10)
    full = cache.view()
    assert full.stage == "full"
    assert full.snapshot.complete
    assert full.words == "ready"
    assert any("/snapshot/text." in key for key in blob.reads)
    records = full.snapshot.records
    lazy = LexicalIndex.build(records.document(row)["fields"] for row in range(len(records)))
    for query in ("oat milk", "milk", "barista 13", "rye", "nothing here"):
        expected = [(full.snapshot.item_id(int(r)), s) for r, s in zip(*lazy.search(query, 20), strict=True)]
        got = [(h.item_id, h.score) for h in full.search_text(query, 20)]
        assert got == expected


def test_a_swap_shares_unchanged_word_index_files_by_sha256() -> None:
    blob = WatchedBlob()
    store = IndexStore(blob, "index/", fetch_workers=4)
    for i in range(ITEMS):
        put_titled(store, i, i + 1)
    store.compact(model_fingerprint="m", params=PARAMS)
    cache = IndexCache(store, background=False, ttl_seconds=0, stage_above_bytes=0)
    old = cache.view()
    assert old.snapshot.text is not None
    before = store.read_manifest()[0].current.files
    record = ItemRecord("item-0003", vector(3, 1), {"n": 3, "title": "rye bread 3"}, "p/3.jpg", "e1", "000F0000")
    store.write_item(record, model_fingerprint="m")
    store.compact(params=PARAMS)
    after = store.read_manifest()[0].current.files
    blob.reads.clear()
    swapped = cache.view()
    assert swapped.snapshot.complete
    assert swapped.search_text("rye bread 3", 1)[0].item_id == "item-0003"
    fetched = {key.rsplit("/", 1)[-1] for key in blob.reads if "/snapshot/text." in key}
    text_files = {name.rsplit("/", 1)[-1]: meta["sha256"] for name, meta in after.items() if "/text." in name}
    old_hashes = {meta["sha256"] for meta in before.values()}
    assert fetched == {name for name, sha in text_files.items() if sha not in old_hashes}
    assert fetched != set(text_files)  # a title change moves some arrays (impacts, lengths), not all of them
