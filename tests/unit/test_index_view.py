"""IndexView: deltas over a snapshot, exact merge, filters before top-k, deletes, lookups."""

from __future__ import annotations

import numpy as np
import pytest

from catalens.errors import ModelError
from catalens.index import BuildParams, Filter, IndexView, ItemRecord, build_snapshot

# Compacted vectors are int8: within a few thousandths of the float32 ones (docs/design.md, invariant 5).
COMPACT_ATOL = 0.01

DIM = 16
# Tests that compare with float32 brute force to the last tie use float32 snapshots; the compact layout's own
# agreement with float32 is tested below, at a width where int8 steps are small beside score gaps.
EXACT = BuildParams(layout="float32")
FP = "model-fp"


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _record(item_id: str, vector, seq: str, *, deleted: bool = False, **fields) -> ItemRecord:
    return ItemRecord(
        item_id=item_id,
        vector=None if deleted else np.asarray(vector, dtype=np.float32),
        fields=fields,
        image_key=f"photos/{item_id}.jpg",
        source_etag=f"etag-{item_id}-{seq}",
        sequencer=seq,
        deleted=deleted,
    )


def _catalog(n: int = 300, seed: int = 0) -> list[ItemRecord]:
    x = _vectors(n, seed)
    return [
        _record(f"item-{i:04d}", x[i], "0100", category=["shoes", "bags", "hats"][i % 3], price=float(i % 50))
        for i in range(n)
    ]


def _brute_force(records: list[ItemRecord], query: np.ndarray, k: int, keep=lambda r: True) -> list[str]:
    live = [r for r in records if keep(r)]
    scores = np.array([float(_unit(r.vector) @ _unit(query)) for r in live])
    order = sorted(range(len(live)), key=lambda i: (-scores[i], live[i].item_id))
    return [live[i].item_id for i in order[:k]]


def test_empty_index_returns_no_hits():
    view = IndexView(None, [])
    assert view.search(np.ones(DIM, np.float32), 5) == []
    assert len(view) == 0
    assert view.get("x") is None
    empty = build_snapshot([], model_fingerprint=FP)
    assert len(empty) == 0
    assert IndexView(empty).search(np.ones(DIM, np.float32), 5) == []


def test_snapshot_plus_deltas_equals_brute_force_over_the_final_state():
    base = _catalog(300)
    snapshot = build_snapshot(base, model_fingerprint=FP, params=EXACT)
    extra = _vectors(40, seed=9)
    deltas = [_record(f"new-{i}", extra[i], "0200", category="shoes", price=1.0) for i in range(20)]
    deltas += [_record(f"item-{i:04d}", extra[20 + i], "0200", category="bags", price=2.0) for i in range(20)]
    deltas += [_record(f"item-{i:04d}", None, "0201", deleted=True) for i in range(100, 130)]
    view = IndexView(snapshot, deltas)

    final = {r.item_id: r for r in base}
    for d in deltas:
        if d.deleted:
            final.pop(d.item_id)
        else:
            final[d.item_id] = d
    assert len(view) == len(final) == 300 + 20 - 30

    for query in _vectors(10, seed=3):
        hits = view.search(query, 25)
        ids = [h.item_id for h in hits]
        assert ids == _brute_force(list(final.values()), query, 25)
        assert len(set(ids)) == len(ids)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        for hit in hits:
            assert hit.score == pytest.approx(float(_unit(final[hit.item_id].vector) @ _unit(query)), abs=1e-5)
            assert hit.fields == final[hit.item_id].fields
            assert hit.image_key == final[hit.item_id].image_key


