"""Query-domain storage on S3 (moto): samples, the reference swap losing a real 412 race, GC, and the cache."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from catalens.index.cache import IndexCache
from catalens.index.layout import QUERY_REFERENCE_DIR, QUERY_SAMPLES_DIR
from catalens.index.store import IndexStore
from catalens.query_domain import MIN_REFERENCE
from tests.unit.test_index_store import FINGERPRINT, put_event

DIM = 8  # the vectors of tests.unit.test_index_store.put_event
DAY = 86400.0


def query_vector(i: int) -> np.ndarray:
    v = np.random.default_rng(7000 + i).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def keys(store: IndexStore, under: str) -> list[str]:
    return [info.key for info in store.blob.list(store.prefix + under)]


def test_samples_refresh_race_and_cache_on_s3(s3_store: IndexStore) -> None:
    s3_store.write_item(put_event("a", "1", "e"))
    s3_store.compact(model_fingerprint=FINGERPRINT)
    now = time.time()
    for i in range(MIN_REFERENCE + 2):
        s3_store.queries.write_query_sample(query_vector(i), model_fingerprint=FINGERPRINT, now=now - i)
    newest = s3_store.queries.recent_query_samples(model_fingerprint=FINGERPRINT, limit=3, now=now)
    np.testing.assert_allclose(np.stack(newest), np.stack([query_vector(i) for i in range(3)]), atol=1e-3)

    rival = IndexStore(s3_store.blob, s3_store.prefix)
    real_recent = s3_store.queries.recent_query_samples
    raced: list[bool] = []

    def recent_then_get_overtaken(**kwargs: Any) -> list[np.ndarray]:
        if not raced:
            raced.append(True)
            s3_store.write_item(put_event("b", "2", "e"))
            rival.compact()  # moves the manifest's ETag: the refresh's If-Match must get 412 from S3
        return real_recent(**kwargs)

    s3_store.queries.recent_query_samples = recent_then_get_overtaken  # type: ignore[method-assign]
    entry = s3_store.queries.refresh_query_domain(now=now)

    assert entry is not None
    manifest, _ = s3_store.read_manifest()
    assert manifest.query_domain == entry
    assert manifest.current.items == 2, "the rival's version survived the retried swap"
    assert s3_store.queries.load_query_domain(entry).dim == DIM

    cache = IndexCache(s3_store, background=False)
    view = cache.view()
    assert view.query_domain is not None
    assert len(view.query_domain) == MIN_REFERENCE + 2
    assert view.catalog_mean.shape == (DIM,)

    s3_store.blob.put(s3_store.prefix + entry.key, b"corrupted")
    fresh = IndexCache(s3_store, background=False).view()
    assert fresh.query_domain is None
    assert {hit.item_id for hit in fresh.search(query_vector(0), 5)} == {"a", "b"}


def test_gc_of_queries_on_s3(s3_store: IndexStore) -> None:
    s3_store.write_item(put_event("a", "1", "e"))
    s3_store.compact(model_fingerprint=FINGERPRINT)
    now = time.time()
    for i in range(MIN_REFERENCE):
        s3_store.queries.write_query_sample(query_vector(i), model_fingerprint=FINGERPRINT, now=now - i)
    first = s3_store.queries.refresh_query_domain(now=now)
    s3_store.queries.write_query_sample(query_vector(99), model_fingerprint=FINGERPRINT, now=now + 1)
    s3_store.queries.write_query_sample(query_vector(98), model_fingerprint=FINGERPRINT, now=now - 40 * DAY)
    second = s3_store.queries.refresh_query_domain(now=now + 2)
    assert first is not None
    assert second is not None
    assert first.key != second.key

    result = s3_store.gc(grace_seconds=5)

    assert (result.query_references_deleted, result.query_samples_deleted) == (1, 1)
    assert keys(s3_store, QUERY_REFERENCE_DIR) == [s3_store.prefix + second.key]
    assert len(keys(s3_store, QUERY_SAMPLES_DIR)) == MIN_REFERENCE + 1
    s3_store.queries.load_query_domain(second)
