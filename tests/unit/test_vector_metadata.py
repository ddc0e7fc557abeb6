"""S3 Vectors, no network: an item's metadata, the filter translation and the emulated QueryVectors agree with
the index's own filter semantics."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from moto.s3vectors.exceptions import ValidationError

from catalens.index.filters import Filter, FilterError
from catalens.index.records import ItemRecord
from catalens.index.vector_metadata import (
    MAX_FILTERABLE_BYTES,
    RECORD_KEY,
    VectorRecordError,
    VectorStats,
    item_metadata,
    stored_item,
    vector_filter,
)
from catalens_tools.local.vector_query import FilterSyntaxError, matches, query_index


def record(fields: dict[str, Any], item_id: str = "sku-1") -> ItemRecord:
    return ItemRecord(item_id, np.ones(4, np.float32), fields, f"{item_id}.jpg", "etag", "0A", updated_at=1.5)


def test_metadata_keeps_the_whole_state_and_the_filterable_fields() -> None:
    fields = {"category": "shoes", "price": 9.5, "tags": ["a", "b"], "near_duplicates": [{"item_id": "x"}]}
    metadata = item_metadata(record(fields), model_fingerprint="fp")
    assert metadata["category"] == "shoes"
    assert metadata["tags"] == ["a", "b"]
    assert "near_duplicates" not in metadata  # a list of objects cannot be filtered on
    back = stored_item("sku-1", json.loads(json.dumps(metadata)), {"float32": [1.0, 0.0]})
    assert (back.fields, back.sequencer, back.model_fingerprint, back.updated_at) == (fields, "0A", "fp", 1.5)
    assert back.vector.tolist() == [1.0, 0.0]


def test_long_values_stay_out_of_the_filterable_part() -> None:
    fields = {"category": "shoes", "title": "t" * 3000}
    metadata = item_metadata(record(fields))
    assert "category" in metadata
    assert "title" not in metadata
    assert sum(len(json.dumps({k: v})) for k, v in metadata.items() if k != RECORD_KEY) <= MAX_FILTERABLE_BYTES
    assert json.loads(metadata[RECORD_KEY])["fields"]["title"] == "t" * 3000


def test_fields_too_large_for_s3_vectors_are_a_typed_error() -> None:
    with pytest.raises(VectorRecordError, match="40960"):
        item_metadata(record({"description": "x" * 41_000}))
    with pytest.raises(VectorRecordError, match="_record"):
        stored_item("sku-1", {"category": "shoes"})


def test_filter_translation() -> None:
    assert vector_filter(None) is None
    assert vector_filter(Filter()) is None
    assert vector_filter(Filter.equals("category", "shoes")) == {"category": {"$eq": "shoes"}}
    assert vector_filter(Filter.one_of("brand", ["a", "b"])) == {"brand": {"$in": ["a", "b"]}}
    assert vector_filter(Filter.one_of("brand", ["a"])) == {"brand": {"$eq": "a"}}
    assert vector_filter(Filter.between("price", 1, None)) == {"price": {"$gte": 1}}
    both = vector_filter(Filter.equals("category", "shoes") & Filter.between("price", 1, 2))
    assert both == {"$and": [{"category": {"$eq": "shoes"}}, {"price": {"$gte": 1, "$lte": 2}}]}
    with pytest.raises(FilterError, match="finite"):
        vector_filter(Filter.between("price", float("inf"), None))


def random_fields(rng: random.Random) -> dict[str, Any]:
    pool: list[Any] = ["a", "b", 1, 2, 2.5, True, False, 0]
    fields: dict[str, Any] = {}
    for name in ("x", "y"):
        roll = rng.random()
        if roll < 0.2:
            continue
        fields[name] = rng.sample(pool, 2) if roll < 0.4 else rng.choice(pool)
    return fields


def random_filter(rng: random.Random) -> Filter:
    pool: list[Any] = ["a", "b", 1, 2, 2.5, True, False, 0]
    result = Filter()
    for _ in range(rng.randint(1, 2)):
        name = rng.choice(("x", "y"))
        kind = rng.choice(("eq", "in", "range"))
        if kind == "eq":
            result &= Filter.equals(name, rng.choice(pool))
        elif kind == "in":
            result &= Filter.one_of(name, rng.sample(pool, 3))
        else:
            result &= Filter.between(name, rng.choice((None, 0, 1.5)), rng.choice((None, 2, 3)))
    return result


def ranges_a_list(fields: dict[str, Any], chosen: Filter) -> bool:
    return any(c.op == "range" and isinstance(fields.get(c.field), list) for c in chosen.conditions)


def test_the_translated_filter_means_what_the_index_filter_means() -> None:
    rng = random.Random(5)
    checked = 0
    for _ in range(2000):
        fields, chosen = random_fields(rng), random_filter(rng)
        if ranges_a_list(fields, chosen):
            continue  # the one documented difference (vector_metadata's docstring); the API ranges price only
        metadata = item_metadata(record(fields))
        assert matches(vector_filter(chosen), metadata) == chosen.matches(fields), (fields, chosen)
        checked += 1
    assert checked > 1500


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"genre": "drama"}, True),
        ({"genre": {"$ne": "drama"}}, False),
        ({"genre": {"$eq": "comedy"}}, False),
        ({"tags": {"$eq": "b"}}, True),
        ({"tags": {"$nin": ["c"]}}, True),
        ({"missing": {"$ne": 1}}, True),
        ({"missing": {"$exists": False}}, True),
        ({"year": {"$gt": 2019, "$lt": 2021}}, True),
        ({"year": {"$gte": 2021}}, False),
        ({"genre": {"$lte": 5}}, False),
        ({"flag": 1}, False),
        ({"flag": True}, True),
        ({"$or": [{"year": 1999}, {"genre": {"$in": ["drama", "x"]}}]}, True),
        ({"$and": [{"year": 2020}, {"genre": "x"}]}, False),
        ({"year": 2020, "genre": "drama"}, True),
    ],
)
def test_s3_vectors_filter_operators(document: dict[str, Any], expected: bool) -> None:
    metadata = {"genre": "drama", "tags": ["a", "b"], "year": 2020, "flag": True}
    assert matches(document, metadata) is expected


@pytest.mark.parametrize(
    "document",
    [{}, {"x": {"$regex": "a"}}, {"$not": [{"x": 1}]}, {"x": {"$in": []}}, {"$or": []}, {"x": {"$gt": "a"}}, []],
)
def test_filters_aws_refuses_are_refused(document: Any) -> None:
    with pytest.raises(FilterSyntaxError):
        matches(document, {"x": 1})


def fake_index(metric: str = "cosine") -> Any:
    vectors = {
        key: SimpleNamespace(key=key, data={"float32": data}, metadata=meta)
        for key, data, meta in (
            ("a", [1.0, 0.0], {"c": "x"}),
            ("b", [0.0, 1.0], {"c": "y"}),
            ("c", [1.0, 1.0], {"c": "x"}),
        )
    }
    return SimpleNamespace(dimension=2, distance_metric=metric, vectors=vectors)


def test_query_is_exact_nearest_first_with_distance_and_metadata() -> None:
    found = query_index(fake_index(), top_k=2, query_vector={"float32": [1.0, 0.2]}, return_distance=True)
    assert [v["key"] for v in found] == ["a", "c"]
    assert found[0]["distance"] == pytest.approx(1 - 1 / np.hypot(1, 0.2))
    assert "metadata" not in found[0]
    filtered = query_index(
        fake_index(), top_k=5, query_vector={"float32": [1.0, 0.2]}, filter_document={"c": "x"}, return_metadata=True
    )
    assert [(v["key"], v["metadata"]) for v in filtered] == [("a", {"c": "x"}), ("c", {"c": "x"})]
    euclid = query_index(fake_index("euclidean"), top_k=1, query_vector={"float32": [0.0, 2.0]}, return_distance=True)
    assert (euclid[0]["key"], euclid[0]["distance"]) == ("b", pytest.approx(1.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, "topK"),
        ({"top_k": 101}, "topK"),
        ({"query_vector": {"float32": [1.0]}}, "length 2"),
        ({"query_vector": {"float32": [1.0, float("nan")]}}, "finite"),
        ({"filter_document": {"c": {"$bad": 1}}}, "Invalid query filter"),
    ],
)
def test_query_errors_are_validation_errors(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"top_k": 1, "query_vector": {"float32": [1.0, 0.0]}, **kwargs}
    with pytest.raises(ValidationError, match=message):
        query_index(fake_index(), **arguments)


def test_stats_follow_adds_replacements_and_deletes_and_round_trip() -> None:
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    stats = VectorStats().changed(added=a, fields=["x"], model_fingerprint="fp").changed(added=b, fields=["y"])
    assert stats.count == 2
    assert stats.mean().tolist() == [0.5, 0.5]
    replaced = stats.changed(added=b, removed=a)
    assert (replaced.count, replaced.mean().tolist()) == (2, [0.0, 1.0])
    empty = replaced.changed(removed=b).changed(removed=b)
    assert (empty.count, empty.mean()) == (0, None)
    back = VectorStats.decode(stats.encode())
    assert (back.count, back.fields, back.model_fingerprint, back.version) == (2, {"x", "y"}, "fp", 2)
    np.testing.assert_array_equal(back.total, stats.total)
    with pytest.raises(VectorRecordError):
        VectorStats.decode(b"{}")
