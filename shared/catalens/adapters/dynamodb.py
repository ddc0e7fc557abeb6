"""boto3 adapters for shopper profiles: the profiles, co-occurrence and events tables.

The low-level DynamoDB client is injected (``boto3.client("dynamodb")``): tests hand in a
moto-backed one, Lambdas create one at init.

Tables (the template defines them; the key schemas here are the contract):

========================  ==========================================  =========================================
table                     keys                                        attributes
========================  ==========================================  =========================================
events (stream NEW_IMAGE) ``user_id`` S (HASH), ``event_key`` S       see :mod:`catalens.profiles.events`;
                          (RANGE, "<13-digit epoch ms>#<event id>")   TTL attribute ``ttl``
profiles                  ``user_id`` S (HASH)                        see ``Profile.to_item``; ``version`` N is
                                                                      the optimistic-concurrency token; TTL
                                                                      attribute ``ttl`` (erasure tombstones only)
co-occurrence             ``item_id`` S (HASH), ``other_id`` S        ``n`` N: co-engagement count (ADD)
                          (RANGE)
========================  ==========================================  =========================================

A profile write is ``PutItem`` conditioned on ``version`` (``attribute_not_exists(user_id)`` for a
new profile). When the event also adds co-occurrence pairs, the put and the ``ADD`` updates go in
one ``TransactWriteItems``, so the pairs are counted exactly when the event is applied — never twice
on a redelivery, never lost when the put loses a race.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from catalens.cooccurrence import DEFAULT_NEIGHBOURS, DEFAULT_PRIOR, conditional_probabilities
from catalens.errors import CatalensError
from catalens.ports import ProfileConflictError
from catalens.profiles.events import ShopperEvent
from catalens.profiles.profile import RANKING_ATTRIBUTES, Profile

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()
_MAX_TRANSACTION_ITEMS = 100
_RETRYABLE_CANCELLATIONS = frozenset({"ConditionalCheckFailed", "TransactionConflict"})
# How long an erasure tombstone outlives the erasure. Only events written before the erasure can be older than it
# (the erasure deletes the stored ones); their stream records reach the profile function within the stream's 24 h
# retention (template: MaximumRecordAgeInSeconds 86400, retries inside it), so after 2 x 24 h no late event can
# arrive, and DynamoDB may drop the tombstone (its TTL deletes within days of expiry; a read until then still sees it).
TOMBSTONE_TTL_SECONDS = 2 * 86_400


class ProfileStoreError(CatalensError):
    """DynamoDB refused a profile, co-occurrence or event operation for a reason retrying the same call won't fix."""

    code = "profile_store_error"


def to_attribute_values(item: dict[str, Any]) -> dict[str, Any]:
    """Python values (Decimal, bytes, maps, lists) → DynamoDB wire format (``{"N": "1"}``, ...)."""
    return {name: _SERIALIZER.serialize(value) for name, value in item.items()}


