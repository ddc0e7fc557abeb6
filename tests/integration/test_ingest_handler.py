"""The real ingest handler under moto: S3 notifications (AWS's shape and moto's) → SQS batch → index deltas.

Photos are uploaded to a moto catalog bucket, the SQS messages moto's notification produced (or recorded AWS-shaped
events) are wrapped in the Lambda SQS event shape, and ``functions/ingest/app.py`` handles them. The index is then
read back through the same protocol the search function uses.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import numpy as np
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from hypothesis import given

from catalens.composition import error_log, index_store
from catalens.errors import ImageError
from catalens.imaging import load_and_preprocess
from catalens.index.cache import IndexCache
from catalens.settings import Settings
from tests.integration.conftest import log_to_captured_stdout
from tests.unit.hostile_images import HANDLER_EXAMPLES, Hostile, hostile_photos
from tests.unit.imagefactory import encode, photo, png_bomb

EVENTS = Path(__file__).resolve().parents[1] / "events"
REGION = "us-east-1"


def recorded(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def sqs_event(bodies: list[str]) -> dict[str, Any]:
    """A Lambda SQS event (recorded shape) carrying ``bodies``, one record each."""
    template = recorded("sqs_batch.json")["Records"][0]
    records = []
    for index, body in enumerate(bodies):
        record = copy.deepcopy(template)
        record["messageId"] = f"msg-{index}"
        record["body"] = body
        records.append(record)
    return {"Records": records}


def aws_created(bucket: str, key: str, etag: str, sequencer: str, size: int = 1) -> str:
    """An AWS-shaped ObjectCreated:Put notification (recorded, with this key/etag/sequencer)."""
    event = recorded("s3_object_created_aws.json")
    obj = event["Records"][0]["s3"]["object"]
    event["Records"][0]["s3"]["bucket"]["name"] = bucket
    obj.update(key=quote_plus(key, safe="/"), eTag=etag, sequencer=sequencer, size=size)
    return json.dumps(event)


def aws_removed(bucket: str, key: str, sequencer: str) -> str:
    event = recorded("s3_object_removed_aws.json")
    event["Records"][0]["s3"]["bucket"]["name"] = bucket
    event["Records"][0]["s3"]["object"].update(key=quote_plus(key, safe="/"), sequencer=sequencer)
    return json.dumps(event)


@dataclass(frozen=True)
class Stack:
    """The template's catalog bucket, ingest queue and index bucket (names as ``sam deploy`` would make them)."""

    s3: Any
    sqs: Any
    queue: str
    catalog: str
    index: str
    settings: Settings


@pytest.fixture
def stack(template_stack: Any, function_env: Any, model_dir: Path) -> Stack:
    """template.yaml's resources in moto, and the ingest function's environment from its template entry."""
    env = function_env("IngestFunction", CATALENS_MODEL_DIR=str(model_dir))
    sqs = boto3.client("sqs", region_name=REGION)
    queue = template_stack.queue_urls["CatalogEventsQueue"]
    drain(sqs, queue)  # S3's s3:TestEvent
    return Stack(
        s3=boto3.client("s3", region_name=REGION),
        sqs=sqs,
        queue=queue,
        catalog=env["CATALOG_BUCKET"],
        index=env["INDEX_BUCKET"],
        settings=Settings(index_bucket=env["INDEX_BUCKET"], index_prefix=env["INDEX_PREFIX"]),
    )


def drain(sqs: Any, queue: str) -> list[str]:
    """Every message body waiting on the queue (deleted as read, as Lambda's poller does on success)."""
    bodies: list[str] = []
    while True:
        # WaitTimeSeconds=0: the template's queue long-polls (20 s) by default, moto included
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])


def view(stack: Stack) -> Any:
    return IndexCache(index_store(stack.settings, stack.s3), background=False).view()


def jpeg(seed: int) -> bytes:
    return encode(photo(320, 240, seed=seed))


