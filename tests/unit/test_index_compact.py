"""The compact layout's full-vector codes: residuals to the first stage, decoded and scored, kept across compactions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from catalens.index import BuildParams, IndexView, ItemRecord, SearchParams, build_snapshot
from catalens.index.reduce import normalise
from catalens.index.vectors import FULL_SAMPLE, CompactCodec, CompactVectors, Quantiser
from catalens_tools.synthetic import clustered_vectors

FP = "model-fp"


def _record(i: int, vector: np.ndarray, seq: str = "10") -> ItemRecord:
    return ItemRecord(f"item-{i:05d}", np.asarray(vector, np.float32), {}, f"p/{i}.jpg", f"e{i}-{seq}", seq)


def _tight_clusters(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(items, queries): tight clusters on a decaying spectrum, where neighbours' scores differ by ~1e-4."""
    vectors, _ = clustered_vectors(n + 50, dim, seed=seed, decay=1.0)
    return vectors[50:], vectors[:50]


def test_residual_codes_decode_and_score_far_closer_than_direct_codes():
    items, queries = _tight_clusters(3000, 512)
    codec = CompactCodec.fit(items, 64)
    coarse, lengths, full, _ = codec.encode(items)
    direct = Quantiser.fit(items, headroom=1.5)
    snapshot = build_snapshot(
        [_record(i, v) for i, v in enumerate(items)], model_fingerprint=FP, params=BuildParams(coarse_dim=64)
    )
    table = snapshot.table
    assert table.residual
    assert table.describe()["full"] == "residual-scaled"
    rows = snapshot.rows_of([f"item-{i:05d}" for i in range(len(items))])
    decoded = np.empty_like(items)
    decoded[np.arange(len(items))] = table.rows(rows)
    # every component within half its row's residual step (no code saturates), which is finer than the
    # catalog-wide step ...
    row_step = table.full_quantiser.step * table.full_scales[rows].astype(np.float32)[:, None]
    assert np.all(np.abs(decoded - items) <= row_step * 0.5 + 1e-6)
    assert np.all(table.full_scales <= 1.0)
    assert np.median(table.full_scales.astype(np.float32)) < 0.9
    # ... and scores several times closer to float32 than coding the vectors themselves
    residual_error = np.abs((decoded - items) @ queries.T)
    direct_error = np.abs((direct.decode(direct.encode(items)) - items) @ queries.T)
    assert np.median(residual_error) * 3 < np.median(direct_error)
    assert coarse.shape == (3000, 64)
    assert lengths.dtype == np.float16
    assert full.dtype == np.int8
    for q in queries[:5]:
        prepared = table.prepare(q)
        sample = rows[:200]
        np.testing.assert_allclose(table.scores(sample, prepared), table.rows(sample) @ q, atol=2e-6)
        np.testing.assert_allclose(table.scores(sample, prepared), items[:200] @ q, atol=1e-3)


def test_ranking_by_the_full_codes_finds_the_float32_top_10_of_tight_clusters():
    items, queries = _tight_clusters(3000, 512, seed=1)
    snapshot = build_snapshot([_record(i, v) for i, v in enumerate(items)], model_fingerprint=FP)
    table = snapshot.table
    order = snapshot.rows_of([f"item-{i:05d}" for i in range(len(items))])
    found = 0
    for q in queries:
        truth = set(np.argsort(-(items @ q))[:10].tolist())
        scores = np.empty(len(items), np.float32)
        scores[np.arange(len(items))] = table.scores(order, table.prepare(q))
        found += len(truth & set(np.argsort(-scores)[:10].tolist()))
    assert found / (10 * len(queries)) >= 0.99


def test_a_compact_search_of_tight_clusters_answers_like_float32():
    items, queries = _tight_clusters(3000, 512, seed=2)
    records = [_record(i, v) for i, v in enumerate(items)]
    compact = IndexView(build_snapshot(records, model_fingerprint=FP))
    exact = IndexView(build_snapshot(records, model_fingerprint=FP, params=BuildParams(layout="float32")))
    found = 0
    for q in queries:
        truth = {h.item_id: h.score for h in exact.search(q, 10)}
        hits = compact.search(q, 10)
        found += sum(h.item_id in truth for h in hits)
        for hit in hits:
            assert abs(hit.score - float(exact.vector_of(hit.item_id) @ q)) < 1e-3
    assert found / (10 * len(queries)) >= 0.95  # the rest is the first stage's pool, not the codes