def from_attribute_values(item: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB wire format → Python values (numbers as Decimal, binaries as ``Binary``)."""
    return {name: _DESERIALIZER.deserialize(value) for name, value in item.items()}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class DynamoProfileStore:
    """:class:`~catalens.ports.ProfileStore` over the profiles table (and, for pairs, the co-occurrence table).

    Parameters
    ----------
    client
        boto3 DynamoDB client.
    table
        Profiles table name.
    cooccurrence_table
        Co-occurrence table name; pairs passed to :meth:`save` are written there atomically with the profile.
    events_table
        Events table name; when set, :meth:`delete` also deletes the user's raw events.
    clock_ms
        Wall clock of erasures (epoch ms), injected by tests.
    tombstone_ttl_seconds
        An erasure tombstone's ``ttl`` is its erasure time plus this (see :data:`TOMBSTONE_TTL_SECONDS`).
    """

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        cooccurrence_table: str | None = None,
        events_table: str | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        max_delete_attempts: int = 10,
        tombstone_ttl_seconds: int = TOMBSTONE_TTL_SECONDS,
    ) -> None:
        self._client = client
        self.table = table
        self.cooccurrence_table = cooccurrence_table or None
        self.events = DynamoEventStore(client, events_table) if events_table else None
        self._clock_ms = clock_ms
        self._max_delete_attempts = max_delete_attempts
        self.tombstone_ttl_seconds = tombstone_ttl_seconds
        self._reader = ThreadPoolExecutor(max_workers=4, thread_name_prefix="profile-read")  # threads start on use
        self._projection = ", ".join(f"#a{i}" for i in range(len(RANKING_ATTRIBUTES)))
        self._projection_names = {f"#a{i}": name for i, name in enumerate(RANKING_ATTRIBUTES)}

    # ---- reads

    def load(self, user_id: str) -> Profile | None:
        """The whole profile, strongly consistent (the updater's read before a conditional write)."""
        response = self._call("get", user_id, self._client.get_item, TableName=self.table,
                              Key={"user_id": {"S": user_id}}, ConsistentRead=True)  # fmt: skip
        item = response.get("Item")
        return None if item is None else Profile.from_item(from_attribute_values(item))

    def load_for_ranking(self, user_id: str) -> Profile | None:
        """Only what re-ranking needs (a projection: no history, no dedupe set), eventually consistent."""
        response = self._call(
            "get", user_id, self._client.get_item, TableName=self.table, Key={"user_id": {"S": user_id}},
            ProjectionExpression=self._projection, ExpressionAttributeNames=self._projection_names,
        )  # fmt: skip
        item = response.get("Item")
        return None if item is None else Profile.from_item(from_attribute_values(item))

    get = load_for_ranking

    def get_async(self, user_id: str) -> Future[Profile | None]:
        """Start the ranking read now and collect it later (``.result()``).

        A GetItem takes milliseconds of network; started before the query photo is decoded and embedded,
        it is done by the time re-ranking needs it, so personalisation adds only the re-ranking itself.
        """
        return self._reader.submit(self.load_for_ranking, user_id)

    # ---- writes

    def save(
        self,
        profile: Profile,
        *,
        expected_version: int,
        pairs: Sequence[tuple[str, str]] = (),
        expires_at_s: int | None = None,
    ) -> None:
        """Write ``profile`` as version ``expected_version + 1`` if the stored one is still ``expected_version``.

        ``expires_at_s`` sets the table's ``ttl`` (erasure tombstones); without it the item has none, so a profile
        rebuilt over a tombstone never expires. Raises :class:`ProfileConflictError` when another writer got there
        first (re-read and retry).
        """
        item = profile.to_item()
        item["version"] = expected_version + 1
        if expires_at_s is not None:
            item["ttl"] = int(expires_at_s)
        put: dict[str, Any] = {"TableName": self.table, "Item": to_attribute_values(item)}
        if expected_version == 0:
            put["ConditionExpression"] = "attribute_not_exists(user_id)"
        else:
            put["ConditionExpression"] = "version = :expected"
            put["ExpressionAttributeValues"] = {":expected": {"N": str(expected_version)}}
        updates = self._pair_updates(pairs) if self.cooccurrence_table else []
        if updates:
            self._transact(profile.user_id, [{"Put": put}, *updates])
        else:
            try:
                self._client.put_item(**put)
            except ClientError as exc:
                if _code(exc) == "ConditionalCheckFailedException":
                    raise ProfileConflictError(
                        f"profile of {profile.user_id!r} is no longer at version {expected_version}"
                    ) from exc
                raise ProfileStoreError(f"put profile of {profile.user_id!r} failed: {_code(exc)}: {exc}") from exc
        profile.version = expected_version + 1

    def _pair_updates(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        limit = _MAX_TRANSACTION_ITEMS - 1
        if len(pairs) > limit:
            raise ValueError(f"{len(pairs)} co-occurrence pairs exceed one transaction ({limit}); lower cooc_partners")
        return [
            {
                "Update": {
                    "TableName": self.cooccurrence_table,
                    "Key": {"item_id": {"S": item_id}, "other_id": {"S": other}},
                    "UpdateExpression": "ADD n :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}},
                }
            }
            for item_id, other in pairs
        ]

    def _transact(self, user_id: str, items: list[dict[str, Any]]) -> None:
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if _code(exc) == "TransactionCanceledException":
                reasons = {r.get("Code", "") for r in exc.response.get("CancellationReasons", [])} - {"None", ""}
                if not reasons or reasons <= _RETRYABLE_CANCELLATIONS:
                    raise ProfileConflictError(
                        f"profile of {user_id!r} changed or was contended ({', '.join(sorted(reasons)) or 'cancelled'})"
                    ) from exc
            raise ProfileStoreError(f"profile transaction of {user_id!r} failed: {_code(exc)}: {exc}") from exc

    def delete(self, user_id: str) -> bool:
        """Erase the user's profile (privacy); returns True when there was something to erase.

        Leaves a tombstone (``erased_at``, a fresh ``version``) so that stream records of events
        older than the erasure cannot rebuild the profile; events after it start a new one. The
        tombstone expires (``ttl``) once no such record can arrive: see :data:`TOMBSTONE_TTL_SECONDS`.
        The user's raw events are deleted too when the store knows the events table. Co-occurrence
        counts hold no user identity and stay (see :mod:`catalens.cooccurrence`).
        """
        for _ in range(self._max_delete_attempts):
            current = self.load(user_id)
            erased_at = self._clock_ms()
            if current is not None:
                erased_at = max(erased_at, current.last_ms, current.erased_at_ms)
            tombstone = Profile.erased(user_id, erased_at_ms=erased_at)
            try:
                expires = erased_at // 1000 + self.tombstone_ttl_seconds
                self.save(tombstone, expected_version=0 if current is None else current.version, expires_at_s=expires)
            except ProfileConflictError:
                continue
            if self.events is not None:
                self.events.delete_user(user_id)
            return current is not None and not current.is_empty
        raise ProfileConflictError(f"profile of {user_id!r} kept changing while being erased; retry")

    def _call(self, operation: str, user_id: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except ClientError as exc:
            raise ProfileStoreError(f"{operation} profile of {user_id!r} failed: {_code(exc)}: {exc}") from exc


class DynamoCooccurrenceStore:
    """Item-to-item co-engagement counts; ``neighbours`` is the :class:`~catalens.ports.CooccurrenceSource`.

    ``neighbours`` reads at most ``read_limit`` rows of the item (a very popular item's row is
    sampled, not read whole) and returns the ``limit`` strongest as smoothed probabilities.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        prior: float = DEFAULT_PRIOR,
        limit: int = DEFAULT_NEIGHBOURS,
        read_limit: int = 500,
    ) -> None:
        self._client = client
        self.table = table
        self.prior = prior
        self.limit = limit
        self.read_limit = read_limit

    def neighbours(self, item_id: str) -> dict[str, float]:
        row: dict[str, float] = {}
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "item_id = :item",
            "ExpressionAttributeValues": {":item": {"S": item_id}},
            "ProjectionExpression": "other_id, n",
        }
        try:
            while len(row) < self.read_limit:
                response = self._client.query(**kwargs, Limit=self.read_limit - len(row))
                for entry in response.get("Items", []):
                    count = entry.get("n", {}).get("N")
                    if count is not None:  # a row with no numeric count (not written by ADD) contributes nothing
                        row[entry["other_id"]["S"]] = float(count)
                if "LastEvaluatedKey" not in response:
                    break
                kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        except ClientError as exc:
            raise ProfileStoreError(f"query co-occurrence of {item_id!r} failed: {_code(exc)}: {exc}") from exc
        return conditional_probabilities(row, prior=self.prior, limit=self.limit)

    def add(self, updates: Sequence[tuple[str, str]], amount: int = 1) -> None:
        """Non-transactional ``ADD`` of pair counts (tools and backfills; the updater writes pairs with the profile)."""
        for item_id, other in updates:
            self._client.update_item(
                TableName=self.table, Key={"item_id": {"S": item_id}, "other_id": {"S": other}},
                UpdateExpression="ADD n :amount", ExpressionAttributeValues={":amount": {"N": str(amount)}},
            )  # fmt: skip

    def count(self, item_id: str, other: str) -> float:
        response = self._client.get_item(
            TableName=self.table, Key={"item_id": {"S": item_id}, "other_id": {"S": other}}, ConsistentRead=True
        )
        return float(response.get("Item", {}).get("n", {}).get("N", 0))


class DynamoEventStore:
    """Writes shopper events (what the shop app does) and erases a user's events."""

    def __init__(self, client: Any, table: str, *, retention_days: int = 90) -> None:
        self._client = client
        self.table = table
        self.retention_days = retention_days

    def put(self, event: ShopperEvent) -> bool:
        """Write an event once; a repeated put of the same event key is a no-op (returns False)."""
        try:
            self._client.put_item(
                TableName=self.table, Item=to_attribute_values(event.to_item(retention_days=self.retention_days)),
                ConditionExpression="attribute_not_exists(event_key)",
            )  # fmt: skip
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise ProfileStoreError(f"put event {event.key!r} of {event.user_id!r} failed: {_code(exc)}") from exc
        return True

    def delete_user(self, user_id: str) -> int:
        """Delete every stored event of ``user_id``; returns how many were deleted."""
        deleted = 0
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "user_id = :user",
            "ExpressionAttributeValues": {":user": {"S": user_id}},
            "ProjectionExpression": "user_id, event_key",
        }
        while True:
            response = self._client.query(**kwargs)
            keys = response.get("Items", [])
            for start in range(0, len(keys), 25):
                pending = [{"DeleteRequest": {"Key": key}} for key in keys[start : start + 25]]
                for _ in range(8):
                    result = self._client.batch_write_item(RequestItems={self.table: pending})
                    pending = result.get("UnprocessedItems", {}).get(self.table, [])
                    if not pending:
                        break
                    time.sleep(0.05)
                if pending:
                    raise ProfileStoreError(f"could not delete all events of {user_id!r} (throttled); retry")
            deleted += len(keys)
            if "LastEvaluatedKey" not in response:
                return deleted
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def table_definitions(events: str, profiles: str, cooccurrence: str) -> dict[str, dict[str, Any]]:
    """``create_table`` arguments of the three tables (local stack and tests; template.yaml mirrors them).

    On-demand billing; the events table streams ``NEW_IMAGE``; the events and profiles tables expire items by their
    ``ttl`` attribute (``update_time_to_live`` after creation: see :func:`create_tables`).
    """

    def table(name: str, keys: list[tuple[str, str]], **extra: Any) -> dict[str, Any]:
        return {
            "TableName": name,
            "KeySchema": [{"AttributeName": key, "KeyType": kind} for key, kind in keys],
            "AttributeDefinitions": [{"AttributeName": key, "AttributeType": "S"} for key, _ in keys],
            "BillingMode": "PAY_PER_REQUEST",
            **extra,
        }

    return {
        events: table(
            events,
            [("user_id", "HASH"), ("event_key", "RANGE")],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
        ),
        profiles: table(profiles, [("user_id", "HASH")]),
        cooccurrence: table(cooccurrence, [("item_id", "HASH"), ("other_id", "RANGE")]),
    }


def create_tables(client: Any, *, events: str, profiles: str, cooccurrence: str) -> str:
    """Create the three tables (idempotent: existing ones are kept); returns the events table's stream ARN."""
    for name, definition in table_definitions(events, profiles, cooccurrence).items():
        try:
            client.create_table(**definition)
        except ClientError as exc:
            if _code(exc) != "ResourceInUseException":
                raise
        client.get_waiter("table_exists").wait(TableName=name)
    for name in (events, profiles):  # events expire after their retention; profiles' erasure tombstones too
        try:
            ttl = {"Enabled": True, "AttributeName": "ttl"}
            client.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        except ClientError as exc:
            if _code(exc) != "ValidationException":  # already enabled
                raise
    return client.describe_table(TableName=events)["Table"]["LatestStreamArn"]
