"""The personalisation simulation: metrics, derived product fields, shopper behaviour, tuning, the command."""

from __future__ import annotations

import io
import json
import random
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from catalens.profiles import event_from_item
from catalens.ranking import DEFAULT_RERANK
from catalens_tools.cli import main
from catalens_tools.simulation import (
    GROWERS,
    Population,
    Shopper,
    browse_neighbours,
    collect_samples,
    dominant_colour,
    estimated_order,
    evaluate,
    grocery_fields,
    make_shoppers,
    measured_order,
    ndcg_at_k,
    simulate_events,
    synthetic_world,
    tune,
)


def test_ndcg_matches_hand_computed_values():
    pool = np.array([[0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    ndcg = ndcg_at_k(pool, pool, k=2)
    assert ndcg[0] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert ndcg[1] == pytest.approx(1.0)
    assert np.isnan(ndcg[2])
    ideal = np.array([[1, 1, 0, 0]], dtype=bool)
    assert ndcg_at_k(ideal, pool[:1], k=2)[0] == pytest.approx(1.0)


def _jpeg(colour: tuple[int, int, int], size=(80, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("rgb", "name"),
    [((220, 20, 30), "red"), ((40, 180, 40), "green"), ((250, 210, 20), "yellow"), ((245, 245, 240), "white"),
     ((30, 60, 200), "blue"), ((240, 130, 20), "orange")],
)  # fmt: skip
def test_dominant_colour_names_the_centre_of_the_photo(rgb, name):
    assert dominant_colour(_jpeg(rgb)) == name


def test_grocery_fields_are_deterministic_and_documented():
    packaged = grocery_fields("Arla-Standard-Milk", "Milk", "Packages", "natural-Arla-Standard-Milk_001", "white")
    assert packaged["brand"] == "Arla"
    assert packaged["category"] == "Milk"
    assert packaged == grocery_fields(
        "Arla-Standard-Milk", "Milk", "Packages", "natural-Arla-Standard-Milk_001", "white"
    )
    growers = {
        grocery_fields("Pink-Lady", "Apple", "Fruit", f"natural-Pink-Lady_{n:03d}", "red")["brand"] for n in range(40)
    }
    assert growers == set(GROWERS)  # produce is spread over the four growers
    prices = [grocery_fields("Pink-Lady", "Apple", "Fruit", f"x{n}", "red")["price"] for n in range(40)]
    assert all(0.3 < p < 12 for p in prices)


@pytest.fixture(scope="module")
def world():
    catalog, tune_queries, report_queries = synthetic_world(3, classes=24, per_class=20, dim=32)
    return catalog, tune_queries, report_queries, browse_neighbours(catalog, 12)


def test_simulated_shoppers_engage_with_what_they_like(world):
    catalog, _, _, neighbours = world
    rng = random.Random(5)
    shopper = make_shoppers(catalog, 2, rng, "s")[1]
    events = simulate_events(shopper, catalog, neighbours, 80, rng)
    assert len(events) == 80
    assert len({e.key for e in events}) == 80
    assert all(event_from_item(e.to_item()) == e for e in events)  # valid table items
    liked = {item.item_id for item in catalog.items if shopper.likes(item)}
    engaged = [e for e in events if e.type in ("click", "add_to_cart", "purchase")]
    dismissed = [e for e in events if e.type == "dismiss"]
    assert sum(e.item_id in liked for e in engaged) > 0.6 * len(engaged)
    assert not any(e.item_id in liked for e in dismissed)
    assert [e.ts_ms for e in events] == sorted(e.ts_ms for e in events)


def test_personal_reranking_beats_plain_on_held_out_shoppers_within_the_top1_budget(world):
    catalog, tune_queries, report_queries, neighbours = world
    view = catalog.view()

    def samples(seed, queries):
        rng = random.Random(seed)
        population = Population(catalog)
        shoppers = make_shoppers(catalog, 30, rng, f"s{seed}", tastes=("brand", "colour"))
        last = {}
        for shopper in shoppers:
            events = simulate_events(shopper, catalog, neighbours, 30, rng)
            population.apply(events)
            last[shopper.user_id] = events[-1].ts_ms
        profiles = {s.user_id: population.store.load_for_ranking(s.user_id) for s in shoppers}
        return collect_samples(
            catalog, view, queries, shoppers, profiles, last, per_shopper=4, pool=50, rng=rng, base=DEFAULT_RERANK
        )

    tuning_samples = samples(1, tune_queries)
    tuned = tune(tuning_samples, DEFAULT_RERANK, max_top1_drop=0.01)
    best = tuned["best"][False][1]
    held_out = samples(2, report_queries)
    plain, personal = evaluate(held_out, None), evaluate(held_out, best)
    assert personal["ndcg@10"] > plain["ndcg@10"] + 0.01
    assert plain["top1"] - personal["top1"] <= 0.02
    # tuning's vectorised ranking is exactly what rerank() does
    np.testing.assert_array_equal(estimated_order(held_out, best), measured_order(held_out, best))
    strong = replace(best, max_boost=0.0)
    assert evaluate(held_out, strong)["ndcg@10"] == pytest.approx(plain["ndcg@10"])  # no boost, no change


def test_cold_shoppers_keep_the_plain_order(world):
    catalog, _, report_queries, _ = world
    shoppers = [Shopper("nobody", "brand", "Grower-A")]
    samples = collect_samples(
        catalog, catalog.view(), report_queries, shoppers, {"nobody": None}, {"nobody": 0},
        per_shopper=5, pool=50, rng=random.Random(0), base=DEFAULT_RERANK,
    )  # fmt: skip
    assert evaluate(samples, DEFAULT_RERANK) == evaluate(samples, None)


def test_eval_personalization_command_prints_json(capsys):
    code = main(
        ["eval", "personalization", "--synthetic", "--shoppers", "9", "--population", "9", "--queries", "2",
         "--events", "15", "--bench-repeats", "3"]
    )  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "personalization"
    assert set(result["report"]) >= {"plain", "chosen", "without_cooc", "shipped_defaults"}
    assert result["report"]["vectorised_estimate_matches"] is True
    assert result["cost"]["personalisation_overhead_ms"]["p50"] > 0
