"""The local stack's event source mappings against moto: SQS partial failures and redrive, stream checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from catalens_tools.local.pollers import SqsPoller, StreamPoller, failed_item_ids, stream_event

REGION = "us-east-1"


@pytest.fixture
def queues(moto_aws: None) -> dict[str, Any]:
    sqs = boto3.client("sqs", region_name=REGION)
    dlq_url = sqs.create_queue(QueueName="ingest-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2})
    url = sqs.create_queue(QueueName="ingest", Attributes={"RedrivePolicy": policy, "VisibilityTimeout": "30"})[
        "QueueUrl"
    ]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return {"sqs": sqs, "url": url, "arn": arn, "dlq_url": dlq_url}


class RecordingFunction:
    """Stands in for a handler: records every event, fails the records whose body/key matches ``poison``."""

    def __init__(self, poison: set[str], *, id_of: str, raise_instead: bool = False, fail_times: int = 10**9) -> None:
        self.events: list[dict] = []
        self.poison = poison
        self.id_of = id_of
        self.raise_instead = raise_instead
        self.fail_times = fail_times
        self.failures = 0

    def __call__(self, event: dict) -> dict:
        self.events.append(event)
        if self.failures >= self.fail_times:
            return {"batchItemFailures": []}
        bad = [r for r in event["Records"] if self._payload(r) in self.poison]
        if bad:
            self.failures += 1
            if self.raise_instead:
                raise RuntimeError("boom")
        return {"batchItemFailures": [{"itemIdentifier": self._id(r)} for r in bad]}

    def _payload(self, record: dict) -> str:
        if "body" in record:
            return record["body"]
        return record["dynamodb"]["NewImage"]["pk"]["S"]

    def _id(self, record: dict) -> str:
        return record["messageId"] if self.id_of == "sqs" else record["dynamodb"]["SequenceNumber"]

    def seen(self) -> list[str]:
        return [self._payload(r) for e in self.events for r in e["Records"]]


def drain_sqs(poller: SqsPoller, rounds: int = 8) -> None:
    for _ in range(rounds):
        poller.poll_once()


def test_sqs_event_has_lambda_shape(queues: dict[str, Any]) -> None:
    queues["sqs"].send_message(
        QueueUrl=queues["url"],
        MessageBody="hello",
        MessageAttributes={"kind": {"DataType": "String", "StringValue": "photo"}},
    )
    function = RecordingFunction(set(), id_of="sqs")
    poller = SqsPoller(queues["sqs"], queues["url"], queues["arn"], function, wait_seconds=0)
    poller.poll_once()
    record = function.events[0]["Records"][0]
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == queues["arn"]
    assert record["awsRegion"] == REGION
    assert record["body"] == "hello"
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert {"messageId", "receiptHandle", "md5OfBody", "messageAttributes"} <= set(record)
    assert record["messageAttributes"]["kind"]["stringValue"] == "photo"
    assert record["messageAttributes"]["kind"]["dataType"] == "String"


def test_sqs_partial_failure_deletes_good_messages_and_redrives_the_bad_one(queues: dict[str, Any]) -> None:
    sqs = queues["sqs"]
    for body in ("good-1", "bad", "good-2"):
        sqs.send_message(QueueUrl=queues["url"], MessageBody=body)
    function = RecordingFunction({"bad"}, id_of="sqs")
    exhausted: list[dict] = []
    poller = SqsPoller(
        sqs,
        queues["url"],
        queues["arn"],
        function,
        wait_seconds=0,
        retry_delay_seconds=0,
        max_receive_count=2,
        on_exhausted=exhausted.append,
    )
    drain_sqs(poller)
    assert [m["Body"] for m in exhausted] == ["bad"]

    seen = function.seen()
    assert seen.count("good-1") == 1
    assert seen.count("good-2") == 1
    assert seen.count("bad") == 2  # maxReceiveCount
    dead = sqs.receive_message(QueueUrl=queues["dlq_url"], MaxNumberOfMessages=10).get("Messages", [])
    assert [m["Body"] for m in dead] == ["bad"]
    assert "Messages" not in sqs.receive_message(QueueUrl=queues["url"], MaxNumberOfMessages=10)


def test_sqs_function_error_fails_the_whole_batch(queues: dict[str, Any]) -> None:
    sqs = queues["sqs"]
    for body in ("a", "bad"):
        sqs.send_message(QueueUrl=queues["url"], MessageBody=body)
    function = RecordingFunction({"bad"}, id_of="sqs", raise_instead=True, fail_times=1)
    poller = SqsPoller(sqs, queues["url"], queues["arn"], function, wait_seconds=0, retry_delay_seconds=0)
    drain_sqs(poller, rounds=3)
    assert poller.stats.function_errors == 1
    assert sorted(function.seen()) == ["a", "a", "bad", "bad"]  # both came back after the error


def test_batching_window_gathers_messages_into_one_event(queues: dict[str, Any]) -> None:
    for body in ("a", "b", "c"):
        queues["sqs"].send_message(QueueUrl=queues["url"], MessageBody=body)
    function = RecordingFunction(set(), id_of="sqs")
    poller = SqsPoller(
        queues["sqs"], queues["url"], queues["arn"], function, wait_seconds=0, batch_size=3, batching_window_seconds=1
    )
    poller.poll_once()
    assert len(function.events) == 1
    assert sorted(function.seen()) == ["a", "b", "c"]
    assert poller.deleted_within(60) == 3


def test_failed_item_ids_follows_lambda_rules() -> None:
    assert failed_item_ids(None, ["a"]) == set()
    assert failed_item_ids({"batchItemFailures": []}, ["a"]) == set()
    assert failed_item_ids({"batchItemFailures": [{"itemIdentifier": "a"}]}, ["a", "b"]) == {"a"}
    assert failed_item_ids({"batchItemFailures": [{"itemIdentifier": "zzz"}]}, ["a"]) is None
    assert failed_item_ids({"batchItemFailures": [{"itemIdentifier": ""}]}, ["a"]) is None


@pytest.fixture
def stream(moto_aws: None) -> dict[str, Any]:
    ddb = boto3.client("dynamodb", region_name=REGION)
    table = ddb.create_table(
        TableName="events",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )
    return {
        "ddb": ddb,
        "streams": boto3.client("dynamodbstreams", region_name=REGION),
        "arn": table["TableDescription"]["LatestStreamArn"],
    }


def put(ddb: Any, *keys: str) -> None:
    for key in keys:
        ddb.put_item(TableName="events", Item={"pk": {"S": key}, "blob": {"B": b"\x00\x01"}})


def test_stream_event_has_lambda_shape(stream: dict[str, Any]) -> None:
    put(stream["ddb"], "e1")
    function = RecordingFunction(set(), id_of="stream")
    poller = StreamPoller(stream["streams"], stream["arn"], function, poll_interval=0)
    poller.poll_once()
    record = function.events[0]["Records"][0]
    assert record["eventSource"] == "aws:dynamodb"
    assert record["eventName"] == "INSERT"
    assert record["eventSourceARN"] == stream["arn"]
    assert isinstance(record["dynamodb"]["ApproximateCreationDateTime"], int)
    assert record["dynamodb"]["NewImage"]["blob"]["B"] == "AAE="  # base64, as Lambda delivers binaries
    json.dumps(stream_event([], stream["arn"]))


def test_stream_retries_from_the_failed_record_then_continues(stream: dict[str, Any], tmp_path: Path) -> None:
    put(stream["ddb"], "e1", "e2", "bad", "e4")
    function = RecordingFunction({"bad"}, id_of="stream", fail_times=2)
    checkpoint = tmp_path / "checkpoint.json"
    poller = StreamPoller(
        stream["streams"], stream["arn"], function, poll_interval=0, retry_backoff=0, checkpoint_path=checkpoint
    )
    for _ in range(5):
        poller.poll_once()
    seen = function.seen()
    assert seen.count("e1") == 1
    assert seen.count("e2") == 1
    assert seen.count("bad") == 3  # two failures, then success
    assert seen.count("e4") == 3
    assert poller.stats.dropped == 0
    saved = json.loads(checkpoint.read_text())
    assert list(saved.values()) == [poller.checkpoint]


def test_stream_poison_record_is_dropped_after_bounded_retries(stream: dict[str, Any]) -> None:
    put(stream["ddb"], "e1", "bad", "e3")
    function = RecordingFunction({"bad"}, id_of="stream")
    sent: list[dict] = []
    poller = StreamPoller(
        stream["streams"],
        stream["arn"],
        function,
        poll_interval=0,
        retry_backoff=0,
        max_retries=2,
        on_failure=sent.append,
    )
    for _ in range(6):
        poller.poll_once()
    seen = function.seen()
    assert seen.count("bad") == 3  # first try + 2 retries
    assert seen.count("e3") >= 1
    assert seen[-1] == "e3"
    assert poller.stats.dropped == 1
    assert len(sent) == 1
    info = sent[0]["DDBStreamBatchInfo"]
    bad_sequence = next(
        r["dynamodb"]["SequenceNumber"]
        for e in function.events
        for r in e["Records"]
        if r["dynamodb"]["NewImage"]["pk"]["S"] == "bad"
    )
    assert info["startSequenceNumber"] == bad_sequence
    assert info["streamArn"] == stream["arn"]
    assert sent[0]["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert sent[0]["requestContext"]["approximateInvokeCount"] == 3


def test_stream_resumes_after_its_checkpoint(stream: dict[str, Any], tmp_path: Path) -> None:
    put(stream["ddb"], "e1", "e2")
    checkpoint = tmp_path / "checkpoint.json"
    first = RecordingFunction(set(), id_of="stream")
    StreamPoller(stream["streams"], stream["arn"], first, poll_interval=0, checkpoint_path=checkpoint).poll_once()
    put(stream["ddb"], "e3")
    second = RecordingFunction(set(), id_of="stream")
    poller = StreamPoller(stream["streams"], stream["arn"], second, poll_interval=0, checkpoint_path=checkpoint)
    poller.poll_once()
    assert first.seen() == ["e1", "e2"]
    assert second.seen() == ["e3"]
