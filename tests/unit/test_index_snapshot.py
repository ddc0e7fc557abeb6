"""Snapshot serialisation: plain arrays + JSON, numpy-only loading, identical results after a round trip."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from catalens.index import BuildParams, Filter, IndexView, ItemRecord, Snapshot, SnapshotError, build_snapshot

DIM = 16


def _snapshot(n: int = 120, **settings) -> Snapshot:
    x = np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32)
    records = [
        ItemRecord(
            f"item-{i}",
            x[i],
            {"category": ["a", "b"][i % 2], "price": float(i), "title": f"Product «{i}»", "tags": ["x"]},
            f"photos/item-{i}.jpg",
            f"etag-{i}",
            f"{i + 1:x}",
        )
        for i in range(n)
    ]
    records.append(ItemRecord("gone", None, {}, "photos/gone.jpg", "etag-g", "ff", deleted=True))
    return build_snapshot(records, model_fingerprint="fp", params=BuildParams(**settings))


@pytest.mark.parametrize("reduce_dim", [None, 8])
def test_round_trip_gives_identical_search_results(reduce_dim):
    snapshot = _snapshot(reduce_dim=reduce_dim)
    loaded = Snapshot.from_files(snapshot.to_files())
    assert loaded.version == snapshot.version
    assert loaded.model_fingerprint == "fp"
    assert len(loaded) == len(snapshot) == 120
    assert [t.item_id for t in loaded.tombstones] == ["gone"]
    queries = np.random.default_rng(1).standard_normal((10, DIM)).astype(np.float32)
    flt = Filter.parse({"category": "b", "price": {"lte": 60}})
    for view_a, view_b in [(IndexView(snapshot), IndexView(loaded))]:
        for q in queries:
            for f in (None, flt):
                a = view_a.search(q, 7, filters=f)
                b = view_b.search(q, 7, filters=f)
                assert [(h.item_id, h.score, h.fields, h.image_key) for h in a] == [
                    (h.item_id, h.score, h.fields, h.image_key) for h in b
                ]
    assert loaded.to_files() == snapshot.to_files()


def test_every_array_loads_with_plain_numpy_and_no_pickle():
    files = _snapshot(reduce_dim=8).to_files()
    meta = json.loads(files["snapshot.json"])
    assert set(meta["files"]) | {"snapshot.json"} == set(files)
    for name, data in files.items():
        if name.endswith(".npy"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
            assert array.dtype != object
        else:
            json.loads(data)
    assert meta["projection"]["kind"] == "pca"
    assert meta["count"] == 120


def test_loaded_arrays_are_read_only():
    loaded = Snapshot.from_files(_snapshot().to_files())
    with pytest.raises(ValueError, match="read-only"):
        loaded.vectors[0, 0] = 1.0


def test_missing_truncated_or_altered_files_are_refused():
    files = _snapshot().to_files()
    missing = {k: v for k, v in files.items() if k != "vectors.npy"}
    with pytest.raises(SnapshotError, match=r"missing vectors\.npy"):
        Snapshot.from_files(missing)
    with pytest.raises(SnapshotError, match="bytes"):
        Snapshot.from_files({**files, "vectors.npy": files["vectors.npy"][:-4]})
    altered = bytearray(files["vectors.npy"])
    altered[-1] ^= 0xFF
    with pytest.raises(SnapshotError, match="sha256"):
        Snapshot.from_files({**files, "vectors.npy": bytes(altered)})
    with pytest.raises(SnapshotError, match=r"snapshot\.json"):
        Snapshot.from_files({k: v for k, v in files.items() if k != "snapshot.json"})


def test_object_arrays_are_never_unpickled():
    files = _snapshot().to_files()
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    meta = json.loads(files["snapshot.json"])
    meta["files"]["records.npy"] = {"bytes": len(buffer.getvalue()), "sha256": "x"}
    tampered = {**files, "records.npy": buffer.getvalue(), "snapshot.json": json.dumps(meta).encode()}
    with pytest.raises(SnapshotError, match="Python objects"):
        Snapshot.from_files(tampered, verify=False)


def test_unknown_format_is_refused():
    files = _snapshot().to_files()
    meta = json.loads(files["snapshot.json"])
    meta["format"] = "something-else/9"
    with pytest.raises(SnapshotError, match="unknown snapshot format"):
        Snapshot.from_files({**files, "snapshot.json": json.dumps(meta).encode()})
