"""Category prediction: the neighbours' score-weighted vote, its calibration, and how search serves it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from catalens.category import NEIGHBOURS, category_of, category_shares, predict_category
from catalens.index import IndexView, ItemRecord
from catalens.service.errors import RequestError
from catalens.service.requests import Filters, SearchOptions, SearchRequest, parse_options
from catalens.service.search import SearchService
from catalens_tools.evaluation.category import category_report, expected_calibration_error, fit_temperature
from tests.unit.imagefactory import encode, photo
from tests.unit.test_search_service import DIM, StubEmbedder, unit

JPEG = encode(photo(128, 96, seed=2))


def test_the_best_hits_vote_for_their_category_weighted_by_score() -> None:
    shares = category_shares([0.9, 0.85, 0.8], ["Pear", "Apple", "Apple"], temperature=0.2)
    assert shares["Apple"] > shares["Pear"]  # two close apples outvote one slightly better pear
    assert math.isclose(sum(shares.values()), 1.0)
    sharp = predict_category([0.9, 0.85, 0.8], ["Pear", "Apple", "Apple"], temperature=0.005)
    assert sharp is not None
    assert sharp.name == "Pear"  # a cold vote follows the best hit


def test_hits_without_a_category_do_not_vote_and_only_the_first_neighbours_count() -> None:
    assert predict_category([0.9, 0.5], [None, "Milk"], temperature=0.1).name == "Milk"
    assert predict_category([0.9], [None], temperature=0.1) is None
    scores, names = [1.0] * NEIGHBOURS + [1.0] * 50, ["A"] * NEIGHBOURS + ["B"] * 50
    assert category_shares(scores, names, temperature=0.1) == {"A": 1.0}
    assert category_of({"category": ["Fruit", "Apple"]}) == "Fruit"
    assert category_of({"category": "  "}) is None
    assert category_of({"title": "x"}) is None


def test_expected_calibration_error_is_zero_when_confidence_matches_accuracy() -> None:
    confidences = np.array([0.75] * 4 + [0.25] * 4)
    correct = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([0, 1])) == pytest.approx(0.5)


def test_the_fitted_temperature_makes_overconfident_votes_honest() -> None:
    rng = np.random.default_rng(0)
    catalog = ["A", "B", "C", "D"] * 5
    truths, rows = [], []
    for _ in range(400):  # the true category's item wins only 60% of the time, by a small margin
        truth = rng.choice(["A", "B", "C", "D"])
        scores = rng.normal(0.5, 0.02, len(catalog))
        winner = catalog.index(truth) if rng.random() < 0.6 else int(rng.integers(len(catalog)))
        scores[winner] += 0.05
        truths.append(truth)
        rows.append(scores)
    scores = np.array(rows)
    fitted = fit_temperature(scores, catalog, truths)
    cold = category_report(scores, catalog, truths, 0.002)
    honest = category_report(scores, catalog, truths, fitted)
    assert honest["ece"] < cold["ece"]
    assert honest["nll"] < cold["nll"]
    assert abs(honest["mean_confidence"] - honest["accuracy"]) < 0.1


# ------------------------------------------------------------------------------------------------ search


def catalog_view() -> IndexView:
    items = {
        "apple-1": (unit(1, 0.1), {"category": "Apple"}),
        "apple-2": (unit(1, 0.2), {"category": "Apple"}),
        "pear-1": (unit(1, 0.3), {"category": "Pear", "price": 1.0}),
        "pear-2": (unit(0.2, 1), {"category": "Pear", "price": 2.0}),
        "milk": (unit(0, 0, 1), {"category": "Milk", "price": 1.0}),
    }
    records = [
        ItemRecord(item_id, vector, fields, f"{item_id}.jpg", f"etag-{item_id}", f"{i + 1:X}")
        for i, (item_id, (vector, fields)) in enumerate(items.items())
    ]
    return IndexView(None, records)


def test_a_photo_answer_carries_the_predicted_category_and_its_confidence() -> None:
    embedder = StubEmbedder()
    embedder.next_vector = np.eye(DIM, dtype=np.float32)[0]
    service = SearchService(embedder=embedder, views=catalog_view)
    answer = service.search(SearchRequest(image=JPEG, options=SearchOptions(k=1))).to_dict()
    assert answer["category"]["name"] == "Apple"
    assert 0.0 < answer["category"]["confidence"] <= 1.0
    assert "category" not in service.similar("apple-1", SearchOptions(k=1)).to_dict()


def test_the_guess_ignores_the_shoppers_filters_and_category_auto_filters_to_it() -> None:
    service = SearchService(embedder=StubEmbedder(), views=catalog_view)
    priced = SearchOptions(k=5, filters=Filters(price_max=1.5))
    answer = service.search(SearchRequest(image=JPEG, options=priced))
    assert answer.category is not None
    assert answer.category["name"] == "Apple"  # though no apple has a price
    assert [hit.item_id for hit in answer.hits] == ["pear-1", "milk"]
    auto = service.search(SearchRequest(image=JPEG, options=parse_options({"category": "auto", "k": "5"})))
    assert {hit.item_id for hit in auto.hits} == {"apple-1", "apple-2"}
    assert auto.query["category_filter"] == "Apple"
    similar = service.similar("pear-2", parse_options({"category": "AUTO"}))  # more like this: the item's own
    assert [hit.item_id for hit in similar.hits] == ["pear-1"]


def test_category_auto_cannot_be_mixed_with_named_categories() -> None:
    assert parse_options({"category": "auto"}).category_auto
    assert parse_options({"category": "Auto"}).filters == Filters()
    with pytest.raises(RequestError) as caught:
        parse_options({"category": ["auto", "Milk"]})
    assert caught.value.code == "invalid_filter"
