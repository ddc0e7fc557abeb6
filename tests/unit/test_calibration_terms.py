"""Calibration from dot products: a compact index calibrates a pool from its codes, as from the decoded vectors.

:meth:`QueryDomain.calibrate_terms` needs of each candidate only its dot products with a few fixed vectors (the
catalog mean, the query mean, the centred reference rows) and its squared norm; the tables compute them without
rebuilding a row (:meth:`CompactVectors.probe`), the view gathers them for snapshot rows and fresh items
(:meth:`IndexView.calibration_terms`), and the search service uses them when its hits come without vectors.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from catalens.index import BuildParams, IndexView, ItemRecord, build_snapshot
from catalens.index.vectors import DenseVectors
from catalens.query_domain import QueryDomain, catalog_mean, unit_rows
from catalens.service.search import calibrate_hits
from catalens_tools.synthetic import clustered_vectors

FP = "model-fp"
DIM = 96


def explicit(domain: QueryDomain, query: np.ndarray, candidates: np.ndarray, mean: np.ndarray) -> tuple:
    """The calibration written out on vectors: centred cosines minus the inverted softmax over the reference."""
    items = unit_rows(candidates - mean)
    centred = items @ unit_rows(query - domain.query_mean)
    if domain.seeded:
        return centred, centred, np.zeros_like(centred)
    logits = domain.beta * (unit_rows(domain.reference - domain.query_mean) @ items.T)
    top = logits.max(axis=0)
    hubness = (top + np.log(np.exp(logits - top).mean(axis=0))) / domain.beta
    return centred - hubness, centred, hubness


def _record(i: int, vector: np.ndarray, seq: str = "10") -> ItemRecord:
    return ItemRecord(f"item-{i:05d}", np.asarray(vector, np.float32), {}, f"p/{i}.jpg", f"e{i}-{seq}", seq)


@pytest.fixture(scope="module")
def world() -> dict:
    vectors, _ = clustered_vectors(1_290, DIM, seed=4, decay=1.0)
    items, queries, shoppers = vectors[:1_200], vectors[1_200:1_250], vectors[1_250:]
    snapshot = build_snapshot(
        [_record(i, v) for i, v in enumerate(items)], model_fingerprint=FP, params=BuildParams(coarse_dim=16)
    )
    assert snapshot.table.layout == "compact"
    assert snapshot.table.residual
    domain = QueryDomain.from_samples(list(shoppers))
    assert domain is not None
    assert not domain.seeded
    return {"items": items, "queries": queries, "snapshot": snapshot, "domain": domain}


@pytest.mark.parametrize("seeded", [False, True])
def test_calibrating_from_terms_is_the_calibration_written_out_on_vectors(seeded: bool) -> None:
    rng = np.random.default_rng(8)
    reference = unit_rows(rng.normal(size=(40, 24)).astype(np.float32) + 1.0)
    domain = QueryDomain(reference, beta=4.0, seeded=seeded)
    candidates = unit_rows(rng.normal(size=(30, 24)).astype(np.float32))
    mean = catalog_mean(np.vstack([candidates, unit_rows(rng.normal(size=(50, 24)).astype(np.float32))]))
    query = unit_rows(rng.normal(size=24).astype(np.float32) + 0.5)
    for got, want in zip(
        domain.calibrate(query, candidates, mean), explicit(domain, query, candidates, mean), strict=True
    ):
        np.testing.assert_allclose(got, want, atol=2e-6)
    if seeded:
        assert not domain.calibrate(query, candidates, mean)[2].any()


def test_an_item_at_the_catalog_mean_has_no_direction_and_scores_zero() -> None:
    """A catalog of one item is its own mean: as unit_rows makes its centred row zero, so do the terms."""
    rng = np.random.default_rng(2)
    domain = QueryDomain(unit_rows(rng.normal(size=(30, 8)).astype(np.float32)))
    only = unit_rows(rng.normal(size=(1, 8)).astype(np.float32))
    calibrated, centred, hubness = domain.calibrate(unit_rows(rng.normal(size=8).astype(np.float32)), only, only[0])
    np.testing.assert_allclose([calibrated[0], centred[0], hubness[0]], [0.0, 0.0, 0.0], atol=1e-6)


def test_terms_of_the_wrong_shape_are_refused() -> None:
    rng = np.random.default_rng(3)
    domain = QueryDomain(unit_rows(rng.normal(size=(30, 8)).astype(np.float32)))
    query, mean = np.ones(8, np.float32), np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=r"expected \[2, 32\]"):
        domain.calibrate_terms(query, np.ones(2), np.ones(2), np.ones((2, 31)), mean)
    with pytest.raises(ValueError, match="norms"):
        domain.calibrate_terms(query, np.ones(2), np.ones(3), np.ones((2, 32)), mean)


def test_a_compact_table_scores_fixed_vectors_as_its_decoded_rows(world: dict) -> None:
    table = world["snapshot"].table
    rows = np.array([0, 7, 7, 300, 1_199, 45])
    probes = np.vstack([world["queries"][:5], np.full(DIM, 0.3, np.float32)])  # unit rows and one that is not
    norms, dots = table.dots_with(rows, table.prepare_fixed(probes))
    decoded = table.rows(rows)
    np.testing.assert_allclose(dots, decoded @ probes.T, atol=2e-6)  # the codes, scored as the decoded rows
    np.testing.assert_array_equal(norms, np.ones(rows.size, np.float32))  # the unit vectors they code
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=2e-3)
    # before the chunks load, the rows are the first stage's rebuilt vectors: probed as those
    first = table.without_chunks()
    norms, dots = first.dots_with(rows, first.prepare_fixed(probes))
    approximate = first.rows(rows)
    np.testing.assert_allclose(dots, approximate @ probes.T, atol=1e-6)
    np.testing.assert_allclose(norms, np.einsum("ij,ij->i", approximate, approximate), atol=1e-6)
    dense = DenseVectors(world["items"])
    norms, dots = dense.dots_with(rows, dense.prepare_fixed(probes))
    np.testing.assert_allclose(dots, world["items"][rows] @ probes.T, atol=1e-6)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_a_view_gives_terms_for_snapshot_rows_and_fresh_items_and_none_for_gone_ones(world: dict) -> None:
    items, domain = world["items"], world["domain"]
    fresh = unit_rows(items[3] + 0.5 * items[900])
    deltas = [
        _record(5_000, fresh, "20"),  # a new item
        _record(3, items[4], "20"),  # a snapshot row overridden
        ItemRecord("item-00010", None, {}, "p/10.jpg", "", "20", deleted=True),
    ]
    view = IndexView(world["snapshot"], deltas, query_domain=domain)
    named = ["item-00001", "item-05000", "item-00003", "item-00400"]
    norms, terms = view.calibration_terms(named, domain)
    vectors = np.stack([view.vector_of(item_id) for item_id in named])
    probes = np.vstack([view.catalog_mean[None, :], domain.term_rows])
    np.testing.assert_allclose(terms, vectors @ probes.T, atol=2e-6)
    np.testing.assert_allclose(norms, np.einsum("ij,ij->i", vectors, vectors), atol=2e-3)
    again = view.calibration_terms(named[::-1], domain)  # per view and domain, prepared once: same answer
    np.testing.assert_array_equal(again[1], terms[::-1])
    assert view.calibration_terms(["item-00010"], domain) is None  # deleted by a delta
    assert view.calibration_terms(["item-00001", "nope"], domain) is None
    other = QueryDomain(unit_rows(np.random.default_rng(1).normal(size=(30, DIM + 2)).astype(np.float32)))
    assert view.calibration_terms(["item-00001"], other) is None


def test_hits_without_vectors_calibrate_as_hits_with_them(world: dict) -> None:
    """What search serves: a compact index's pool calibrated from its codes ranks and scores as the decoded
    vectors do (the scores within float32 and quantisation noise, the order the same)."""
    view = IndexView(world["snapshot"], query_domain=world["domain"])
    for query in world["queries"][:10]:
        with_vectors = view.search(query, 50)
        without = view.search(query, 50, vectors=False)
        assert all(hit.vector is not None for hit in with_vectors)
        assert all(hit.vector is None for hit in without)
        decoded = calibrate_hits(view, world["domain"], query, with_vectors, explain=True)
        served = calibrate_hits(view, world["domain"], query, without, explain=True)
        by_item = {hit.item_id: hit for hit in decoded}
        assert [hit.item_id for hit in served][:3] == [hit.item_id for hit in decoded][:3]
        assert set(by_item) == {hit.item_id for hit in served}
        for hit in served:
            assert hit.score == pytest.approx(by_item[hit.item_id].score, abs=2e-3)
            assert hit.explain["hubness"] == pytest.approx(by_item[hit.item_id].explain["hubness"], abs=2e-3)
            assert hit.explain["raw"] == by_item[hit.item_id].explain["raw"]
        # where the order differs, the decoded scores tie within the same noise
        decoded_order = [by_item[hit.item_id].score for hit in served]
        assert all(later <= earlier + 4e-3 for earlier, later in itertools.pairwise(decoded_order))
