"""Query-domain calibration and query sampling in the search service, over real IndexViews with a stub embedder.

The synthetic catalog has what the grocery data has: every shopper photo shares a "shelf" direction, every shop
photo a "white background" direction, and one hub item leans towards the shelf, so it looks like every shopper
photo and wins plain cosine for queries that are really about another item.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from catalens.category import NEIGHBOURS
from catalens.index import IndexView, ItemRecord
from catalens.index.build import BuildParams, build_snapshot
from catalens.index.records import Hit
from catalens.index.reduce import Projection
from catalens.query_domain import CALIBRATION_POOL, QueryDomain
from catalens.ranking import rerank
from catalens.service.requests import SearchOptions, SearchRequest
from catalens.service.sampling import MAX_PENDING, QuerySampler
from catalens.service.search import SearchService, calibration_pool
from catalens.service.telemetry import RecordingMetrics
from tests.unit.imagefactory import encode, photo
from tests.unit.test_search_service import StubCard, StubEmbedder

DIM = 16
SHELF, BACKGROUND = 14, 15  # what all shopper photos share, what all shop photos share
JPEG = encode(photo(64, 48, seed=3))


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def axis(index: int) -> np.ndarray:
    return np.eye(DIM, dtype=np.float32)[index]


def shop_photo(index: int) -> np.ndarray:
    return unit(axis(index) + 0.8 * axis(BACKGROUND))


def shopper_photo(index: int, rng: np.random.Generator) -> np.ndarray:
    return unit(axis(index) + 1.2 * axis(SHELF) + 0.05 * rng.normal(size=DIM))


HUB = unit(0.7 * axis(SHELF) + 0.7 * axis(BACKGROUND))


def record(item_id: str, vector: np.ndarray, sequence: int) -> ItemRecord:
    return ItemRecord(item_id, vector, {"title": item_id}, f"{item_id}.jpg", f"etag-{item_id}", f"{sequence:X}")


def catalog_records() -> list[ItemRecord]:
    items = [record(f"item-{i}", shop_photo(i), i + 1) for i in range(10)]
    return [*items, record("hub", HUB, 11)]


def reference(count: int = 40, seed: int = 0) -> QueryDomain:
    rng = np.random.default_rng(seed)
    domain = QueryDomain.from_samples([shopper_photo(i % 10, rng) for i in range(count)])
    assert domain is not None
    return domain


class Recording:
    """A real IndexView that records the pool sizes it is asked for; ``overrides`` replace its attributes."""

    def __init__(self, view: IndexView, **overrides: Any) -> None:
        self._view = view
        self.__dict__.update(overrides)
        self.searched_with: list[int] = []
        self.vectors_asked: list[bool] = []

    def search(self, query: np.ndarray, k: int, **kwargs: Any) -> list[Hit]:
        self.searched_with.append(k)
        self.vectors_asked.append(kwargs.get("vectors", True))
        return self._view.search(query, k, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)

    def __len__(self) -> int:
        return len(self._view)


@pytest.fixture
def embedder() -> StubEmbedder:
    stub = StubEmbedder()
    stub.next_vector = shopper_photo(3, np.random.default_rng(99))  # a shopper's photo of item-3
    return stub


@pytest.fixture
def view() -> Recording:
    return Recording(IndexView(None, catalog_records(), query_domain=reference()))


def ids(result: Any) -> list[str]:
    return [hit.item_id for hit in result.hits]


def photo_search(service: SearchService, **options: Any) -> Any:
    return service.search(SearchRequest(image=JPEG, options=SearchOptions(**options)))


# ------------------------------------------------------------------------------------------------ calibration


def test_a_hub_that_wins_plain_cosine_loses_after_calibration(view: Recording, embedder: StubEmbedder) -> None:
    service = SearchService(embedder=embedder, views=lambda: view)
    plain = photo_search(service, k=3, calibrate=False)
    assert ids(plain)[0] == "hub"  # the shelf it shares with every shopper photo beats the item itself
    assert plain.calibrated is False

    calibrated = photo_search(service, k=3)
    assert calibrated.calibrated is True
    assert ids(calibrated)[0] == "item-3"
    assert ids(calibrated).index("hub") > ids(plain).index("hub")
    assert calibrated.to_dict()["calibrated"] is True
    # a photo query reads at least the neighbours that vote for its category; the calibrated one a whole pool
    assert view.searched_with == [NEIGHBOURS, CALIBRATION_POOL]


def test_the_setting_off_or_no_query_domain_gives_the_plain_order(view: Recording, embedder: StubEmbedder) -> None:
    plain = photo_search(SearchService(embedder=embedder, views=lambda: view), k=5, calibrate=False)
    switched_off = photo_search(SearchService(embedder=embedder, views=lambda: view, calibration=False), k=5)
    no_domain = Recording(IndexView(None, catalog_records()))
    without = photo_search(SearchService(embedder=embedder, views=lambda: no_domain), k=5)
    no_mean = Recording(view._view, catalog_mean=None)
    unusable = photo_search(SearchService(embedder=embedder, views=lambda: no_mean), k=5)
    for result in (switched_off, without, unusable):
        assert result.calibrated is False
        assert [(h.item_id, h.score) for h in result.hits] == [(h.item_id, h.score) for h in plain.hits]
    assert no_domain.searched_with == [NEIGHBOURS]  # no domain: no calibration pool, only the category's neighbours


def test_a_domain_that_does_not_fit_the_index_serves_plain_cosine(view: Recording, embedder: StubEmbedder) -> None:
    rng = np.random.default_rng(5)
    other_model = QueryDomain(rng.normal(size=(40, DIM + 4)).astype(np.float32))
    left_out = Recording(IndexView(None, catalog_records(), query_domain=other_model))  # the view drops it
    handed_in = Recording(view._view, query_domain=other_model)  # a view that does not: the service copes
    for mismatched in (left_out, handed_in):
        result = photo_search(SearchService(embedder=embedder, views=lambda m=mismatched: m), k=3)
        assert result.calibrated is False
        assert ids(result)[0] == "hub"


def twin_catalog() -> Recording:
    """The catalog plus another edition of item-3 (cosine 0.97 to it) that looks less like shoppers' photos."""
    twin = unit(shop_photo(3) - 0.25 * axis(SHELF))
    records = [*catalog_records(), record("item-3-twin", twin, 12)]
    return Recording(IndexView(None, records, query_domain=reference()))


