"""Event source mappings, done locally: what AWS's Lambda pollers do between SQS / DynamoDB Streams and a function.

moto stores the queue and the stream but never invokes a function (that needs Docker), so these threads poll them and
call the handlers with events shaped exactly like Lambda's:

- :class:`SqsPoller` — long-polls up to ``batch_size`` messages, builds the ``aws:sqs`` event, deletes the messages
  the function did not report in ``batchItemFailures`` (ReportBatchItemFailures) and leaves the failed ones for
  redelivery. moto's ReceiveMessage moves a message whose receive count reached the queue's ``maxReceiveCount`` to
  the dead-letter queue, as SQS does, so redrive is SQS's own, not ours.
- :class:`StreamPoller` — reads a DynamoDB stream from a checkpoint, builds the ``aws:dynamodb`` event, and on a
  reported failure retries from the failed record's sequence number (Lambda's checkpoint semantics), a bounded number
  of times; a record that keeps failing is recorded in a failure log (the on-failure destination) and skipped, as
  Lambda does once ``MaximumRetryAttempts`` is spent with bisection down to that one record.
- :class:`ScheduledInvoker` — the builder's schedule (EventBridge ``Scheduled Event``) plus an optional threshold
  check between ticks.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalens_tools.local.runtime import LOCAL_ACCOUNT, LOCAL_REGION, describe

log = logging.getLogger("catalens_tools.local")

Invoke = Callable[[dict], Any]


# ---------------------------------------------------------------------------------------------------------- events
def sqs_event(messages: Sequence[dict], queue_arn: str, region: str = LOCAL_REGION) -> dict:
    """Lambda's SQS event for messages as ReceiveMessage returned them (AttributeNames/MessageAttributeNames=All)."""
    return {"Records": [sqs_record(m, queue_arn, region) for m in messages]}


