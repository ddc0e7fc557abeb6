"""Re-ranking: cold users keep the visual order, the personal boost is bounded, every part is explained."""

from __future__ import annotations

import random

import numpy as np
import pytest

from catalens.index.records import Hit
from catalens.profiles import Profile, ProfileParams, ShopperEvent, apply_event
from catalens.ranking import RerankParams, first_stage_k, rerank

T0 = 1_732_600_000_000
DIM = 16


def make_hits(n: int, seed: int = 0, *, brands=("acme", "zeta"), categories=("fruit", "veg")) -> list[Hit]:
    rng = np.random.default_rng(seed)
    scores = np.sort(rng.uniform(0.5, 0.9, n))[::-1]
    return [
        Hit(
            item_id=f"i{index}",
            score=float(score),
            fields={
                "brand": brands[index % len(brands)],
                "category": categories[index % len(categories)],
                "price": float(1 + index % 7),
            },
            image_key=f"photos/i{index}.jpg",
            vector=rng.normal(size=DIM).astype(np.float32),
        )
        for index, score in enumerate(scores)
    ]


def profile_from(hits: list[Hit], likes, *, events: int = 20, kind: str = "purchase") -> Profile:
    profile = None
    liked = [hit for hit in hits if likes(hit)]
    for n in range(events):
        hit = liked[n % len(liked)]
        event = ShopperEvent("u1", f"e{n}", T0 + n * 1000, kind, hit.item_id)
        profile = apply_event(profile, event, hit.vector, hit.fields).profile
    return profile


def test_no_profile_keeps_the_visual_order_exactly():
    hits = make_hits(60)
    ranked = rerank(hits, None)
    assert [h.item_id for h in ranked] == [h.item_id for h in hits]
    assert [h.score for h in ranked] == [h.score for h in hits]
    assert all(h.explain["visual"] == h.explain["final"] == h.score for h in ranked)


def test_personalize_false_keeps_the_visual_order_exactly():
    hits = make_hits(60)
    profile = profile_from(hits, lambda h: h.fields["brand"] == "zeta")
    ranked = rerank(hits, profile, personalize=False)
    assert [h.item_id for h in ranked] == [h.item_id for h in hits]


def test_a_low_confidence_profile_counts_as_cold():
    hits = make_hits(60)
    profile = profile_from(hits, lambda h: h.fields["brand"] == "zeta", events=1, kind="view")
    assert profile.confidence() < 0.1
    ranked = rerank(hits, profile, params=RerankParams(min_confidence=0.1))
    assert [h.item_id for h in ranked] == [h.item_id for h in hits]


def test_an_erased_profile_counts_as_cold():
    hits = make_hits(30)
    ranked = rerank(hits, Profile.erased("u1", erased_at_ms=T0))
    assert [h.item_id for h in ranked] == [h.item_id for h in hits]


def test_a_stale_profile_fades_to_cold_when_now_is_given():
    hits = make_hits(30)
    profile = profile_from(hits, lambda h: h.fields["brand"] == "zeta", events=3, kind="click")
    idle = profile.last_ms + 400 * 86_400_000
    ranked = rerank(hits, profile, now_ms=idle)
    assert [h.item_id for h in ranked] == [h.item_id for h in hits]


def test_the_shoppers_brand_moves_up_among_close_candidates():
    hits = make_hits(60)
    profile = profile_from(hits, lambda h: h.fields["brand"] == "zeta")
    ranked = rerank(hits, profile)
    top_plain = sum(h.fields["brand"] == "zeta" for h in hits[:10])
    top_ranked = sum(h.fields["brand"] == "zeta" for h in ranked[:10])
    assert top_ranked > top_plain
    assert all(h.explain["affinity"] > 0 for h in ranked if h.fields["brand"] == "zeta")


def test_the_boost_is_bounded_so_visual_similarity_stays_dominant():
    params = RerankParams(personal_weight=1.0, brand_weight=1.0, category_weight=1.0, price_weight=1.0, max_boost=0.03)
    for seed in range(20):
        hits = make_hits(80, seed)
        rng = random.Random(seed)
        profile = profile_from(hits, lambda h, r=rng: r.random() < 0.3)
        ranked = rerank(hits, profile, params=params)
        position = {h.item_id: rank for rank, h in enumerate(ranked)}
        for a in hits:
            for b in hits:
                if a.score - b.score > 2 * params.max_boost:
                    assert position[a.item_id] < position[b.item_id]
        assert all(abs(h.explain["boost"]) <= params.max_boost + 1e-12 for h in ranked)


def test_explain_shows_every_part_and_they_add_up():
    hits = make_hits(40)
    profile = profile_from(hits, lambda h: h.fields["category"] == "veg")
    params = RerankParams(price_weight=0.01, diversity_weight=0.05, near_duplicate=0.5)
    ranked = rerank(hits, profile, params=params)
    for hit in ranked:
        explain = hit.explain
        assert set(explain) >= {"visual", "personal", "affinity", "price", "cooc", "boost", "diversity", "final"}
        parts = explain["personal"] + explain["affinity"] + explain["price"] + explain["cooc"]
        assert explain["boost"] == pytest.approx(np.clip(parts, -params.max_boost, params.max_boost))
        assert explain["final"] == pytest.approx(explain["visual"] + explain["boost"] + explain["diversity"])
        assert hit.score == explain["final"]
    assert sorted(h.item_id for h in ranked) == sorted(h.item_id for h in hits)