def test_a_copy_of_a_shop_photo_finds_its_own_item_first_uncalibrated(embedder: StubEmbedder) -> None:
    view = twin_catalog()
    item = view.vector_of("item-3")
    vectors = np.stack([view.vector_of(h.item_id) for h in view.search(item, 12)])
    calibrated = view.query_domain.calibrate(item, vectors, view.catalog_mean)[0]
    assert [h.item_id for h in view.search(item, 12)][int(np.argmax(calibrated))] == "item-3-twin"  # the trap

    service = SearchService(embedder=embedder, views=lambda: view)
    for copy in (item, unit(item + 0.2 * axis(7))):  # the photo itself, and a copy with a little change
        embedder.next_vector = copy
        result = photo_search(service, k=3, explain=True)
        assert ids(result)[:2] == ["item-3", "item-3-twin"]
        assert result.calibrated is False
        assert result.to_dict()["query"]["catalog_copy"] == "item-3"
        assert "hubness" not in result.hits[0].explain


def test_a_photo_just_below_the_copy_cosine_is_calibrated(embedder: StubEmbedder) -> None:
    view = twin_catalog()
    item = view.vector_of("item-3")
    embedder.next_vector = near = unit(item + 0.45 * axis(7))
    assert 0.85 < float(near @ item) < embedder.card.copy_cosine
    result = photo_search(SearchService(embedder=embedder, views=lambda: view), k=3)
    assert result.calibrated is True
    assert "catalog_copy" not in result.query


