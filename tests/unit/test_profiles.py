"""Profiles: event validation, decay, idempotency, out-of-order delivery, erasure, storage, concurrency."""

from __future__ import annotations

import random
import re
import threading
from decimal import Decimal

import numpy as np
import pytest

from catalens.cooccurrence import CooccurrenceCounts, conditional_probabilities, pair_updates
from catalens.profiles import (
    Profile,
    ProfileConflictError,
    ProfileParams,
    ProfileUpdater,
    ShopperEvent,
    ShopperEventError,
    apply_event,
    event_from_item,
    event_from_stream_image,
    event_key,
    replay,
)
from catalens.profiles.profile import DAY_MS, RANKING_ATTRIBUTES
from catalens_tools.in_memory.profiles import InMemoryProfileStore

T0 = 1_732_600_000_000  # 2024-11-26, epoch ms
DIM = 8


def unit(index: int, dim: int = DIM) -> np.ndarray:
    vector = np.zeros(dim, dtype=np.float32)
    vector[index] = 1.0
    return vector


CATALOG = {
    "red-1": (unit(0), {"category": "fruit", "brand": "acme", "price": 2.0}),
    "red-2": (unit(0) + 0.1 * unit(1), {"category": "fruit", "brand": "acme", "price": 2.5}),
    "green-1": (unit(2), {"category": "veg", "brand": "zeta", "price": 8.0}),
    "blue-1": (unit(3), {"category": "dairy", "brand": "moo", "price": 1.0}),
}


def lookup(item_id: str):
    return CATALOG.get(item_id)


def event(n: int, type: str = "click", item_id: str = "red-1", *, ts_ms: int | None = None, user: str = "u1", **kw):
    return ShopperEvent(
        user_id=user, event_id=f"e{n:04d}", ts_ms=T0 + n * 1000 if ts_ms is None else ts_ms, type=type,
        item_id=item_id, **kw,
    )  # fmt: skip


def apply(profile, ev, params=None, neighbours=None):
    vector, fields = CATALOG.get(ev.item_id, (None, None))
    return apply_event(profile, ev, vector, fields, params=params or ProfileParams(), neighbours=neighbours)


# ---------------------------------------------------------------- events


def test_event_round_trips_through_the_table_item():
    original = event(1, "view", dwell_ms=4200, query_id="q-7")
    item = original.to_item()
    assert item["event_key"] == f"{original.ts_ms:013d}#e0001"
    assert item["ttl"] == original.ts_ms // 1000 + 90 * 86_400
    assert event_from_item(item) == original


def test_event_accepts_dynamodb_decimals():
    item = event(1, "view").to_item() | {"dwell_ms": Decimal("1500")}
    assert event_from_item(item).dwell_ms == 1500


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"user_id": None}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"event_key": "yesterday#e1"}, "event_key"),
        ({"event_key": "1732600000000"}, "event_key"),
        ({"type": "like"}, "like"),
        ({"item_id": 42}, "item_id"),
        ({"dwell_ms": Decimal("-1")}, "dwell_ms"),
        ({"dwell_ms": Decimal("1.5")}, "dwell_ms"),
        ({"dwell_ms": "long"}, "dwell_ms"),
    ],
)
def test_malformed_events_are_rejected_with_a_message_naming_the_problem(change, message):
    item = {k: v for k, v in (event(1).to_item() | change).items() if v is not None}
    with pytest.raises(ShopperEventError, match=message) as raised:
        event_from_item(item)
    assert raised.value.code == "invalid_event"


def test_event_keys_sort_in_time_order():
    keys = [event_key(ts, "z") for ts in (5, 40, 300, 10**12)]
    assert keys == sorted(keys)


# ---------------------------------------------------------------- preferences