def test_out_of_order_create_and_delete_resolve_by_sequencer():
    x = _vectors(3, seed=4)
    snapshot = build_snapshot([_record("a", x[0], "10")], model_fingerprint=FP)
    # the delete (seq 12) arrives before the older create (seq 11): the item stays deleted
    view = IndexView(snapshot, [_record("a", None, "12", deleted=True), _record("a", x[1], "11")])
    assert view.get("a") is None
    assert view.search(x[1], 3) == []
    # a re-create after the delete (seq 13) brings it back with the new vector, whatever the delivery order
    shuffled = [_record("a", x[2], "13"), _record("a", None, "12", deleted=True), _record("a", x[1], "11")]
    view = IndexView(snapshot, shuffled)
    hit = view.search(x[2], 1)[0]
    assert hit.item_id == "a"
    assert hit.score == pytest.approx(1.0, abs=1e-6)
    # a delta older than the snapshot row is ignored
    view = IndexView(snapshot, [_record("a", x[1], "0f")])
    np.testing.assert_allclose(view.vector_of("a"), x[0], atol=COMPACT_ATOL)
    # sequencers compare as zero-padded hex, not as strings: "9" < "0A"
    view = IndexView(snapshot, [_record("a", None, "0A", deleted=True), _record("a", x[1], "9")])
    assert view.get("a") is not None  # 0x0A (deleted) < 0x10 (snapshot): both deltas are stale


def test_compacted_tombstone_blocks_a_late_create():
    x = _vectors(2, seed=5)
    first = build_snapshot([_record("a", x[0], "10")], model_fingerprint=FP)
    second = build_snapshot([_record("a", None, "20", deleted=True)], model_fingerprint=FP, previous=first)
    assert len(second) == 0
    assert [t.item_id for t in second.tombstones] == ["a"]
    assert IndexView(second, [_record("a", x[1], "15")]).get("a") is None  # late, older create
    assert IndexView(second, [_record("a", x[1], "21")]).get("a") is not None  # a genuine re-create


def test_filter_is_applied_before_top_k_is_cut():
    query = _unit(np.ones(DIM))
    near = [_record(f"near-{i}", query + 0.01 * _vectors(1, i)[0], "1", colour="red") for i in range(50)]
    far = [_record(f"far-{i}", -query + 0.3 * _vectors(1, 100 + i)[0], "1", colour="blue") for i in range(8)]
    view = IndexView(build_snapshot(near + far, model_fingerprint=FP, params=EXACT), [])
    hits = view.search(query, 5, filters=Filter.equals("colour", "blue"))
    assert len(hits) == 5
    assert all(h.item_id.startswith("far-") for h in hits)
    assert [h.item_id for h in hits] == _brute_force(far, query, 5)
    # the same through a delta
    late = _record("far-late", -query, "2", colour="blue")
    hits = IndexView(build_snapshot(near + far, model_fingerprint=FP, params=EXACT), [late]).search(
        query, 20, filters=Filter.equals("colour", "blue")
    )
    assert sorted(h.item_id for h in hits) == sorted([f"far-{i}" for i in range(8)] + ["far-late"])


def test_filters_on_price_range_and_sets_match_brute_force():
    base = _catalog(300)
    deltas = [_record("d-1", _vectors(1, 77)[0], "0200", category="hats", price=12.0)]
    view = IndexView(build_snapshot(base, model_fingerprint=FP, params=EXACT), deltas)
    flt = Filter.parse({"category": ["hats", "bags"], "price": {"gte": 10, "lt": 20}})
    for query in _vectors(5, seed=8):
        expected = _brute_force(base + deltas, query, 10, keep=lambda r: flt.matches(r.fields))
        assert [h.item_id for h in view.search(query, 10, filters=flt)] == expected


def test_exclude_removes_items_from_both_parts():
    base = _catalog(50)
    delta = _record("d", base[0].vector, "0200", category="shoes", price=1.0)
    view = IndexView(build_snapshot(base, model_fingerprint=FP), [delta])
    hits = view.search(base[0].vector, 3, exclude={"item-0000", "d"})
    assert {"item-0000", "d"}.isdisjoint(h.item_id for h in hits)
    assert len(hits) == 3


def test_hits_carry_their_own_vector_fields_and_image_from_snapshot_and_deltas():
    base = _catalog(60)
    snapshot = build_snapshot(base, model_fingerprint=FP)  # the compact layout: vectors decoded for the hits
    near = base[1].vector + 0.1 * base[2].vector
    deltas = [_record("d1", base[1].vector, "0200", category="new"), _record("d2", near, "0200")]
    view = IndexView(snapshot, deltas)
    by_id = {r.item_id: r for r in base} | {r.item_id: r for r in deltas}
    hits = view.search(base[1].vector, 12)
    assert {"d1", "d2", "item-0001"} <= {h.item_id for h in hits}
    for hit in hits:
        record = by_id[hit.item_id]
        assert hit.fields == record.fields
        assert hit.image_key == record.image_key
        np.testing.assert_allclose(hit.vector, _unit(record.vector), atol=COMPACT_ATOL)
        np.testing.assert_allclose(hit.vector, view.vector_of(hit.item_id), atol=1e-6)


