"""One contract for both index backends: the in-Lambda index (deltas in S3, read by ``IndexCache``) and Amazon
S3 Vectors (:class:`~catalens.adapters.s3vectors.S3VectorsIndex`), both on moto.

Every test runs once per backend through the ports only (``IndexWriter`` to write, ``IndexReader`` to read, and
the search service on top), and states what either backend must answer: add, overwrite, delete, out-of-order and
duplicate events, filters, paging, query-domain calibration and personal re-ranking. Where a ranking is asserted,
the oracle is an in-memory :class:`~catalens.index.view.IndexView` over the same records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import boto3
import numpy as np
import pytest

from catalens.adapters.s3 import S3BlobStore
from catalens.adapters.s3vectors import S3VectorsIndex
from catalens.index.cache import IndexCache
from catalens.index.filters import Filter
from catalens.index.records import ItemRecord
from catalens.index.store import IndexStore
from catalens.index.vector_metadata import NON_FILTERABLE_KEYS
from catalens.index.view import IndexView
from catalens.model.card import PreprocessConfig
from catalens.ports import IndexReader, IndexWriter
from catalens.profiles import ShopperEvent, apply_event
from catalens.query_domain import QueryDomain
from catalens.ranking import rerank
from catalens.service.errors import PageTooDeepError
from catalens.service.requests import Filters, SearchOptions
from catalens.service.search import SearchService, calibrate_hits, to_index_filter
from catalens_tools.local import moto_fixes

from .conftest import AWS_REGION

moto_fixes.make_s3vectors_queryable()

DIM = 16
FINGERPRINT = "fp-contract"
BUCKET = "catalens-contract-index"
VECTOR_BUCKET = "catalens-contract-vectors"
VECTOR_INDEX = "items"
BACKENDS = ("lambda", "s3vectors")


def seq(n: int) -> str:
    return f"{n:018X}"


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def catalog(n: int = 40, seed: int = 7) -> list[ItemRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        fields: dict[str, Any] = {
            "category": ("shoes", "bags", "hats")[i % 3],
            "brand": ("acme", "zeta")[i % 2],
            "price": float(5 + i),
            "tags": ["sale", "new"] if i % 4 == 0 else ["new"],
            "organic": i % 5 == 0,
            "title": f"item number {i}",
        }
        if i % 6 == 0:
            fields["size"] = 1 if i % 12 == 0 else 42
        vector = unit(rng.normal(size=DIM))
        records.append(ItemRecord(f"sku-{i:02d}", vector, fields, f"photos/sku-{i:02d}.jpg", f"e{i}", seq(100 + i)))
    return records


@dataclass
class Backend:
    name: str
    writer: IndexWriter
    views: Callable[[], IndexReader]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, moto_aws: None) -> Iterator[Backend]:
    s3 = boto3.client("s3", region_name=AWS_REGION)
    s3.create_bucket(Bucket=BUCKET)
    blob = S3BlobStore(s3, BUCKET)
    if request.param == "lambda":
        store = IndexStore(blob, "index/")
        yield Backend("lambda", store, IndexCache(store, ttl_seconds=0, background=False).view)
        return
    client = boto3.client("s3vectors", region_name=AWS_REGION)
    client.create_vector_bucket(vectorBucketName=VECTOR_BUCKET)
    client.create_index(
        vectorBucketName=VECTOR_BUCKET,
        indexName=VECTOR_INDEX,
        dataType="float32",
        dimension=DIM,
        distanceMetric="cosine",
        metadataConfiguration={"nonFilterableMetadataKeys": list(NON_FILTERABLE_KEYS)},
    )
    index = S3VectorsIndex(
        client, vector_bucket=VECTOR_BUCKET, index_name=VECTOR_INDEX, blob=blob, prefix="index/", ttl_seconds=0
    )
    yield Backend("s3vectors", index, index.view)


def write_all(backend: Backend, records: list[ItemRecord]) -> None:
    for record in records:
        assert backend.writer.write_item(record, model_fingerprint=FINGERPRINT) is True


def ids(hits: list[Any]) -> list[str]:
    return [hit.item_id for hit in hits]


def oracle(records: list[ItemRecord]) -> IndexView:
    return IndexView(None, records)


# ------------------------------------------------------------------------------------------------ writes


def test_added_items_are_found_best_first_with_their_state(backend: Backend) -> None:
    records = catalog()
    write_all(backend, records)
    view = backend.views()
    assert len(view) == len(records)
    query = records[3].vector + 0.1 * records[8].vector
    assert ids(view.search(query, 10)) == ids(oracle(records).search(query, 10))
    item = view.get("sku-03")
    assert item is not None
    assert item.fields == records[3].fields
    assert item.image_key == "photos/sku-03.jpg"
    np.testing.assert_allclose(view.vector_of("sku-03"), records[3].vector, atol=1e-6)
    assert view.get("sku-99") is None
    assert view.vector_of("sku-99") is None
    assert {"category", "brand", "price", "tags", "organic", "size", "title"} <= view.field_names()
    np.testing.assert_allclose(view.catalog_mean, oracle(records).catalog_mean, atol=1e-6)


def test_an_overwrite_replaces_vector_and_fields(backend: Backend) -> None:
    records = catalog(6)
    write_all(backend, records)
    moved = ItemRecord("sku-01", records[4].vector, {"category": "socks"}, "photos/sku-01.jpg", "e1b", seq(500))
    assert backend.writer.write_item(moved, model_fingerprint=FINGERPRINT) is True
    view = backend.views()
    assert len(view) == 6
    assert view.get("sku-01").fields == {"category": "socks"}
    assert set(ids(view.search(records[4].vector, 2))) == {"sku-01", "sku-04"}
    expected = oracle([*records, moved])
    np.testing.assert_allclose(view.catalog_mean, expected.catalog_mean, atol=1e-6)


def test_a_delete_removes_the_item_everywhere(backend: Backend) -> None:
    records = catalog(6)
    write_all(backend, records)
    assert backend.writer.delete_item("sku-02", sequencer=seq(600)) is True
    view = backend.views()
    assert len(view) == 5
    assert view.get("sku-02") is None
    assert view.vector_of("sku-02") is None
    assert "sku-02" not in ids(view.search(records[2].vector, 6))
    np.testing.assert_allclose(view.catalog_mean, oracle(records[:2] + records[3:]).catalog_mean, atol=1e-6)


def test_a_late_create_never_resurrects_a_newer_delete(backend: Backend) -> None:
    record = catalog(1)[0]
    assert backend.writer.delete_item(record.item_id, sequencer=seq(200)) is True  # the delete arrives first
    backend.writer.write_item(record, model_fingerprint=FINGERPRINT)  # its older create (sequencer 100) comes late
    view = backend.views()
    assert view.get(record.item_id) is None
    assert len(view) == 0
    newer = ItemRecord(record.item_id, record.vector, {"v": 2}, record.image_key, "e2", seq(300))
    backend.writer.write_item(newer, model_fingerprint=FINGERPRINT)  # uploaded again after the delete
    assert backend.views().get(record.item_id).fields == {"v": 2}


def test_a_late_older_state_never_overwrites_a_newer_one(backend: Backend) -> None:
    first, second = catalog(2)
    newer = ItemRecord(first.item_id, second.vector, {"v": "new"}, first.image_key, "e-new", seq(900))
    backend.writer.write_item(newer, model_fingerprint=FINGERPRINT)
    backend.writer.write_item(first, model_fingerprint=FINGERPRINT)  # sequencer 100 < 900: stale
    backend.writer.delete_item(first.item_id, sequencer=seq(800))  # a delete older than the newest create
    view = backend.views()
    assert view.get(first.item_id).fields == {"v": "new"}
    np.testing.assert_allclose(view.vector_of(first.item_id), second.vector, atol=1e-6)
    assert len(view) == 1


def test_duplicate_deliveries_change_nothing(backend: Backend) -> None:
    records = catalog(4)
    write_all(backend, records)
    before = backend.views()
    mean = np.array(before.catalog_mean)
    assert backend.writer.write_item(records[1], model_fingerprint=FINGERPRINT) is False
    assert backend.writer.delete_item("sku-02", sequencer=seq(700)) is True
    assert backend.writer.delete_item("sku-02", sequencer=seq(700)) is False
    view = backend.views()
    assert len(view) == 3
    np.testing.assert_allclose(view.catalog_mean, oracle([records[0], records[1], records[3]]).catalog_mean, atol=1e-6)
    assert not np.allclose(view.catalog_mean, mean)


# ------------------------------------------------------------------------------------------------ filters


FILTERS = {
    "equals": Filter.equals("category", "bags"),
    "one_of": Filter.one_of("brand", ["zeta", "nobody"]),
    "range": Filter.between("price", 10.0, 20.0),
    "open_range": Filter.between("price", None, 9.0),
    "list_contains": Filter.equals("tags", "sale"),
    "list_shares": Filter.one_of("tags", ["sale", "clearance"]),
    "boolean": Filter.equals("organic", True),
    "true_is_not_one": Filter.equals("size", True),
    "one_is_not_true": Filter.equals("size", 1),
    "missing_field_fails": Filter.equals("colour", "red"),
    "string_is_not_in_a_range": Filter.between("category", 0.0, 100.0),
    "conjunction": Filter.equals("category", "shoes") & Filter.between("price", 0.0, 30.0),
    "typed_twins": to_index_filter(Filters(equals={"size": ("42",)})),
}


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filters_mean_the_same_on_both_backends(backend: Backend, name: str) -> None:
    records = catalog()
    write_all(backend, records)
    chosen = FILTERS[name]
    query = records[0].vector
    expected = ids(oracle(records).search(query, 40, filters=chosen))
    assert ids(backend.views().search(query, 40, filters=chosen)) == expected
    assert expected == sorted(expected, key=lambda i: -float(records[int(i[4:])].vector @ query))


def test_exclusion_leaves_the_named_items_out(backend: Backend) -> None:
    records = catalog()
    write_all(backend, records)
    hits = backend.views().search(records[5].vector, 5, exclude={"sku-05"})
    assert ids(hits) == ids(oracle(records).search(records[5].vector, 5, exclude={"sku-05"}))


# ------------------------------------------------------------------------------------------------ the service on top


class StubCard:
    name = "stub"
    preprocess = PreprocessConfig()
    copy_cosine = 0.999

    def fingerprint(self) -> str:
        return FINGERPRINT

    def check_matches(self, fingerprint: str) -> None:
        assert fingerprint == FINGERPRINT


class StubEmbedder:
    card = StubCard()

    def embed(self, batch: np.ndarray) -> np.ndarray:  # item queries never embed
        raise AssertionError("no photo in these tests")


class OneProfile:
    def __init__(self, profile: Any) -> None:
        self.profile = profile

    def get_async(self, user_id: str) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(self.profile)
        return future


def test_pages_are_slices_of_one_ranking(backend: Backend) -> None:
    records = catalog()
    write_all(backend, records)
    service = SearchService(embedder=StubEmbedder(), views=backend.views)
    whole = ids(service.similar("sku-00", SearchOptions(k=30)).hits)
    pages = [ids(service.similar("sku-00", SearchOptions(k=10, offset=offset)).hits) for offset in (0, 10, 20)]
    assert [item for page in pages for item in page] == whole
    assert whole == ids(oracle(records).search(records[0].vector, 30, exclude={"sku-00"}))


def test_a_page_deeper_than_the_backend_answers_is_a_clear_400(backend: Backend) -> None:
    write_all(backend, catalog(5))
    service = SearchService(embedder=StubEmbedder(), views=backend.views)
    deep = SearchOptions(k=10, offset=95)
    if backend.name == "s3vectors":
        with pytest.raises(PageTooDeepError, match="first 100 results"):
            service.similar("sku-00", deep)
    else:
        assert service.similar("sku-00", deep).hits == []  # 5 items: nothing that deep, and no error


def test_calibration_reorders_the_same_way(backend: Backend) -> None:
    records = catalog()
    write_all(backend, records)
    rng = np.random.default_rng(11)
    domain = QueryDomain(rng.normal(size=(40, DIM)).astype(np.float32) + records[2].vector * 3)
    query = unit(records[2].vector * 0.6 + rng.normal(size=DIM).astype(np.float32) * 0.4)
    view, expected_view = backend.views(), oracle(records)
    got = calibrate_hits(view, domain, query, view.search(query, 40), explain=True)
    expected = calibrate_hits(expected_view, domain, query, expected_view.search(query, 40), explain=True)
    assert got is not None
    assert expected is not None
    assert ids(got) == ids(expected)
    assert ids(got) != ids(expected_view.search(query, 40))  # the domain did move something
    np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], atol=1e-5)


def test_a_profile_reranks_the_same_way(backend: Backend) -> None:
    records = catalog()
    write_all(backend, records)
    view = backend.views()
    profile = None
    for n, record in enumerate(r for r in records if r.fields["brand"] == "zeta"):
        event = ShopperEvent("u1", f"e{n}", 1_732_600_000_000 + n, "purchase", record.item_id)
        profile = apply_event(profile, event, record.vector, record.fields, space=view.index_space).profile
    now_ms = 1_732_600_000_000 + 60_000
    service = SearchService(
        embedder=StubEmbedder(),
        views=backend.views,
        profiles=OneProfile(profile),
        rerank=rerank,
        wall_clock_ms=lambda: now_ms,
    )
    answer = service.similar("sku-03", SearchOptions(k=10, user_id="u1"))
    assert answer.personalized is True
    expected_view = oracle(records)
    pool = expected_view.search(records[3].vector, 50, exclude={"sku-03"})
    expected = rerank(pool, profile, now_ms=now_ms, space=view.index_space, limit=10)
    assert ids(answer.hits) == ids(expected)
    assert ids(answer.hits) != ids(pool[:10])  # the profile did move something
