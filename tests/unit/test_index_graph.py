"""Graph search: recall vs exact on the built graph (HNSW or pynndescent), entry points covering every component,
filters."""

from __future__ import annotations

import numpy as np
import pytest

from catalens.index import BuildParams, Filter, IndexView, ItemRecord, SearchParams, Snapshot, build_snapshot
from catalens.index.build import build_hnsw_graph, choose_entry_points, group_entry_points, weak_components
from catalens.index.graph import GraphSearcher, NeighbourGraph
from catalens_tools.synthetic import clustered_vectors, recall_at_k

N, DIM, QUERIES = 4000, 32, 200


def _pieces(sizes: list[int], dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors in separate clusters; each cluster is a 6-NN graph (plus a ring, so it is connected),
    with no edge between clusters."""
    rng = np.random.default_rng(seed)
    vectors, indptr, indices, start = [], [0], [], 0
    for size in sizes:
        piece = rng.standard_normal(dim) + 0.05 * rng.standard_normal((size, dim))
        piece /= np.linalg.norm(piece, axis=1, keepdims=True)
        vectors.append(piece)
        nearest = np.argsort(-(piece @ piece.T), axis=1)[:, 1:7]
        for i in range(size):
            ring = {(i + 1) % size, (i - 1) % size}
            neighbours = sorted((set(nearest[i].tolist()) | ring) - {i})
            indices.extend(start + j for j in neighbours)
            indptr.append(len(indices))
        start += size
    x = np.concatenate(vectors).astype(np.float32)
    return x, np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int32)


def test_entry_points_cover_every_component():
    sizes = [50, 3, 1, 120, 7, 1, 30]
    x, indptr, indices = _pieces(sizes)
    labels = weak_components(indptr, indices)
    assert labels.max() + 1 == len(sizes)
    for budget in (1, 5, 40):
        entries, n_components = choose_entry_points(x, indptr, indices, budget)
        assert n_components == len(sizes)
        assert set(labels[entries].tolist()) == set(range(len(sizes)))
    entries, _ = choose_entry_points(x, indptr, indices, 40)
    assert np.bincount(labels[entries]).max() > 1  # big pieces get several entry points


def test_search_reaches_every_piece_only_through_its_entry_points():
    sizes = [60, 40, 25]
    x, indptr, indices = _pieces(sizes, seed=1)
    entries, _ = choose_entry_points(x, indptr, indices, 6)
    searcher = GraphSearcher(x, NeighbourGraph(indptr, indices, entries))
    starts = np.cumsum([0, *sizes])
    for piece in range(len(sizes)):
        query = x[starts[piece] + 3]
        rows, scores = searcher.search(query, 5, ef=16)
        exact = np.argsort(-(x @ query), kind="stable")[:5]
        assert sorted(rows.tolist()) == sorted(exact.tolist())
        assert np.all(np.diff(scores) <= 0)
    # with a single entry point in piece 0, pieces 1 and 2 are unreachable: why coverage matters
    lonely = GraphSearcher(x, NeighbourGraph(indptr, indices, np.array([0], dtype=np.int32)))
    rows, _ = lonely.search(x[starts[2] + 3], 5, ef=16)
    assert np.all(rows < starts[1])


def test_graph_search_filters_and_returns_best_first():
    x, indptr, indices = _pieces([80, 80], seed=2)
    entries, _ = choose_entry_points(x, indptr, indices, 8)
    searcher = GraphSearcher(x, NeighbourGraph(indptr, indices, entries))
    allowed = np.zeros(160, dtype=bool)
    allowed[::7] = True
    rows, scores = searcher.search(x[5], 4, ef=200, allowed=allowed)
    assert allowed[rows].all()
    assert rows.size == 4
    assert np.all(np.diff(scores) <= 0)


@pytest.fixture(scope="module")
def graph_case() -> tuple[Snapshot, np.ndarray, list[ItemRecord]]:
    data, _ = clustered_vectors(N + QUERIES, DIM, seed=7, n_clusters=60)
    queries, vectors = data[:QUERIES], data[QUERIES:]
    records = [
        ItemRecord(f"item-{i:05d}", vectors[i], {"shelf": i % 10}, f"p/{i}.jpg", f"e{i}", "01") for i in range(N)
    ]
    snapshot = build_snapshot(records, model_fingerprint="fp", params=BuildParams(graph_threshold=2, seed=0, n_jobs=2))
    return snapshot, queries, records


@pytest.mark.slow
def test_graph_recall_at_10_matches_exact_search(graph_case):
    snapshot, queries, _ = graph_case
    assert snapshot.graph is not None
    assert snapshot.graph.entry_points.size >= snapshot.info["graph"]["components"]
    view = IndexView(snapshot)
    exact = [[h.item_id for h in view.search(q, 10, strategy="exact")] for q in queries]
    graph = [[h.item_id for h in view.search(q, 10, strategy="graph")] for q in queries]
    assert recall_at_k(graph, exact) >= 0.99


@pytest.mark.slow
def test_graph_entry_points_cover_every_component_of_the_built_graph(graph_case):
    snapshot, _, _ = graph_case
    labels = weak_components(snapshot.graph.indptr, snapshot.graph.indices)
    assert set(labels[snapshot.graph.entry_points].tolist()) == set(range(labels.max() + 1))


@pytest.mark.slow
def test_graph_snapshot_round_trip_gives_identical_results(graph_case):
    snapshot, queries, _ = graph_case
    loaded = Snapshot.from_files(snapshot.to_files())
    a, b = IndexView(snapshot), IndexView(loaded)
    for q in queries[:50]:
        assert [(h.item_id, h.score) for h in a.search(q, 10, strategy="graph")] == [
            (h.item_id, h.score) for h in b.search(q, 10, strategy="graph")
        ]


@pytest.mark.slow
def test_graph_path_applies_filters_before_top_k(graph_case):
    snapshot, queries, _ = graph_case
    forced = IndexView(snapshot, params=SearchParams(filtered_exact_below=0))
    for spec in ({"shelf": 3}, {"shelf": [1, 2, 3, 4, 5, 6]}):
        flt = Filter.parse(spec)
        found, truth = [], []
        for q in queries[:50]:
            hits = forced.search(q, 10, filters=flt, strategy="graph")
            assert len(hits) == 10
            assert all(flt.matches(h.fields) for h in hits)
            found.append([h.item_id for h in hits])
            truth.append([h.item_id for h in forced.search(q, 10, filters=flt, strategy="exact")])
        assert recall_at_k(found, truth) >= 0.97


@pytest.mark.slow
def test_graph_path_with_deltas_and_deletes_merges_exactly(graph_case):
    snapshot, queries, _ = graph_case
    q = queries[0]
    best = [h.item_id for h in IndexView(snapshot).search(q, 5, strategy="exact")]
    deltas = [ItemRecord(best[0], None, {}, "", "", "02", deleted=True)]
    deltas.append(ItemRecord("brand-new", q, {"shelf": 0}, "p/new.jpg", "e", "02"))
    view = IndexView(snapshot, deltas)
    hits = view.search(q, 5, strategy="graph")
    ids = [h.item_id for h in hits]
    assert ids[0] == "brand-new"
    assert best[0] not in ids
    assert ids[1:] == best[1:5]


@pytest.mark.slow
def test_graph_build_is_deterministic_on_one_thread(graph_case):
    # faiss inserts in parallel in whatever order its threads reach; one thread gives one graph
    _, _, records = graph_case
    params = BuildParams(graph_threshold=2, seed=0, n_jobs=1)
    first = build_snapshot(records, model_fingerprint="fp", params=params)
    again = build_snapshot(records, model_fingerprint="fp", params=params)
    assert again.version == first.version
    np.testing.assert_array_equal(again.graph.indices, first.graph.indices)
    np.testing.assert_array_equal(again.graph.entry_points, first.graph.entry_points)
    np.testing.assert_array_equal(again.item_ids, first.item_ids)


@pytest.mark.slow
def test_threaded_builds_of_the_same_records_name_the_same_version(graph_case):
    snapshot, _, records = graph_case
    again = build_snapshot(records, model_fingerprint="fp", params=BuildParams(graph_threshold=2, seed=0, n_jobs=2))
    assert again.version == snapshot.version
    assert sorted(again.item_ids.tolist()) == sorted(snapshot.item_ids.tolist())


@pytest.mark.slow
def test_pynndescent_graph_is_still_built_on_request(graph_case):
    _, queries, records = graph_case
    params = BuildParams(graph_threshold=2, seed=0, n_jobs=2, graph_method="nndescent")
    snapshot = build_snapshot(records, model_fingerprint="fp", params=params)
    assert snapshot.info["graph"]["method"] == "nndescent"
    view = IndexView(snapshot)
    exact = [[h.item_id for h in view.search(q, 10, strategy="exact")] for q in queries]
    graph = [[h.item_id for h in view.search(q, 10, strategy="graph")] for q in queries]
    assert recall_at_k(graph, exact) >= 0.99


def test_hnsw_graph_links_near_neighbours_in_a_locality_order():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order, indptr, indices = build_hnsw_graph(x, m=8, ef_construction=64, n_jobs=1)
    assert sorted(order.tolist()) == list(range(3000))
    assert indptr[0] == 0
    assert indptr[-1] == indices.size
    assert indices.dtype == np.int32
    degrees = np.diff(indptr)
    assert degrees.min() >= 1
    assert degrees.max() <= 16
    rows = x[order]
    source = np.repeat(np.arange(3000), degrees)
    assert np.all(source != indices)
    # every vertex's true nearest neighbour is among its links or one link away for nearly all vertices
    nearest = np.argsort(-(rows @ rows.T), axis=1)[:, 1]
    linked = [set(indices[indptr[v] : indptr[v + 1]].tolist()) for v in range(3000)]
    reach = [nearest[v] in linked[v] or any(nearest[v] in linked[u] for u in linked[v]) for v in range(3000)]
    assert np.mean(reach) > 0.98
    # reverse Cuthill-McKee keeps links closer in row number than the insertion order does
    assert np.median(np.abs(source - indices)) < 3000 / 3


def test_grouped_entry_points_are_routed_by_centroid():
    sizes = [40] * 12
    x, indptr, indices = _pieces(sizes, seed=3)
    entries, _ = choose_entry_points(x, indptr, indices, 48)
    grouped, group_ptr, centroids = group_entry_points(x, entries, min_entries=1)
    assert sorted(grouped.tolist()) == sorted(entries.tolist())
    assert group_ptr[-1] == entries.size
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    graph = NeighbourGraph(indptr, indices, grouped, entry_group_ptr=group_ptr, entry_centroids=centroids)
    searcher = GraphSearcher(x, graph)
    starts = np.cumsum([0, *sizes])
    for piece in range(len(sizes)):
        query = x[starts[piece] + 1]
        rows, _ = searcher.search(query, 5, ef=48, probe=2)  # a pool as large as a piece: exact inside it
        assert sorted(rows.tolist()) == sorted(np.argsort(-(x @ query))[:5].tolist())
    with pytest.raises(ValueError, match="entry group"):
        NeighbourGraph(indptr, indices, grouped, entry_group_ptr=group_ptr[:-1], entry_centroids=centroids)


def test_visit_stamps_start_again_before_they_would_overflow(monkeypatch):
    import catalens.index.graph as graph_module

    x, indptr, indices = _pieces([60, 40], seed=4)
    entries, _ = choose_entry_points(x, indptr, indices, 6)
    searcher = GraphSearcher(x, NeighbourGraph(indptr, indices, entries))
    queries = x[[3, 70, 11]]
    expected = [searcher.search(q, 5, ef=16)[0].tolist() for q in queries]
    before = searcher._scratch.next_base
    searcher.search(queries[0], 5, ef=16)
    assert searcher._scratch.next_base > before  # stamps run on from query to query
    # a limit only a little above one query's worst case: every query after the first must start afresh
    monkeypatch.setattr(graph_module, "_STAMP_LIMIT", entries.size + indices.size + 10)
    fresh = GraphSearcher(x, NeighbourGraph(indptr, indices, entries))
    for query, want in zip(queries, expected, strict=True):
        assert fresh.search(query, 5, ef=16)[0].tolist() == want
        assert fresh._scratch.stamps.dtype == np.int32
    bases = []
    for _ in range(3):  # the same query uses the same number of stamps, from 1 each time
        assert fresh.search(queries[0], 5, ef=16)[0].tolist() == expected[0]
        bases.append(fresh._scratch.next_base)
    assert bases[0] == bases[1] == bases[2] <= graph_module._STAMP_LIMIT


def test_a_filtered_search_scans_exactly_up_to_a_share_of_the_rows_and_walks_beyond(monkeypatch):
    """At 1M rows an exact scan of the allowed rows is as fast as the filtered walk up to about a tenth of them,
    and exact: the limit follows the snapshot's size, never below ``filtered_exact_below``."""
    n = 1200
    data, _ = clustered_vectors(n + 5, 24, seed=3, n_clusters=12)
    queries, vectors = data[:5], data[5:]
    records = [
        ItemRecord(f"item-{i:05d}", vectors[i], {"shelf": i % 10}, f"p/{i}.jpg", f"e{i}", "01") for i in range(n)
    ]
    snapshot = build_snapshot(records, model_fingerprint="fp", params=BuildParams(graph_threshold=2, seed=0, n_jobs=1))
    assert snapshot.graph is not None
    walks: list[int] = []
    original = GraphSearcher.search

    def counted(self, *args, **kwargs):
        walks.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GraphSearcher, "search", counted)
    tenth, fifth = Filter.parse({"shelf": 3}), Filter.parse({"shelf": [1, 2]})  # 120 and 240 of 1,200 rows
    cases = (
        (SearchParams(filtered_exact_below=0, filtered_exact_share=0.1), tenth, False),
        (SearchParams(filtered_exact_below=0, filtered_exact_share=0.1), fifth, True),
        (SearchParams(filtered_exact_below=240, filtered_exact_share=0.1), fifth, False),
        (SearchParams(filtered_exact_below=0, filtered_exact_share=0.0), tenth, True),
        (SearchParams(), fifth, False),  # the defaults: at least 20k rows, or a tenth
    )
    for params, flt, walked in cases:
        view = IndexView(snapshot, params=params)
        for q in queries:
            walks.clear()
            hits = view.search(q, 10, filters=flt)
            assert bool(walks) is walked, (params, flt)
            assert all(flt.matches(h.fields) for h in hits)
            if not walked:
                exact = view.search(q, 10, filters=flt, strategy="exact")
                assert [h.item_id for h in hits] == [h.item_id for h in exact]
    assert SearchParams().filtered_exact_limit(1_000_000) == 100_000
    assert SearchParams().filtered_exact_limit(100_000) == 20_000
