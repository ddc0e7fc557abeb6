"""IngestService with in-memory ports: event parsing, ordering and idempotency, failures recorded, fields validated."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from catalens.imaging import PreprocessConfig
from catalens.index.cache import IndexCache
from catalens.index.store import IndexStore
from catalens.ports import CatalogObject
from catalens.service.errors import FieldError
from catalens.service.fields import parse_product_fields
from catalens.service.ingest import (
    ErrorLog,
    IngestConfig,
    IngestFailedError,
    IngestService,
    item_id_for_key,
)
from catalens.service.notifications import ObjectEvent, parse_notification
from catalens.service.requests import parse_item_id
from catalens.service.telemetry import RecordingMetrics
from catalens_tools.in_memory.blobs import MemoryBlobStore
from tests.unit.imagefactory import encode, photo, png_bomb

BUCKET = "catalog"


class MemoryCatalog:
    """The catalog bucket as a dict: key -> (bytes, metadata); ETag = a counter per write."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str], str]] = {}
        self._writes = 0

    def put(self, key: str, data: bytes, **metadata: str) -> str:
        self._writes += 1
        etag = f"etag{self._writes}"
        self.objects[key] = (data, metadata, etag)
        return etag

    def head(self, bucket: str, key: str) -> CatalogObject | None:
        if key not in self.objects:
            return None
        data, metadata, etag = self.objects[key]
        return CatalogObject(bucket, key, etag, len(data), metadata)

    def read(self, bucket: str, key: str, *, max_bytes: int) -> CatalogObject | None:
        head = self.head(bucket, key)
        if head is None:
            return None
        data = self.objects[key][0]
        return CatalogObject(
            bucket, key, head.etag, len(data), head.metadata, data=data if len(data) <= max_bytes else None
        )


class StubCard:
    preprocess = PreprocessConfig()

    def __init__(self, copy_cosine: float = 0.94) -> None:
        self.copy_cosine = copy_cosine

    def fingerprint(self) -> str:
        return "stub"


class ColourEmbedder:
    """A 3-d 'embedding': the mean colour of the preprocessed photo (same photo, same vector)."""

    card = StubCard()

    def embed(self, batch: np.ndarray) -> np.ndarray:
        vectors = batch.mean(axis=(2, 3)) + 2.0
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def parts() -> dict[str, Any]:
    blob = MemoryBlobStore()
    store = IndexStore(blob, "index/")
    cache = IndexCache(store, ttl_seconds=0, background=False)
    catalog = MemoryCatalog()
    metrics = RecordingMetrics()
    errors = ErrorLog(blob, "index/ingest-errors/")
    service = IngestService(
        catalog=catalog,
        index=store,
        embedder=ColourEmbedder(),
        views=cache.view,
        errors=errors,
        metrics=metrics,
        config=IngestConfig(near_duplicate_threshold=0.999),
    )
    return {"service": service, "catalog": catalog, "cache": cache, "metrics": metrics, "errors": errors, "blob": blob}


def created(key: str, sequencer: str, etag: str = "x") -> ObjectEvent:
    return ObjectEvent("created", "ObjectCreated:Put", BUCKET, key, sequencer, etag=etag)


def removed(key: str, sequencer: str) -> ObjectEvent:
    return ObjectEvent("removed", "ObjectRemoved:Delete", BUCKET, key, sequencer)


JPEG = encode(photo(96, 72, seed=3))


# ------------------------------------------------------------------------------------------------ event parsing


def test_aws_and_moto_records_parse_to_the_same_event() -> None:
    aws = {"eventName": "ObjectCreated:Put", "eventTime": "2026-01-01T00:00:00.000Z"}
    aws["s3"] = {"bucket": {"name": BUCKET}, "object": {"key": "a+b%2Fc%C3%BC.jpg", "eTag": "e1", "sequencer": "00AB"}}
    moto = json.loads(json.dumps(aws))
    del moto["s3"]["object"]["sequencer"]
    (from_aws,) = parse_notification({"Records": [aws]})
    (from_moto,) = parse_notification(json.dumps({"Records": [moto]}))
    assert from_aws.key == from_moto.key == "a b/cü.jpg"
    assert from_aws.sequencer == "00AB"
    assert int(from_moto.sequencer, 16) == 1767225600 * 1_000_000  # eventTime in µs