def test_personal_term_follows_the_preference_vector():
    hits = make_hits(50, brands=("same",), categories=("same",))
    favourite = hits[30]
    profile = profile_from(hits, lambda h: h.item_id == favourite.item_id)
    ranked = rerank(hits, profile, params=RerankParams(personal_weight=0.05))
    personal = {h.item_id: h.explain["personal"] for h in ranked}
    assert personal[favourite.item_id] == max(personal.values())
    assert next(i for i, h in enumerate(ranked) if h.item_id == favourite.item_id) < 30


def test_cooccurrence_boosts_items_other_shoppers_engaged_with_alongside():
    hits = make_hits(40, brands=("same",), categories=("same",))
    profile = profile_from(hits, lambda h: h.item_id == "i0")
    profile.cooc = {"i25": 0.4, "i30": 0.1}
    ranked = rerank(hits, profile, params=RerankParams(cooc_weight=0.05, personal_weight=0.0))
    cooc = {h.item_id: h.explain["cooc"] for h in ranked}
    assert cooc["i25"] > cooc["i30"] > 0
    assert cooc["i1"] == 0
    assert [h.item_id for h in ranked].index("i25") < 25


def test_diversity_pushes_near_copies_of_a_placed_item_down():
    hits = make_hits(30, brands=("same",), categories=("same",))
    for copy in hits[1:4]:  # three near-copies of the best hit
        copy.vector = hits[0].vector + np.float32(0.01)
    profile = profile_from(hits, lambda h: h.item_id == "i10")
    plain = rerank(hits, profile, params=RerankParams(personal_weight=0.0, brand_weight=0.0, category_weight=0.0))
    diverse = rerank(hits, profile, params=RerankParams(diversity_weight=0.2, near_duplicate=0.9))
    copies = {"i1", "i2", "i3"}
    assert [h.item_id for h in plain[:4]] == ["i0", "i1", "i2", "i3"]
    assert not copies & {h.item_id for h in diverse[:4]}
    assert all(h.explain["diversity"] < 0 for h in diverse if h.item_id in copies)


def test_a_profile_from_another_index_space_only_loses_the_vector_term():
    hits = make_hits(30)
    profile = profile_from(hits, lambda h: h.fields["brand"] == "zeta")
    profile.vector = np.ones(DIM * 2)
    ranked = rerank(hits, profile)
    assert all(h.explain["personal"] == 0 for h in ranked)
    assert any(h.explain["affinity"] != 0 for h in ranked)


def test_hits_without_vectors_are_ranked_without_failing():
    hits = make_hits(20)
    for hit in hits[::2]:
        hit.vector = None
    profile = profile_from(make_hits(20), lambda h: h.fields["brand"] == "zeta")
    ranked = rerank(hits, profile, params=RerankParams(diversity_weight=0.1))
    assert len(ranked) == 20
    assert all(h.explain["personal"] == 0 for h in ranked if h.vector is None)


def test_rerank_does_not_modify_its_input():
    hits = make_hits(20)
    before = [(h.item_id, h.score, dict(h.explain)) for h in hits]
    rerank(hits, profile_from(hits, lambda h: h.fields["brand"] == "zeta"))
    assert [(h.item_id, h.score, dict(h.explain)) for h in hits] == before


def test_empty_candidates():
    assert rerank([], profile_from(make_hits(5), lambda h: True)) == []


def test_dismissed_items_sink():
    hits = make_hits(40, brands=("same",), categories=("same",))
    profile = None
    for n in range(6):
        hit = hits[2]
        event = ShopperEvent("u1", f"e{n}", T0 + n, "dismiss", hit.item_id)
        profile = apply_event(profile, event, hit.vector, hit.fields, params=ProfileParams()).profile
    ranked = rerank(hits, profile, params=RerankParams(personal_weight=0.05))
    assert [h.item_id for h in ranked].index("i2") > 2


@pytest.mark.parametrize(("k", "offset", "expected"), [(12, 0, 50), (20, 0, 80), (10, 40, 200), (100, 0, 400)])
def test_first_stage_asks_for_a_wider_pool(k, offset, expected):
    assert first_stage_k(k, offset) == expected
    assert first_stage_k(k, offset) >= k + offset


def test_a_profile_vector_from_another_index_space_is_ignored():
    hits = make_hits(30)
    profile = profile_from(hits, lambda h: h.fields["brand"] == "zeta")
    profile.space = "model-a/identity"
    assert any(h.explain["personal"] != 0 for h in rerank(hits, profile, space="model-a/identity"))
    other = rerank(hits, profile, space="model-a/pca-1234")
    assert all(h.explain["personal"] == 0 for h in other)
    assert any(h.explain["affinity"] != 0 for h in other)


def test_limit_returns_the_same_head():
    hits = make_hits(60)
    profile = profile_from(hits, lambda h: h.fields["brand"] == "zeta")
    full = rerank(hits, profile)
    head = rerank(hits, profile, limit=12)
    assert [h.item_id for h in head] == [h.item_id for h in full[:12]]
    assert [h.explain for h in head] == [h.explain for h in full[:12]]
    assert [h.item_id for h in rerank(hits, None, limit=5)] == [h.item_id for h in hits[:5]]