@pytest.fixture
def ingest(stack: Stack, load_function: Any, lambda_context: Any) -> Any:
    module = load_function("ingest")

    def run(bodies: list[str]) -> dict[str, Any]:
        return module.lambda_handler(sqs_event(bodies), lambda_context)

    run.module = module  # type: ignore[attr-defined]
    return run


def upload(stack: Stack, key: str, data: bytes, **metadata: str) -> list[str]:
    stack.s3.put_object(Bucket=stack.catalog, Key=key, Body=data, Metadata=metadata)
    return drain(stack.sqs, stack.queue)


# ------------------------------------------------------------------------------------------------ tests


def test_moto_notification_upload_is_searchable_with_fields(stack: Stack, ingest: Any) -> None:
    key = "photos/red shoe+ü.jpg"  # space, plus and unicode: encoded by S3 in the event, decoded per record
    bodies = upload(stack, key, jpeg(1), title="Red shoe", price="19.90", currency="eur", category="shoes")
    assert len(bodies) == 1
    assert "sequencer" not in bodies[0]  # moto's shape: no sequencer, the key quote_plus'd
    assert json.loads(bodies[0])["Records"][0]["s3"]["object"]["key"] == quote_plus(key)

    result = ingest(bodies)

    assert result == {"batchItemFailures": []}
    index = view(stack)
    item = index.get("photos/red shoe+ü")
    assert item is not None
    assert item.fields == {"title": "Red shoe", "price": 19.9, "currency": "EUR", "category": "shoes"}
    assert item.image_key == key
    hits = index.search(ingest.module.service.embedder.embed_images([jpeg(1)])[0], 1)
    assert hits[0].item_id == "photos/red shoe+ü"
    assert hits[0].score > 0.99


def test_ingest_seeds_the_query_domain_beside_the_query_samples(stack: Stack, ingest: Any) -> None:
    for i in range(3):
        assert ingest(upload(stack, f"photos/sku-{i}.jpg", jpeg(10 + i))) == {"batchItemFailures": []}
    listed = stack.s3.list_objects_v2(Bucket=stack.index, Prefix="index/queries/seeds/").get("Contents", [])
    assert len(listed) == 6  # two synthetic shoppers' photos per item while fewer than QuerySeedItems are seeded
    store = index_store(stack.settings, stack.s3)
    fingerprint = ingest.module.service.embedder.card.fingerprint()
    seeds = store.queries.seed_samples(model_fingerprint=fingerprint)
    assert len(seeds) == 6
    assert all(s.shape == (ingest.module.service.embedder.dim,) for s in seeds)


def test_aws_shaped_events_create_overwrite_delete(stack: Stack, ingest: Any) -> None:
    key = "photos/sku-1.jpg"
    stack.s3.put_object(Bucket=stack.catalog, Key=key, Body=jpeg(2))
    drain(stack.sqs, stack.queue)
    etag = stack.s3.head_object(Bucket=stack.catalog, Key=key)["ETag"].strip('"')
    assert ingest([aws_created(stack.catalog, key, etag, "0055AED6DCD90281E5")]) == {"batchItemFailures": []}
    first = view(stack).vector_of("photos/sku-1").copy()

    stack.s3.put_object(Bucket=stack.catalog, Key=key, Body=jpeg(3))  # overwrite: a new photo, a later sequencer
    drain(stack.sqs, stack.queue)
    etag2 = stack.s3.head_object(Bucket=stack.catalog, Key=key)["ETag"].strip('"')
    assert ingest([aws_created(stack.catalog, key, etag2, "0055AED6DCD90281F0")]) == {"batchItemFailures": []}
    second = view(stack).get("photos/sku-1")
    assert second.source_etag == etag2
    assert float(np.dot(first, second.vector)) < 0.99  # a new vector

    stack.s3.delete_object(Bucket=stack.catalog, Key=key)
    drain(stack.sqs, stack.queue)
    assert ingest([aws_removed(stack.catalog, key, "0055AED6DCD9028A01")]) == {"batchItemFailures": []}
    assert view(stack).get("photos/sku-1") is None
    assert len(view(stack)) == 0


