"""Query-domain storage: samples, the reference the manifest names, GC of queries/, and the cache and views using it."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest

from catalens.index.build import BuildParams, build_snapshot
from catalens.index.cache import IndexCache
from catalens.index.errors import CorruptIndexError, InvalidRecordError, ManifestConflictError
from catalens.index.layout import QUERY_REFERENCE_DIR, QUERY_SAMPLES_DIR
from catalens.index.manifest import Manifest, QueryDomainEntry, RetryPolicy
from catalens.index.records import ItemRecord
from catalens.index.store import IndexStore
from catalens.index.view import IndexView
from catalens.query_domain import MIN_REFERENCE, QueryDomain, catalog_mean
from catalens_tools.in_memory.blobs import MemoryBlobStore
from tests.unit.test_index_store import FakeClock

# Compacted vectors are int8: within a few thousandths of the float32 ones (docs/design.md, invariant 5).
COMPACT_ATOL = 0.01

DIM = 16
FINGERPRINT = "model-fingerprint-0123456789abcdef"
DAY = 86400.0
START = 1_800_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def blob(clock: FakeClock) -> MemoryBlobStore:
    return MemoryBlobStore(clock=clock.utc)


@pytest.fixture
def store(blob: MemoryBlobStore, clock: FakeClock) -> IndexStore:
    return IndexStore(blob, "index/", retry=RetryPolicy(base_delay=0.0), wall_clock=clock)


def query_vector(i: int) -> np.ndarray:
    v = np.random.default_rng(1000 + i).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def item(i: int, seq: int | None = None) -> ItemRecord:
    v = np.random.default_rng(i).normal(size=DIM).astype(np.float32)
    return ItemRecord(f"sku-{i}", v, {"title": f"item {i}"}, f"photos/sku-{i}.jpg", f"e{i}", f"{seq or i + 1:x}")


def build_index(store: IndexStore, n: int = 20) -> None:
    for i in range(n):
        store.write_item(item(i), model_fingerprint=FINGERPRINT)
    store.compact(model_fingerprint=FINGERPRINT)


def write_samples(store: IndexStore, n: int, *, start: float = START, step: float = 1.0, offset: int = 0) -> list[str]:
    return [
        store.queries.write_query_sample(query_vector(offset + i), model_fingerprint=FINGERPRINT, now=start + i * step)
        for i in range(n)
    ]


def keys(store: IndexStore, under: str) -> list[str]:
    return [info.key for info in store.blob.list(store.prefix + under)]


# ------------------------------------------------------------------------------------------------------ samples


def test_samples_come_back_newest_first_as_float32_within_float16_precision(store: IndexStore) -> None:
    written = write_samples(store, 5, step=3600.0 * 7)  # spans two UTC days
    assert all(key.startswith(f"index/{QUERY_SAMPLES_DIR}{FINGERPRINT[:16]}/") for key in written)
    assert len({key.split("/")[4] for key in written}) == 2, "one folder per UTC day"
    samples = store.queries.recent_query_samples(model_fingerprint=FINGERPRINT, limit=10, now=START + DAY)
    assert len(samples) == 5
    for sample, i in zip(samples, [4, 3, 2, 1, 0], strict=True):
        assert sample.dtype == np.float32
        np.testing.assert_allclose(sample, query_vector(i), atol=1e-3)
    newest_two = store.queries.recent_query_samples(model_fingerprint=FINGERPRINT, limit=2, now=START + DAY)
    np.testing.assert_allclose(np.stack(newest_two), np.stack(samples[:2]))


def test_samples_are_filtered_by_age_and_model(store: IndexStore) -> None:
    store.queries.write_query_sample(query_vector(0), model_fingerprint=FINGERPRINT, now=START - 31 * DAY)
    store.queries.write_query_sample(query_vector(1), model_fingerprint=FINGERPRINT, now=START - 29 * DAY)
    store.queries.write_query_sample(query_vector(2), model_fingerprint="another-model", now=START)
    found = store.queries.recent_query_samples(model_fingerprint=FINGERPRINT, limit=10, now=START)
    assert len(found) == 1
    np.testing.assert_allclose(found[0], query_vector(1), atol=1e-3)
    assert store.queries.recent_query_samples(model_fingerprint=FINGERPRINT, limit=10, max_age_days=7, now=START) == []
    assert len(store.queries.recent_query_samples(model_fingerprint="another-model", limit=10, now=START)) == 1
    assert store.queries.recent_query_samples(model_fingerprint=FINGERPRINT, limit=0, now=START) == []


def test_an_undecodable_or_malformed_sample_is_skipped(store: IndexStore) -> None:
    _, garbage, matrix, text = write_samples(store, 4)
    store.blob.put(garbage, b"not an npy file")
    for key, array in [(matrix, np.ones((2, DIM), np.float16)), (text, np.array(["a", "b"]))]:
        buffer = io.BytesIO()
        np.save(buffer, array)
        store.blob.put(key, buffer.getvalue())
    found = store.queries.recent_query_samples(model_fingerprint=FINGERPRINT, limit=10, now=START + 10)
    assert len(found) == 1
    np.testing.assert_allclose(found[0], query_vector(0), atol=1e-3)


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.ones((2, DIM), np.float32), "1-D"),
        (np.array([], np.float32), "1-D"),
        (np.array([1.0, np.nan] * (DIM // 2), np.float32), "non-finite"),
        (np.full(DIM, np.inf, np.float32), "non-finite"),
        (np.zeros(DIM, np.float32), "zero"),
        (np.full(DIM, 1e6, np.float32), "float16"),
        (np.array(["a", "b"]), "numeric"),
    ],
)
def test_invalid_samples_are_refused_and_nothing_is_written(
    store: IndexStore, vector: np.ndarray, message: str
) -> None:
    with pytest.raises(InvalidRecordError, match=message) as raised:
        store.queries.write_query_sample(vector, model_fingerprint=FINGERPRINT)
    assert raised.value.code == "invalid_record"
    assert keys(store, QUERY_SAMPLES_DIR) == []


def test_a_sample_needs_a_model_fingerprint(store: IndexStore) -> None:
    with pytest.raises(InvalidRecordError, match="fingerprint"):
        store.queries.write_query_sample(query_vector(0), model_fingerprint="")
    assert keys(store, QUERY_SAMPLES_DIR) == []


# ------------------------------------------------------------------------------------------------------ refresh


def test_refresh_needs_a_version_and_enough_samples(store: IndexStore) -> None:
    write_samples(store, MIN_REFERENCE + 5)
    assert store.queries.refresh_query_domain(now=START + 100) is None, "no current version yet"
    assert keys(store, QUERY_REFERENCE_DIR) == []

    other = IndexStore(MemoryBlobStore(), "index/", retry=RetryPolicy(base_delay=0.0))
    build_index(other)
    write_samples(other, MIN_REFERENCE - 1)
    before = other.blob.get(other.manifest_key)
    assert other.queries.refresh_query_domain(now=START + 100) is None
    after = other.blob.get(other.manifest_key)
    assert after.etag == before.etag, "too few samples: the manifest is not touched"
    assert keys(other, QUERY_REFERENCE_DIR) == []


def test_refresh_writes_a_verified_reference_and_the_manifest_names_it(store: IndexStore) -> None:
    build_index(store)
    write_samples(store, MIN_REFERENCE + 10)
    generation = store.read_manifest()[0].generation

    entry = store.queries.refresh_query_domain(beta=4.0, now=START + 100)

    assert entry is not None
    manifest, etag = store.read_manifest()
    assert manifest.query_domain == entry
    assert manifest.generation == generation + 1
    assert (entry.count, entry.beta, entry.model_fingerprint) == (MIN_REFERENCE + 10, 4.0, FINGERPRINT)
    data = store.blob.get(store.prefix + entry.key).data
    assert entry.key == f"{QUERY_REFERENCE_DIR}{hashlib.sha256(data).hexdigest()[:24]}.npz"
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        assert archive["reference"].dtype == np.float16
        assert archive["reference"].shape == (MIN_REFERENCE + 10, DIM)
    domain = store.queries.load_query_domain(entry)
    expected = QueryDomain.from_samples([query_vector(i) for i in reversed(range(MIN_REFERENCE + 10))], beta=4.0)
    assert expected is not None
    np.testing.assert_allclose(domain.reference, expected.reference, atol=2e-3)
    assert domain.beta == 4.0

    again = store.queries.refresh_query_domain(beta=4.0, now=START + 200)
    assert again == entry, "same samples: the same reference, not swapped again"
    assert store.read_manifest()[1] == etag

    write_samples(store, 3, start=START + 150, offset=500)
    newer = store.queries.refresh_query_domain(beta=4.0, now=START + 300)
    assert newer is not None
    assert newer.key != entry.key
    assert newer.count == MIN_REFERENCE + 13
    assert store.read_manifest()[0].query_domain == newer


def test_refresh_reads_at_most_four_times_max_reference_and_keeps_max_reference(store: IndexStore) -> None:
    build_index(store)
    write_samples(store, 4 * MIN_REFERENCE + 7)
    entry = store.queries.refresh_query_domain(max_reference=MIN_REFERENCE, now=START + 1000)
    assert entry is not None
    assert entry.count == MIN_REFERENCE
    oldest = [query_vector(i) for i in range(7)]  # beyond the 4 × max_reference newest: never read
    reference = store.queries.load_query_domain(entry).reference
    for vector in oldest:
        assert np.abs(reference @ vector).max() < 0.999


def test_refresh_retries_when_another_writer_swaps_the_manifest_first(blob: MemoryBlobStore, clock: FakeClock) -> None:
    class RacingBlob(MemoryBlobStore):
        """Before our first manifest write, a rival compaction publishes a new version (our If-Match must fail)."""

        def __init__(self) -> None:
            super().__init__(clock=clock.utc)
            self.rival: IndexStore | None = None
            self.manifest_writes = 0

        def put(self, key: str, data: bytes, **kwargs) -> str:
            if key.endswith("manifest.json") and self.rival is not None:
                rival, self.rival = self.rival, None
                rival.write_item(item(99), model_fingerprint=FINGERPRINT)
                rival.compact()
            if key.endswith("manifest.json"):
                self.manifest_writes += 1
            return super().put(key, data, **kwargs)

    racing = RacingBlob()
    store = IndexStore(racing, "index/", retry=RetryPolicy(base_delay=0.0), wall_clock=clock)
    build_index(store)
    write_samples(store, MIN_REFERENCE)
    rival = IndexStore(racing, "index/", retry=RetryPolicy(base_delay=0.0), wall_clock=clock)
    racing.rival = rival
    racing.manifest_writes = 0

    entry = store.queries.refresh_query_domain(now=START + 100)

    assert entry is not None
    manifest, _ = store.read_manifest()
    assert manifest.query_domain == entry
    assert manifest.current is not None
    assert manifest.current.items == 21, "the rival's version is kept: the refresh re-read the manifest"
    assert racing.manifest_writes == 3, "rival's swap, our lost swap, our retried swap"


def test_refresh_gives_up_after_the_retry_budget(store: IndexStore) -> None:
    build_index(store)
    write_samples(store, MIN_REFERENCE)
    store.queries.retry = RetryPolicy(attempts=3, base_delay=0.0)
    store.manifests.swap = lambda manifest, etag: False  # every swap loses
    with pytest.raises(ManifestConflictError, match="3 times"):
        store.queries.refresh_query_domain(now=START + 100)


def test_compaction_and_rollback_keep_the_query_domain(store: IndexStore) -> None:
    build_index(store)
    first_version = store.read_manifest()[0].current.version
    write_samples(store, MIN_REFERENCE)
    entry = store.queries.refresh_query_domain(now=START + 100)
    assert entry is not None

    store.write_item(item(50), model_fingerprint=FINGERPRINT)
    result = store.compact()
    assert not result.noop
    assert store.read_manifest()[0].query_domain == entry
    store.rollback(first_version)
    manifest, _ = store.read_manifest()
    assert manifest.current.version == first_version
    assert manifest.query_domain == entry


def test_manifests_without_the_entry_load_and_a_malformed_entry_is_ignored(store: IndexStore) -> None:
    build_index(store)
    manifest, _ = store.read_manifest()
    assert manifest.query_domain is None
    assert "query_domain" not in json.loads(manifest.to_bytes()), "absent, as old manifests have it"

    entry = QueryDomainEntry(f"{QUERY_REFERENCE_DIR}abc.npz", "ab" * 32, 10, 30, 5.0, FINGERPRINT, "2027-01-01")
    with_entry = Manifest.from_bytes(Manifest(manifest.generation, manifest.current, query_domain=entry).to_bytes())
    assert with_entry.query_domain == entry

    body = json.loads(manifest.to_bytes())
    body["query_domain"] = {"key": "../elsewhere.npz", "sha256": "x"}
    assert Manifest.from_bytes(json.dumps(body).encode()).query_domain is None
    body["query_domain"] = {**entry.to_dict(), "key": "versions/x/ledger.json"}
    assert Manifest.from_bytes(json.dumps(body).encode()).query_domain is None


def test_load_query_domain_verifies_the_object(store: IndexStore) -> None:
    build_index(store)
    write_samples(store, MIN_REFERENCE)
    entry = store.queries.refresh_query_domain(now=START + 100)
    assert entry is not None
    data = store.blob.get(store.prefix + entry.key).data
    store.blob.put(store.prefix + entry.key, data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CorruptIndexError, match="checksum"):
        store.queries.load_query_domain(entry)
    store.blob.delete(store.prefix + entry.key)
    with pytest.raises(CorruptIndexError, match="missing"):
        store.queries.load_query_domain(entry)


# ------------------------------------------------------------------------------------------------------------ GC


def test_gc_keeps_the_named_reference_and_drops_old_samples_and_unnamed_references(
    store: IndexStore, clock: FakeClock
) -> None:
    build_index(store)
    write_samples(store, MIN_REFERENCE)  # written at START
    first = store.queries.refresh_query_domain(now=START + 100)
    clock.now = START + 10 * DAY
    write_samples(store, 2, start=clock.now, offset=100)
    second = store.queries.refresh_query_domain()
    assert first is not None
    assert second is not None
    assert second.key != first.key

    clock.now = START + 10 * DAY + 60
    young = store.gc(grace_seconds=3600)
    assert young.query_references_deleted == 1, "the replaced reference is 10 days old: collected"
    assert young.query_samples_deleted == 0
    assert keys(store, QUERY_REFERENCE_DIR) == [store.prefix + second.key]

    clock.now = START + 31 * DAY
    write_samples(store, 1, start=clock.now, offset=200)
    assert len(keys(store, QUERY_SAMPLES_DIR)) == MIN_REFERENCE + 3
    old = store.gc(grace_seconds=3600)
    assert old.query_samples_deleted == MIN_REFERENCE, "older than 30 days"
    assert old.query_references_deleted == 0, "the manifest names it, however old"
    assert keys(store, QUERY_REFERENCE_DIR) == [store.prefix + second.key]
    assert len(keys(store, QUERY_SAMPLES_DIR)) == 3
    store.queries.load_query_domain(second)


def test_gc_keeps_a_young_unnamed_reference_and_dry_run_deletes_nothing(store: IndexStore, clock: FakeClock) -> None:
    build_index(store)
    store.blob.put(store.prefix + QUERY_REFERENCE_DIR + "in-flight.npz", b"written by a refresh about to swap")
    assert store.gc(grace_seconds=3600).query_references_deleted == 0
    clock.now += 7200
    store.queries.write_query_sample(query_vector(0), model_fingerprint=FINGERPRINT, now=START - 40 * DAY)
    dry = store.gc(grace_seconds=3600, dry_run=True)
    assert (dry.query_references_deleted, dry.query_samples_deleted) == (1, 1)
    assert len(keys(store, "queries/")) == 2
    store.gc(grace_seconds=3600)
    assert keys(store, "queries/") == []


# ------------------------------------------------------------------------------------------------ views and cache


def test_catalog_mean_is_the_mean_of_the_live_vectors_snapshot_and_deltas() -> None:
    snapshot = build_snapshot([item(i) for i in range(30)], model_fingerprint=FINGERPRINT)
    hidden = ItemRecord("sku-3", None, {}, "", "", "ff", deleted=True)
    replaced = ItemRecord("sku-4", query_vector(7), {}, "k", "e", "ff")
    added = ItemRecord("new", query_vector(8), {}, "k", "e", "ff")
    view = IndexView(snapshot, [hidden, replaced, added])
    live = np.stack([view.vector_of(f"sku-{i}") for i in range(30) if i != 3] + [view.vector_of("new")])
    assert len(view) == len(live)
    np.testing.assert_allclose(view.catalog_mean, catalog_mean(live), atol=COMPACT_ATOL)
    assert IndexView(None).catalog_mean is None
    assert IndexView(None).query_domain is None


def test_a_view_holds_the_domain_in_index_space() -> None:
    records = [item(i) for i in range(40)]
    domain = QueryDomain.from_samples([query_vector(i) for i in range(MIN_REFERENCE)])
    assert domain is not None
    plain = IndexView(build_snapshot(records, model_fingerprint=FINGERPRINT), query_domain=domain)
    assert plain.query_domain is domain
    reduced = build_snapshot(records, model_fingerprint=FINGERPRINT, params=BuildParams(layout="float32", reduce_dim=8))
    view = IndexView(reduced, query_domain=domain)
    assert view.query_domain is not None
    assert view.query_domain.dim == view.dim == 8
    np.testing.assert_allclose(view.query_domain.reference, reduced.project(domain.reference), atol=1e-5)
    assert view.catalog_mean.shape == (8,)
    wrong_width = QueryDomain.from_samples([np.ones(DIM + 1, np.float32) + i for i in range(MIN_REFERENCE)])
    assert IndexView(reduced, query_domain=wrong_width).query_domain is None, "left out, not an error"


def test_the_cache_picks_up_a_new_reference_without_reloading_the_version(store: IndexStore) -> None:
    build_index(store)
    now = [0.0]
    cache = IndexCache(store, ttl_seconds=1.0, clock=lambda: now[0], background=False)
    assert cache.view().query_domain is None
    write_samples(store, MIN_REFERENCE)
    entry = store.queries.refresh_query_domain(now=START + 100)
    assert entry is not None

    now[0] += 2
    view = cache.view()
    assert view.query_domain is not None
    assert len(view.query_domain) == entry.count
    assert cache.query_domain_entry == entry
    assert (cache.stats.versions_loaded, cache.stats.query_domains_loaded) == (1, 1)
    store.write_item(item(77), model_fingerprint=FINGERPRINT)  # a new delta: a new view, same domain
    now[0] += 2
    with_delta = cache.view()
    assert with_delta.get("sku-77") is not None
    assert with_delta.query_domain is view.query_domain
    assert cache.stats.query_domains_loaded == 1


def test_the_background_cache_loads_the_reference_off_the_answer_path(store: IndexStore) -> None:
    build_index(store)
    now = [0.0]
    cache = IndexCache(store, ttl_seconds=1.0, clock=lambda: now[0], background=True, refresh_wait_seconds=0.0)
    assert cache.view().query_domain is None
    write_samples(store, MIN_REFERENCE)
    store.queries.refresh_query_domain(now=START + 100)
    now[0] += 2
    cache.view()
    assert cache.wait_idle(timeout=30)
    assert cache.view().query_domain is not None


def test_a_corrupt_or_missing_reference_leaves_search_working(store: IndexStore) -> None:
    build_index(store)
    write_samples(store, MIN_REFERENCE)
    entry = store.queries.refresh_query_domain(now=START + 100)
    assert entry is not None
    store.blob.put(store.prefix + entry.key, b"garbage")

    cache = IndexCache(store, background=False)
    view = cache.view()
    assert view.query_domain is None
    assert len(view.search(query_vector(0), 5)) == 5
    assert cache.query_domain_entry == entry, "noted, so it is not fetched again on every revalidation"
    assert store.load_view().query_domain is None

    store.blob.delete(store.prefix + entry.key)
    fresh = IndexCache(store, background=False).view()
    assert fresh.query_domain is None
    assert len(fresh.search(query_vector(0), 5)) == 5


def test_a_reference_of_another_model_is_not_applied(store: IndexStore) -> None:
    build_index(store)
    for i in range(MIN_REFERENCE):
        store.queries.write_query_sample(query_vector(i), model_fingerprint=FINGERPRINT, now=START + i)
    entry = store.queries.refresh_query_domain(now=START + 100)
    assert entry is not None
    manifest, etag = store.read_manifest()
    stale = Manifest(manifest.generation + 1, manifest.current, manifest.history, manifest.updated_at,
                     query_domain=QueryDomainEntry(**{**entry.to_dict(), "model_fingerprint": "old"}))  # fmt: skip
    store.blob.put(store.manifest_key, stale.to_bytes(), if_match=etag)
    assert store.load_view().query_domain is None
    assert IndexCache(store, background=False).view().query_domain is None
