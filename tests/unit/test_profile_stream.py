"""ProfileStream: one stream record in, the event applied and its outcome counted; a failure counted by kind."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from catalens.adapters.dynamodb import to_attribute_values
from catalens.profiles import ProfileUpdater, ShopperEvent, ShopperEventError
from catalens.service.profile_stream import ProfileStream
from catalens.service.telemetry import RecordingMetrics
from catalens_tools.in_memory.profiles import InMemoryProfileStore

T0 = 1_732_600_000_000
EVENT = ShopperEvent(user_id="alice", event_id="e1", ts_ms=T0, type="click", item_id="red-1")


def stream_record(image: dict[str, Any] | None, *, name: str = "INSERT") -> DynamoDBRecord:
    change: dict[str, Any] = {"SequenceNumber": "100", "Keys": {}}
    if image is not None:
        change["NewImage"] = image
    return DynamoDBRecord({"eventName": name, "dynamodb": change})


def inserted(event: ShopperEvent) -> DynamoDBRecord:
    return stream_record(to_attribute_values(event.to_item(retention_days=90)))


def lookup(item_id: str) -> tuple[np.ndarray, dict[str, Any]]:
    return np.eye(4, dtype=np.float32)[0], {"category": "shoes"}


@pytest.fixture
def store() -> InMemoryProfileStore:
    return InMemoryProfileStore(clock_ms=lambda: T0)


def test_an_event_is_applied_once_and_each_outcome_counted(store: InMemoryProfileStore) -> None:
    metrics = RecordingMetrics()
    stream = ProfileStream(ProfileUpdater(store=store, lookup=lookup), metrics=metrics)

    assert stream.handle(inserted(EVENT)) == "applied"
    assert stream.handle(inserted(EVENT)) == "duplicate"  # at-least-once delivery

    assert store.load("alice") is not None
    assert (metrics.total("EventsApplied"), metrics.total("EventsDuplicate")) == (1, 1)


def test_a_removal_teaches_nothing(store: InMemoryProfileStore) -> None:
    metrics = RecordingMetrics()
    stream = ProfileStream(ProfileUpdater(store=store, lookup=lookup), metrics=metrics)
    assert stream.handle(stream_record(None, name="REMOVE")) is None
    assert metrics.total("RemovedEventsSkipped") == 1
    assert len(store) == 0


def test_an_invalid_event_raises_and_is_counted(store: InMemoryProfileStore) -> None:
    metrics, keys = RecordingMetrics(), {}
    stream = ProfileStream(ProfileUpdater(store=store, lookup=lookup), metrics=metrics, annotate=keys.update)
    with pytest.raises(ShopperEventError):
        stream.handle(stream_record({"user_id": {"S": "alice"}}))
    assert (metrics.total("InvalidEvents"), metrics.total("FailedEvents")) == (1, 0)
    assert keys == {}  # the error names the problem itself


def test_a_failure_of_the_store_raises_counted_with_its_reason(store: InMemoryProfileStore) -> None:
    def unreachable(item_id: str) -> None:
        raise TimeoutError("index unreachable")

    metrics, keys = RecordingMetrics(), {}
    stream = ProfileStream(ProfileUpdater(store=store, lookup=unreachable), metrics=metrics, annotate=keys.update)
    with pytest.raises(TimeoutError):
        stream.handle(inserted(EVENT))
    assert (metrics.total("InvalidEvents"), metrics.total("FailedEvents")) == (0, 1)
    assert keys == {"reason": "TimeoutError"}