def test_moto_delete_event_removes_the_item(stack: Stack, ingest: Any) -> None:
    # The template's catalog bucket is versioned: a delete makes a delete marker, for which AWS sends
    # ObjectRemoved:DeleteMarkerCreated (recorded shape: test_aws_shaped_events_create_overwrite_delete) but moto
    # sends nothing. With versioning suspended moto sends its own ObjectRemoved:Delete shape, tested here.
    stack.s3.put_bucket_versioning(Bucket=stack.catalog, VersioningConfiguration={"Status": "Suspended"})
    assert ingest(upload(stack, "a.jpg", jpeg(4))) == {"batchItemFailures": []}
    assert view(stack).get("a") is not None
    stack.s3.delete_object(Bucket=stack.catalog, Key="a.jpg")
    bodies = drain(stack.sqs, stack.queue)
    assert json.loads(bodies[0])["Records"][0]["eventName"] == "ObjectRemoved:Delete"
    assert ingest(bodies) == {"batchItemFailures": []}
    assert view(stack).get("a") is None


def test_late_create_after_delete_does_not_resurrect(stack: Stack, ingest: Any) -> None:
    stack.s3.put_object(Bucket=stack.catalog, Key="b.jpg", Body=jpeg(5))
    etag = stack.s3.head_object(Bucket=stack.catalog, Key="b.jpg")["ETag"].strip('"')
    stack.s3.delete_object(Bucket=stack.catalog, Key="b.jpg")
    drain(stack.sqs, stack.queue)
    # The delete arrives first, the create (older sequencer) after it: the item must stay gone.
    assert ingest([aws_removed(stack.catalog, "b.jpg", "00A2"), aws_created(stack.catalog, "b.jpg", etag, "00A1")]) == {
        "batchItemFailures": []
    }
    assert view(stack).get("b") is None


def test_duplicate_delivery_changes_nothing(stack: Stack, ingest: Any) -> None:
    bodies = upload(stack, "c.jpg", jpeg(6))
    assert ingest(bodies + bodies) == {"batchItemFailures": []}
    deltas = list(stack.s3.list_objects_v2(Bucket=stack.index, Prefix="index/deltas/").get("Contents", []))
    assert len(deltas) == 1


def test_bad_files_fail_alone_and_are_recorded(stack: Stack, ingest: Any, capsys: pytest.CaptureFixture[str]) -> None:
    good = upload(stack, "good-1.jpg", jpeg(7)) + upload(stack, "good-2.png", encode(photo(200, 200, seed=8), "PNG"))
    corrupt = upload(stack, "corrupt.jpg", jpeg(9)[:600])
    text = upload(stack, "notes.jpg", b"this is a text file, not a photo\n")
    bomb = upload(stack, "bomb.png", png_bomb())
    bad_price = upload(stack, "bad-price.jpg", jpeg(10), price="cheap")
    bodies = [good[0], *corrupt, good[1], *text, *bomb, *bad_price]

    result = ingest(bodies)

    failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
    assert failed == {"msg-1", "msg-3", "msg-4", "msg-5"}  # exactly the bad ones
    index = view(stack)
    assert index.get("good-1") is not None
    assert index.get("good-2") is not None
    assert len(index) == 2
    markers = {m["key"]: m["code"] for m in error_log(stack.settings, stack.s3).list()}
    assert markers == {
        "corrupt.jpg": "truncated_image",
        "notes.jpg": "not_an_image",
        "bomb.png": "decompression_bomb",
        "bad-price.jpg": "invalid_field",
    }
    emitted = capsys.readouterr().out
    reasons = {json.loads(line).get("reason") for line in emitted.splitlines() if '"IngestFailures"' in line}
    assert {"truncated_image", "not_an_image", "decompression_bomb", "invalid_field"} <= reasons

    # Fixed upload: indexes and clears its marker.
    assert ingest(upload(stack, "bad-price.jpg", jpeg(10), price="12.50")) == {"batchItemFailures": []}
    markers_after = {m["key"] for m in error_log(stack.settings, stack.s3).list()}
    assert "bad-price.jpg" not in markers_after
    assert view(stack).get("bad-price").fields["price"] == 12.5


