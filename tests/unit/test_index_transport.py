"""How a version's files travel: parts above the part size, copies of unchanged objects, parallel verified loads."""

from __future__ import annotations

import gc
import hashlib
import threading
import weakref
from collections.abc import Iterator, Mapping

import numpy as np
import pytest

from catalens.index.build import build_snapshot
from catalens.index.errors import CorruptIndexError
from catalens.index.records import ItemRecord
from catalens.index.store import IndexStore
from catalens.index.transport import (
    Part,
    fetch_files,
    objects_by_sha256,
    parts_of,
    split,
    write_files,
)
from catalens.ports import Blob, BlobInfo
from catalens_tools.in_memory.blobs import MemoryBlobStore

MB = 2**20


class RecordingBlob(MemoryBlobStore):
    """A memory store that remembers every read, upload and copy (and what an upload was handed)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.uploads: dict[str, object] = {}
        self.copies: list[tuple[str, str]] = []
        self.threads: set[str] = set()
        self._record = threading.Lock()

    def get(self, key: str, if_none_match_etag: str | None = None) -> Blob:
        self.reads.append(key)
        return super().get(key, if_none_match_etag)

    def get_into(self, key: str, out: memoryview) -> int:
        with self._record:
            self.reads.append(key)
            self.threads.add(threading.current_thread().name)
        return super().get_into(key, out)

    def put(
        self, key: str, data: bytes | memoryview, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        with self._record:
            self.uploads[key] = data
        return super().put(key, data, if_match=if_match, if_none_match=if_none_match)

    def copy(self, source_key: str, dest_key: str) -> str:
        with self._record:
            self.copies.append((source_key, dest_key))
        return super().copy(source_key, dest_key)

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        return super().list(prefix)


def payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def key_of(name: str) -> str:
    return f"v1/{name}"


def test_split_cuts_only_files_above_the_part_size() -> None:
    assert split(0, 4) == [(0, 0)]
    assert split(4, 4) == [(0, 4)]
    assert split(9, 4) == [(0, 4), (4, 4), (8, 1)]
    with pytest.raises(ValueError, match="part_size"):
        split(9, 0)


def test_a_large_file_is_written_in_parts_from_slices_of_it_and_read_back_whole() -> None:
    blob = RecordingBlob()
    big, small = payload(10 * 1024, 1), payload(100, 2)
    metas, stats = write_files(blob, {"big.npy": big, "small.json": small}, key_of, part_size=4096, workers=4)

    assert metas["big.npy"] == {
        "sha256": hashlib.sha256(big).hexdigest(),
        "size": 10 * 1024,
        "parts": [{"sha256": hashlib.sha256(big[o : o + s]).hexdigest(), "size": s} for o, s in split(10 * 1024, 4096)],
    }
    assert metas["small.json"] == {"sha256": hashlib.sha256(small).hexdigest(), "size": 100}  # the old shape
    assert sorted(blob.uploads) == [
        "v1/big.npy.part-00000",
        "v1/big.npy.part-00001",
        "v1/big.npy.part-00002",
        "v1/small.json",
    ]
    part = blob.uploads["v1/big.npy.part-00001"]
    assert isinstance(part, memoryview)
    assert part.obj is big
    assert (stats.bytes_uploaded, stats.objects_uploaded, stats.bytes_copied) == (10 * 1024 + 100, 4, 0)

    files = fetch_files(blob, metas, key_of, workers=4)
    assert bytes(files["big.npy"]) == big
    assert bytes(files["small.json"]) == small
    assert files["big.npy"].readonly


def test_unchanged_objects_are_copied_from_the_previous_version_instead_of_uploaded() -> None:
    blob = RecordingBlob()
    first = payload(3 * 4096, 3)
    metas, _ = write_files(blob, {"a.npy": first, "same.npy": b"same"}, key_of, part_size=4096)
    changed = first[:4096] + payload(4096, 4) + first[8192:]  # the middle part changed

    def v2(name: str) -> str:
        return f"v2/{name}"

    sources = objects_by_sha256(metas, key_of)
    metas2, stats = write_files(blob, {"a.npy": changed, "same.npy": b"same"}, v2, part_size=4096, previous=sources)

    assert sorted(blob.copies) == [
        ("v1/a.npy.part-00000", "v2/a.npy.part-00000"),
        ("v1/a.npy.part-00002", "v2/a.npy.part-00002"),
        ("v1/same.npy", "v2/same.npy"),
    ]
    assert "v2/a.npy.part-00001" in blob.uploads
    assert (stats.bytes_copied, stats.objects_copied, stats.bytes_uploaded, stats.objects_uploaded) == (
        2 * 4096 + 4,
        3,
        4096,
        1,
    )
    assert bytes(fetch_files(blob, metas2, v2)["a.npy"]) == changed


def test_a_copy_whose_source_was_collected_is_uploaded_instead() -> None:
    blob = RecordingBlob()
    metas, _ = write_files(blob, {"a.npy": b"abc"}, key_of)
    sources = objects_by_sha256(metas, key_of)
    blob.delete("v1/a.npy")
    _, stats = write_files(blob, {"a.npy": b"abc"}, lambda n: f"v2/{n}", previous=sources)
    assert (stats.objects_copied, stats.objects_uploaded) == (0, 1)
    assert blob.get("v2/a.npy").data == b"abc"


def test_parts_are_fetched_on_many_threads_and_each_is_verified() -> None:
    blob = RecordingBlob()
    data = payload(64 * 1024, 5)
    metas, _ = write_files(blob, {"f": data}, key_of, part_size=1024)
    assert bytes(fetch_files(blob, metas, key_of, workers=8)["f"]) == data
    assert len(blob.threads) > 1

    blob.put("v1/f.part-00007", b"x" * 1024)  # same size, other bytes
    with pytest.raises(CorruptIndexError, match="part 7 of file 'f'"):
        fetch_files(blob, metas, key_of, workers=8)
    with pytest.raises(CorruptIndexError, match="part 7 of file 'f'"):
        fetch_files(blob, metas, key_of, workers=1, hash_in_fetch_threads=False)

    blob.put("v1/f.part-00007", b"x" * 10)
    with pytest.raises(CorruptIndexError, match="another size"):
        fetch_files(blob, metas, key_of, workers=8)

    blob.delete("v1/f.part-00007")
    with pytest.raises(CorruptIndexError, match="missing"):
        fetch_files(blob, metas, key_of, workers=8)


@pytest.mark.parametrize(
    "meta",
    [
        {"sha256": "0" * 64, "size": 10, "parts": [{"sha256": "0" * 64, "size": 4}]},  # parts do not add up
        {"sha256": "0" * 64, "size": 0, "parts": []},
        {"sha256": "0" * 64, "size": 4, "parts": [{"sha256": "0" * 64, "size": 0}, {"sha256": "0", "size": 4}]},
        {"sha256": "0" * 64, "size": 4, "parts": [{"size": 4}]},
        {"sha256": "0" * 64, "size": "many"},
        {"size": 3},
    ],
)
def test_a_malformed_file_entry_is_a_corrupt_index(meta: dict) -> None:
    with pytest.raises(CorruptIndexError, match="file 'f'"):
        parts_of("f", meta)


def test_an_entry_without_parts_is_one_object_at_the_file_key() -> None:
    assert parts_of("f", {"sha256": "ab", "size": 3}) == [Part(None, 0, 3, "ab")]
    assert Part(None, 0, 3, "ab").key("k") == "k"
    assert Part(12, 0, 3, "ab").key("k") == "k.part-00012"


def test_a_file_held_in_memory_is_shared_not_fetched() -> None:
    blob = RecordingBlob()
    held, fresh = payload(5000, 6), payload(5000, 7)
    metas, _ = write_files(blob, {"held": held, "fresh": fresh}, key_of, part_size=1024)
    blob.reads.clear()
    already = np.frombuffer(held, dtype=np.uint8)
    files = fetch_files(blob, metas, key_of, reuse={hashlib.sha256(held).hexdigest(): memoryview(already)})
    assert not any(key.startswith("v1/held") for key in blob.reads)
    assert np.shares_memory(np.frombuffer(files["held"], np.uint8), already)
    assert bytes(files["fresh"]) == fresh


# ------------------------------------------------------------------------------------------------ through the store


def record(i: int, dim: int = 64) -> ItemRecord:
    vector = np.random.default_rng(i).standard_normal(dim).astype(np.float32)
    return ItemRecord(f"item-{i:04d}", vector, {"title": f"t{i}"}, f"p/{i}.jpg", f"e{i}", f"{i + 1:08X}")


def build(records: Iterator[ItemRecord], **kwargs: object):
    return build_snapshot(records, **kwargs)


@pytest.fixture
def parted_store() -> IndexStore:
    return IndexStore(RecordingBlob(), "index/", part_size=4096, fetch_workers=4)


def test_a_compaction_writes_parts_copies_what_did_not_change_and_loads_whole(parted_store: IndexStore) -> None:
    store = parted_store
    blob = store.blob
    assert isinstance(blob, RecordingBlob)
    for i in range(200):
        store.write_item(record(i), model_fingerprint="m")
    first = store.compact(build, model_fingerprint="m")
    manifest, _ = store.read_manifest()
    entry = manifest.current
    assert entry is not None
    vectors = entry.files["snapshot/full-chunk.00000.npy"]  # the int8 full vectors: the largest file
    assert len(vectors["parts"]) == -(-vectors["size"] // 4096)
    assert (first.bytes_uploaded, first.bytes_copied) == (sum(m["size"] for m in entry.files.values()), 0)

    forced = store.compact(build, force=True)  # the same items again: every file but the version-stamped ones
    assert forced.bytes_copied > 0.9 * (forced.bytes_copied + forced.bytes_uploaded)

    loaded = store.load_version(store.read_manifest()[0].current)
    assert sorted(loaded.snapshot.item_ids.astype(str)) == [f"item-{i:04d}" for i in range(200)]
    assert set(loaded.files) == {name.removeprefix("snapshot/") for name in entry.files if name != "ledger.json"}


def test_staged_loading_fetches_the_selected_files_and_reuses_held_ones(parted_store: IndexStore) -> None:
    store = parted_store
    blob = store.blob
    assert isinstance(blob, RecordingBlob)
    for i in range(100):
        store.write_item(record(i), model_fingerprint="m")
    store.compact(build, model_fingerprint="m")
    entry = store.read_manifest()[0].current
    assert entry is not None

    first = store.fetch_version_files(entry, ["snapshot.json", "item_ids.npy"])
    assert set(first) == {"snapshot.json", "item_ids.npy"}
    rest = store.fetch_version_files(entry, lambda name: name not in first)
    assert set(first) | set(rest) == {n.removeprefix("snapshot/") for n in entry.files if n.startswith("snapshot/")}
    with pytest.raises(CorruptIndexError, match="no file"):
        store.fetch_version_files(entry, ["nonesuch.npy"])

    current = store.load_version(entry)
    store.write_item(record(500), model_fingerprint="m")
    store.compact(build)
    newer = store.read_manifest()[0].current
    assert newer is not None
    blob.reads.clear()
    swapped = store.load_version(newer, reuse=current.reusable)
    unchanged = [n for n in newer.files if n in entry.files and newer.files[n]["sha256"] == entry.files[n]["sha256"]]
    assert unchanged  # e.g. the projection, when there is one; the tombstones otherwise
    for name in unchanged:
        short = name.removeprefix("snapshot/")
        if short in current.files:
            assert not any(key.startswith(store.version_key(newer.version, name)) for key in blob.reads)
            assert swapped.files[short].obj is current.files[short].obj  # one buffer for both versions
    assert len(swapped.snapshot) == 101


def test_a_corrupt_or_missing_part_refuses_the_version(parted_store: IndexStore) -> None:
    store = parted_store
    for i in range(100):
        store.write_item(record(i), model_fingerprint="m")
    store.compact(build, model_fingerprint="m")
    entry = store.read_manifest()[0].current
    assert entry is not None
    key = store.version_key(entry.version, "snapshot/full-chunk.00000.npy.part-00001")
    good = store.blob.get(key).data
    store.blob.put(key, bytes(reversed(good)))
    with pytest.raises(CorruptIndexError, match=r"part 1 of file 'full-chunk\.00000\.npy'"):
        store.load_version(entry)
    store.blob.delete(key)
    with pytest.raises(CorruptIndexError, match="missing"):
        store.load_version(entry)


def test_a_large_ledger_is_written_and_read_in_parts(parted_store: IndexStore) -> None:
    store = parted_store
    for i in range(300):
        store.write_item(record(i), model_fingerprint="m")
    store.compact(build, model_fingerprint="m")
    entry = store.read_manifest()[0].current
    assert entry is not None
    assert "parts" in entry.files["ledger.json"]
    assert len(store.load_ledger(entry).to_bytes()) == entry.files["ledger.json"]["size"]


def test_the_part_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="part_size"):
        IndexStore(MemoryBlobStore(), part_size=0)


class _Tracked(bytearray):
    """File bytes whose lifetime a test can watch (a weak reference per file read)."""


class _LazyFiles(Mapping[str, bytearray]):
    """Files made when read, as Snapshot.to_files makes them; records how many were alive at each read."""

    def __init__(self, count: int, size: int) -> None:
        self._names = [f"file-{i:03d}" for i in range(count)]
        self._size = size
        self._made: list[weakref.ref] = []
        self.most_alive = 0

    def __getitem__(self, name: str) -> bytearray:
        gc.collect()
        self.most_alive = max(self.most_alive, sum(ref() is not None for ref in self._made))
        data = _Tracked(hashlib.sha256(name.encode()).digest() * (self._size // 32))
        self._made.append(weakref.ref(data))
        return data

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def test_a_writer_holds_a_few_parts_worth_of_files_not_all_of_them() -> None:
    files = _LazyFiles(count=40, size=64 * 1024)
    metas, stats = write_files(MemoryBlobStore(), files, lambda name: f"v1/{name}", part_size=32 * 1024, workers=4)
    assert len(metas) == 40
    assert stats.objects_uploaded == 40 * 2
    # a batch is WRITE_BATCH_PARTS (4) parts: two of these files, and the one being read
    assert files.most_alive <= 3