def sqs_record(message: dict, queue_arn: str, region: str = LOCAL_REGION) -> dict:
    """One record of Lambda's SQS event: camelCase message attributes, string system attributes."""
    attributes = {name: str(value) for name, value in (message.get("Attributes") or {}).items()}
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": attributes,
        "messageAttributes": {
            name: _lambda_message_attribute(value) for name, value in (message.get("MessageAttributes") or {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def _lambda_message_attribute(value: dict) -> dict:
    def b64(raw: bytes | str) -> str:
        return base64.b64encode(raw if isinstance(raw, bytes) else raw.encode()).decode()

    return {
        "stringValue": value.get("StringValue"),
        "binaryValue": b64(value["BinaryValue"]) if "BinaryValue" in value else None,
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": [b64(v) for v in value.get("BinaryListValues", [])],
        "dataType": value.get("DataType", "String"),
    }


def stream_event(records: Sequence[dict], stream_arn: str) -> dict:
    """Lambda's DynamoDB Streams event for records as GetRecords returned them."""
    return {"Records": [stream_record(r, stream_arn) for r in records]}


def stream_record(record: dict, stream_arn: str) -> dict:
    """One stream record as Lambda delivers it: epoch-seconds creation time, base64 binaries, ``eventSourceARN``."""
    body = dict(record.get("dynamodb") or {})
    created = body.get("ApproximateCreationDateTime")
    if isinstance(created, dt.datetime):
        body["ApproximateCreationDateTime"] = int(created.timestamp())
    for image in ("Keys", "NewImage", "OldImage"):
        if image in body:
            body[image] = {name: _attribute_to_json(value) for name, value in body[image].items()}
    return {
        "eventID": record.get("eventID", uuid.uuid4().hex),
        "eventName": record["eventName"],
        "eventVersion": record.get("eventVersion", "1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": record.get("awsRegion", LOCAL_REGION),
        "dynamodb": body,
        "eventSourceARN": stream_arn,
    }


def on_failure_record(record: dict, stream_arn: str, shard_id: str, function_arn: str, attempts: int) -> dict:
    """What Lambda sends to a stream mapping's on-failure destination: batch metadata, not the record itself."""
    created = (record.get("dynamodb") or {}).get("ApproximateCreationDateTime")
    arrival = created.isoformat() if isinstance(created, dt.datetime) else str(created)
    sequence_number = record["dynamodb"]["SequenceNumber"]
    return {
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": function_arn,
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": attempts,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "DDBStreamBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": sequence_number,
            "endSequenceNumber": sequence_number,
            "approximateArrivalOfFirstRecord": arrival,
            "approximateArrivalOfLastRecord": arrival,
            "batchSize": 1,
            "streamArn": stream_arn,
        },
    }


def _attribute_to_json(value: Any) -> Any:
    """boto3 returns binary attribute values as bytes; the Lambda event carries them base64-encoded."""
    if isinstance(value, dict):
        return {k: _attribute_to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_attribute_to_json(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    return value


def scheduled_event(rule_name: str, region: str = LOCAL_REGION, account: str = LOCAL_ACCOUNT) -> dict:
    """EventBridge's scheduled event, as a ``Schedule`` event source delivers it."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": now,
        "region": region,
        "resources": [f"arn:aws:events:{region}:{account}:rule/{rule_name}"],
        "detail": {},
    }


def failed_item_ids(result: Any, batch_ids: Sequence[str]) -> set[str] | None:
    """The ids a ReportBatchItemFailures response names, or None when Lambda would treat the whole batch as failed.

    Lambda: an empty/None response or an empty ``batchItemFailures`` is full success; an ``itemIdentifier`` that is
    missing, empty or not in the batch makes the whole batch a failure.
    """
    if not isinstance(result, dict):
        return set()
    failures = result.get("batchItemFailures") or []
    ids: set[str] = set()
    for failure in failures:
        item = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not item or item not in batch_ids:
            return None
        ids.add(item)
    return ids


# ----------------------------------------------------------------------------------------------------------- stats
@dataclass
class PollerStats:
    batches: int = 0
    records: int = 0
    succeeded: int = 0
    failed: int = 0
    function_errors: int = 0
    dropped: int = 0
    last_error: str = ""
    last_success_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _PollerThread(threading.Thread):
    """A daemon thread with a stop event; ``stop()`` then ``join()`` ends it within one poll interval."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._stop_event = threading.Event()
        self.stats = PollerStats()
        self.idle = threading.Event()  # set whenever the last poll found nothing to do

    def stop(self) -> None:
        self._stop_event.set()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def run(self) -> None:
        while not self.stopping:
            try:
                self.poll_once()
            except Exception as exc:  # the poller must outlive a flaky call; the error is kept for /local/status
                self.stats.last_error = describe(exc)
                log.warning("%s: %s", self.name, self.stats.last_error)
                self._stop_event.wait(1.0)

    def poll_once(self) -> None:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------------------- SQS
class SqsPoller(_PollerThread):
    """Lambda's SQS event source mapping with ReportBatchItemFailures.

    Parameters
    ----------
    sqs:
        boto3 SQS client (pointed at the emulator).
    queue_url, queue_arn:
        The source queue; its redrive policy decides when a message goes to the DLQ.
    invoke:
        Calls the function with the event and returns its response; raising is a function error (whole batch fails).
    batch_size:
        Messages per event (SQS returns at most 10 per receive).
    wait_seconds:
        Long-poll wait per receive; also how quickly ``stop()`` is noticed.
    visibility_timeout:
        Per-receive visibility timeout; None uses the queue's own.
    retry_delay_seconds:
        None (AWS behaviour): a failed message reappears when its visibility timeout ends. A number shortens that wait
        with ChangeMessageVisibility, so local retries (and the trip to the DLQ) take seconds, not minutes.
    batching_window_seconds:
        ``MaximumBatchingWindowInSeconds``: after the first message, keep gathering until the batch is full or the
        window has passed.
    max_receive_count, on_exhausted:
        The queue's redrive ``maxReceiveCount``; a message that fails on its last allowed receive is handed to
        ``on_exhausted`` (SQS moves it to the DLQ at the next receive), so the stack can say so in one line.
    """

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        invoke: Invoke,
        *,
        batch_size: int = 10,
        wait_seconds: int = 1,
        visibility_timeout: int | None = None,
        retry_delay_seconds: int | None = None,
        batching_window_seconds: float = 0.0,
        max_receive_count: int | None = None,
        on_exhausted: Callable[[dict], None] | None = None,
        region: str = LOCAL_REGION,
    ) -> None:
        super().__init__(name=f"sqs-poller:{queue_arn.rsplit(':', 1)[-1]}")
        self.max_receive_count = max_receive_count
        self.on_exhausted = on_exhausted
        self.batching_window_seconds = batching_window_seconds
        self.deleted_at: deque[float] = deque(maxlen=100_000)  # for NumberOfMessagesDeleted-style alarms
        self.sqs = sqs
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.invoke = invoke
        self.batch_size = max(1, min(10, batch_size))
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.retry_delay_seconds = retry_delay_seconds
        self.region = region

    def poll_once(self) -> None:
        request: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": self.batch_size,
            "WaitTimeSeconds": self.wait_seconds,
            "AttributeNames": ["All"],
            "MessageAttributeNames": ["All"],
        }
        if self.visibility_timeout is not None:
            request["VisibilityTimeout"] = self.visibility_timeout
        messages = self.sqs.receive_message(**request).get("Messages", [])
        if not messages:
            self.idle.set()
            return
        self.idle.clear()
        window_ends = time.monotonic() + self.batching_window_seconds
        while len(messages) < self.batch_size and time.monotonic() < window_ends and not self.stopping:
            more = self.sqs.receive_message(
                **request | {"MaxNumberOfMessages": self.batch_size - len(messages), "WaitTimeSeconds": 0}
            ).get("Messages", [])
            if more:
                messages.extend(more)
            else:
                self._stop_event.wait(min(0.05, max(0.0, window_ends - time.monotonic())))
        self.process(messages)

    def deleted_within(self, seconds: float) -> int:
        """Messages this poller deleted in the last ``seconds`` (SQS's NumberOfMessagesDeleted metric, locally)."""
        since = time.time() - seconds
        return sum(1 for at in self.deleted_at if at >= since)

    def process(self, messages: list[dict]) -> None:
        """Invoke once for the batch, delete what succeeded, hand the failures back to SQS."""
        self.stats.batches += 1
        self.stats.records += len(messages)
        ids = [m["MessageId"] for m in messages]
        try:
            result = self.invoke(sqs_event(messages, self.queue_arn, self.region))
            failed = failed_item_ids(result, ids)
        except Exception as exc:
            self.stats.function_errors += 1
            self.stats.last_error = describe(exc)
            failed = None
        if failed is None:
            failed = set(ids)
        done = [m for m in messages if m["MessageId"] not in failed]
        retry = [m for m in messages if m["MessageId"] in failed]
        self._delete_messages(done)
        now = time.time()
        self.deleted_at.extend([now] * len(done))
        self.stats.succeeded += len(done)
        self.stats.failed += len(retry)
        if done:
            self.stats.last_success_at = time.time()
        if retry and self.retry_delay_seconds is not None:
            self._delay_messages(retry, self.retry_delay_seconds)
        if self.max_receive_count and self.on_exhausted:
            for message in retry:
                if int((message.get("Attributes") or {}).get("ApproximateReceiveCount", 0)) >= self.max_receive_count:
                    self.on_exhausted(message)

    def _delete_messages(self, messages: list[dict]) -> None:
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)]
            response = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            for failure in response.get("Failed", []):
                log.warning("%s: could not delete a message: %s", self.name, failure.get("Message"))

    def _delay_messages(self, messages: list[dict], seconds: int) -> None:
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": seconds}
            for i, m in enumerate(messages[:10])
        ]
        self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)


