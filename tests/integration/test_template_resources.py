"""The resources template.yaml declares, created in moto by catalens_tools.provision and read back through the AWS APIs.

What is checked is what the system relies on at run time: S3 events reach the ingest queue, failures end in the
dead-letter queue after maxReceiveCount receives, the events table streams NEW_IMAGE records, the tables have the
key schemas the adapters use, and each function's environment names the resources that were created.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_plus

import boto3
import numpy as np
import pytest

from catalens.composition import index_store
from catalens.index.records import ItemRecord
from catalens.settings import Settings
from catalens_tools.provision import api_spec, function_specs, load_template, provision

from .conftest import AWS_REGION

REGION = "us-east-1"


def receive_all(sqs: Any, url: str, *, delete: bool = True) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", []):
        messages += batch
        if not delete:
            break
        for message in batch:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return messages


def s3_event_names(messages: list[dict[str, Any]]) -> list[str]:
    names = []
    for message in messages:
        for record in json.loads(message["Body"]).get("Records", []):  # s3:TestEvent has no Records
            names.append(f"{record['eventName']} {unquote_plus(record['s3']['object']['key'])}")
    return names


def test_catalog_uploads_reach_the_ingest_queue(template_stack: Any) -> None:
    s3, sqs = boto3.client("s3", region_name=REGION), boto3.client("sqs", region_name=REGION)
    bucket, queue = template_stack.names["CatalogBucket"], template_stack.queue_urls["CatalogEventsQueue"]
    receive_all(sqs, queue)  # S3's s3:TestEvent

    s3.put_object(Bucket=bucket, Key="items/sku 1.jpg", Body=b"photo")

    assert s3_event_names(receive_all(sqs, queue)) == ["ObjectCreated:Put items/sku 1.jpg"]


def test_catalog_deletes_reach_the_ingest_queue_when_moto_is_not_versioning(moto_aws: None) -> None:
    """moto emits no ObjectRemoved event in a versioned bucket; ``versioning=False`` is the local stack's way out."""
    session = boto3.Session(region_name=REGION)
    stack = provision(session, load_template(), stack_name="catalens-test", versioning=False)
    s3, sqs = session.client("s3"), session.client("sqs")
    bucket, queue = stack.names["CatalogBucket"], stack.queue_urls["CatalogEventsQueue"]
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="items/sku-1.jpg", Body=b"photo")
    receive_all(sqs, queue)

    s3.delete_object(Bucket=bucket, Key="items/sku-1.jpg")

    assert [n.split(":")[0] for n in s3_event_names(receive_all(sqs, queue))] == ["ObjectRemoved"]


def test_a_message_that_keeps_failing_moves_to_the_dead_letter_queue(template_stack: Any) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    queue, dlq = template_stack.queue_urls["CatalogEventsQueue"], template_stack.queue_urls["IngestDeadLetterQueue"]
    receive_all(sqs, queue)
    max_receives = int(template_stack.resolver.parameters["IngestMaxReceiveCount"])
    sqs.set_queue_attributes(QueueUrl=queue, Attributes={"VisibilityTimeout": "0"})  # retry at once in the test
    sqs.send_message(QueueUrl=queue, MessageBody="poison")

    for _ in range(max_receives):  # received and never deleted, as when ingest reports it failed
        assert receive_all(sqs, queue, delete=False)

    assert receive_all(sqs, queue, delete=False) == []
    assert [m["Body"] for m in receive_all(sqs, dlq)] == ["poison"]