def test_the_copy_cosine_is_the_model_cards(embedder: StubEmbedder) -> None:
    """Where a copy begins depends on the model: the same photo is a copy under a card whose copy cosine it reaches."""
    view = twin_catalog()
    item = view.vector_of("item-3")
    embedder.next_vector = near = unit(item + 0.45 * axis(7))
    service = SearchService(embedder=embedder, views=lambda: view)
    for copy_cosine, is_copy in ((float(near @ item) + 0.001, False), (float(near @ item) - 0.001, True)):
        embedder.card = StubCard(copy_cosine=copy_cosine)
        result = photo_search(service, k=3)
        assert (result.calibrated, result.query.get("catalog_copy")) == (not is_copy, "item-3" if is_copy else None)


def test_item_queries_stay_plain_cosine(view: Recording, embedder: StubEmbedder) -> None:
    service = SearchService(embedder=embedder, views=lambda: view)
    similar = service.similar("item-3", SearchOptions(k=4, explain=True))
    assert similar.calibrated is False
    assert view.searched_with == [4]
    query = view.vector_of("item-3")
    for hit in similar.hits:
        assert hit.score == pytest.approx(float(query @ view.vector_of(hit.item_id)), abs=1e-5)
        assert "hubness" not in hit.explain
    assert embedder.calls == 0


def test_explain_shows_raw_centred_and_hubness(view: Recording, embedder: StubEmbedder) -> None:
    service = SearchService(embedder=embedder, views=lambda: view)
    raw = {h.item_id: h.score for h in photo_search(service, k=11, calibrate=False).hits}
    result = photo_search(service, k=11, explain=True)
    shown = result.to_dict()["hits"]
    assert [h["item_id"] for h in shown] == ids(result)
    for hit in shown:
        explain = hit["explain"]
        assert explain["raw"] == pytest.approx(raw[hit["item_id"]], abs=1e-5)
        assert hit["score"] == pytest.approx(explain["centred"] - explain["hubness"], abs=1e-5)
        assert explain["visual"] == pytest.approx(hit["score"], abs=1e-5)
    assert shown[0]["item_id"] == "item-3"
    assert [h["score"] for h in shown] == sorted((h["score"] for h in shown), reverse=True)
    assert "explain" not in photo_search(service, k=3).to_dict()["hits"][0]


def test_personal_reranking_runs_on_the_calibrated_scores(view: Recording, embedder: StubEmbedder) -> None:
    seen: list[list[tuple[str, float]]] = []

    def recording(hits: list[Hit], profile: Any, **kwargs: Any) -> list[Hit]:
        seen.append([(h.item_id, h.score) for h in hits])
        return rerank(hits, profile, **kwargs)

    service = SearchService(embedder=embedder, views=lambda: view, rerank=recording)
    result = photo_search(service, k=3, explain=True)  # explain runs the re-ranker even for a cold shopper
    assert result.calibrated is True
    assert seen[0][0][0] == "item-3"
    assert [(h.item_id, h.score) for h in result.hits] == seen[0][:3]  # a cold shopper keeps the calibrated order
    assert set(result.hits[0].explain) >= {"raw", "centred", "hubness", "visual", "final"}


def big_catalog(count: int = 130, seed: int = 7) -> list[ItemRecord]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, DIM)).astype(np.float32) + 2.0 * axis(BACKGROUND)
    return [record(f"sku-{i:03d}", unit(v), i + 1) for i, v in enumerate(vectors)]


def test_pages_slice_one_calibrated_ranking_beyond_the_first_pool(embedder: StubEmbedder) -> None:
    view = IndexView(None, big_catalog(), query_domain=reference())
    service = SearchService(embedder=embedder, views=lambda: view)
    whole = photo_search(service, k=100)
    pages = [photo_search(service, k=20, offset=offset) for offset in range(0, 100, 20)]
    assert all(page.calibrated for page in [whole, *pages])
    assert [item for page in pages for item in ids(page)] == ids(whole)
    assert [h.score for page in pages for h in page.hits] == [h.score for h in whole.hits]
    # calibration did reorder: it is not plain cosine
    assert ids(whole)[:CALIBRATION_POOL] != ids(photo_search(service, k=100, calibrate=False))[:CALIBRATION_POOL]


