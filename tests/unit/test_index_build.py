"""build_snapshot: compaction by sequencer, model fingerprint, projection kept across compactions."""

from __future__ import annotations

import numpy as np
import pytest

from catalens.errors import ModelError
from catalens.index import BuildParams, IndexView, ItemRecord, build_snapshot

# Compacted vectors are int8: within a few thousandths of the float32 ones (docs/design.md, invariant 5).
COMPACT_ATOL = 0.01

DIM = 24
FP = "fp-1"


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _record(item_id: str, vector, seq: str, *, deleted: bool = False, updated_at: float = 0.0, **fields):
    return ItemRecord(
        item_id,
        None if deleted else np.asarray(vector, np.float32),
        fields,
        f"p/{item_id}.jpg",
        f"e-{seq}",
        seq,
        deleted=deleted,
        updated_at=updated_at,
    )


def test_compaction_resolves_every_item_by_sequencer_in_any_order():
    x = _vectors(10)
    first = build_snapshot([_record(f"i{j}", x[j], "10") for j in range(5)], model_fingerprint=FP)
    shuffled = [
        _record("i0", None, "12", deleted=True),
        _record("i0", x[6], "11"),  # older than the delete
        _record("i1", x[7], "11"),  # overwrite
        _record("i1", x[8], "0F"),  # stale (older than the snapshot row)
        _record("i2", None, "0E", deleted=True),  # stale delete
        _record("i9", x[9], "13"),  # new
        _record("i9", x[9], "13"),  # duplicate delivery
    ]
    second = build_snapshot(reversed(shuffled), model_fingerprint=FP, previous=first)
    view = IndexView(second)
    assert sorted(view.get(f"i{j}") is not None for j in range(10)).count(True) == 5
    assert view.get("i0") is None
    np.testing.assert_allclose(view.vector_of("i1"), x[7], atol=COMPACT_ATOL)
    np.testing.assert_allclose(view.vector_of("i2"), x[2], atol=COMPACT_ATOL)
    assert view.get("i9").sequencer == "13"
    assert [t.item_id for t in second.tombstones] == ["i0"]
    assert second.generation == 2
    assert second.info["previous"] == first.version
    # the same records in another order give the same snapshot version (content-derived)
    assert build_snapshot(shuffled, model_fingerprint=FP, previous=first).version == second.version


def test_snapshot_from_another_model_is_refused():
    first = build_snapshot([_record("a", _vectors(1)[0], "1")], model_fingerprint="old")
    with pytest.raises(ModelError) as raised:
        build_snapshot([], model_fingerprint="new", previous=first)
    assert raised.value.code == "model_mismatch"


def test_records_of_another_dimension_are_refused():
    first = build_snapshot([_record("a", _vectors(1)[0], "1")], model_fingerprint=FP)
    with pytest.raises(ModelError) as raised:
        build_snapshot([_record("b", np.ones(DIM + 1), "2")], model_fingerprint=FP, previous=first)
    assert raised.value.code == "model_mismatch"


def test_projection_is_fitted_once_and_kept_across_compactions():
    x = _vectors(200, seed=1)
    records = [_record(f"i{j}", x[j], "1") for j in range(150)]
    first = build_snapshot(
        records, model_fingerprint=FP, params=BuildParams(layout="float32", reduce_dim=8, whiten=True)
    )
    assert first.dim == 8
    assert first.model_dim == DIM
    assert first.projection.kind == "pca_whiten"
    second = build_snapshot(
        [_record(f"i{j}", x[j], "2") for j in range(150, 200)], model_fingerprint=FP, previous=first
    )
    assert second.projection is first.projection
    view = IndexView(second)
    # a new item's index vector is the same projection applied to its model vector
    np.testing.assert_allclose(view.vector_of("i160"), first.projection.apply(x[160]), atol=1e-6)
    # a model-space query is projected the same way
    assert view.search(x[160], 1)[0].item_id == "i160"
    with pytest.raises(ValueError, match="keeps the previous projection"):
        build_snapshot([], model_fingerprint=FP, previous=first, params=BuildParams(layout="float32", reduce_dim=4))


def test_pca_keeps_neighbours_of_low_rank_data():
    rng = np.random.default_rng(2)
    basis = rng.standard_normal((6, DIM)).astype(np.float32)
    x = rng.standard_normal((300, 6)).astype(np.float32) @ basis
    records = [_record(f"i{j}", x[j], "1") for j in range(300)]
    full = IndexView(build_snapshot(records, model_fingerprint=FP))
    reduced_snapshot = build_snapshot(records, model_fingerprint=FP, params=BuildParams(layout="float32", reduce_dim=6))
    assert reduced_snapshot.projection.explained_variance_ratio > 0.999
    reduced = IndexView(reduced_snapshot)
    # centring changes cosine geometry, so compare against exact search on centred data
    centred = x - x.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    for j in range(0, 300, 30):
        expected = np.argsort(-(centred @ centred[j]))[:5]
        assert [h.item_id for h in reduced.search(x[j], 5)] == [f"i{e}" for e in expected]
    assert len(full) == len(reduced) == 300


def test_old_tombstones_can_be_forgotten():
    first = build_snapshot([_record("a", _vectors(1)[0], "1")], model_fingerprint=FP)
    deletes = [_record("a", None, "2", deleted=True, updated_at=100.0)]
    kept = build_snapshot(deletes, model_fingerprint=FP, previous=first, now=200.0)
    assert len(kept.tombstones) == 1
    dropped = build_snapshot(
        deletes, model_fingerprint=FP, previous=first, now=200.0, params=BuildParams(tombstone_ttl_seconds=50)
    )
    assert dropped.tombstones == ()


def test_live_record_without_vector_is_refused():
    with pytest.raises(ValueError, match="no vector"):
        build_snapshot([ItemRecord("a", None, {}, "k", "e", "1")], model_fingerprint=FP)
