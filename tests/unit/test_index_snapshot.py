"""Snapshot serialisation: plain arrays + JSON, numpy-only loading, identical results after a round trip."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest

from catalens.index import BuildParams, Filter, IndexView, ItemRecord, Snapshot, SnapshotError, build_snapshot
from catalens.index.graph import NeighbourGraph
from catalens.index.snapshot import PACKED_RECORDS_FILE

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


@pytest.mark.parametrize(
    "settings", [{"layout": "compact"}, {"layout": "float32"}, {"layout": "float32", "reduce_dim": 8}]
)
def test_round_trip_gives_identical_search_results(settings):
    snapshot = _snapshot(**settings)
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


def test_row_numbers_and_offsets_are_written_narrow_and_the_earlier_int64_widths_still_read():
    snapshot = _snapshot(n=300, graph_threshold=100)
    assert snapshot.graph is not None
    assert snapshot.id_order.dtype == np.int32
    assert snapshot.graph.indptr.dtype == np.int32
    assert snapshot.records.offsets.dtype == np.uint32
    # as releases before wrote them: every row number and offset int64
    wide_graph = NeighbourGraph(**{**snapshot.graph.arrays(), "indptr": snapshot.graph.indptr.astype(np.int64)})
    wide = replace(
        snapshot,
        id_order=snapshot.id_order.astype(np.int64),
        records=replace(snapshot.records, offsets=snapshot.records.offsets.astype(np.int64)),
        graph=wide_graph,
    )
    loaded = Snapshot.from_files(wide.to_files())
    assert loaded.id_order.dtype == loaded.graph.indptr.dtype == loaded.records.offsets.dtype == np.int64
    view_narrow, view_wide = IndexView(snapshot), IndexView(loaded)
    for q in np.random.default_rng(2).standard_normal((10, DIM)).astype(np.float32):
        a, b = view_narrow.search(q, 7, strategy="graph"), view_wide.search(q, 7, strategy="graph")
        assert [(h.item_id, h.score, h.fields) for h in a] == [(h.item_id, h.score, h.fields) for h in b]
    assert view_wide.get("item-17").fields == view_narrow.get("item-17").fields
    assert view_wide.get("item-17").fields["title"] == "Product «17»"


@pytest.mark.parametrize("settings", [{"layout": "compact"}, {"layout": "float32", "reduce_dim": 8}])
def test_every_array_loads_with_plain_numpy_and_no_pickle(settings):
    files = _snapshot(**settings).to_files()
    meta = json.loads(files["snapshot.json"])
    assert set(meta["files"]) | {"snapshot.json"} == set(files)
    for name, data in files.items():
        if name.endswith(".npy"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
            assert array.dtype != object
        else:
            json.loads(data)
    if settings["layout"] == "compact":
        assert meta["format"] == "catalens-index/2"
        assert meta["vectors"]["coarse"]["kind"] == "pca"
    else:
        assert meta["format"] == "catalens-index/1"
        assert meta["projection"]["kind"] == "pca"
    assert meta["count"] == 120


def test_loaded_arrays_are_read_only():
    loaded = Snapshot.from_files(_snapshot(layout="float32").to_files())
    with pytest.raises(ValueError, match="read-only"):
        loaded.vectors[0, 0] = 1.0
    compact = Snapshot.from_files(_snapshot().to_files())
    for array in (compact.table.chunks[0], compact.table.coarse_codes, compact.table.slots):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 1


@pytest.mark.parametrize(
    ("layout", "name"),
    [("float32", "vectors.npy"), ("compact", "full-chunk.00000.npy"), ("compact", "coarse.codes.npy")],
)
def test_missing_truncated_or_altered_files_are_refused(layout, name):
    files = dict(_snapshot(layout=layout).to_files())
    missing = {k: v for k, v in files.items() if k != name}
    with pytest.raises(SnapshotError, match=f"missing {name}"):
        Snapshot.from_files(missing)
    with pytest.raises(SnapshotError, match="bytes"):
        Snapshot.from_files({**files, name: files[name][:-4]})
    altered = bytearray(files[name])
    altered[-1] ^= 0xFF
    with pytest.raises(SnapshotError, match="sha256"):
        Snapshot.from_files({**files, name: bytes(altered)})
    with pytest.raises(SnapshotError, match=r"snapshot\.json"):
        Snapshot.from_files({k: v for k, v in files.items() if k != "snapshot.json"})


def test_object_arrays_are_never_unpickled():
    files = _snapshot().to_files()
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    meta = json.loads(files["snapshot.json"])
    meta["files"][PACKED_RECORDS_FILE] = {"bytes": len(buffer.getvalue()), "sha256": "x"}
    tampered = {**files, PACKED_RECORDS_FILE: buffer.getvalue(), "snapshot.json": json.dumps(meta).encode()}
    with pytest.raises(SnapshotError, match="Python objects"):
        Snapshot.from_files(tampered, verify=False)


def test_unknown_format_is_refused():
    files = _snapshot().to_files()
    meta = json.loads(files["snapshot.json"])
    meta["format"] = "something-else/9"
    with pytest.raises(SnapshotError, match="unknown snapshot format"):
        Snapshot.from_files({**files, "snapshot.json": json.dumps(meta).encode()})


def test_a_first_stage_snapshot_answers_without_its_chunks_and_takes_them_later():
    snapshot = _snapshot(400)
    files = dict(snapshot.to_files())
    chunk_names = snapshot.chunk_files()
    assert chunk_names
    assert all(name.startswith("full-chunk.") for name in chunk_names)
    first = Snapshot.from_files({k: v for k, v in files.items() if k not in chunk_names}, first_stage=True)
    assert first.stage == "first"
    with pytest.raises(SnapshotError, match="missing full-chunk"):
        Snapshot.from_files({k: v for k, v in files.items() if k not in chunk_names})
    queries = np.random.default_rng(5).standard_normal((20, DIM)).astype(np.float32)
    # the first stage alone already finds the best item for most queries
    agree = sum(
        IndexView(first).search(q, 1)[0].item_id == IndexView(snapshot).search(q, 1)[0].item_id for q in queries
    )
    assert agree >= 14
    full = first.with_full_vectors({name: files[name] for name in chunk_names})
    assert full.stage == "full"
    for q in queries:
        assert [(h.item_id, h.score) for h in IndexView(full).search(q, 5)] == [
            (h.item_id, h.score) for h in IndexView(snapshot).search(q, 5)
        ]