def test_calibration_pool_is_whole_blocks() -> None:
    assert [calibration_pool(n) for n in (1, 12, 50, 51, 100, 400)] == [50, 50, 50, 100, 100, 400]


def test_with_a_projection_the_domain_is_projected_like_the_queries(embedder: StubEmbedder) -> None:
    """A rotation (PCA of full rank, no mean) preserves every cosine: calibrated results must not change."""
    rng = np.random.default_rng(11)
    rotation, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
    projection = Projection("pca", np.zeros(DIM, np.float32), rotation.astype(np.float32), np.ones(DIM, np.float32))
    snapshot = build_snapshot(
        catalog_records(), model_fingerprint="stub-fp", params=BuildParams(layout="float32", projection=projection)
    )
    rotated = IndexView(snapshot, [], query_domain=reference())
    plain_space = IndexView(None, catalog_records(), query_domain=reference())

    in_rotation = photo_search(SearchService(embedder=embedder, views=lambda: rotated), k=6, explain=True)
    in_model_space = photo_search(SearchService(embedder=embedder, views=lambda: plain_space), k=6, explain=True)

    assert in_rotation.calibrated is True
    assert ids(in_rotation) == ids(in_model_space)
    assert [h.score for h in in_rotation.hits] == pytest.approx([h.score for h in in_model_space.hits], abs=1e-4)


# ------------------------------------------------------------------------------------------------ sampling


class RecordingSink:
    def __init__(self, error: Exception | None = None, gate: threading.Event | None = None) -> None:
        self.samples: list[tuple[np.ndarray, dict[str, Any]]] = []
        self.error = error
        self.gate = gate

    def write_query_sample(self, vector: np.ndarray, **kwargs: Any) -> str:
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.error is not None:
            raise self.error
        self.samples.append((vector, kwargs))
        return f"queries/samples/{len(self.samples)}.npy"


def sampling_service(view: Recording, embedder: StubEmbedder, sampler: QuerySampler) -> SearchService:
    return SearchService(embedder=embedder, views=lambda: view, query_samples=sampler)


def test_rate_zero_never_writes(view: Recording, embedder: StubEmbedder) -> None:
    sink = RecordingSink()
    sampler = QuerySampler(sink, rate=0.0)
    service = sampling_service(view, embedder, sampler)
    for _ in range(5):
        photo_search(service, k=2)
    sampler.flush()
    assert sink.samples == []
    assert sampler._executor is None  # no thread either


def test_rate_one_keeps_every_photo_query_and_nothing_but_its_embedding(
    view: Recording, embedder: StubEmbedder
) -> None:
    sink = RecordingSink()
    sampler = QuerySampler(sink, rate=1.0)
    service = sampling_service(view, embedder, sampler)
    photo_search(service, k=2, user_id="shopper-7")
    photo_search(service, k=2, calibrate=False)
    service.similar("item-1", SearchOptions(k=2))  # item queries are not shoppers' photos
    sampler.flush()
    sampler.close()
    assert len(sink.samples) == 2
    for vector, kwargs in sink.samples:
        assert kwargs == {"model_fingerprint": "stub-fp"}  # no user id, no photo, no request data
        np.testing.assert_array_equal(vector, embedder.next_vector)


