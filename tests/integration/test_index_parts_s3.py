"""Version files in parts through moto's S3: written in parts, unchanged parts copied, every part verified on load,
and a rollback to a version written before parts existed still loads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from catalens.adapters.s3 import S3BlobStore
from catalens.index.build import BuildParams, build_snapshot
from catalens.index.errors import CorruptIndexError
from catalens.index.manifest import RetryPolicy
from catalens.index.records import ItemRecord
from catalens.index.store import IndexStore

MiB = 2**20
DIM = 1024  # 400 items: vectors.npy is 1.6 MB, two parts of 1 MiB


def record(i: int, etag: str = "e") -> ItemRecord:
    vector = np.random.default_rng(i).standard_normal(DIM).astype(np.float32)
    return ItemRecord(f"item-{i:04d}", vector, {"title": f"t{i}"}, f"p/{i}.jpg", f"{etag}{i}", f"{i + 1:08X}")


def build(records: Iterator[ItemRecord], **kwargs: object):
    # float32 vectors: one file large enough for parts (the compact layout's chunks of 400 rows are 0.4 MB)
    return build_snapshot(records, **{**kwargs, "params": BuildParams(layout="float32")})


def stores(client: Any, bucket: str) -> tuple[IndexStore, IndexStore]:
    """(a store as a release before parts wrote, one that writes parts of 1 MiB) over the same bucket."""
    blob = S3BlobStore(client, bucket)
    retry = RetryPolicy(base_delay=0.0)
    return (
        IndexStore(blob, "index/", retry=retry, part_size=2**40),
        IndexStore(blob, "index/", retry=retry, part_size=MiB, fetch_workers=8),
    )


def test_parts_copies_corruption_and_a_rollback_to_a_version_before_parts(s3_client: Any, s3_bucket: str) -> None:
    before_parts, store = stores(s3_client, s3_bucket)
    for i in range(400):
        before_parts.write_item(record(i), model_fingerprint="m")
    old = before_parts.compact(build, model_fingerprint="m")
    old_entry = before_parts.read_manifest()[0].current
    assert old_entry is not None
    assert not any("parts" in meta for meta in old_entry.files.values())

    store.write_item(record(400), model_fingerprint="m")
    store.compact(build)
    entry = store.read_manifest()[0].current
    assert entry is not None
    vectors = entry.files["snapshot/vectors.npy"]
    assert [part["size"] for part in vectors["parts"]] == [MiB, vectors["size"] - MiB]
    keys = {info.key: info.size for info in store.blob.list(store.version_key(entry.version, ""))}
    assert keys[store.version_key(entry.version, "snapshot/vectors.npy.part-00000")] == MiB
    assert store.version_key(entry.version, "snapshot/vectors.npy") not in keys
    assert max(keys.values()) <= MiB

    forced = store.compact(build, force=True)  # the same items: unchanged parts are copied, not uploaded
    assert forced.objects_copied >= 2
    assert forced.bytes_copied >= vectors["size"]
    newest = store.read_manifest()[0].current
    assert newest is not None
    assert len(store.load_version(newest).snapshot) == 401

    key = store.version_key(newest.version, "snapshot/vectors.npy.part-00001")
    good = store.blob.get(key).data
    store.blob.put(key, good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(CorruptIndexError, match=r"part 1 of file 'vectors\.npy'"):
        store.load_version(newest)
    store.blob.delete(key)
    with pytest.raises(CorruptIndexError, match="missing"):
        store.load_version(newest)

    assert old.version is not None
    store.rollback(old.version)
    view = store.load_view()  # the pre-parts version, and the delta it does not cover
    assert len(view) == 401
    assert len(store.load_version(old_entry).snapshot) == 400
    assert store.load_ledger(old_entry).to_bytes()
