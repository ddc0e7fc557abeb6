"""SearchService over a real IndexView with a stub embedder: ranking, filters, paging, errors, personalisation hooks."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from catalens.errors import ModelError
from catalens.imaging import InvalidRegionError, PreprocessConfig, Region
from catalens.index import IndexView, ItemRecord, Snapshot, build_snapshot
from catalens.index.records import Hit
from catalens.profiles import ProfileUpdater, ShopperEvent, index_lookup
from catalens.ranking import RerankParams, rerank
from catalens.service.errors import ItemNotFoundError, UnknownFilterError
from catalens.service.requests import Filters, SearchOptions, SearchRequest
from catalens.service.search import SearchService, hit_to_dict, to_index_filter
from catalens.service.telemetry import RecordingMetrics
from catalens_tools.in_memory.profiles import InMemoryProfileStore
from tests.unit.imagefactory import encode, photo

DIM = 8


class StubCard:
    name = "stub"
    preprocess = PreprocessConfig()

    def __init__(self, copy_cosine: float = 0.94) -> None:
        self.copy_cosine = copy_cosine

    def fingerprint(self) -> str:
        return "stub-fp"

    def check_matches(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint():
            raise ModelError(f"index built with {fingerprint!r}, not {self.fingerprint()!r}", code="model_mismatch")


class StubEmbedder:
    """Returns ``next_vector`` for any photo, after the real decode + preprocess ran."""

    card = StubCard()

    def __init__(self) -> None:
        self.next_vector = np.eye(DIM, dtype=np.float32)[0]
        self.calls = 0

    def embed(self, batch: np.ndarray) -> np.ndarray:
        assert batch.shape == (1, 3, 224, 224)
        self.calls += 1
        return self.next_vector[np.newaxis]


def unit(*values: float) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


ITEMS = {
    "a": (unit(1, 0.1), {"category": "shoes", "price": 10.0, "size": 42}),
    "b": (unit(1, 0.3), {"category": "bags", "price": 20.0, "size": 40}),
    "c": (unit(1, 0.6), {"category": "shoes", "price": 30.0}),
    "d": (unit(0.2, 1), {"category": "shoes", "price": 40.0, "brand": "acme"}),
    "e": (unit(0, 0, 1), {"category": "hats", "price": 50.0}),
}


@pytest.fixture
def view() -> IndexView:
    records = [
        ItemRecord(item_id, vector, fields, f"{item_id}.jpg", f"etag-{item_id}", f"{i + 1:X}")
        for i, (item_id, (vector, fields)) in enumerate(ITEMS.items())
    ]
    return IndexView(None, records)


@pytest.fixture
def embedder() -> StubEmbedder:
    return StubEmbedder()


def service_for(view: IndexView, embedder: StubEmbedder, **kwargs: Any) -> SearchService:
    return SearchService(embedder=embedder, views=lambda: view, **kwargs)


JPEG = encode(photo(128, 96, seed=1))


def test_photo_query_ranks_by_cosine_and_reports_timings(view: IndexView, embedder: StubEmbedder) -> None:
    result = service_for(view, embedder).search(SearchRequest(image=JPEG, options=SearchOptions(k=3)))
    assert [hit.item_id for hit in result.hits] == ["a", "b", "c"]
    assert result.hits[0].score == pytest.approx(float(unit(1, 0.1) @ unit(1)), abs=1e-5)
    assert result.item_count == 5
    assert result.index_version == view.version
    assert result.timings.decode > 0
    assert result.timings.embed > 0
    assert "embed;dur=" in result.timings.server_timing()
    assert embedder.calls == 1


def test_a_photo_answer_names_the_box_it_searched(view: IndexView, embedder: StubEmbedder) -> None:
    service = service_for(view, embedder)
    whole = service.search(SearchRequest(image=JPEG, options=SearchOptions(k=1)))
    assert whole.query["region"] == {
        "source": "full",
        "box": [0, 0, 128, 96],
        "normalized": [0.0, 0.0, 1.0, 1.0],
        "image_size": [128, 96],
    }
    part = service.search(SearchRequest(image=JPEG, region=Region(0, 0, 0.5, 1)))
    assert part.query["region"]["source"] == "request"
    assert part.query["region"]["box"] == [0, 0, 64, 96]
    assert service.search(SearchRequest(image=JPEG, region="full")).query["region"]["source"] == "full"


def test_a_box_outside_the_photo_is_refused_and_nothing_is_searched(view: IndexView, embedder: StubEmbedder) -> None:
    metrics = RecordingMetrics()
    with pytest.raises(InvalidRegionError, match="outside the photo"):
        service_for(view, embedder, metrics=metrics).search(SearchRequest(image=JPEG, region=Region(0, 0, 200, 96)))
    assert embedder.calls == 0


def test_item_query_excludes_the_item_and_needs_no_embedding(view: IndexView, embedder: StubEmbedder) -> None:
    result = service_for(view, embedder).similar("a", SearchOptions(k=2))
    assert [hit.item_id for hit in result.hits] == ["b", "c"]
    assert embedder.calls == 0
    assert result.query == {"type": "item", "item_id": "a"}


def test_filters_apply_before_the_cut(view: IndexView, embedder: StubEmbedder) -> None:
    service = service_for(view, embedder)
    options = SearchOptions(k=10, filters=Filters(equals={"category": ("shoes",)}, price_max=35.0))
    assert [h.item_id for h in service.search(SearchRequest(image=JPEG, options=options)).hits] == ["a", "c"]
    typed = SearchOptions(filters=Filters(equals={"size": ("42",)}))  # query strings carry text
    assert [h.item_id for h in service.search(SearchRequest(image=JPEG, options=typed)).hits] == ["a"]


def test_unknown_filter_field_is_rejected_but_delta_fields_are_known(view: IndexView, embedder: StubEmbedder) -> None:
    service = service_for(view, embedder)
    with pytest.raises(UnknownFilterError, match="colour"):
        service.search(SearchRequest(image=JPEG, options=SearchOptions(filters=Filters(equals={"colour": ("red",)}))))
    brand = SearchOptions(filters=Filters(equals={"brand": ("acme",)}))  # a standard field
    assert [h.item_id for h in service.search(SearchRequest(image=JPEG, options=brand)).hits] == ["d"]
    size = SearchOptions(filters=Filters(equals={"size": (40,)}))  # an extra field some item carries
    assert [h.item_id for h in service.search(SearchRequest(image=JPEG, options=size)).hits] == ["b"]


def catalog_snapshot() -> Snapshot:
    records = [
        ItemRecord(item_id, vector, fields, f"{item_id}.jpg", f"etag-{item_id}", f"{i + 1:X}")
        for i, (item_id, (vector, fields)) in enumerate(ITEMS.items())
    ]
    return build_snapshot(records, model_fingerprint=StubCard().fingerprint())


def test_a_fresh_items_fields_are_filterable_before_the_builder_compacts_it(embedder: StubEmbedder) -> None:
    snapshot = catalog_snapshot()
    fresh = ItemRecord("f", unit(1, 0.2), {"category": "shoes", "colour": "red"}, "f.jpg", "etag-f", "10")
    colour = SearchOptions(filters=Filters(equals={"colour": ("red",)}))
    with pytest.raises(UnknownFilterError, match="colour"):  # no item has the field yet
        service_for(IndexView(snapshot), embedder).search(SearchRequest(image=JPEG, options=colour))
    over_snapshot = service_for(IndexView(snapshot, [fresh]), embedder)
    assert [h.item_id for h in over_snapshot.search(SearchRequest(image=JPEG, options=colour)).hits] == ["f"]


def test_a_field_kept_without_a_column_stays_filterable_once_compacted(embedder: StubEmbedder) -> None:
    items = {"a": {"size": 42}, "b": {"size": "XL"}}  # mixed types: the snapshot keeps no column for it
    records = [
        ItemRecord(item_id, ITEMS[item_id][0], fields, f"{item_id}.jpg", f"etag-{item_id}", f"{i + 1:X}")
        for i, (item_id, fields) in enumerate(items.items())
    ]
    snapshot = build_snapshot(records, model_fingerprint=StubCard().fingerprint())
    assert not snapshot.columns.has("size")
    size = SearchOptions(filters=Filters(equals={"size": ("XL",)}))
    for view in (IndexView(None, records), IndexView(snapshot)):  # fresh, then compacted
        result = service_for(view, embedder).search(SearchRequest(image=JPEG, options=size))
        assert [h.item_id for h in result.hits] == ["b"]


def test_paging_slices_one_ranking(view: IndexView, embedder: StubEmbedder) -> None:
    service = service_for(view, embedder)
    whole = [h.item_id for h in service.search(SearchRequest(image=JPEG, options=SearchOptions(k=5))).hits]
    page = service.search(SearchRequest(image=JPEG, options=SearchOptions(k=2, offset=2)))
    assert [h.item_id for h in page.hits] == whole[2:4]
    assert (page.k, page.offset) == (2, 2)


def test_unknown_item_and_empty_index(view: IndexView, embedder: StubEmbedder) -> None:
    with pytest.raises(ItemNotFoundError):
        service_for(view, embedder).get_item("zzz")
    with pytest.raises(ItemNotFoundError):
        service_for(view, embedder).similar("zzz", SearchOptions())
    empty = service_for(IndexView(None, []), embedder).search(SearchRequest(image=JPEG))
    assert (empty.hits, empty.item_count) == ([], 0)


def test_get_item_and_health(view: IndexView, embedder: StubEmbedder) -> None:
    service = service_for(view, embedder)
    item = service.get_item("d")
    assert item["fields"]["brand"] == "acme"
    assert item["image_key"] == "d.jpg"
    assert item["near_duplicates"] == []
    health = service.health()
    assert (health["item_count"], health["index_version"], health["model"]["fingerprint"]) == (
        5,
        view.version,
        "stub-fp",
    )
    assert health["personalization"] is False


class StubProfiles:
    def __init__(self, embedder: StubEmbedder | None = None) -> None:
        self.loaded: list[str] = []
        self.deleted: list[str] = []
        self.embedder = embedder
        self.embeds_before_read: list[int] = []

    def get_async(self, user_id: str) -> Future[Any]:
        self.loaded.append(user_id)
        if self.embedder is not None:
            self.embeds_before_read.append(self.embedder.calls)
        future: Future[Any] = Future()
        future.set_result({"user": user_id})
        return future

    def delete(self, user_id: str) -> None:
        self.deleted.append(user_id)


def reverse_rerank(hits: list[Hit], profile: Any, **_: Any) -> list[Hit]:
    """A stand-in re-ranker that visibly reorders and fills ``explain`` like catalens.ranking does."""
    if profile is None:
        return [replace(h, explain={"visual": h.score, "final": h.score}) for h in hits]
    return [replace(h, explain={"visual": h.score, "boost": 0.01, "final": h.score}) for h in reversed(hits)]


def test_personalisation_widens_the_pool_and_reorders(view: IndexView, embedder: StubEmbedder) -> None:
    profiles = StubProfiles()
    service = service_for(view, embedder, profiles=profiles, rerank=reverse_rerank)
    result = service.search(SearchRequest(image=JPEG, options=SearchOptions(k=2, user_id="u1")))
    assert profiles.loaded == ["u1"]
    assert result.personalized is True
    assert [h.item_id for h in result.hits] == ["e", "d"]  # reversed over the whole pool, not just the page
    plain = service.search(SearchRequest(image=JPEG, options=SearchOptions(k=2, user_id="u1", personalize=False)))
    assert profiles.loaded == ["u1"]  # personalize=false never reads the profile
    assert (plain.personalized, [h.item_id for h in plain.hits]) == (False, ["a", "b"])
    assert service.forget_user("u1") == {"user_id": "u1", "deleted": True}
    assert profiles.deleted == ["u1"]


def test_without_profile_store_erasure_is_a_no_op(view: IndexView, embedder: StubEmbedder) -> None:
    assert service_for(view, embedder).forget_user("u2") == {"user_id": "u2", "deleted": False}


class InSpace:
    """``view`` as if its snapshot were built with model ``fingerprint`` and no projection."""

    def __init__(self, view: IndexView, fingerprint: str) -> None:
        self._view = view
        self.index_space = f"{fingerprint}/identity"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)

    def __len__(self) -> int:
        return len(self._view)


def test_profile_read_starts_before_the_photo_is_embedded_and_rerank_gets_clock_space_and_page(
    view: IndexView, embedder: StubEmbedder
) -> None:
    profiles = StubProfiles(embedder)
    calls: list[dict[str, Any]] = []

    def recording_rerank(hits: list[Hit], profile: Any, **kwargs: Any) -> list[Hit]:
        calls.append(kwargs)
        return reverse_rerank(hits, profile)

    service = SearchService(
        embedder=embedder,
        views=lambda: InSpace(view, "fp-1"),
        profiles=profiles,
        rerank=recording_rerank,
        wall_clock_ms=lambda: 1_800_000_000_000,
    )
    service.search(SearchRequest(image=JPEG, options=SearchOptions(k=2, offset=1, user_id="u1")))

    assert profiles.embeds_before_read == [0]  # the read was under way before decode + embed
    assert embedder.calls == 1
    assert calls == [{"now_ms": 1_800_000_000_000, "space": "fp-1/identity", "limit": 3}]


T0 = 1_732_600_000_000
DAY_MS = 86_400_000
STRONG = RerankParams(category_weight=0.5, brand_weight=0.0, personal_weight=0.0, max_boost=0.5)


def test_cold_idle_erased_and_opted_out_shoppers_get_exactly_the_plain_order(
    view: IndexView, embedder: StubEmbedder
) -> None:
    """Real re-ranking over the in-memory store: only a warm profile may change the list."""
    wall_clock = [T0 + 20_000]
    store = InMemoryProfileStore(clock_ms=lambda: wall_clock[0])
    updater = ProfileUpdater(store=store, lookup=index_lookup(lambda: view))
    for n in range(20):  # a bag lover
        updater.handle(ShopperEvent("warm", f"e{n}", T0 + n * 1000, "purchase", "b"))
    service = service_for(
        view, embedder, profiles=store, rerank=rerank, rank_params=STRONG, wall_clock_ms=lambda: wall_clock[0]
    )

    def ranking(**options: Any) -> list[tuple[str, float]]:
        result = service.search(SearchRequest(image=JPEG, options=SearchOptions(k=4, **options)))
        return [(hit.item_id, hit.score) for hit in result.hits]

    plain = ranking()
    assert [item for item, _ in plain] == ["a", "b", "c", "d"]
    assert [item for item, _ in ranking(user_id="warm")][:2] == ["b", "a"]  # the profile is strong enough to matter
    assert ranking(user_id="warm", personalize=False) == plain
    assert ranking(user_id="nobody") == plain
    assert ranking(user_id="nobody", explain=True) == plain
    wall_clock[0] = T0 + 3650 * DAY_MS  # ten idle years: confidence has faded below the threshold
    assert ranking(user_id="warm") == plain

    wall_clock[0] = T0 + 30_000
    assert service.forget_user("warm") == {"user_id": "warm", "deleted": True}
    assert ranking(user_id="warm") == plain  # erased: no personalisation ...
    for n in range(20):  # ... until new events arrive
        updater.handle(ShopperEvent("warm", f"new{n}", T0 + 40_000 + n * 1000, "purchase", "b"))
    assert [item for item, _ in ranking(user_id="warm")][:2] == ["b", "a"]


def test_hit_serialisation_hides_vectors_and_shows_explain_on_demand() -> None:
    hit = Hit("x", 0.5, {"title": "t"}, "x.jpg", vector=np.ones(3), explain={"visual": 0.5, "final": 0.55})
    assert hit_to_dict(hit, explain=False) == {
        "item_id": "x",
        "score": 0.5,
        "image_key": "x.jpg",
        "fields": {"title": "t"},
    }
    assert hit_to_dict(hit, explain=True)["explain"] == {"visual": 0.5, "final": 0.55}
    assert hit_to_dict(Hit("y", float("nan"), {}, ""), explain=True)["score"] == 0.0


def test_index_filter_matches_numbers_and_booleans_spelled_as_text() -> None:
    flt = to_index_filter(Filters(equals={"size": ("42",), "vegan": ("true",)}, price_min=1.0))
    assert flt.matches({"size": 42, "vegan": True, "price": 2.0})
    assert not flt.matches({"size": 42, "vegan": True, "price": 0.5})
    assert to_index_filter(Filters()) is None


def test_each_answered_search_records_one_outcome_by_kind(view: IndexView, embedder: StubEmbedder) -> None:
    metrics = RecordingMetrics()
    service = service_for(view, embedder, metrics=metrics)
    service.search(SearchRequest(image=JPEG, options=SearchOptions(k=3)))
    service.similar("a", SearchOptions(k=2, filters=Filters(equals={"category": ("shoes",)})))
    with pytest.raises(ItemNotFoundError):
        service.similar("nope", SearchOptions())  # a rejected request is the handler's ClientErrors, not a search

    assert [(p.name, p.dimensions) for p in metrics.points] == [
        ("Searches", {"kind": "photo"}),
        ("SearchHits", {"kind": "photo"}),
        ("SearchMs", {"kind": "photo"}),
        ("Searches", {"kind": "item"}),
        ("SearchHits", {"kind": "item"}),
        ("SearchMs", {"kind": "item"}),
    ]
    assert metrics.total("SearchHits", kind="photo") == 3
    assert metrics.total("SearchHits", kind="item") == 2  # c and d: the shoes other than a
    assert all(p.value > 0 and p.unit == "Milliseconds" for p in metrics.points if p.name == "SearchMs")