def test_test_event_and_other_event_kinds() -> None:
    assert parse_notification('{"Service": "Amazon S3", "Event": "s3:TestEvent"}') == []
    record = {"eventName": "ObjectRestore:Completed", "eventTime": "2026-01-01T00:00:00Z"}
    record["s3"] = {"bucket": {"name": BUCKET}, "object": {"key": "x.jpg", "sequencer": "1"}}
    assert parse_notification({"Records": [record]})[0].kind == "ignored"


@pytest.mark.parametrize(
    ("key", "prefix", "item_id"),
    [
        ("a.jpg", "", "a"),
        ("photos/a.b.png", "photos/", "a.b"),
        ("photos/x/y.webp", "photos/", "x/y"),
        ("noext", "", "noext"),
    ],
)
def test_item_id_for_key(key: str, prefix: str, item_id: str) -> None:
    assert item_id_for_key(key, prefix) == item_id


# ------------------------------------------------------------------------------------------------ fields


def test_fields_from_metadata_and_sidecar() -> None:
    metadata = {"title": "=?UTF-8?B?Q2Fmw6k=?=", "price": "3", "image-url": "https://x.example/a.jpg", "colour": "red"}
    fields = parse_product_fields(metadata, {"price": 2.5, "tags": "a, b", "organic": True})
    assert fields == {
        "title": "Café",
        "price": 2.5,
        "image_url": "https://x.example/a.jpg",
        "colour": "red",
        "tags": ["a", "b"],
        "organic": True,
    }


@pytest.mark.parametrize(
    ("metadata", "sidecar", "message"),
    [
        ({"price": "cheap"}, None, "price"),
        ({"price": "-1"}, None, "price"),
        ({"price": "NaN"}, None, "price"),
        ({"currency": "euro"}, None, "currency"),
        ({"title": "x" * 301}, None, "title"),
        ({"url": "javascript:alert(1)"}, None, "url"),
        ({}, {"near_duplicates": []}, "reserved"),
        ({}, {"nested": {"a": 1}}, "nested"),
        ({}, {"Bad Name": 1}, "field name"),
    ],
)
def test_invalid_fields_are_named(metadata: dict, sidecar: dict | None, message: str) -> None:
    with pytest.raises(FieldError, match=message):
        parse_product_fields(metadata, sidecar)


# ------------------------------------------------------------------------------------------------ ordering


def test_create_overwrite_delete(parts: dict[str, Any]) -> None:
    service, catalog, cache = parts["service"], parts["catalog"], parts["cache"]
    etag = catalog.put("a.jpg", JPEG, title="A")
    assert service.handle_event(created("a.jpg", "10", etag)).action == "indexed"
    assert cache.view().get("a").fields == {"title": "A"}
    catalog.put("a.jpg", encode(photo(96, 72, seed=4)), title="A2")
    assert service.handle_event(created("a.jpg", "11")).action == "indexed"
    assert cache.view().get("a").fields == {"title": "A2"}
    del catalog.objects["a.jpg"]
    assert service.handle_event(removed("a.jpg", "12")).action == "deleted"
    assert cache.view().get("a") is None
    assert parts["metrics"].total("ItemsIndexed") == 2
    assert parts["metrics"].total("ItemsDeleted") == 1


def test_stale_delete_of_a_reuploaded_photo_is_skipped(parts: dict[str, Any]) -> None:
    service, catalog, cache = parts["service"], parts["catalog"], parts["cache"]
    catalog.put("a.jpg", JPEG)
    service.handle_event(created("a.jpg", "30"))
    # The delete (seq 20) of an earlier generation arrives late, while the photo exists again.
    assert service.handle_event(removed("a.jpg", "20")).action == "skipped"
    assert cache.view().get("a") is not None


def test_same_bytes_uploaded_again_after_a_delete_are_written(parts: dict[str, Any]) -> None:
    service, catalog, cache = parts["service"], parts["catalog"], parts["cache"]
    catalog.put("a.jpg", JPEG)
    service.handle_event(created("a.jpg", "10"))
    stale = cache.view()  # a reader that has not seen the delete yet
    del catalog.objects["a.jpg"]
    service.handle_event(removed("a.jpg", "11"))
    catalog.objects["a.jpg"] = (JPEG, {}, "etag1")  # identical bytes, identical ETag
    service._views = lambda: stale  # the ingest's cached view still shows the first upload
    assert service.handle_event(created("a.jpg", "12")).action == "indexed"
    assert cache.view().get("a") is not None