def test_catalog_queue_accepts_notifications_only_from_the_catalog_bucket(template_stack: Any) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    attributes = sqs.get_queue_attributes(QueueUrl=template_stack.queue_urls["CatalogEventsQueue"],
                                          AttributeNames=["Policy", "RedrivePolicy"])["Attributes"]  # fmt: skip
    allows = [s for s in json.loads(attributes["Policy"])["Statement"] if s["Effect"] == "Allow"]
    assert allows == [
        {
            "Sid": "CatalogBucketNotifications",
            "Effect": "Allow",
            "Principal": {"Service": "s3.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": template_stack.resolver.get_att("CatalogEventsQueue", "Arn"),
            "Condition": {
                "ArnEquals": {"aws:SourceArn": f"arn:aws:s3:::{template_stack.names['CatalogBucket']}"},
                "StringEquals": {"aws:SourceAccount": template_stack.resolver.account_id},
            },
        }
    ]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == template_stack.resolver.get_att("IngestDeadLetterQueue", "Arn")


@pytest.mark.parametrize("bucket", ["CatalogBucket", "IndexBucket"])
def test_buckets_are_versioned_encrypted_and_not_public(template_stack: Any, bucket: str) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    name = template_stack.names[bucket]
    assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    rules = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
    )


def test_tables_have_the_key_schemas_the_adapters_use(template_stack: Any) -> None:
    ddb = boto3.client("dynamodb", region_name=REGION)

    def keys(logical_id: str) -> list[tuple[str, str]]:
        table = ddb.describe_table(TableName=template_stack.names[logical_id])["Table"]
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        return [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]]

    assert keys("EventsTable") == [("user_id", "HASH"), ("event_key", "RANGE")]
    assert keys("ProfilesTable") == [("user_id", "HASH")]
    assert keys("CooccurrenceTable") == [("item_id", "HASH"), ("other_id", "RANGE")]
    ttl = ddb.describe_time_to_live(TableName=template_stack.names["EventsTable"])["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}
    for logical_id in ("EventsTable", "ProfilesTable"):
        backups = ddb.describe_continuous_backups(TableName=template_stack.names[logical_id])
        assert (
            backups["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"]
            == "ENABLED"
        )


def test_events_table_streams_new_images_to_the_profile_function(template_stack: Any) -> None:
    ddb = boto3.client("dynamodb", region_name=REGION)
    streams = boto3.client("dynamodbstreams", region_name=REGION)
    ddb.put_item(
        TableName=template_stack.names["EventsTable"],
        Item={"user_id": {"S": "u1"}, "event_key": {"S": "1732600000123#e1"}, "type": {"S": "click"},
              "item_id": {"S": "sku-1"}},
    )  # fmt: skip
    stream_arn = function_specs(template_stack)["ProfilesFunction"].events["ShopperEvents"]["Properties"]["Stream"]
    assert stream_arn == template_stack.stream_arns["EventsTable"]
    shard = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=stream_arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    records = streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
    assert [r["eventName"] for r in records] == ["INSERT"]
    assert records[0]["dynamodb"]["NewImage"]["item_id"] == {"S": "sku-1"}
    assert "OldImage" not in records[0]["dynamodb"]


def test_function_environments_name_the_created_resources(template_stack: Any) -> None:
    specs = function_specs(template_stack)
    names = template_stack.names
    expected = {
        "IngestFunction": {"catalog_bucket": names["CatalogBucket"], "index_bucket": names["IndexBucket"]},
        "SearchFunction": {"index_bucket": names["IndexBucket"], "profiles_table": names["ProfilesTable"],
                           "events_table": names["EventsTable"]},
        "ProfilesFunction": {"index_bucket": names["IndexBucket"], "profiles_table": names["ProfilesTable"],
                             "cooccurrence_table": names["CooccurrenceTable"]},
        "IndexBuilderFunction": {"index_bucket": names["IndexBucket"]},
    }  # fmt: skip
    assert set(specs) == set(expected)
    for logical_id, fields in expected.items():
        settings = Settings.from_env(specs[logical_id].environment)
        assert {field: getattr(settings, field) for field in fields} == fields, logical_id
        assert settings.index_prefix == "index/"
        assert str(settings.model_dir) == "/opt/model"


def test_api_routes_and_binary_types_come_from_the_template(template_stack: Any) -> None:
    api = api_spec(template_stack)
    assert {"image/jpeg", "image/png", "image/webp", "multipart/form-data"} <= set(api.binary_media_types)
    assert ("POST", "/search") in {(r.method, r.path) for r in api.routes}
    assert all(route.api_key_required for route in api.routes)


def test_names_are_stable_per_stack_and_differ_between_stacks() -> None:
    from catalens_tools.provision import Resolver

    template = load_template()
    first = Resolver(template, stack_name="shop-a").physical_name("CatalogBucket")
    assert first == Resolver(template, stack_name="shop-a").physical_name("CatalogBucket")
    assert first != Resolver(template, stack_name="shop-b").physical_name("CatalogBucket")
    assert first.startswith("catalens-catalog-123456789012-us-east-1-")
    assert len(first) <= 63
    assert first == first.lower()


def test_index_builder_compacts_deltas_in_the_template_index_bucket(
    template_stack: Any, function_env: Any, load_function: Any, lambda_context: Any
) -> None:
    env = function_env("IndexBuilderFunction")
    store = index_store(Settings.from_env(env), boto3.client("s3", region_name=REGION))
    vectors = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    for i, vector in enumerate(vectors):
        record = ItemRecord(item_id=f"sku-{i}", vector=vector / np.linalg.norm(vector), fields={"title": f"t{i}"},
                            image_key=f"items/sku-{i}.jpg", source_etag=f"etag{i}", sequencer=f"{i + 1:016X}",
                            updated_at=1.0 + i)  # fmt: skip
        assert store.write_item(record, model_fingerprint="fp-test")
    builder = load_function("builder")

    first = builder.lambda_handler({"trigger": "schedule"}, lambda_context)
    again = builder.lambda_handler({"trigger": "threshold"}, lambda_context)

    assert first["trigger"] == "schedule"
    assert (first["noop"], first["deltas_included"], first["items"]) == (False, 3, 3)
    assert again["noop"] is True
    assert again["version"] == first["version"]
    view = store.load_view()
    assert len(view) == 3
    assert view.version == first["version"]


def test_index_builder_without_any_deltas_builds_nothing(
    template_stack: Any, function_env: Any, load_function: Any, lambda_context: Any
) -> None:
    function_env("IndexBuilderFunction")
    outcome = load_function("builder").lambda_handler({"trigger": "schedule"}, lambda_context)
    assert outcome["noop"] is True
    s3 = boto3.client("s3", region_name=REGION)
    assert s3.list_objects_v2(Bucket=template_stack.names["IndexBucket"]).get("KeyCount") == 0


def test_with_s3_vectors_the_template_wires_ingest_search_and_builder_to_one_vector_index(moto_aws: None) -> None:
    from catalens.composition import index_backend, vector_index
    from catalens.service.builder import IndexBuilder
    from catalens_tools.local import moto_fixes

    moto_fixes.make_s3vectors_queryable()
    session = boto3.Session(region_name=AWS_REGION)
    stack = provision(session, load_template(), stack_name="catalens-vec", parameters={"IndexBackend": "s3vectors"})
    specs = function_specs(stack)
    client = session.client("s3vectors")
    index = client.get_index(vectorBucketName=stack.names["VectorBucket"], indexName="items")["index"]
    assert (index["dimension"], index["distanceMetric"]) == (3984, "cosine")
    s3 = session.client("s3")
    vector = np.zeros(3984, dtype=np.float32)
    vector[7] = 1.0
    ingest = Settings.from_env(specs["IngestFunction"].environment)
    writer, _ = index_backend(ingest, s3, client)
    record = ItemRecord("sku-1", vector, {"category": "hats"}, "sku-1.jpg", "etag-1", "0A")
    assert writer.write_item(record, model_fingerprint="fp") is True
    search = Settings.from_env(specs["SearchFunction"].environment)
    _, views = index_backend(search, s3, client)
    hits = views().search(vector, 5)
    assert [(hit.item_id, round(hit.score, 5)) for hit in hits] == [("sku-1", 1.0)]
    builder = Settings.from_env(specs["IndexBuilderFunction"].environment)
    outcome = IndexBuilder(index_store(builder, s3), vectors=vector_index(builder, s3, client)).handle(
        {"trigger": "manual", "force": True}
    )
    assert (outcome["backend"], outcome["recounted"], outcome["items"]) == ("s3vectors", True, 1)
