"""Filters: the JSON form, per-record semantics, and the vectorised columns agreeing with them."""

from __future__ import annotations

import numpy as np
import pytest

from catalens.index.filters import Filter, FilterError, build_columns

ROWS = [
    {"category": "dairy", "price": 1.5, "brand": "arla", "organic": True, "tags": ["milk", "fresh"]},
    {"category": "dairy", "price": 3, "brand": "oatly", "organic": False},
    {"category": "fruit", "price": 0.5, "brand": "dole", "organic": True, "tags": ["fresh"]},
    {"category": "fruit", "brand": "chiquita"},  # no price
    {"category": "bakery", "price": 2.25, "brand": "arla", "organic": 1},  # 1 is not True
    {"price": 9.0, "title": "mystery box", "mixed": "a"},
    {"category": "dairy", "price": float("nan"), "mixed": 3},
]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"category": "dairy"}, [0, 1, 6]),
        ({"category": ["fruit", "bakery"]}, [2, 3, 4]),
        ({"price": {"gte": 1, "lte": 3}}, [0, 1, 4]),
        ({"price": {"gt": 1.5, "lt": 3}}, [4]),
        ({"category": "dairy", "price": {"lte": 2}}, [0]),
        ({"organic": True}, [0, 2]),
        ({"tags": "fresh"}, [0, 2]),
        ({"tags": ["milk", "bread"]}, [0]),
        ({"mixed": 3}, [6]),
        ({"brand": "nobody"}, []),
        ({"category": "dairy", "brand": ["arla", "oatly"]}, [0, 1]),
    ],
)
def test_filter_semantics_and_columns_agree(spec, expected):
    flt = Filter.parse(spec)
    assert [i for i, row in enumerate(ROWS) if flt.matches(row)] == expected
    columns = build_columns(ROWS)
    mask = np.ones(len(ROWS), dtype=bool)
    for condition in flt.conditions:
        column_mask = columns.mask(condition)
        if column_mask is None:  # slow path: the per-record predicate
            column_mask = np.array([condition.matches(row) for row in ROWS])
        mask &= column_mask
    assert np.flatnonzero(mask).tolist() == expected


def test_columns_choose_numeric_categorical_or_none():
    columns = build_columns(ROWS)
    assert "price" in columns.numeric
    assert "category" in columns.codes
    assert "organic" not in columns.codes  # True and 1 mixed: left to the slow path
    assert not columns.has("tags")
    assert not columns.has("mixed")


def test_near_unique_strings_are_not_columns():
    rows = [{"title": f"product {i}"} for i in range(2000)]
    assert not build_columns(rows).has("title")


@pytest.mark.parametrize(
    "spec",
    [
        "category=dairy",
        {"price": {"between": [1, 2]}},
        {"price": {"gte": "cheap"}},
        {"category": []},
        {"category": {"gte": 1, "foo": 2}},
        {"category": {"nested": "object"}},
        {"tags": [["nested"]]},
        {"": 1},
    ],
)
def test_malformed_filters_are_refused_with_a_stable_code(spec):
    with pytest.raises(FilterError) as raised:
        Filter.parse(spec)
    assert raised.value.code == "invalid_filter"


def test_filters_are_hashable_and_combine():
    a = Filter.equals("category", "dairy") & Filter.between("price", 1, 2)
    b = Filter.parse({"category": "dairy", "price": {"gte": 1, "lte": 2}})
    assert a == b
    assert hash(a) == hash(b)
    assert Filter.parse(None) is None
    assert not Filter()