def test_get_vector_of_len_and_version():
    base = _catalog(20)
    snapshot = build_snapshot(base, model_fingerprint=FP)
    view = IndexView(snapshot, [])
    assert view.version == snapshot.version
    item = view.get("item-0003")
    assert item.fields == base[3].fields
    assert item.sequencer == "0100"
    np.testing.assert_allclose(view.vector_of("item-0003"), _unit(base[3].vector), atol=COMPACT_ATOL)
    assert view.get("nope") is None
    assert view.vector_of("nope") is None
    updated = IndexView(snapshot, [_record("item-0003", base[4].vector, "0200", category="x")])
    assert updated.version != snapshot.version
    assert updated.get("item-0003").fields == {"category": "x"}
    np.testing.assert_allclose(updated.vector_of("item-0003"), _unit(base[4].vector), atol=COMPACT_ATOL)
    assert len(updated) == 20


def test_query_with_the_wrong_dimension_is_a_model_mismatch():
    view = IndexView(build_snapshot(_catalog(10), model_fingerprint=FP), [])
    with pytest.raises(ModelError) as raised:
        view.search(np.ones(DIM + 1, np.float32), 3)
    assert raised.value.code == "model_mismatch"
    with pytest.raises(ModelError):
        IndexView(build_snapshot(_catalog(10), model_fingerprint=FP), [_record("x", np.ones(DIM + 2), "0200")])


def test_deltas_over_an_empty_snapshot_are_searchable():
    empty = build_snapshot([_record("gone", None, "1", deleted=True)], model_fingerprint=FP)
    x = _vectors(3, seed=6)
    view = IndexView(empty, [_record(f"d{i}", x[i], "2") for i in range(3)])
    assert len(view) == 3
    assert view.search(x[1], 1)[0].item_id == "d1"
    assert IndexView(empty, [_record("gone", x[0], "0")]).get("gone") is None  # older than the compacted delete


def test_view_names_its_model_space_and_fields():
    snapshot = build_snapshot(_catalog(5), model_fingerprint=FP, params=BuildParams(layout="float32", reduce_dim=4))
    view = IndexView(snapshot, [_record("d", _vectors(1)[0], "0200", colour="red")])
    assert view.model_fingerprint == FP
    assert view.index_space == f"{FP}/{snapshot.projection.fingerprint}"
    assert view.field_names() == {"category", "price", "colour"}
    assert IndexView(None).index_space == ""


def test_a_compact_snapshot_answers_like_float32_search():
    rng = np.random.default_rng(11)
    dim = 512
    # like image embeddings: most variance on fewer axes than the first stage keeps, plus isotropic noise
    basis = rng.standard_normal((96, dim)).astype(np.float32)
    x = rng.standard_normal((3000, 96)).astype(np.float32) @ basis + 3 * rng.standard_normal((3000, dim))
    x = x.astype(np.float32)
    centres = x[rng.choice(3000, 20, replace=False)]
    records = [_record(f"item-{i:04d}", x[i], "10") for i in range(len(x))]
    compact = IndexView(build_snapshot(records, model_fingerprint=FP))
    exact = IndexView(build_snapshot(records, model_fingerprint=FP, params=EXACT))
    assert compact.snapshot.table.layout == "compact"
    found = 0
    for q in centres + 3 * rng.standard_normal((20, dim)).astype(np.float32):
        truth = {h.item_id: h.score for h in exact.search(q, 10)}
        hits = compact.search(q, 10)
        found += sum(h.item_id in truth for h in hits)
        for hit in hits:  # scores are the float32 cosine to within int8 rounding
            assert abs(hit.score - float(exact.vector_of(hit.item_id) @ (q / np.linalg.norm(q)))) < 0.01
    assert found / 200 >= 0.99