def test_duplicate_delivery_is_recognised(parts: dict[str, Any]) -> None:
    service, catalog = parts["service"], parts["catalog"]
    catalog.put("a.jpg", JPEG)
    assert service.handle_event(created("a.jpg", "10")).action == "indexed"
    assert service.handle_event(created("a.jpg", "10")).action == "unchanged"
    assert len(list(parts["blob"].list("index/deltas/"))) == 1


def test_every_delivered_event_is_counted_so_a_duplicate_only_batch_still_publishes_a_metric(
    parts: dict[str, Any],
) -> None:
    service, catalog = parts["service"], parts["catalog"]
    catalog.put("a.jpg", JPEG)
    record = {"eventName": "ObjectCreated:Put", "eventTime": "2026-01-01T00:00:00.000Z"}
    record["s3"] = {"bucket": {"name": BUCKET}, "object": {"key": "a.jpg", "eTag": "x", "sequencer": "0A"}}
    message = json.dumps({"Records": [record]})
    assert [o.action for o in service.handle_message(message)] == ["indexed"]
    assert [o.action for o in service.handle_message(message)] == ["unchanged"]  # SQS delivered it again
    assert parts["metrics"].total("EventsReceived") == 2
    assert parts["metrics"].total("ItemsIndexed") == 1
    assert service.handle_message(json.dumps({"Event": "s3:TestEvent", "Bucket": BUCKET})) == []
    assert parts["metrics"].total("EventsReceived") == 2


# ------------------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    ("data", "metadata", "reason"),
    [
        (b"", {}, "empty_image"),
        (b"plain text", {}, "not_an_image"),
        (JPEG[:300], {}, "truncated_image"),
        (png_bomb(), {}, "decompression_bomb"),
        (JPEG, {"price": "free"}, "invalid_field"),
    ],
)
def test_bad_photo_is_recorded_three_ways_and_raised(
    parts: dict[str, Any], data: bytes, metadata: dict, reason: str
) -> None:
    parts["catalog"].put("bad.jpg", data, **metadata)
    with pytest.raises(IngestFailedError) as caught:
        parts["service"].handle_event(created("bad.jpg", "5"))
    assert caught.value.reason == reason
    assert parts["metrics"].total("IngestFailures", reason=reason) == 1
    (marker,) = parts["errors"].list()
    assert (marker["key"], marker["item_id"], marker["code"]) == ("bad.jpg", "bad", reason)
    assert parts["cache"].view().get("bad") is None


def test_oversized_photo_is_refused_before_download(parts: dict[str, Any]) -> None:
    service = parts["service"]
    service.config = IngestConfig(limits=replace(service.config.limits, max_bytes=100))
    parts["catalog"].put("big.jpg", JPEG)
    with pytest.raises(IngestFailedError) as caught:
        service.handle_event(created("big.jpg", "5"))
    assert caught.value.reason == "image_too_large"


def test_broken_sidecar_marks_the_photo_and_a_fix_clears_it(parts: dict[str, Any]) -> None:
    service, catalog = parts["service"], parts["catalog"]
    catalog.put("p.jpg", JPEG)
    catalog.put("p.jpg.json", b"{not json")
    with pytest.raises(IngestFailedError):
        service.handle_event(created("p.jpg.json", "7"))
    assert [m["key"] for m in parts["errors"].list()] == ["p.jpg"]
    catalog.put("p.jpg.json", b'{"title": "Fixed"}')
    assert service.handle_event(created("p.jpg.json", "8")).action == "indexed"
    assert parts["errors"].list() == []
    assert parts["cache"].view().get("p").fields == {"title": "Fixed"}


def test_near_duplicates_of_other_items_are_recorded(parts: dict[str, Any]) -> None:
    service, catalog = parts["service"], parts["catalog"]
    catalog.put("a.jpg", JPEG)
    service.handle_event(created("a.jpg", "1"))
    catalog.put("a-copy.jpg", JPEG)
    outcome = service.handle_event(created("a-copy.jpg", "2"))
    assert [n["item_id"] for n in outcome.near_duplicates] == ["a"]
    assert parts["cache"].view().get("a-copy").fields["near_duplicates"][0]["item_id"] == "a"
    assert parts["metrics"].total("NearDuplicates") == 1
    # Re-ingesting the same item never lists itself.
    catalog.put("a.jpg", JPEG, title="again")
    assert [n["item_id"] for n in service.handle_event(created("a.jpg", "3")).near_duplicates] == ["a-copy"]


