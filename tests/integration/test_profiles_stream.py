"""Events table → DynamoDB stream → profile Lambda → profiles table, under moto.

Events are written with boto3, read back with moto's DynamoDB Streams (records shaped like the ones
Lambda delivers, plus ``eventSourceARN``), and passed to the real handler.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws

from catalens.adapters.dynamodb import (
    DynamoCooccurrenceStore,
    DynamoEventStore,
    DynamoProfileStore,
    create_tables,
)
from catalens.profiles import ProfileUpdater, ShopperEvent, replay
from tests.integration.conftest import log_to_captured_stdout

REGION = "us-east-1"
EVENTS, PROFILES, COOC = "catalens-events", "catalens-profiles", "catalens-cooccurrence"
REPO = Path(__file__).resolve().parents[2]
HANDLER = REPO / "functions" / "profiles" / "app.py"
EVENTS_DIR = REPO / "tests" / "events"
T0 = 1_732_600_000_000

CATALOG = {
    f"item-{n}": (
        np.eye(8, dtype=np.float32)[n % 8],
        {"category": ["fruit", "veg", "dairy"][n % 3], "brand": ["acme", "zeta"][n % 2], "price": 1.0 + n},
    )
    for n in range(12)
}


@dataclass
class LambdaContext:
    function_name: str = "catalens-profiles"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:catalens-profiles"
    aws_request_id: str = "5f0c7b5e-9d1c-4b43-a2c9-2f6f0c3b7a11"


@dataclass
class Stack:
    client: Any
    streams: Any
    stream_arn: str
    app: ModuleType
    events: DynamoEventStore
    profiles: DynamoProfileStore
    cooc: DynamoCooccurrenceStore
    shard_iterators: dict[str, str]

    def write(self, *events: ShopperEvent) -> None:
        for event in events:
            assert self.events.put(event)

    def read_stream(self) -> list[dict[str, Any]]:
        """New stream records since the last read, in Lambda's JSON shape."""
        records: list[dict[str, Any]] = []
        shards = self.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]["Shards"]
        for shard in shards:
            shard_id = shard["ShardId"]
            iterator = (
                self.shard_iterators.get(shard_id)
                or self.streams.get_shard_iterator(
                    StreamArn=self.stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
            )
            response = self.streams.get_records(ShardIterator=iterator)
            self.shard_iterators[shard_id] = response["NextShardIterator"]
            records += response["Records"]
        return [lambda_shaped(record, self.stream_arn) for record in records]

    def invoke(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return self.app.lambda_handler({"Records": records}, LambdaContext())


def lambda_shaped(record: dict[str, Any], stream_arn: str) -> dict[str, Any]:
    """moto's raw record → Lambda's event record: JSON (epoch-second timestamps) plus ``eventSourceARN``."""

    def encode(value: Any) -> Any:
        if isinstance(value, dt.datetime):
            return int(value.timestamp())
        raise TypeError(f"cannot encode {type(value).__name__}")

    return json.loads(json.dumps(record, default=encode)) | {"eventSourceARN": stream_arn}


def load_handler() -> ModuleType:
    """Import functions/profiles/app.py fresh (its resources are created at import, inside moto)."""
    spec = importlib.util.spec_from_file_location("catalens_profiles_app", HANDLER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lookup(item_id: str):
    return CATALOG.get(item_id)


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
        "EVENTS_TABLE": EVENTS,
        "PROFILES_TABLE": PROFILES,
        "COOCCURRENCE_TABLE": COOC,
        "INDEX_BUCKET": "catalens-index",
        "POWERTOOLS_SERVICE_NAME": "profiles",
        "POWERTOOLS_METRICS_NAMESPACE": "catalens",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        boto3.client("s3", region_name=REGION).create_bucket(Bucket="catalens-index")
        stream_arn = create_tables(client, events=EVENTS, profiles=PROFILES, cooccurrence=COOC)
        app = load_handler()
        monkeypatch.setattr(app.stream.updater, "lookup", lookup)  # the index is another suite's business
        yield Stack(
            client=client,
            streams=boto3.client("dynamodbstreams", region_name=REGION),
            stream_arn=stream_arn,
            app=app,
            events=DynamoEventStore(client, EVENTS),
            profiles=DynamoProfileStore(client, PROFILES, cooccurrence_table=COOC, events_table=EVENTS),
            cooc=DynamoCooccurrenceStore(client, COOC),
            shard_iterators={},
        )


def ev(n: int, kind: str = "click", item: str = "item-1", *, user: str = "alice", ts: int | None = None, **kw):
    return ShopperEvent(user, f"ev{n:04d}", T0 + n * 60_000 if ts is None else ts, kind, item, **kw)


HISTORY = [
    ev(1, "view", "item-1", dwell_ms=4000),
    ev(2, "click", "item-1", query_id="q-1"),
    ev(3, "view", "item-4", dwell_ms=800),
    ev(4, "add_to_cart", "item-4"),
    ev(5, "purchase", "item-4"),
    ev(6, "dismiss", "item-2"),
    ev(7, "click", "item-7"),
]


def test_events_flow_from_the_table_through_the_stream_into_the_profile(stack: Stack):
    stack.write(*HISTORY)
    records = stack.read_stream()
    assert len(records) == len(HISTORY)
    assert {r["eventName"] for r in records} == {"INSERT"}

    assert stack.invoke(records) == {"batchItemFailures": []}

    profile = stack.profiles.load("alice")
    assert profile.counts == {"view": 2, "click": 2, "add_to_cart": 1, "purchase": 1, "dismiss": 1}
    assert profile.version == len(HISTORY)
    assert profile.category["veg"] > 0 > profile.category["dairy"]  # item-2 (dairy) was dismissed
    assert profile.stats()["mean_dwell_ms"] == pytest.approx(2400)
    expected = replay(HISTORY, lookup)
    np.testing.assert_allclose(profile.preference(), expected.preference(), atol=1e-6)
    assert profile.category == pytest.approx(expected.category)
    # engaged items co-occur: item-1 (click), item-4 (cart, purchase), item-7 (click)
    assert stack.cooc.count("item-4", "item-1") == 2  # the cart and the purchase each paired with the click
    assert stack.cooc.count("item-7", "item-4") == 1
    assert stack.cooc.count("item-7", "item-1") == 1
    assert stack.cooc.count("item-2", "item-1") == 0  # a dismissal is not engagement
    ranking = stack.profiles.get("alice")
    assert ranking.recent == []
    assert ranking.applied == []
    assert ranking.confidence() == pytest.approx(profile.confidence())
    assert stack.profiles.get_async("alice").result(timeout=10).to_item() == ranking.to_item()
    assert stack.profiles.get_async("nobody").result(timeout=10) is None


def test_duplicate_delivery_changes_nothing(stack: Stack):
    stack.write(*HISTORY)
    records = stack.read_stream()
    stack.invoke(records)
    before = stack.profiles.load("alice").to_item()
    cooc_before = stack.cooc.count("item-4", "item-1")

    assert stack.invoke(records) == {"batchItemFailures": []}  # the whole batch again (a Lambda retry)
    assert stack.invoke(records[2:5] + records[:1]) == {"batchItemFailures": []}

    assert stack.profiles.load("alice").to_item() == before
    assert stack.cooc.count("item-4", "item-1") == cooc_before


def test_out_of_order_delivery_gives_the_same_profile(stack: Stack):
    stack.write(*HISTORY)
    records = stack.read_stream()
    stack.invoke(records[::-1])
    reversed_profile = stack.profiles.load("alice")
    expected = replay(HISTORY, lookup)
    assert reversed_profile.counts == expected.counts
    assert reversed_profile.evidence == pytest.approx(expected.evidence)
    assert reversed_profile.brand == pytest.approx(expected.brand)
    np.testing.assert_allclose(reversed_profile.preference(), expected.preference(), atol=1e-6)

    late = ev(0, "purchase", "item-9", ts=T0 - 3_600_000)  # happened before everything, arrives last
    stack.write(late)
    assert stack.invoke(stack.read_stream()) == {"batchItemFailures": []}
    profile = stack.profiles.load("alice")
    assert profile.counts["purchase"] == 2
    assert profile.first_ms == late.ts_ms
    assert profile.last_ms == HISTORY[-1].ts_ms


def test_a_poison_record_fails_alone(stack: Stack):
    stack.write(*HISTORY[:3])
    stack.client.put_item(  # a client bug: unknown event type
        TableName=EVENTS,
        Item={"user_id": {"S": "alice"}, "event_key": {"S": f"{T0 + 5:013d}#poison"}, "type": {"S": "like"},
              "item_id": {"S": "item-3"}},
    )  # fmt: skip
    stack.client.put_item(  # and one without an item
        TableName=EVENTS,
        Item={"user_id": {"S": "bob"}, "event_key": {"S": f"{T0 + 6:013d}#noitem"}, "type": {"S": "click"}},
    )
    stack.write(*HISTORY[3:])
    records = stack.read_stream()
    poison = [r["dynamodb"]["SequenceNumber"] for r in records if r["dynamodb"]["Keys"]["event_key"]["S"].endswith(
        ("#poison", "#noitem"))]  # fmt: skip
    assert len(poison) == 2

    response = stack.invoke(records)

    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == sorted(poison)
    assert stack.profiles.load("alice").counts == replay(HISTORY, lookup).counts
    assert stack.profiles.load("bob") is None


def test_ttl_expiry_records_are_ignored(stack: Stack):
    stack.write(*HISTORY[:2])
    stack.invoke(stack.read_stream())
    before = stack.profiles.load("alice").to_item()
    stack.client.delete_item(
        TableName=EVENTS, Key={"user_id": {"S": "alice"}, "event_key": {"S": HISTORY[0].key}}
    )  # what TTL expiry does
    records = stack.read_stream()
    assert [r["eventName"] for r in records] == ["REMOVE"]
    assert stack.invoke(records) == {"batchItemFailures": []}
    assert stack.profiles.load("alice").to_item() == before


class RecordingStore(DynamoProfileStore):
    """Remembers the co-occurrence pairs of every profile write that committed.

    Its first write waits at ``first_write`` until the other updater's first write is also due, so
    both have read the same (absent) profile: one of them must lose the race, every run.
    """

    committed: list[tuple[str, str]]
    first_write: threading.Barrier | None = None
    lock = threading.Lock()

    def save(self, profile, *, expected_version, pairs=()):
        if self.first_write is not None:
            barrier, self.first_write = self.first_write, None
            barrier.wait(timeout=30)
        super().save(profile, expected_version=expected_version, pairs=pairs)
        with self.lock:
            self.committed.extend(pairs)


def test_two_concurrent_updaters_of_one_user_lose_no_event(stack: Stack):
    events = [ev(n, "click", f"item-{n % 5}", ts=T0 + n * 1000) for n in range(60)]
    errors: list[BaseException] = []
    committed: list[tuple[str, str]] = []
    conflicts: list[float] = []
    first_write = threading.Barrier(2)

    def updater_thread(share: list[ShopperEvent]) -> None:
        client = boto3.client("dynamodb", region_name=REGION)  # each updater has its own client, like two Lambdas
        store = RecordingStore(client, PROFILES, cooccurrence_table=COOC)
        store.committed = committed
        store.first_write = first_write
        updater = ProfileUpdater(
            store=store,
            lookup=lookup,
            cooccurrence=DynamoCooccurrenceStore(client, COOC),
            max_attempts=200,
            sleep=conflicts.append,  # count lost races instead of sleeping
        )
        try:
            for event in share:
                assert updater.handle(event) == "applied"
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=updater_thread, args=(events[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    profile = stack.profiles.load("alice")
    assert profile.counts == {"click": 60}
    assert profile.version == 60  # exactly one committed write per event
    expected = replay(events, lookup)
    assert profile.category == pytest.approx(expected.category)
    np.testing.assert_allclose(profile.preference(), expected.preference(), atol=1e-6)
    # the pairs of committed writes, and only those, are counted — once each (lost races added nothing)
    items = [f"item-{n}" for n in range(5)]
    stored = {(a, b): stack.cooc.count(a, b) for a in items for b in items}
    assert stored == {pair: float(committed.count(pair)) for pair in stored}
    assert sum(stored.values()) > 0
    assert conflicts  # the races really happened (at least the forced first one) and were retried
    print(f"lost races retried: {len(conflicts)}")


def test_cooccurrence_rows_without_a_count_are_ignored(stack: Stack):
    """A row with only its keys (not written by ``ADD``) neither raises nor counts."""
    stack.cooc.add([("item-1", "item-2"), ("item-1", "item-2"), ("item-1", "item-3")])
    stack.client.put_item(TableName=COOC, Item={"item_id": {"S": "item-1"}, "other_id": {"S": "item-4"}})

    neighbours = stack.cooc.neighbours("item-1")

    assert set(neighbours) == {"item-2", "item-3"}
    assert neighbours["item-2"] == pytest.approx(2 * neighbours["item-3"])


def test_erasure_forgets_the_profile_and_ignores_late_records(stack: Stack):
    stack.write(*HISTORY)
    records = stack.read_stream()
    stack.invoke(records[:4])
    erasing = DynamoProfileStore(  # what the search API's DELETE /users/{id}/profile uses
        stack.client, PROFILES, events_table=EVENTS, clock_ms=lambda: HISTORY[-1].ts_ms + 1000
    )  # the shopper asks to be forgotten after all their events

    assert erasing.delete("alice") is True

    erased = stack.profiles.load("alice")
    assert erased.is_empty
    assert erased.vector is None
    assert erased.recent == []
    assert (
        stack.client.query(
            TableName=EVENTS, KeyConditionExpression="user_id = :u", ExpressionAttributeValues={":u": {"S": "alice"}}
        )["Items"]
        == []
    )  # raw events are gone too
    # the stream still holds the rest of the old events (and the REMOVEs of the erasure): nothing comes back
    assert stack.invoke(records[4:] + stack.read_stream()) == {"batchItemFailures": []}
    assert stack.profiles.load("alice").is_empty
    assert erasing.delete("alice") is False  # idempotent

    fresh = ev(100, "purchase", "item-3", ts=HISTORY[-1].ts_ms + 5000)
    stack.write(fresh)
    stack.invoke(stack.read_stream())
    profile = stack.profiles.load("alice")
    assert profile.counts == {"purchase": 1}
    assert set(profile.category) == {"fruit"}


def raw_profile(stack: Stack, user: str) -> dict[str, Any]:
    return stack.client.get_item(TableName=PROFILES, Key={"user_id": {"S": user}}, ConsistentRead=True)["Item"]


def test_an_erasure_tombstone_expires_once_no_late_event_can_arrive_and_suppresses_them_until_then(stack: Stack):
    """A shopper who never existed leaves a tombstone too, but not forever: its ttl is the erasure plus twice the
    stream's 24 h reach. Until then a late stream record of an older event is still ignored."""
    from catalens.adapters.dynamodb import TOMBSTONE_TTL_SECONDS

    assert TOMBSTONE_TTL_SECONDS >= 86_400  # template: MaximumRecordAgeInSeconds of the profiles event source
    assert stack.client.describe_time_to_live(TableName=PROFILES)["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED",
        "AttributeName": "ttl",
    }
    erased_at = T0 + 3_600_000
    erasing = DynamoProfileStore(stack.client, PROFILES, events_table=EVENTS, clock_ms=lambda: erased_at)
    assert erasing.delete("never-existed") is False
    assert raw_profile(stack, "never-existed")["ttl"] == {"N": str(erased_at // 1000 + TOMBSTONE_TTL_SECONDS)}

    stack.write(ev(1, "purchase", "item-4", user="never-existed", ts=erased_at - 60_000))  # older than the erasure
    assert stack.invoke(stack.read_stream()) == {"batchItemFailures": []}
    assert stack.profiles.load("never-existed").is_empty  # suppressed: the tombstone is still there

    stack.write(ev(2, "purchase", "item-4", user="never-existed", ts=erased_at + 60_000))  # after the erasure
    stack.invoke(stack.read_stream())
    rebuilt = raw_profile(stack, "never-existed")
    assert "ttl" not in rebuilt  # a regular profile never expires, even one built over a tombstone
    assert stack.profiles.load("never-existed").counts == {"purchase": 1}


@pytest.mark.parametrize("path", sorted(EVENTS_DIR.glob("dynamodb_stream_*.json")), ids=lambda p: p.name)
def test_recorded_stream_event(stack: Stack, path: Path):
    """A recorded Lambda event: the valid records land, the malformed one alone is reported."""
    event = json.loads(path.read_text())
    bad = [r["dynamodb"]["SequenceNumber"] for r in event["Records"] if r["dynamodb"]["Keys"]["event_key"]["S"]
           .endswith("#not-an-event")]  # fmt: skip
    response = stack.app.lambda_handler(event, LambdaContext())
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == bad
    users = {r["dynamodb"]["Keys"]["user_id"]["S"] for r in event["Records"] if r["eventName"] == "INSERT"}
    for user in users:
        profile = stack.profiles.load(user)
        assert profile is not None
        assert profile.counts


def test_table_definitions_match_the_template():
    """The tables these tests (and the local tooling) create are the ones template.yaml deploys."""
    from catalens.adapters.dynamodb import table_definitions
    from catalens_tools.provision import load_template

    resources = load_template()["Resources"]
    ours = table_definitions(events="EventsTable", profiles="ProfilesTable", cooccurrence="CooccurrenceTable")
    for logical_id, definition in ours.items():
        deployed = resources[logical_id]["Properties"]
        assert deployed["KeySchema"] == definition["KeySchema"], logical_id
        assert sorted(deployed["AttributeDefinitions"], key=str) == sorted(definition["AttributeDefinitions"], key=str)
        assert deployed["BillingMode"] == definition["BillingMode"]
        stream = definition.get("StreamSpecification")
        assert deployed.get("StreamSpecification", {}).get("StreamViewType") == (stream or {}).get("StreamViewType")
    for table in ("EventsTable", "ProfilesTable"):  # events expire; so do the profiles' erasure tombstones
        assert resources[table]["Properties"]["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}


def test_every_failed_record_is_counted_and_logged_with_its_reason(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    log_to_captured_stdout(stack.app)
    stack.write(HISTORY[0])
    stack.write(ev(5, "view", dwell_ms=900), ev(8, user="carol"))
    records = stack.read_stream()
    # DynamoDB refuses such a number, but a hand-made or garbled event can carry one
    (garbled,) = [r for r in records if r["dynamodb"]["Keys"]["event_key"]["S"].endswith("#ev0005")]
    garbled["dynamodb"]["NewImage"]["dwell_ms"] = {"N": "not-a-number"}
    sequence = {r["dynamodb"]["Keys"]["event_key"]["S"].split("#")[1]: r["dynamodb"]["SequenceNumber"] for r in records}
    # the record of carol fails on the table side (not an event problem): DynamoDB throttles
    original = stack.app.stream.updater.handle

    def throttled(event: ShopperEvent) -> str:
        if event.user_id == "carol":
            raise stack.client.exceptions.ProvisionedThroughputExceededException(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}, "UpdateItem"
            )
        return original(event)

    monkeypatch.setattr(stack.app.stream.updater, "handle", throttled)
    capsys.readouterr()

    response = stack.invoke(records)

    failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
    assert failed == {sequence["ev0005"], sequence["ev0008"]}
    assert stack.profiles.load("alice").counts == replay(HISTORY[:1], lookup).counts
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    logged = {line["sequence_number"]: line for line in lines if "exception" in line}
    assert set(logged) == failed
    assert "'dwell_ms' is not a number" in logged[sequence["ev0005"]]["exception"]
    assert "slow down" in logged[sequence["ev0008"]]["exception"]

    def emitted(name: str) -> float:  # EMF documents carry a value or a list of values per metric
        values = [line[name] for line in lines if "_aws" in line and name in line]
        return sum(sum(v) if isinstance(v, list) else v for v in values)

    assert (emitted("InvalidEvents"), emitted("FailedEvents")) == (1, 1)