def test_engagement_pulls_the_preference_towards_the_item_and_dismiss_pushes_away():
    profile = apply(None, event(1, "purchase", "red-1")).profile
    assert profile.preference() @ unit(0) == pytest.approx(1.0)
    profile = apply(profile, event(2, "dismiss", "green-1")).profile
    preference = profile.preference()
    assert preference @ unit(0) > 0.5
    assert preference @ unit(2) < 0
    assert profile.category["fruit"] > 0 > profile.category["veg"]
    assert profile.brand["acme"] > 0 > profile.brand["zeta"]


def test_event_weights_order_purchase_over_cart_over_click_over_view():
    strength = {}
    for kind in ("view", "click", "add_to_cart", "purchase"):
        strength[kind] = apply(None, event(1, kind, "red-1")).profile.category["fruit"]
    assert strength["view"] < strength["click"] < strength["add_to_cart"] < strength["purchase"]


def test_long_dwell_makes_a_view_count_more():
    short = apply(None, event(1, "view", dwell_ms=500)).profile.evidence
    long = apply(None, event(1, "view", dwell_ms=20_000)).profile.evidence
    assert long > 2 * short


def test_decay_follows_event_time_with_the_configured_half_life():
    params = ProfileParams(half_life_days=10)
    profile = apply(None, event(1, "click", "red-1", ts_ms=T0), params).profile
    profile = apply(profile, event(2, "click", "green-1", ts_ms=T0 + 10 * DAY_MS), params).profile
    assert profile.category["fruit"] == pytest.approx(0.5 * profile.category["veg"])
    assert profile.vector[0] == pytest.approx(0.5 * profile.vector[2])


def test_confidence_grows_with_evidence_and_fades_with_idleness():
    profile, confidences = None, []
    for n in range(12):
        profile = apply(profile, event(n, "click")).profile
        confidences.append(profile.confidence())
    assert all(0 < c < 1 for c in confidences)
    assert confidences == sorted(confidences)
    assert profile.confidence(now_ms=profile.last_ms + 120 * DAY_MS) < confidences[-1] / 2


def test_price_band_centres_on_what_the_shopper_buys():
    profile = None
    for n in range(6):
        profile = apply(profile, event(n, "purchase", "red-1" if n % 2 else "red-2")).profile
    low, mid, high = profile.price_band()
    assert low <= mid <= high
    assert 1.5 < mid < 3.0


def test_unknown_items_still_count_in_statistics():
    profile = apply(None, event(1, "click", "no-such-item")).profile
    assert profile.counts == {"click": 1}
    assert profile.vector is None
    assert profile.category == {}


def test_statistics_visit_frequency_dwell_click_and_purchase_rates():
    events = [
        event(1, "view", ts_ms=T0, dwell_ms=3000),
        event(2, "view", ts_ms=T0 + 60_000, dwell_ms=5000),
        event(3, "click", ts_ms=T0 + 120_000),
        event(4, "view", ts_ms=T0 + 2 * DAY_MS, dwell_ms=1000),
        event(5, "view", ts_ms=T0 + 2 * DAY_MS + 1000),
        event(6, "click", ts_ms=T0 + 2 * DAY_MS + 2000),
        event(7, "purchase", ts_ms=T0 + 2 * DAY_MS + 3000),
    ]
    stats = replay(events, lookup).stats()
    assert stats["events"] == 7
    assert stats["visits"] == 2
    assert stats["visits_per_day"] == pytest.approx(1.0, rel=0.01)
    assert stats["mean_dwell_ms"] == pytest.approx(3000)
    assert stats["click_rate"] == pytest.approx(2 / 4)
    assert stats["purchase_rate"] == pytest.approx(1 / 2)


# ---------------------------------------------------------------- idempotency and ordering


def test_applying_the_same_event_twice_changes_nothing():
    profile = apply(None, event(1)).profile
    again = apply(profile, event(1))
    assert again.outcome == "duplicate"
    assert again.profile.to_item() == profile.to_item()