def test_sidecar_supplies_and_updates_fields(stack: Stack, ingest: Any) -> None:
    sidecar = {"title": "Oat milk", "brand": "Oatly", "price": 2.49, "tags": ["vegan", "dairy-free"]}
    assert ingest(upload(stack, "milk.jpg.json", json.dumps(sidecar).encode())) == {"batchItemFailures": []}
    assert view(stack).get("milk") is None  # a sidecar alone indexes nothing (and is never a photo)
    assert ingest(upload(stack, "milk.jpg", jpeg(11), title="from metadata")) == {"batchItemFailures": []}
    assert view(stack).get("milk").fields["title"] == "Oat milk"  # the sidecar wins per field
    assert view(stack).get("milk").fields["tags"] == ["vegan", "dairy-free"]

    sidecar["price"] = 1.99
    assert ingest(upload(stack, "milk.jpg.json", json.dumps(sidecar).encode())) == {"batchItemFailures": []}
    assert view(stack).get("milk").fields["price"] == 1.99
    assert view(stack).get("milk.jpg") is None


def test_near_duplicate_upload_is_flagged(
    stack: Stack,
    load_function: Any,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Ingest checks against its cached index view; TTL 0 makes every photo see the one ingested just before.
    monkeypatch.setenv("CATALENS_MANIFEST_TTL_SECONDS", "0")
    module = load_function("ingest")

    def ingest(bodies: list[str]) -> dict[str, Any]:
        return module.lambda_handler(sqs_event(bodies), lambda_context)

    original = photo(400, 300, seed=12)
    assert ingest(upload(stack, "orig.jpg", encode(original))) == {"batchItemFailures": []}
    copy_bytes = encode(original.resize((360, 270)), quality=70)  # re-encoded, resized copy under another id
    assert ingest(upload(stack, "copy.jpg", copy_bytes)) == {"batchItemFailures": []}
    assert ingest(upload(stack, "other.jpg", jpeg(13))) == {"batchItemFailures": []}
    index = view(stack)
    near = index.get("copy").fields["near_duplicates"]
    assert [n["item_id"] for n in near] == ["orig"]
    assert near[0]["score"] >= module.service.embedder.card.copy_cosine  # the model's measured copy cosine
    assert "near_duplicates" not in index.get("other").fields
    assert '"NearDuplicates"' in capsys.readouterr().out


def test_s3_test_event_and_folder_markers_are_ignored(stack: Stack, ingest: Any) -> None:
    test_event = json.dumps(recorded("s3_test_event.json"))
    folder = upload(stack, "photos/", b"")
    assert ingest([test_event, *folder]) == {"batchItemFailures": []}
    assert len(view(stack)) == 0


def test_unreadable_message_is_a_failure(stack: Stack, ingest: Any) -> None:
    good = upload(stack, "ok.jpg", jpeg(15))
    assert ingest(["not json", *good, json.dumps({"hello": 1})]) == {
        "batchItemFailures": [{"itemIdentifier": "msg-0"}, {"itemIdentifier": "msg-2"}]
    }
    # A batch in which every record fails fails the invocation (Powertools), so SQS retries all of it.
    with pytest.raises(BatchProcessingError):
        ingest(["not json"])


def test_photo_deleted_before_ingest_is_skipped(stack: Stack, ingest: Any) -> None:
    bodies = upload(stack, "gone.jpg", jpeg(14))
    stack.s3.delete_object(Bucket=stack.catalog, Key="gone.jpg")
    drain(stack.sqs, stack.queue)
    assert ingest(bodies) == {"batchItemFailures": []}
    assert view(stack).get("gone") is None


def test_recorded_moto_event_parses_like_the_live_one() -> None:
    from catalens.service.notifications import parse_notification

    (moto_event,) = parse_notification(json.dumps(recorded("s3_object_created_moto.json")))
    (aws_event,) = parse_notification(json.dumps(recorded("s3_object_created_aws.json")))
    assert moto_event.key == aws_event.key == "photos/red shoe+ü.jpg"
    assert aws_event.sequencer == "0055AED6DCD90281E5"
    assert int(moto_event.sequencer, 16) > 0  # derived from eventTime
    assert (moto_event.kind, aws_event.kind) == ("created", "created")


def test_a_removal_naming_another_bucket_keeps_the_live_item(stack: Stack, ingest: Any) -> None:
    assert ingest(upload(stack, "photos/live.jpg", jpeg(16))) == {"batchItemFailures": []}
    stack.s3.create_bucket(Bucket="attacker-bucket")  # empty: a HEAD of the key there says 404, "photo gone"

    other = upload(stack, "photos/other.jpg", jpeg(18))

    result = ingest([aws_removed("attacker-bucket", "photos/live.jpg", "00FFFFFFFFFFFFFFFF"), *other])

    assert result == {"batchItemFailures": [{"itemIdentifier": "msg-0"}]}
    assert view(stack).get("photos/live") is not None
    assert view(stack).get("photos/other") is not None


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_every_failed_record_leaves_one_structured_line_with_its_reason(
    stack: Stack, ingest: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    log_to_captured_stdout(ingest.module)
    good = upload(stack, "fine.jpg", jpeg(17))
    text = upload(stack, "text.jpg", b"plain text, not a photo")
    foreign = aws_removed("attacker-bucket", "fine.jpg", "00FF")
    capsys.readouterr()

    result = ingest(["not json", *good, *text, foreign])

    assert {f["itemIdentifier"] for f in result["batchItemFailures"]} == {"msg-0", "msg-2", "msg-3"}
    lines = json_lines(capsys.readouterr().out)
    failures = {line["message_id"]: line for line in lines if line.get("level") == "WARNING" and "exception" in line}
    assert set(failures) == {"msg-0", "msg-2", "msg-3"}
    assert "not JSON" in failures["msg-0"]["exception"]
    assert "not_an_image" in failures["msg-2"]["exception"] or "not an image" in failures["msg-2"]["exception"]
    assert "attacker-bucket" in failures["msg-3"]["exception"]
    # the core's own lines are structured too: key, code and reason as JSON fields, not a bare message
    rejected = [line for line in lines if line.get("message") == "photo rejected"]
    assert [(line["key"], line["code"]) for line in rejected] == [("text.jpg", "not_an_image")]
    assert rejected[0]["reason"]


# ------------------------------------------------------------------------------------------------ hostile photos


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the pixel check refuses them next
@HANDLER_EXAMPLES
@given(photo=hostile_photos())
def test_any_hostile_photo_is_indexed_or_recorded_and_never_poisons_its_batch(
    stack: Stack, ingest: Any, photo: Hostile
) -> None:
    limits = ingest.module.service.config.limits  # the oracle: the one preprocessing function, same limits
    try:
        load_and_preprocess(photo.data, ingest.module.service.embedder.card.preprocess, limits)
        expected = None
    except ImageError as exc:
        expected = exc.code
    key = f"hostile/{hashlib.sha256(photo.data).hexdigest()[:16]}.{photo.fmt.lower()}"
    bodies = upload(stack, "hostile/good.jpg", jpeg(21)) + upload(stack, key, photo.data)

    result = ingest(bodies)  # any exception here (a crash, a MemoryError) fails the property

    failed = [f["itemIdentifier"] for f in result["batchItemFailures"]]
    markers = {m["key"]: m["code"] for m in error_log(stack.settings, stack.s3).list()}
    assert "hostile/good.jpg" not in markers  # the good photo beside it always lands
    if expected is None:
        assert failed == [], photo
        assert key not in markers
    else:
        assert failed == ["msg-1"], photo  # only the hostile record fails (SQS retries it, then the DLQ)
        assert markers[key] == expected, photo