def test_the_near_duplicate_threshold_defaults_to_the_model_cards_copy_cosine(parts: dict[str, Any]) -> None:
    """Where a copy begins depends on the model: unset in the config, the threshold is the card's."""
    embedder, catalog = ColourEmbedder(), parts["catalog"]
    service = IngestService(catalog=catalog, index=parts["service"].index, embedder=embedder, views=parts["cache"].view)
    assert service.config.near_duplicate_threshold is None
    catalog.put("a.jpg", JPEG)
    service.handle_event(created("a.jpg", "1"))
    embedder.card = StubCard(copy_cosine=0.0)  # everything is a copy: learn the score of b against a
    catalog.put("b.jpg", encode(photo(96, 72, seed=4)))
    (near,) = service.handle_event(created("b.jpg", "2")).near_duplicates
    assert near["item_id"] == "a"
    embedder.card = StubCard(copy_cosine=near["score"] + 0.001)
    catalog.put("b.jpg", encode(photo(96, 72, seed=4)), title="above the score")
    assert service.handle_event(created("b.jpg", "3")).near_duplicates == []
    embedder.card = StubCard(copy_cosine=near["score"] - 0.001)
    catalog.put("b.jpg", encode(photo(96, 72, seed=4)), title="below the score")
    assert [n["item_id"] for n in service.handle_event(created("b.jpg", "4")).near_duplicates] == ["a"]
    service.config = IngestConfig(near_duplicate_threshold=near["score"] + 0.001)  # an explicit one still wins
    catalog.put("b.jpg", encode(photo(96, 72, seed=4)), title="explicit")
    assert service.handle_event(created("b.jpg", "5")).near_duplicates == []


# ------------------------------------------------------------------------------------------------ ids the API serves


@pytest.mark.parametrize(
    "key",
    [
        "photos/red shoe.jpg",
        "photos/shoes/sku-1.final.png",
        "photos/kitchen/10 ÷ 2 = 5.jpg",
        "photos/100% wool+silk?.webp",
        "photos/" + "x" * 1000 + ".jpg",  # S3 keys reach 1024 bytes, so ids reach 1000+ characters
        "photos/.hidden",
    ],
)
def test_ids_of_ordinary_keys_index_and_pass_the_apis_id_check(parts: dict[str, Any], key: str) -> None:
    item_id = item_id_for_key(key, "photos/")
    assert parse_item_id(item_id) == item_id  # what GET /items/{id} accepts
    parts["service"].config = IngestConfig(catalog_prefix="photos/", near_duplicate_threshold=0.999)
    parts["catalog"].put(key, JPEG)
    assert parts["service"].handle_event(created(key, "5")).action == "indexed"
    assert parts["cache"].view().get(item_id) is not None


@pytest.mark.parametrize("key", ["tab\there.jpg", "line\nbreak.jpg", "bell\x07.png", "..", "."])
def test_keys_whose_id_the_api_cannot_serve_are_recorded_not_indexed(parts: dict[str, Any], key: str) -> None:
    parts["catalog"].put(key, JPEG)
    with pytest.raises(IngestFailedError) as caught:
        parts["service"].handle_event(created(key, "5"))
    assert caught.value.reason == "invalid_item_id"
    (marker,) = parts["errors"].list()
    assert (marker["key"], marker["code"]) == (key, "invalid_item_id")
    assert "rename the photo" in marker["message"]
    assert len(parts["cache"].view()) == 0


def test_an_event_naming_another_bucket_never_touches_the_catalogs_item(parts: dict[str, Any]) -> None:
    service, catalog = parts["service"], parts["catalog"]
    service.config = IngestConfig(catalog_bucket=BUCKET)
    catalog.put("live.jpg", JPEG)
    assert service.handle_event(created("live.jpg", "1")).action == "indexed"
    forged = ObjectEvent("removed", "ObjectRemoved:Delete", "someone-elses-bucket", "live.jpg", "2")

    with pytest.raises(IngestFailedError) as caught:
        service.handle_event(forged)

    assert caught.value.reason == "foreign_bucket"
    assert parts["metrics"].total("IngestFailures", reason="foreign_bucket") == 1
    assert parts["cache"].view().get("live") is not None
    assert parts["errors"].list() == []  # no marker under a bucket name an attacker chose