def test_delivery_order_does_not_change_the_profile():
    kinds = ["view", "click", "add_to_cart", "purchase", "dismiss"]
    items = list(CATALOG)
    rng = random.Random(7)
    events = [event(n, rng.choice(kinds), rng.choice(items), ts_ms=T0 + rng.randrange(30 * DAY_MS)) for n in range(40)]
    reference = replay(events, lookup)
    for seed in range(3):
        shuffled = events[:]
        random.Random(seed).shuffle(shuffled)
        shuffled += shuffled[:10]  # and some duplicates
        other = replay(shuffled, lookup)
        np.testing.assert_allclose(other.vector, reference.vector, rtol=1e-9, atol=1e-12)
        assert other.evidence == pytest.approx(reference.evidence)
        assert other.category == pytest.approx(reference.category)
        assert other.counts == reference.counts
        assert other.recent == reference.recent


def test_an_older_unseen_event_is_still_applied():
    profile = apply(None, event(5, ts_ms=T0 + 5000)).profile
    late = apply(profile, event(1, "purchase", "green-1", ts_ms=T0))
    assert late.outcome == "applied"
    assert late.profile.counts == {"click": 1, "purchase": 1}
    assert late.profile.last_ms == T0 + 5000


def test_events_beyond_the_dedupe_window_are_ignored_not_double_counted():
    params = ProfileParams(max_applied=3)
    profile = None
    for n in range(5):
        profile = apply(profile, event(n), params).profile
    assert len(profile.applied) == 3
    assert apply(profile, event(0), params).outcome == "stale"
    assert apply(profile, event(1), params).outcome == "stale"
    assert apply(profile, event(4), params).outcome == "duplicate"
    assert apply(profile, event(3, ts_ms=T0 + 3000), params).outcome == "duplicate"
    assert apply(profile, event(9, ts_ms=T0 + 2500), params).outcome == "applied"  # unseen, inside the window


def test_an_event_of_another_user_is_refused():
    with pytest.raises(ValueError, match="u2"):
        apply(apply(None, event(1)).profile, event(2, user="u2"))


# ---------------------------------------------------------------- bounds and storage


def test_profile_stays_small_whatever_the_history():
    params = ProfileParams(max_recent=20, max_applied=64, max_affinities=8)
    rng = random.Random(1)
    catalog = {f"i{n}": (rng_vector(rng), {"category": f"c{n % 30}", "brand": f"b{n % 50}", "price": 1 + n % 40})
               for n in range(300)}  # fmt: skip
    profile = None
    for n in range(1000):
        item = f"i{rng.randrange(300)}"
        vector, fields = catalog[item]
        profile = apply_event(profile, event(n, "click", item), vector, fields, params=params).profile
    assert len(profile.recent) == 20
    assert len(profile.applied) == 64
    assert len(profile.category) <= 8
    assert len(profile.brand) <= 8
    size = sum(len(v) if isinstance(v, bytes | str) else 16 for v in _flatten(profile.to_item()))
    assert size < 8_000


def rng_vector(rng: random.Random) -> np.ndarray:
    return np.array([rng.gauss(0, 1) for _ in range(DIM)], dtype=np.float32)