def _low_rank_plus_noise(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Unit rows with a rank-4 signal under isotropic noise: enough spread that every slot's code differs."""
    return normalise(rng.standard_normal((n, 4)) @ rng.standard_normal((4, dim)) + rng.standard_normal((n, dim)))


def test_unchanged_items_keep_their_bytes_across_compactions():
    """A codec learned from FULL_SAMPLE rows is kept: new and updated items are coded against it, and every chunk
    without a changed slot is the previous version's array."""
    rng = np.random.default_rng(3)
    dim = 24
    items = _low_rank_plus_noise(rng, FULL_SAMPLE + 100, dim)
    params = BuildParams(coarse_dim=8, chunk_rows=1024, graph_threshold=10**9)
    first = build_snapshot([_record(i, v) for i, v in enumerate(items)], model_fingerprint=FP, params=params)
    assert first.table.fitted_rows == FULL_SAMPLE
    changed = [_record(5, normalise(rng.standard_normal(dim)), "20"), _record(len(items), items[0], "20")]
    second = build_snapshot(changed, model_fingerprint=FP, previous=first, params=params)
    a, b = first.table, second.table
    assert np.array_equal(a.full_quantiser.step, b.full_quantiser.step)
    assert a.coarse is b.coarse
    changed_chunks = {int(b.slots[r]) // 1024 for r in second.rows_of(["item-00005", f"item-{len(items):05d}"])}
    for index, (old, new) in enumerate(zip(a.chunks, b.chunks, strict=False)):
        if index not in changed_chunks:
            assert new is old
    kept = [f"item-{i:05d}" for i in range(len(items)) if i != 5]
    old_rows, new_rows = first.rows_of(kept), second.rows_of(kept)
    assert np.array_equal(a.slots[old_rows], b.slots[new_rows])
    assert np.array_equal(a.coarse_codes[old_rows], b.coarse_codes[new_rows])
    assert np.array_equal(a.full_scales[old_rows], b.full_scales[new_rows])
    assert np.array_equal(a.rows(old_rows), b.rows(new_rows))
    # the new item is the same vector as item 0, coded by the same codec: the same bytes
    new_row, zero_row = second.rows_of([f"item-{len(items):05d}", "item-00000"])
    assert np.array_equal(b.rows(np.array([new_row])), b.rows(np.array([zero_row])))
    # the catalog total follows the decoded vectors (what the catalog mean is computed from)
    np.testing.assert_allclose(b.total(), b.rows(np.arange(len(second))).sum(axis=0, dtype=np.float64), atol=1e-3)


def test_a_small_catalog_codec_leaves_room_for_vectors_it_has_not_seen():
    """Below FULL_SAMPLE rows the residual's range comes also from rows the PCA did not see."""
    items, _ = _tight_clusters(600, 256, seed=4)
    seen, unseen = items[:300], items[300:]
    codec = CompactCodec.fit(seen, 64)
    assert not codec.saturates(seen)
    clipped = np.abs(codec.residual_of(unseen)) > codec.full_quantiser.step * 127.5
    assert clipped.mean() < 1e-3


def test_row_scales_code_each_residual_finer_than_the_catalog_wide_step():
    """A row's scale fits the int8 range to its own largest residual: scores come several times closer to float32,
    and a vector beyond the fitted range gets a coarser scale instead of clipping."""
    items, queries = _tight_clusters(3000, 512, seed=7)
    scaled = CompactCodec.fit(items, 64)
    plain = replace(scaled, row_scaled=False)
    assert scaled.row_scaled
    codes, lengths, full, scales = scaled.encode(items)
    assert scales.dtype == np.float16
    assert scales.shape == (len(items),)
    assert np.abs(full).max() == 127  # each row's largest residual uses the whole range
    scaled_error = np.abs((scaled.decode(codes, lengths, full, scales) - items) @ queries.T)
    codes, lengths, full, none = plain.encode(items)
    assert none is None
    plain_error = np.abs((plain.decode(codes, lengths, full) - items) @ queries.T)
    assert np.median(scaled_error) * 2 < np.median(plain_error)
    # a vector far outside the sample: no clipping, its own (coarser) scale, still within half a step everywhere
    outlier = normalise(items[0] + 0.5 * normalise(np.random.default_rng(1).standard_normal(512)))
    assert scaled.saturates(outlier[None, :])
    codes, lengths, full, scales = scaled.encode(outlier[None, :])
    assert scales[0] > 1
    decoded = scaled.decode(codes, lengths, full, scales)[0]
    assert np.all(np.abs(decoded - outlier) <= scaled.full_quantiser.step * float(scales[0]) * 0.5 + 1e-6)


def test_a_snapshot_coded_without_row_scales_keeps_coding_without_them(monkeypatch):
    """Snapshots written before row scales say ``full: residual``: read as before, and their compactions keep the
    codec (learned from FULL_SAMPLE rows), so unchanged rows keep their bytes and new rows are coded the same way."""
    import catalens.index.compact as compact_module

    learn = CompactCodec.fit
    monkeypatch.setattr(
        compact_module.CompactCodec, "fit", classmethod(lambda cls, *a, **k: replace(learn(*a, **k), row_scaled=False))
    )
    rng = np.random.default_rng(5)
    dim = 24
    items = _low_rank_plus_noise(rng, FULL_SAMPLE + 200, dim)
    params = BuildParams(coarse_dim=8, chunk_rows=1024, graph_threshold=10**9)
    n = FULL_SAMPLE + 100
    first = build_snapshot([_record(i, v) for i, v in enumerate(items[:n])], model_fingerprint=FP, params=params)
    monkeypatch.setattr(compact_module.CompactCodec, "fit", learn)
    table = first.table
    assert table.full_scales is None
    assert table.describe()["full"] == "residual"
    arrays = {**table.arrays(), **table.chunk_arrays()}
    assert "full.scales.npy" not in arrays
    again = CompactVectors.from_parts(table.describe(), arrays.__getitem__, list(arrays))
    assert again.full_scales is None
    np.testing.assert_array_equal(again.rows(np.arange(20)), table.rows(np.arange(20)))
    fresh = [_record(i, items[i], "20") for i in range(n, len(items))]
    second = build_snapshot(fresh, model_fingerprint=FP, previous=first, params=params)
    assert second.table.full_scales is None
    assert second.table.describe()["full"] == "residual"
    kept = [f"item-{i:05d}" for i in range(n)]
    np.testing.assert_array_equal(second.table.rows(second.rows_of(kept)), table.rows(first.rows_of(kept)))
    added = second.rows_of([f"item-{i:05d}" for i in range(n, len(items))])
    step = second.table.full_quantiser.step
    assert np.all(np.abs(second.table.rows(added) - items[n:]) <= step * 0.5 + 1e-6)
    prepared = second.table.prepare(items[0])
    np.testing.assert_allclose(second.table.scores(added, prepared), second.table.rows(added) @ items[0], atol=2e-6)
    # the catalog total still follows the decoded vectors
    every = second.rows_of([f"item-{i:05d}" for i in range(len(items))])
    np.testing.assert_allclose(second.table.total(), second.table.rows(every).sum(axis=0), atol=1e-3)


def test_a_snapshot_written_with_direct_codes_reads_them_as_before():
    """Snapshots written before residual codes have no ``full`` entry: their chunks hold the vectors' own codes."""
    items, queries = _tight_clusters(400, 64, seed=5)
    table = build_snapshot([_record(i, v) for i, v in enumerate(items)], model_fingerprint=FP).table
    arrays = {**table.arrays(), **table.chunk_arrays()}
    description = {key: value for key, value in table.describe().items() if key != "full"}
    direct = CompactVectors.from_parts(description, arrays.__getitem__, list(arrays))
    assert not direct.residual
    assert not CompactCodec.of(direct).residual
    np.testing.assert_array_equal(
        direct.rows(np.arange(3)), direct.full_quantiser.decode(table.chunks[0][table.slots[:3]])
    )
    np.testing.assert_allclose(
        direct.scores(np.arange(20), direct.prepare(queries[0])), direct.rows(np.arange(20)) @ queries[0], atol=2e-6
    )
    with pytest.raises(ValueError, match="newer release"):
        CompactVectors.from_parts({**description, "full": "pq"}, arrays.__getitem__, list(arrays))


def _count_rescored_rows(monkeypatch) -> list[int]:
    """The number of rows each full-vector re-score is given, in call order."""
    rescored: list[int] = []
    original = CompactVectors.scores

    def spy(self, rows, query):
        rescored.append(len(rows))
        return original(self, rows, query)

    monkeypatch.setattr(CompactVectors, "scores", spy)
    return rescored


def test_a_default_compact_search_rescores_k_plus_rerank_extra_candidates_of_a_320_axis_first_stage(monkeypatch):
    from catalens.index.vectors import COARSE_DIM
    from catalens.index.view import RERANK_EXTRA

    items, queries = _tight_clusters(700, 512, seed=5)
    snapshot = build_snapshot([_record(i, v) for i, v in enumerate(items)], model_fingerprint=FP)
    assert COARSE_DIM == 320
    assert RERANK_EXTRA == 190
    assert snapshot.table.coarse.output_dim == COARSE_DIM
    assert snapshot.table.coarse_codes.shape == (len(items), COARSE_DIM)
    rescored = _count_rescored_rows(monkeypatch)
    view = IndexView(snapshot)
    for q in queries[:5]:
        hits = view.search(q, 10)
        exact = np.argsort(-(items @ q))[:10]
        assert [h.item_id for h in hits][:1] == [f"item-{exact[0]:05d}"]
    assert rescored == [10 + RERANK_EXTRA] * 5


def test_a_graph_search_rescores_the_walks_whole_pool_when_it_is_larger(monkeypatch):
    """The walk has scored its ef candidates anyway: all of them are re-scored, never fewer than max(2k, k + extra)."""
    from catalens.index.view import RERANK_EXTRA

    items, queries = _tight_clusters(1200, 64, seed=6)
    snapshot = build_snapshot(
        [_record(i, v) for i, v in enumerate(items)],
        model_fingerprint=FP,
        params=BuildParams(graph_threshold=2, seed=0, n_jobs=1),
    )
    assert snapshot.graph is not None
    rescored = _count_rescored_rows(monkeypatch)
    cases = (
        (SearchParams(ef=320), "graph", 320),
        (SearchParams(ef=64), "graph", 10 + RERANK_EXTRA),
        (SearchParams(ef=320), "exact", 10 + RERANK_EXTRA),
        (SearchParams.for_candidates(800), "graph", 800),  # a deployment's SEARCH_CANDIDATES, 50 rows per step
    )
    for params, strategy, want in cases:
        rescored.clear()
        view = IndexView(snapshot, params=params)
        for q in queries[:3]:
            hits = view.search(q, 10, strategy=strategy)
            assert hits[0].item_id == f"item-{int(np.argmax(items @ q)):05d}"
        assert rescored == [want] * 3, (params, strategy)


@pytest.mark.parametrize("dtype", [np.int8, np.float32])
@pytest.mark.parametrize("block", [7, 32_768])
def test_dot_rows_scores_the_chosen_rows_in_blocks_as_float64_does(monkeypatch, dtype, block):
    import catalens.index.vectors as vectors_module

    # 7: every call below takes several blocks (float32 rows of 7, int8 codes of at least 16)
    monkeypatch.setattr(vectors_module, "_DOT_BLOCK", block)
    monkeypatch.setattr(vectors_module, "_CAST_BLOCK_BYTES", block * 4 * 12)
    rng = np.random.default_rng(3)
    rows_of = rng.integers(-127, 128, (50, 12)).astype(dtype)
    query = rng.standard_normal(12).astype(np.float32)
    picked = np.array([49, 0, 7, 7, 31, 12, 3, 44, 18, 25, 1], dtype=np.int64)
    expected = rows_of.astype(np.float64) @ query.astype(np.float64)
    every = vectors_module.dot_rows(rows_of, query)
    chosen = vectors_module.dot_rows(rows_of, query, picked)
    assert every.dtype == chosen.dtype == np.float32
    np.testing.assert_allclose(every, expected, rtol=1e-5)
    np.testing.assert_allclose(chosen, expected[picked], rtol=1e-5)
    assert vectors_module.dot_rows(rows_of, query, picked[:0]).shape == (0,)