# ------------------------------------------------------------------------------------------------ DynamoDB Streams
class StreamPoller(_PollerThread):
    """Lambda's DynamoDB Streams event source mapping with ReportBatchItemFailures and bounded retries.

    Parameters
    ----------
    streams:
        boto3 ``dynamodbstreams`` client.
    stream_arn:
        The table's latest stream.
    invoke:
        Calls the function with the event; raising is a function error (the batch is retried from its first record).
    starting_position:
        ``TRIM_HORIZON`` or ``LATEST`` — used only when no checkpoint exists for this stream and shard.
    batch_size:
        Records per event (Lambda's default for streams is 100).
    max_retries:
        Retries of a failing record before it goes to ``on_failure`` and is skipped (``MaximumRetryAttempts``).
    checkpoint_path:
        JSON file holding the last handled sequence number per stream and shard, so a restart resumes after it.
    on_failure:
        The on-failure destination: called with Lambda's invocation record (``DDBStreamBatchInfo``) of a record
        whose retries are spent; the stack sends it to the template's SQS destination.
    """

    def __init__(
        self,
        streams: Any,
        stream_arn: str,
        invoke: Invoke,
        *,
        starting_position: str = "TRIM_HORIZON",
        batch_size: int = 100,
        max_retries: int = 3,
        poll_interval: float = 0.25,
        retry_backoff: float = 0.2,
        checkpoint_path: Path | None = None,
        on_failure: Callable[[dict], None] | None = None,
        function_arn: str = "",
    ) -> None:
        super().__init__(name=f"stream-poller:{stream_arn.split('/')[1] if '/' in stream_arn else stream_arn}")
        self.streams = streams
        self.stream_arn = stream_arn
        self.invoke = invoke
        self.starting_position = starting_position
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.poll_interval = poll_interval
        self.retry_backoff = retry_backoff
        self.checkpoint_path = checkpoint_path
        self.on_failure = on_failure
        self.function_arn = function_arn
        self._shard_id: str | None = None
        self._iterator: str | None = None
        self._attempts: dict[str, int] = {}
        self.checkpoint: str | None = None  # last handled sequence number

    # -- checkpoint
    def _checkpoint_key(self) -> str:
        return f"{self.stream_arn}|{self._shard_id}"

    def _load_checkpoint(self) -> str | None:
        if self.checkpoint_path is None or not self.checkpoint_path.is_file():
            return None
        try:
            return json.loads(self.checkpoint_path.read_text()).get(self._checkpoint_key())
        except (OSError, ValueError):
            return None

    def _save_checkpoint(self, sequence_number: str) -> None:
        self.checkpoint = sequence_number
        if self.checkpoint_path is None:
            return
        try:
            data = json.loads(self.checkpoint_path.read_text()) if self.checkpoint_path.is_file() else {}
        except (OSError, ValueError):
            data = {}
        data = {key: value for key, value in data.items() if key.startswith(f"{self.stream_arn}|")}
        data[self._checkpoint_key()] = sequence_number
        tmp = self.checkpoint_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.checkpoint_path)

    # -- polling
    def _open(self) -> None:
        shards = self.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]["Shards"]
        open_shards = [s for s in shards if "EndingSequenceNumber" not in s.get("SequenceNumberRange", {})]
        self._shard_id = (open_shards or shards)[-1]["ShardId"]
        checkpoint = self._load_checkpoint()
        if checkpoint is not None:
            self.checkpoint = checkpoint
            self._seek("AFTER_SEQUENCE_NUMBER", checkpoint)
        else:
            self._seek(self.starting_position)

    def _seek(self, iterator_type: str, sequence_number: str | None = None) -> None:
        request = {"StreamArn": self.stream_arn, "ShardId": self._shard_id, "ShardIteratorType": iterator_type}
        if sequence_number is not None:
            request["SequenceNumber"] = sequence_number
        self._iterator = self.streams.get_shard_iterator(**request)["ShardIterator"]

    def poll_once(self) -> None:
        if self._iterator is None:
            self._open()
        response = self.streams.get_records(ShardIterator=self._iterator, Limit=self.batch_size)
        records = response.get("Records", [])
        next_iterator = response.get("NextShardIterator")
        if not records:
            self.idle.set()
            self._iterator = next_iterator
            self._stop_event.wait(self.poll_interval)
            return
        self.idle.clear()
        failed_at = self.process(records)
        if failed_at is None:
            self._iterator = next_iterator
        else:  # re-read from the failed record: Lambda retries from the checkpoint, not from memory
            self._seek("AT_SEQUENCE_NUMBER", failed_at)
            self._stop_event.wait(self.retry_backoff)

    def process(self, records: list[dict]) -> str | None:
        """Invoke once; return the sequence number to retry from, or None when the batch is done."""
        self.stats.batches += 1
        self.stats.records += len(records)
        sequence = [r["dynamodb"]["SequenceNumber"] for r in records]
        try:
            result = self.invoke(stream_event(records, self.stream_arn))
            failed = failed_item_ids(result, sequence)
        except Exception as exc:
            self.stats.function_errors += 1
            self.stats.last_error = describe(exc)
            failed = None
        if failed is None:
            failed = {sequence[0]}
        if not failed:
            self.stats.succeeded += len(records)
            self.stats.last_success_at = time.time()
            self._attempts.clear()
            self._save_checkpoint(sequence[-1])
            return None
        first = min(sequence.index(s) for s in failed)
        self.stats.succeeded += first
        if first:
            self._save_checkpoint(sequence[first - 1])
        failing = sequence[first]
        self._attempts[failing] = self._attempts.get(failing, 0) + 1
        if self._attempts[failing] <= self.max_retries:
            self.stats.failed += 1
            return failing
        # retries spent: record it (on-failure destination) and move past it, as Lambda does after bisecting to it
        self._attempts.pop(failing, None)
        self.stats.dropped += 1
        self._record_failure(records[first], attempts=self.max_retries + 1)
        self._save_checkpoint(failing)
        return sequence[first + 1] if first + 1 < len(sequence) else None

    def _record_failure(self, record: dict, *, attempts: int) -> None:
        sequence_number = record["dynamodb"]["SequenceNumber"]
        log.warning(
            "%s: retries spent on stream record %s; sent to the on-failure destination", self.name, sequence_number
        )
        if self.on_failure is None:
            return
        self.on_failure(on_failure_record(record, self.stream_arn, self._shard_id or "", self.function_arn, attempts))