def test_a_copy_of_a_shop_photo_is_not_sampled(view: Recording, embedder: StubEmbedder) -> None:
    sink = RecordingSink()
    sampler = QuerySampler(sink, rate=1.0)
    service = sampling_service(view, embedder, sampler)
    shopper = embedder.next_vector
    embedder.next_vector = view.vector_of("item-5")  # a screenshot of the shop's own photo
    assert photo_search(service, k=2).query["catalog_copy"] == "item-5"
    embedder.next_vector = shopper
    photo_search(service, k=2, calibrate=False)  # a shopper's photo is kept, calibrated or not
    sampler.flush()
    sampler.close()
    assert len(sink.samples) == 1
    np.testing.assert_array_equal(sink.samples[0][0], shopper)


def test_the_rate_is_a_probability_drawn_per_query(view: Recording, embedder: StubEmbedder) -> None:
    draws = iter([0.1, 0.9, 0.29, 0.3])
    sink = RecordingSink()
    sampler = QuerySampler(sink, rate=0.3, draw=lambda: next(draws))
    service = sampling_service(view, embedder, sampler)
    kept = []
    for _ in range(4):
        embedder.next_vector = shopper_photo(len(kept), np.random.default_rng(len(kept)))
        photo_search(service, k=1)
        sampler.flush()
        kept.append(len(sink.samples))
    assert kept == [1, 1, 2, 2]


def test_a_failing_sink_never_fails_the_search_and_is_counted(view: Recording, embedder: StubEmbedder) -> None:
    metrics = RecordingMetrics()
    sink = RecordingSink(error=OSError("s3 is down"))
    sampler = QuerySampler(sink, rate=1.0, metrics=metrics)
    service = SearchService(embedder=embedder, views=lambda: view, query_samples=sampler, metrics=metrics)
    result = photo_search(service, k=2)
    sampler.flush()
    assert ids(result)[0] == "item-3"
    assert metrics.total("QuerySampleErrors", error="OSError") == 1
    assert metrics.total("Searches", kind="photo") == 1


def test_the_search_does_not_wait_for_the_sample_write(view: Recording, embedder: StubEmbedder) -> None:
    gate = threading.Event()
    sink = RecordingSink(gate=gate)
    sampler = QuerySampler(sink, rate=1.0)
    result = photo_search(sampling_service(view, embedder, sampler), k=2)
    assert ids(result)[0] == "item-3"  # answered while the write is still blocked
    assert sink.samples == []
    gate.set()
    sampler.flush()
    assert len(sink.samples) == 1


def test_a_sink_that_falls_behind_drops_samples_instead_of_queueing_them(embedder: StubEmbedder) -> None:
    gate = threading.Event()
    sink = RecordingSink(gate=gate)
    sampler = QuerySampler(sink, rate=1.0)
    started = [sampler.offer(axis(0), model_fingerprint="fp") for _ in range(MAX_PENDING + 5)]
    assert started == [True] * MAX_PENDING + [False] * 5
    gate.set()
    sampler.flush()
    assert len(sink.samples) == MAX_PENDING
    assert sampler.offer(axis(0), model_fingerprint="fp") is True  # room again
    sampler.close()


def test_a_rate_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        QuerySampler(RecordingSink(), rate=1.5)


def test_only_a_search_the_reranker_reads_asks_for_its_hits_vectors(view: Recording, embedder: StubEmbedder) -> None:
    """Calibration works from the index's dot products, so a compact index rebuilds no vector for a plain photo
    search; the re-ranker (a profile, or explain) reads the vectors of the pool it re-ranks."""
    assert photo_search(SearchService(embedder=embedder, views=lambda: view), k=3).calibrated
    photo_search(SearchService(embedder=embedder, views=lambda: view, rerank=rerank), k=3)  # no profile, no explain
    photo_search(SearchService(embedder=embedder, views=lambda: view, rerank=rerank), k=3, explain=True)
    assert view.vectors_asked == [False, False, True]


def test_hits_keep_their_vectors_for_the_reranker(view: Recording, embedder: StubEmbedder) -> None:
    result = photo_search(SearchService(embedder=embedder, views=lambda: view), k=3)
    for hit in result.hits:
        np.testing.assert_array_equal(hit.vector, view.vector_of(hit.item_id))