def _flatten(value):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _flatten(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _flatten(inner)
    else:
        yield value


def test_storage_round_trip_is_exact_and_uses_dynamodb_types():
    history = [("view", "red-1"), ("click", "red-2"), ("purchase", "green-1"), ("dismiss", "blue-1"), ("view", "x")]
    events = [event(n, kind, item) for n, (kind, item) in enumerate(history)]
    profile = replay(events, lookup)
    item = profile.to_item()
    assert all(not isinstance(v, float) for v in _flatten(item))
    assert isinstance(item["evidence"], Decimal)
    assert isinstance(item["vec"], bytes)
    restored = Profile.from_item(item)
    assert restored.to_item() == item
    assert restored.evidence == profile.evidence
    assert restored.category == profile.category
    assert restored.applied == profile.applied
    assert restored.recent == profile.recent
    np.testing.assert_allclose(restored.vector, profile.vector, rtol=1e-6)


def test_ranking_projection_keeps_what_ranking_needs():
    profile = replay([event(1, "purchase", "red-1"), event(2, "click", "green-1")], lookup)
    partial = Profile.from_item({k: v for k, v in profile.to_item().items() if k in RANKING_ATTRIBUTES})
    assert partial.confidence() == profile.confidence()
    assert partial.category == profile.category
    np.testing.assert_allclose(partial.preference(), profile.preference(), rtol=1e-6)


# ---------------------------------------------------------------- erasure


def test_erasure_ignores_late_events_and_restarts_from_new_ones():
    store = InMemoryProfileStore(clock_ms=lambda: T0 + 10_000)
    updater = ProfileUpdater(store, lookup)
    for n in range(5):
        assert updater.handle(event(n, "purchase", "red-1")) == "applied"
    store.delete("u1")
    erased = store.load("u1")
    assert erased.is_empty
    assert erased.confidence() == 0
    assert erased.vector is None
    assert erased.recent == []
    assert updater.handle(event(3, "purchase", "red-1")) == "erased"  # a redelivered record
    assert updater.handle(event(8, "click", "red-1", ts_ms=T0 + 9_000)) == "erased"  # late, older than erasure
    assert updater.handle(event(20, "click", "green-1", ts_ms=T0 + 20_000)) == "applied"
    fresh = store.load("u1")
    assert fresh.counts == {"click": 1}
    assert set(fresh.category) == {"veg"}
    assert fresh.erased_at_ms == T0 + 10_000


def test_erasure_covers_events_with_timestamps_ahead_of_the_clock():
    store = InMemoryProfileStore(clock_ms=lambda: T0)
    updater = ProfileUpdater(store, lookup)
    updater.handle(event(1, ts_ms=T0 + DAY_MS))  # a client clock running a day fast
    store.delete("u1")
    assert updater.handle(event(2, ts_ms=T0 + DAY_MS - 5)) == "erased"


# ---------------------------------------------------------------- updater and concurrency


class FlakyStore(InMemoryProfileStore):
    """Loses the race the first ``losses`` times it is written."""

    def __init__(self, losses: int) -> None:
        super().__init__()
        self.losses = losses

    def save(self, profile, *, expected_version, pairs=()):
        if self.losses:
            self.losses -= 1
            raise ProfileConflictError("someone else wrote first")
        super().save(profile, expected_version=expected_version, pairs=pairs)


def test_updater_retries_after_a_lost_race():
    store = FlakyStore(losses=3)
    updater = ProfileUpdater(store, lookup, sleep=lambda _: None)
    assert updater.handle(event(1)) == "applied"
    assert store.load("u1").counts == {"click": 1}
    assert store.load("u1").version == 1


def test_updater_gives_up_with_a_clear_error_when_it_never_wins():
    updater = ProfileUpdater(FlakyStore(losses=100), lookup, sleep=lambda _: None, max_attempts=4)
    with pytest.raises(ProfileConflictError, match="4 attempts"):
        updater.handle(event(1))


def test_concurrent_updaters_of_one_user_lose_no_event():
    store = InMemoryProfileStore(CooccurrenceCounts())
    # a dedupe window wider than the run: one thread racing far ahead must not make another's events stale
    params = ProfileParams(max_applied=256)
    updater = ProfileUpdater(
        store, lookup, cooccurrence=store.cooccurrence, params=params, sleep=lambda _: None, max_attempts=1000
    )
    errors: list[BaseException] = []
    outcomes: list[str] = []

    def worker(offset: int) -> None:
        try:
            for n in range(offset, 200, 4):
                outcomes.append(updater.handle(event(n, "click", "red-1" if n % 2 else "green-1")))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert outcomes == ["applied"] * 200
    profile = store.load("u1")
    assert profile.counts == {"click": 200}
    assert profile.version == 200


def test_cooccurrence_counts_each_pair_once_even_when_events_are_redelivered():
    counts = CooccurrenceCounts()
    store = InMemoryProfileStore(counts)
    updater = ProfileUpdater(store, lookup, cooccurrence=counts)
    sequence = [event(1, "click", "red-1"), event(2, "view", "blue-1"), event(3, "purchase", "green-1")]
    for ev in sequence + sequence:
        updater.handle(ev)
    assert counts.count("red-1", "green-1") == 1
    assert counts.count("green-1", "red-1") == 1
    assert counts.count("red-1", "blue-1") == 0  # a view is not engagement
    assert len(counts) == 2


def test_collaborative_neighbours_flow_into_the_profile():
    counts = CooccurrenceCounts(prior=0)
    counts.add(pair_updates("red-1", ["green-1"]) * 3 + pair_updates("red-1", ["blue-1"]))
    store = InMemoryProfileStore(counts)
    ProfileUpdater(store, lookup, cooccurrence=counts).handle(event(1, "click", "red-1"))
    cooc = store.load("u1").cooc
    assert cooc["green-1"] == pytest.approx(0.75)
    assert cooc["blue-1"] == pytest.approx(0.25)
    assert "red-1" not in cooc


def test_conditional_probabilities_are_smoothed_and_limited():
    row = {"a": 6.0, "b": 3.0, "c": 1.0}
    assert conditional_probabilities(row, prior=0) == pytest.approx({"a": 0.6, "b": 0.3, "c": 0.1})
    smoothed = conditional_probabilities(row, prior=10, limit=2)
    assert smoothed == pytest.approx({"a": 0.3, "b": 0.15})


def test_a_new_index_space_starts_the_preference_vector_afresh():
    profile = apply_event(None, event(1, "purchase"), unit(0), CATALOG["red-1"][1], space="model-a/identity").profile
    assert profile.space == "model-a/identity"
    same = apply_event(profile, event(2, "click"), unit(1), CATALOG["red-1"][1], space="model-a/identity").profile
    assert same.preference() @ unit(0) > 0.5
    moved = apply_event(profile, event(2, "click"), unit(1), CATALOG["red-1"][1], space="model-b/pca-9").profile
    assert moved.space == "model-b/pca-9"
    assert moved.preference() @ unit(1) == pytest.approx(1.0)  # the old basis is not mixed in
    assert moved.category["fruit"] > profile.category["fruit"]  # affinities are not tied to the index space
    assert Profile.from_item(moved.to_item()).space == "model-b/pca-9"


def test_a_stream_image_becomes_the_event_its_item_would() -> None:
    image = {"user_id": {"S": "alice"}, "event_key": {"S": "1700000000000#e1"}, "type": {"S": "view"},
             "item_id": {"S": "sku-1"}, "dwell_ms": {"N": "1200"}, "ttl": {"N": "1800000000"}}  # fmt: skip
    event = event_from_stream_image(image)
    assert (event.user_id, event.item_id, event.dwell_ms, event.ts_ms) == ("alice", "sku-1", 1200, 1700000000000)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"dwell_ms": {"N": "not-a-number"}}, "'dwell_ms' is not a number"),
        ({"item_id": {"B": "AAAA"}}, "'item_id' has type 'B'"),
        ({"user_id": "alice"}, "'user_id' is not a DynamoDB typed value"),
        ({"type": {"S": "like"}}, "is not one of"),
    ],
)
def test_a_broken_stream_image_is_an_event_error_naming_the_attribute(change: dict, named: str) -> None:
    image = {"user_id": {"S": "alice"}, "event_key": {"S": "1700000000000#e1"}, "type": {"S": "view"},
             "item_id": {"S": "sku-1"}} | change  # fmt: skip
    with pytest.raises(ShopperEventError, match=re.escape(named)):
        event_from_stream_image(image)
    with pytest.raises(ShopperEventError, match="no NewImage"):
        event_from_stream_image(None)
