"""Words: tokenising, the BM25 index, text queries and photo + words fusion through the search service."""

from __future__ import annotations

import numpy as np
import pytest

from catalens.index import IndexView, ItemRecord, build_snapshot
from catalens.index.filters import Filter
from catalens.index.records import Hit
from catalens.ranking import rerank
from catalens.service.errors import RequestError
from catalens.service.requests import (
    Filters,
    HttpRequest,
    SearchOptions,
    SearchRequest,
    parse_search_request,
    parse_text_search,
)
from catalens.service.search import SearchService
from catalens.text.fusion import FusionParams, fuse
from catalens.text.lexical import LexicalIndex, query_terms
from catalens.text.tokens import fold, tokenize
from tests.unit.imagefactory import encode, photo
from tests.unit.test_search_service import StubEmbedder, unit

TITLES = {
    "oat": ("Oat milk", "dairy-free"),
    "whole": ("Whole milk 3.5%", "dairy"),
    "oatly": ("Oatly oat drink barista", "dairy-free"),
    "creme": ("Crème fraîche", "dairy"),
    "lactose": ("Lactose free milk 1,5%", "dairy"),
}


def records() -> list[ItemRecord]:
    return [
        ItemRecord(item_id, unit(1, 0.1 * n), {"title": title, "category": cat}, f"{item_id}.jpg", "e", f"{n + 1:X}")
        for n, (item_id, (title, cat)) in enumerate(TITLES.items())
    ]


@pytest.fixture
def view() -> IndexView:
    return IndexView(build_snapshot(records(), model_fingerprint="stub-fp"))


# ------------------------------------------------------------------------------------------------ tokens and BM25


def test_tokens_fold_accents_case_plurals_units_and_decimal_commas() -> None:
    assert tokenize("Crème BRÛLÉE 2x125g") == ["creme", "brulee", "2", "x", "125", "g"]
    assert tokenize("Tomatoes, berries & apples; glass citrus") == ["tomato", "berry", "apple", "glass", "citrus"]
    assert tokenize("1,5 %") == tokenize("1.5%") == ["1.5"]
    assert fold("ＯＡＴ Ærø Straße") == "oat aero strasse"
    assert tokenize("!!! --- ???") == []


def test_bm25_prefers_rarer_terms_and_shorter_fields_and_round_trips_through_arrays() -> None:
    docs = [{"title": "milk"}, {"title": "oat milk"}, {"description": "oat " + "filler " * 30}, {"title": "juice"}]
    index = LexicalIndex.build(docs)
    rows, scores = index.search("oat milk", 4)
    assert rows.tolist() == [1, 0, 2]  # both words > milk only > oat deep in a long description; juice never
    assert np.all(np.diff(scores) < 0)
    again = LexicalIndex.from_arrays(index.to_arrays())
    rows2, scores2 = again.search("oat milk", 4)
    assert rows2.tolist() == rows.tolist()
    assert np.array_equal(scores, scores2)
    assert index.score_rows(query_terms("oat milk"), np.array([0, 1, 3], np.int32)).tolist() == pytest.approx(
        [scores[1], scores[0], 0.0]
    )


def test_bm25_respects_the_allowed_mask_exclusions_and_k() -> None:
    index = LexicalIndex.build([{"title": "milk"}] * 5)
    allowed = np.array([True, False, True, True, True])
    rows, _ = index.search("milk", 2, allowed=allowed, exclude=np.array([0]))
    assert rows.tolist() == [2, 3]  # ties by row
    assert index.search("nothing", 3)[0].size == 0


# ------------------------------------------------------------------------------------------------ the view


def test_view_text_search_covers_fresh_items_deletes_and_filters(view: IndexView) -> None:
    fresh = ItemRecord("yog", unit(0, 1), {"title": "Oat yoghurt", "category": "dairy-free"}, "y.jpg", "e", "F")
    gone = ItemRecord("oat", None, {}, "oat.jpg", "e", "FF", deleted=True)
    live = IndexView(view.snapshot, [fresh, gone])
    found = [hit.item_id for hit in live.search_text("oat milk", 10)]
    assert found[0] != "oat"
    assert "oat" not in found
    assert "yog" in found
    assert [h.item_id for h in live.search_text("creme fraiche", 3)] == ["creme"]
    only = Filter.one_of("category", ["dairy-free"])
    assert {h.item_id for h in live.search_text("milk oat", 10, filters=only)} == {"oatly", "yog"}
    scores = live.text_scores("oat", ["oatly", "yog", "oat", "missing"])
    assert scores[0] > 0
    assert scores[1] > 0
    assert scores[2] == 0
    assert scores[3] == 0


def test_an_index_of_fresh_items_only_searches_by_words() -> None:
    assert [h.item_id for h in IndexView(None, records()).search_text("barista", 3)] == ["oatly"]


# ------------------------------------------------------------------------------------------------ requests