class ExhaustedEmbedder(ColourEmbedder):
    """Runs out of memory on one photo (as a huge decode or inference would), fine on the others."""

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if batch.mean() < -0.5:  # the dark photo
            raise MemoryError
        return super().embed(batch)


def test_running_out_of_memory_on_a_photo_is_its_typed_permanent_failure(parts: dict[str, Any]) -> None:
    service, catalog = parts["service"], parts["catalog"]
    service.embedder = ExhaustedEmbedder()
    catalog.put("dark.png", encode(photo(96, 72, seed=1).point(lambda v: v // 8), "PNG"))
    catalog.put("fine.jpg", JPEG)

    with pytest.raises(IngestFailedError) as caught:
        service.handle_event(created("dark.png", "1"))

    assert caught.value.reason == "image_too_complex"
    assert parts["metrics"].total("IngestFailures", reason="image_too_complex") == 1
    assert [m["code"] for m in parts["errors"].list()] == ["image_too_complex"]
    assert service.handle_event(created("fine.jpg", "2")).action == "indexed"


def test_an_unexpected_failure_is_logged_with_its_reason(
    parts: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenCatalog:
        def read(self, bucket: str, key: str, *, max_bytes: int) -> None:
            raise ConnectionError("S3 is unreachable")

    parts["service"].catalog = BrokenCatalog()
    with caplog.at_level("WARNING", logger="catalens"), pytest.raises(ConnectionError):
        parts["service"].handle_event(created("a.jpg", "1"))

    (line,) = [r for r in caplog.records if r.name == "catalens.service.ingest"]
    assert (line.key, line.code) == ("a.jpg", "transient")
    assert line.reason == "ConnectionError: S3 is unreachable"
    assert parts["metrics"].total("IngestFailures", reason="transient") == 1


# ------------------------------------------------------------------------------------------------ read text (OCR)


class StubReader:
    """Says what it was told to, or fails; records the photo sizes it was handed."""

    def __init__(self, text: str = "OATLY OAT DRINK", fail: bool = False) -> None:
        self.text, self.fail, self.sizes = text, fail, []

    def read_text(self, image: Any) -> str:
        self.sizes.append(image.size)
        if self.fail:
            raise RuntimeError("onnxruntime exploded")
        return self.text


def test_the_text_read_on_a_photo_is_kept_with_the_item_and_found_by_words(parts: dict[str, Any]) -> None:
    service, catalog, cache = parts["service"], parts["catalog"], parts["cache"]
    service.text_reader = StubReader()
    catalog.put("a.jpg", JPEG, title="Carton")
    assert service.handle_event(created("a.jpg", "10")).action == "indexed"
    assert cache.view().get("a").fields == {"title": "Carton", "read_text": "OATLY OAT DRINK"}
    assert [hit.item_id for hit in cache.view().search_text("oat drink", 3)] == ["a"]
    assert service.handle_event(created("a.jpg", "10")).action == "unchanged"  # a re-delivery stays a no-op
    assert parts["metrics"].total("ReadTextMs") >= 0


def test_a_failed_reading_is_counted_and_the_photo_indexed_without_it(parts: dict[str, Any]) -> None:
    service, catalog, cache = parts["service"], parts["catalog"], parts["cache"]
    service.text_reader = StubReader(fail=True)
    catalog.put("a.jpg", JPEG, title="Carton")
    catalog.put("b.jpg", encode(photo(96, 72, seed=9)))
    assert service.handle_event(created("a.jpg", "10")).action == "indexed"
    assert service.handle_event(created("b.jpg", "11")).action == "indexed"
    assert cache.view().get("a").fields == {"title": "Carton"}
    assert parts["metrics"].total("ReadTextFailures") == 2


def test_a_merchant_cannot_set_the_read_text_field() -> None:
    with pytest.raises(FieldError, match="read_text"):
        parse_product_fields({}, {"read_text": "free money"})