# ------------------------------------------------------------------------------------------------------- schedule
@dataclass
class ScheduleStats:
    runs: int = 0
    errors: int = 0
    last_run_at: float = 0.0
    last_reason: str = ""
    last_error: str = ""
    last_result: Any = None
    alarm: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ScheduledInvoker(threading.Thread):
    """The builder's triggers: a fixed-rate schedule, an alarm that fires on its OK→ALARM change, and manual runs.

    Parameters
    ----------
    invoke:
        Calls the function with an event.
    rule_name:
        Name of the schedule rule (used when the template gives no constant ``Input``).
    interval_seconds:
        The schedule's rate.
    inputs:
        Constant event per trigger (``schedule``, ``threshold``, ``manual``), as the template's ``Input`` sets it;
        a trigger without one gets EventBridge's ``Scheduled Event``.
    alarm_state:
        Optional check run every ``check_seconds``: True means the alarm is in ALARM. Like an EventBridge rule on
        "CloudWatch Alarm State Change", only the change from OK to ALARM triggers a run.
    """

    def __init__(
        self,
        invoke: Invoke,
        rule_name: str,
        interval_seconds: float,
        *,
        inputs: dict[str, dict] | None = None,
        alarm_state: Callable[[], bool] | None = None,
        check_seconds: float = 5.0,
    ) -> None:
        super().__init__(name=f"schedule:{rule_name}", daemon=True)
        self.invoke = invoke
        self.rule_name = rule_name
        self.interval_seconds = interval_seconds
        self.inputs = inputs or {}
        self.alarm_state = alarm_state
        self.check_seconds = check_seconds
        self.stats = ScheduleStats()
        self._stop_event = threading.Event()
        self._kick = threading.Event()
        self._done = threading.Condition()

    def stop(self) -> None:
        self._stop_event.set()
        self._kick.set()

    def trigger(self) -> None:
        """Run as soon as possible (the merchant panel's "compact now", tests)."""
        self._kick.set()

    def wait_for_run(self, after: int, timeout: float) -> bool:
        """Block until more than ``after`` runs have finished (or ``timeout`` passes)."""
        with self._done:
            return self._done.wait_for(lambda: self.stats.runs > after, timeout)

    def event_for(self, reason: str) -> dict:
        return dict(self.inputs[reason]) if reason in self.inputs else scheduled_event(self.rule_name)

    def run(self) -> None:
        next_tick = time.monotonic() + self.interval_seconds
        while not self._stop_event.is_set():
            wait = min(self.check_seconds, max(0.0, next_tick - time.monotonic()))
            kicked = self._kick.wait(wait)
            if self._stop_event.is_set():
                return
            self._kick.clear()
            reason = ""
            if kicked:
                reason = "manual"
            elif time.monotonic() >= next_tick:
                reason = "schedule"
            elif self.alarm_state is not None:
                reason = self._check_alarm()
            if not reason:
                continue
            self._run_once(reason)
            if reason == "schedule":
                next_tick = time.monotonic() + self.interval_seconds

    def _check_alarm(self) -> str:
        try:
            state = bool(self.alarm_state()) if self.alarm_state else False
        except Exception as exc:
            self.stats.last_error = f"alarm check: {describe(exc)}"
            return ""
        fired = state and not self.stats.alarm
        self.stats.alarm = state
        return "threshold" if fired else ""

    def _run_once(self, reason: str) -> None:
        started = time.time()
        self.stats.last_reason = reason
        try:
            self.stats.last_result = self.invoke(self.event_for(reason))
        except Exception as exc:
            self.stats.errors += 1
            self.stats.last_error = describe(exc)
            log.warning("%s: %s", self.name, self.stats.last_error)
        self.stats.last_run_at = started
        with self._done:
            self.stats.runs += 1
            self._done.notify_all()
