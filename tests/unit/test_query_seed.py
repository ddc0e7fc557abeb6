"""The query domain's seed: synthetic shoppers' photos stand in for query samples until real ones suffice."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from catalens.index.cache import IndexCache
from catalens.index.manifest import RetryPolicy
from catalens.index.store import IndexStore
from catalens.query_domain import MIN_REFERENCE, QueryDomain, SeedSample, seed_item_hash
from catalens.service.ingest import ErrorLog, IngestConfig, IngestService
from catalens.service.seeding import QuerySeeder
from catalens.service.telemetry import RecordingMetrics
from catalens.shopper_views import RecentShelf, seed_views
from catalens_tools.in_memory.blobs import MemoryBlobStore
from tests.unit.test_ingest_service import ColourEmbedder, MemoryCatalog, created

DIM = 16
FINGERPRINT = "model-fingerprint-0123456789abcdef"


def vector(i: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(i).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def shop_photo(colour: tuple[int, int, int], side: int = 160) -> bytes:
    """A product shot: a coloured box on a white background, as JPEG."""
    image = Image.new("RGB", (side, side), (255, 255, 255))
    image.paste(Image.new("RGB", (side // 2, side * 2 // 3), colour), (side // 4, side // 6))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture
def store() -> IndexStore:
    return IndexStore(MemoryBlobStore(), "index/", retry=RetryPolicy(base_delay=0.0))


# ------------------------------------------------------------------------------------------------ the domain


def test_seeds_stand_in_until_real_samples_suffice_and_then_wholly_give_way() -> None:
    seeds = [vector(1000 + i) for i in range(40)]
    assert QueryDomain.from_samples([], seeds=seeds) is not None  # no real sample yet: the seed alone
    few = [vector(i) for i in range(MIN_REFERENCE - 1)]
    mixed = QueryDomain.from_samples(few, seeds=seeds)
    assert mixed is not None
    assert len(mixed) == len(few) + len(seeds)
    enough = [vector(i) for i in range(MIN_REFERENCE)]
    real = QueryDomain.from_samples(enough, seeds=seeds)
    assert real is not None
    assert len(real) == MIN_REFERENCE
    np.testing.assert_allclose(real.reference, QueryDomain.from_samples(enough).reference)
    assert QueryDomain.from_samples(few[:5], seeds=seeds[:5]) is None  # too few of both
    assert mixed.seeded
    assert not real.seeded


def test_a_seeded_domain_centres_but_charges_no_hubness() -> None:
    seeds = [vector(1000 + i) for i in range(40)]
    domain = QueryDomain.from_samples([], seeds=seeds)
    assert domain is not None
    catalog = np.stack([vector(i) for i in range(8)])
    calibrated, centred, hubness = domain.calibrate(vector(99), catalog, catalog.mean(axis=0))
    assert not hubness.any()
    np.testing.assert_allclose(calibrated, centred)
    real = QueryDomain(domain.reference)
    assert real.calibrate(vector(99), catalog, catalog.mean(axis=0))[2].any()


def test_an_items_seed_hash_depends_on_the_model() -> None:
    assert seed_item_hash("sku-1", "a") == seed_item_hash("sku-1", "a")
    assert seed_item_hash("sku-1", "a") != seed_item_hash("sku-1", "b")
    assert len(seed_item_hash("sku-1", "a")) == 16


# ------------------------------------------------------------------------------------------------ the views


def test_seed_views_are_deterministic_shopper_photos_and_feed_the_shelf() -> None:
    image = Image.open(io.BytesIO(shop_photo((200, 30, 30)))).convert("RGB")
    shelf = RecentShelf(size=2)
    first = seed_views(image, 2, seed=7, shelf=RecentShelf(size=2))
    again = seed_views(image, 2, seed=7, shelf=shelf)
    assert len(first) == 2
    assert first[0].size == (320, 320)
    assert [np.asarray(v).tobytes() for v in first] == [np.asarray(v).tobytes() for v in again]
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))
    for colour in [(30, 200, 30), (30, 30, 200)]:
        seed_views(Image.open(io.BytesIO(shop_photo(colour))).convert("RGB"), 1, seed=1, shelf=shelf)
    assert len(shelf.others(None)) == 2  # bounded: the newest two products


# ------------------------------------------------------------------------------------------------ storage


def test_seed_samples_are_idempotent_and_read_as_a_bottom_k_sample(store: IndexStore) -> None:
    hashes = sorted(seed_item_hash(f"sku-{i}", FINGERPRINT) for i in range(6))
    for n, item_hash in enumerate(hashes):
        for view in range(2):
            sample = SeedSample(item_hash, view, vector(10 * n + view))
            assert store.queries.write_seed_sample(sample, model_fingerprint=FINGERPRINT) is not None
    again = SeedSample(hashes[0], 0, vector(999))
    assert store.queries.write_seed_sample(again, model_fingerprint=FINGERPRINT) is None  # a re-delivery
    assert store.queries.seed_item_hashes(model_fingerprint=FINGERPRINT, items=4) == hashes[:4]
    samples = store.queries.seed_samples(model_fingerprint=FINGERPRINT, items=3)
    assert len(samples) == 6
    np.testing.assert_allclose(samples[0], vector(0), atol=1e-3)  # the first write stands
    assert store.queries.seed_samples(model_fingerprint="another-model") == []


def test_the_builder_calibrates_from_the_seed_until_real_samples_suffice(store: IndexStore) -> None:
    from catalens.index import ItemRecord

    for i in range(5):
        record = ItemRecord(f"sku-{i}", vector(i), {}, f"sku-{i}.jpg", f"e{i}", f"{i + 1:x}")
        store.write_item(record, model_fingerprint=FINGERPRINT)
    store.compact(model_fingerprint=FINGERPRINT)
    assert store.queries.refresh_query_domain() is None  # nothing to calibrate from
    for i in range(20):
        for view in range(2):
            sample = SeedSample(seed_item_hash(f"sku-{i}", FINGERPRINT), view, vector(100 + 2 * i + view))
            store.queries.write_seed_sample(sample, model_fingerprint=FINGERPRINT)
    seeded = store.queries.refresh_query_domain()
    assert seeded is not None
    assert seeded.count == 40
    assert store.queries.load_query_domain(seeded).seeded  # the flag travels with the reference object
    for i in range(MIN_REFERENCE):
        store.queries.write_query_sample(vector(500 + i), model_fingerprint=FINGERPRINT)
    real = store.queries.refresh_query_domain()
    assert real is not None
    assert not store.queries.load_query_domain(real).seeded
    assert real is not None
    assert real.count == MIN_REFERENCE
    assert real.sha256 != seeded.sha256


# ------------------------------------------------------------------------------------------------ ingest


def ingest_with_seed(items: int) -> tuple[IngestService, MemoryCatalog, IndexStore, RecordingMetrics]:
    store = IndexStore(MemoryBlobStore(), "index/")
    cache = IndexCache(store, ttl_seconds=0, background=False)
    metrics = RecordingMetrics()
    embedder = ColourEmbedder()
    seeder = QuerySeeder(store.queries, embedder, items=items, views=2, metrics=metrics, refresh_seconds=0)
    catalog = MemoryCatalog()
    service = IngestService(
        catalog=catalog,
        index=store,
        embedder=embedder,
        views=cache.view,
        errors=ErrorLog(store.blob, "index/ingest-errors/"),
        metrics=metrics,
        config=IngestConfig(near_duplicate_threshold=0.999),
        seeder=seeder,
    )
    return service, catalog, store, metrics


def test_ingest_seeds_a_bottom_k_sample_of_items_once_each() -> None:
    service, catalog, store, _ = ingest_with_seed(items=3)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]
    for i, colour in enumerate(colours):
        catalog.put(f"sku-{i}.jpg", shop_photo(colour))
        assert service.handle_event(created(f"sku-{i}.jpg", f"{i + 1:02x}")).action == "indexed"
    fingerprint = ColourEmbedder.card.fingerprint()
    seeded = store.queries.seed_item_hashes(model_fingerprint=fingerprint, items=100)
    smallest = sorted(seed_item_hash(f"sku-{i}", fingerprint) for i in range(len(colours)))[:3]
    assert seeded[:3] == smallest  # the sample is the smallest hashes, whatever the upload order
    assert len(seeded) < len(colours)  # an item above the k-th smallest hash is not seeded
    assert len(store.queries.seed_samples(model_fingerprint=fingerprint, items=1)) == 2  # two views an item
    assert service.handle_event(created("sku-0.jpg", "01")).action == "unchanged"  # a re-delivery embeds nothing


def test_a_failing_seed_never_fails_the_ingest() -> None:
    service, catalog, _store, metrics = ingest_with_seed(items=3)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("S3 is having a day")

    service.seeder.store.write_seed_sample = broken  # type: ignore[method-assign]
    catalog.put("sku-0.jpg", shop_photo((200, 30, 30)))
    assert service.handle_event(created("sku-0.jpg", "01")).action == "indexed"
    assert metrics.total("SeedSampleErrors") == 1