def post(body: str, query: dict[str, str] | None = None) -> HttpRequest:
    return HttpRequest(
        "POST",
        "/search",
        {"content-type": "application/json"},
        {k: (v,) for k, v in (query or {}).items()},
        body.encode(),
    )


def test_q_parses_from_json_and_from_get_and_with_a_photo_or_item() -> None:
    assert parse_search_request(post('{"q": "oat milk", "k": 3}')).text == "oat milk"
    with_item = parse_search_request(post('{"q": "oat", "item_id": "whole"}'))
    assert (with_item.text, with_item.item_id) == ("oat", "whole")
    got = parse_text_search({"q": ("oat milk",), "k": ("5",), "category": ("dairy",)})
    assert (got.text, got.options.k, dict(got.options.filters.equals)) == ("oat milk", 5, {"category": ("dairy",)})


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({}, "missing_query"),
        ({"q": ("",)}, "invalid_query"),
        ({"q": ("?!",)}, "invalid_query"),
        ({"q": ("x" * 201,)}, "invalid_query"),
        ({"q": ("oat\x00",)}, "invalid_query"),
        ({"q": ("oat",), "region": ("auto",)}, "invalid_parameter"),
        ({"q": ("oat",), "k": ("0",)}, "invalid_parameter"),
        ({"q": ("oat",), "bogus": ("1",)}, "unknown_parameter"),
    ],
)
def test_bad_text_queries_get_a_clear_400_code(query: dict[str, tuple[str, ...]], code: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_text_search(query)
    assert caught.value.code == code


def test_q_must_be_a_string_and_region_needs_a_photo() -> None:
    for body, code in [('{"q": 3}', "invalid_query"), ('{"q": "oat", "region": "auto"}', "invalid_region")]:
        with pytest.raises(RequestError) as caught:
            parse_search_request(post(body))
        assert caught.value.code == code


# ------------------------------------------------------------------------------------------------ the service


def test_a_text_query_ranks_by_words_filters_pages_and_explains(view: IndexView) -> None:
    service = SearchService(embedder=StubEmbedder(), views=lambda: view, rerank=rerank)
    answer = service.search(SearchRequest(text="oat milk", options=SearchOptions(k=2, explain=True))).to_dict()
    assert [h["item_id"] for h in answer["hits"]] == ["oat", "oatly"]
    assert answer["hits"][0]["score"] == 1.0
    assert answer["hits"][0]["explain"]["text"] > 0
    assert answer["query"] == {"type": "text", "q": "oat milk"}
    assert "category" not in answer
    page2 = service.search(SearchRequest(text="oat milk", options=SearchOptions(k=2, offset=2))).to_dict()
    everything = service.search(SearchRequest(text="oat milk", options=SearchOptions(k=10))).hits
    assert [h["item_id"] for h in page2["hits"]] == [h.item_id for h in everything[2:4]]
    assert {h.item_id for h in everything} == {"oat", "oatly", "whole", "lactose"}  # creme says neither word
    dairy = SearchOptions(filters=Filters(equals={"category": ("dairy",)}))
    assert {h.item_id for h in service.search(SearchRequest(text="milk", options=dairy)).hits} == {"whole", "lactose"}
    assert service.embedder.calls == 0


def test_words_beside_a_photo_lift_the_lookalike_that_says_them(view: IndexView) -> None:
    embedder = StubEmbedder()
    embedder.next_vector = unit(1, 0)  # looks most like "oat" (unit(1, 0)), then "whole", "oatly", ...
    service = SearchService(embedder=embedder, views=lambda: view, fusion=FusionParams(weight=0.2))
    jpeg = encode(photo())
    plain = service.search(SearchRequest(image=jpeg, options=SearchOptions(k=3)))
    words = service.search(SearchRequest(image=jpeg, text="lactose free", options=SearchOptions(k=3, explain=True)))
    assert plain.hits[0].item_id == "oat"
    assert words.hits[0].item_id == "lactose"
    top = words.to_dict()["hits"][0]["explain"]
    assert top["text"] > 0
    assert top["text_share"] == 1.0
    assert top["fused"] == pytest.approx(top["visual"] + 0.2)
    assert words.query["q"] == "lactose free"
    assert words.query["fusion"] == "linear"


def test_rrf_fusion_scores_first_in_both_lists_as_one() -> None:
    hits = [Hit(name, 0.0, {}, "") for name in "abc"]
    fused = fuse(hits, np.array([0.9, 0.8, 0.1]), np.array([5.0, 0.0, 1.0]), FusionParams(method="rrf"), explain=True)
    assert [h.item_id for h in fused] == ["a", "c", "b"]
    assert fused[0].score == pytest.approx(1.0)


class WordsOnTheLabel:
    def __init__(self, text: str) -> None:
        self.text, self.calls = text, 0

    def read_text(self, image: object) -> str:
        self.calls += 1
        return self.text


def test_a_photo_query_can_read_its_own_text_and_fuse_it(view: IndexView) -> None:
    embedder = StubEmbedder()
    embedder.next_vector = unit(1, 0)
    reader = WordsOnTheLabel("LACTOSE FREE")
    made = []
    service = SearchService(
        embedder=embedder,
        views=lambda: view,
        fusion=FusionParams(weight=0.2),
        text_reader=lambda: made.append(1) or reader,
    )
    jpeg = encode(photo())
    assert service.search(SearchRequest(image=jpeg)).hits[0].item_id == "oat"
    assert reader.calls == 0
    assert made == []  # no query asked: the reader is never made
    answer = service.search(SearchRequest(image=jpeg, read_text=True))
    assert answer.hits[0].item_id == "lactose"
    assert answer.query["read_text"] == "LACTOSE FREE"
    assert answer.timings.read > 0
    service.search(SearchRequest(image=jpeg, read_text=True))
    assert made == [1]  # made once


def test_read_text_without_a_reader_is_a_clear_400_and_needs_a_photo(view: IndexView) -> None:
    service = SearchService(embedder=StubEmbedder(), views=lambda: view)
    with pytest.raises(RequestError) as caught:
        service.search(SearchRequest(image=encode(photo()), read_text=True))
    assert caught.value.code == "read_text_unavailable"
    with pytest.raises(RequestError) as caught:
        parse_search_request(post('{"q": "oat", "read_text": true}'))
    assert caught.value.code == "invalid_parameter"


def test_q_that_is_not_unicode_text_is_refused() -> None:
    with pytest.raises(RequestError) as caught:
        parse_search_request(post('{"q": "oat \\ud800 milk"}'))
    assert caught.value.code == "invalid_query"


def test_views_over_one_snapshot_share_its_lexical_index_through_a_staged_load(view: IndexView) -> None:
    from dataclasses import replace as copy_of

    from catalens.text.catalog import built_index

    view.search_text("oat", 1)
    built = built_index(view.snapshot)
    fresh = ItemRecord("new", unit(0, 1), {"title": "Oat cream"}, "n.jpg", "e", "F")
    IndexView(view.snapshot, [fresh]).search_text("oat", 1)
    full = copy_of(view.snapshot)  # what a staged load swaps in: another object, the same version and records
    IndexView(full).search_text("oat", 1)
    assert built is not None
    assert built_index(full) is built
    assert built_index(build_snapshot(records(), model_fingerprint="stub-fp")) is None  # same version, new records


def test_a_backend_without_a_word_index_answers_400_text_search_unavailable() -> None:
    from catalens.adapters.s3vectors import S3VectorsView
    from catalens.errors import TextSearchUnavailableError
    from catalens.service.errors import http_status_for

    with pytest.raises(TextSearchUnavailableError) as caught:
        S3VectorsView.search_text(None, "oat", 3)  # type: ignore[arg-type]
    assert http_status_for(caught.value) == 400


def test_a_long_or_wordy_query_is_bounded() -> None:
    terms = query_terms(" ".join(f"w{n}" for n in range(200)))
    assert len(terms) == 32
    assert max(map(len, tokenize("x" * 500))) == 40


def test_the_text_bench_queries_come_from_its_own_catalog_and_find_their_item() -> None:
    from catalens_tools.commands.bench_search import synthetic_texts, text_queries

    texts = synthetic_texts(500, seed=0)
    assert texts == synthetic_texts(500, seed=0)  # deterministic
    index = LexicalIndex.build({"title": title, "description": description} for title, description in texts)
    queries = text_queries(500, seed=0, count=40)
    answered = [index.search(query, 12)[0].size for query in queries]
    assert all(answered)  # every query is made of catalog words


def test_words_no_candidate_says_leave_the_visual_order_exactly() -> None:
    hits = [Hit(name, score, {}, "") for name, score in (("b", 0.5), ("a", 0.9), ("c", 0.1))]  # served order
    fused = fuse(hits, np.array([0.5, 0.9, 0.1]), np.zeros(3), FusionParams(), explain=False)
    assert [h.item_id for h in fused] == ["b", "a", "c"]


def test_a_text_query_is_personalised_over_a_wider_pool_with_vectors(view: IndexView) -> None:
    from tests.unit.test_search_service import StubProfiles, reverse_rerank

    seen: list[list[bool]] = []

    def spy(hits: list[Hit], profile: object, **kwargs: object) -> list[Hit]:
        seen.append([hit.vector is not None for hit in hits])
        return reverse_rerank(hits, profile, **kwargs)

    profiles = StubProfiles()
    service = SearchService(embedder=StubEmbedder(), views=lambda: view, profiles=profiles, rerank=spy)
    mine = service.search(SearchRequest(text="milk", options=SearchOptions(k=1, user_id="u1")))
    assert profiles.loaded == ["u1"]
    assert mine.personalized
    assert all(seen[-1])  # the profile's vector term gets the hits' vectors
    assert len(seen[-1]) > 1  # the whole pool, not just the page, is re-ranked
    plain = service.search(SearchRequest(text="milk", options=SearchOptions(k=1)))
    assert not plain.personalized
    assert mine.hits[0].item_id != plain.hits[0].item_id  # reversed over the pool
