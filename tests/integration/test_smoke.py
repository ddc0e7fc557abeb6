"""``catalens smoke`` against moto: stack outputs from a real (moto) CloudFormation stack, the template's own buckets
and tables, and a fake deployment standing in for the Lambdas and the API.

The fake runs "the system" whenever the smoke test sleeps between polls: it indexes what the catalog bucket holds
and applies new shopper events with the real profile updater and DynamoDB store. It answers the API as the search
function would (exact-bytes match stands in for visual similarity), personalising and erasing only for the user of a
valid shopper token (the real check, with the key of the template's parameter in moto). What is tested is the smoke
test's own logic: outputs, the order of steps, polling and timeouts, and that cleanup leaves nothing behind, even
after a failure.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import numpy as np
import pytest
from boto3.dynamodb.types import TypeDeserializer

from catalens.adapters.dynamodb import DynamoProfileStore
from catalens.profiles import ProfileUpdater, event_from_item
from catalens.service.shopper_tokens import ShopperAuth, ShopperTokenError, SigningKeys
from catalens_tools.commands.smoke import HttpResponse, SmokeError, SmokeTest, StackOutputs, smoke_photo

REGION = "us-east-1"
API_URL = "https://abc123.execute-api.us-east-1.amazonaws.com/prod"


class FakeDeployment:
    """The deployed functions, run on each poll: catalog bucket → index, events table → profiles; and the API."""

    def __init__(self, stack: Any, api_key: str, *, ingest: bool = True) -> None:
        self.names = stack.names
        self.api_key = api_key
        self.ingest = ingest
        self.s3 = boto3.client("s3", region_name=REGION)
        self.ddb = boto3.client("dynamodb", region_name=REGION)
        self.index: dict[str, bytes] = {}
        self.profiles = DynamoProfileStore(
            self.ddb, self.names["ProfilesTable"], events_table=self.names["EventsTable"]
        )
        self.updater = ProfileUpdater(store=self.profiles, lookup=self.lookup, sleep=lambda _: None)
        self.applied: set[str] = set()
        self.now = 0.0
        self.requests: list[tuple[str, str]] = []
        ssm = boto3.client("ssm", region_name=REGION)
        key = ssm.get_parameter(Name=self.names["ShopperTokenKeys"], WithDecryption=True)["Parameter"]["Value"]
        keys = SigningKeys.parse(key)
        self.shoppers = ShopperAuth(lambda: keys)

    def lookup(self, item_id: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        return (np.ones(4, dtype=np.float32) / 2, {"category": "smoke-test"}) if item_id in self.index else None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.ingest:
            listing = self.s3.list_objects_v2(Bucket=self.names["CatalogBucket"]).get("Contents", [])
            self.index = {
                obj["Key"].rsplit(".", 1)[0]: self.s3.get_object(Bucket=self.names["CatalogBucket"], Key=obj["Key"])[
                    "Body"
                ].read()
                for obj in listing
            }
        deserialize = TypeDeserializer().deserialize
        for item in self.ddb.scan(TableName=self.names["EventsTable"])["Items"]:
            event = event_from_item({k: deserialize(v) for k, v in item.items()})
            if event.key not in self.applied:
                self.applied.add(event.key)
                self.updater.handle(event)

    def http(self, method: str, url: str, headers: Any, body: bytes | None) -> HttpResponse:
        assert url.startswith(API_URL)
        parts = urlsplit(url)
        path = parts.path[len("/prod") :]
        self.requests.append((method, path))
        if headers.get("x-api-key") != self.api_key:
            return HttpResponse(403, b'{"message": "Forbidden"}')
        if (method, path) == ("GET", "/health"):
            return self.json({"items": len(self.index)})
        lower = {k.lower(): v for k, v in headers.items()}
        if (method, path) == ("POST", "/search"):
            assert headers["Content-Type"] == "image/jpeg"
            query = parse_qs(parts.query)
            try:
                user = self.shoppers.user_for(lower.get("x-shopper-token"), query.get("user_id", [None])[0])
            except ShopperTokenError as exc:
                return HttpResponse(401, json.dumps({"code": exc.code, "message": str(exc)}).encode())
            hits = [{"item_id": item, "score": 1.0} for item, data in self.index.items() if data == body]
            personalized = user is not None and self.profiles.load(user) is not None
            return self.json({"hits": hits, "personalized": personalized})
        if method == "GET" and path.startswith("/items/"):
            item = unquote(path[len("/items/") :])
            return (
                self.json({"item_id": item}) if item in self.index else HttpResponse(404, b'{"code": "unknown_item"}')
            )
        if method == "DELETE" and path.startswith("/users/") and path.endswith("/profile"):
            user = unquote(path[len("/users/") : -len("/profile")])
            try:
                self.shoppers.erasable(user, lower)
            except ShopperTokenError as exc:
                return HttpResponse(401, json.dumps({"code": exc.code, "message": str(exc)}).encode())
            return self.json({"user_id": user, "deleted": self.profiles.delete(user)})
        return HttpResponse(403, b'{"message": "Missing Authentication Token"}')

    @staticmethod
    def json(payload: Any) -> HttpResponse:
        return HttpResponse(200, json.dumps(payload).encode())


@pytest.fixture
def deployed(template_stack: Any) -> dict[str, Any]:
    """A moto CloudFormation stack whose outputs name the template's resources, and an API key."""
    apigateway = boto3.client("apigateway", region_name=REGION)
    key = apigateway.create_api_key(name="smoke", value="k" * 40, enabled=True)
    names = template_stack.names
    # The fake deployment reads the bucket itself instead of the S3 -> SQS path; and moto's notification code
    # fails on deleting a delete marker (which the smoke cleanup does), so the notification is switched off here.
    boto3.client("s3", region_name=REGION).put_bucket_notification_configuration(
        Bucket=names["CatalogBucket"], NotificationConfiguration={}
    )
    outputs = {
        "ApiUrl": API_URL,
        "ApiKeyId": key["id"],
        "CatalogBucketName": names["CatalogBucket"],
        "IndexBucketName": names["IndexBucket"],
        "EventsTableName": names["EventsTable"],
        "ProfilesTableName": names["ProfilesTable"],
        "ShopperTokenParameterName": names["ShopperTokenKeys"],
    }
    body = {
        "Resources": {"Marker": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {name: {"Value": value} for name, value in outputs.items()},
    }
    boto3.client("cloudformation", region_name=REGION).create_stack(StackName="catalens", TemplateBody=json.dumps(body))
    return {"stack": template_stack, "api_key_id": key["id"]}


def smoke_for(
    deployed: dict[str, Any], *, ingest: bool = True, timeout: float = 60.0
) -> tuple[SmokeTest, FakeDeployment]:
    session = boto3.Session(region_name=REGION)
    outputs = StackOutputs.from_describe_stacks(
        session.client("cloudformation").describe_stacks(StackName="catalens"), "catalens"
    )
    api_key = session.client("apigateway").get_api_key(apiKey=outputs.api_key_id, includeValue=True)["value"]
    ssm = session.client("ssm")
    token_key = ssm.get_parameter(Name=outputs.shopper_token_parameter, WithDecryption=True)["Parameter"]["Value"]
    fake = FakeDeployment(deployed["stack"], api_key, ingest=ingest)
    run_id = "00000000-0000-4000-8000-000000000001"
    test = SmokeTest(
        outputs=outputs, api_key=api_key, s3=session.client("s3"), dynamodb=session.client("dynamodb"),
        http=fake.http, photo=smoke_photo(run_id), token_key=token_key, run_id=run_id, timeout=timeout, poll=2.0,
        clock=fake.clock, sleep=fake.sleep,
    )  # fmt: skip
    return test, fake


def leftovers(test: SmokeTest, deployed: dict[str, Any]) -> dict[str, Any]:
    names = deployed["stack"].names
    s3, ddb = boto3.client("s3", region_name=REGION), boto3.client("dynamodb", region_name=REGION)
    versions = s3.list_object_versions(Bucket=names["CatalogBucket"])
    events = ddb.scan(TableName=names["EventsTable"])["Items"]
    profile = DynamoProfileStore(ddb, names["ProfilesTable"]).load(test.user_id)
    return {
        "photo_versions": len(versions.get("Versions", [])) + len(versions.get("DeleteMarkers", [])),
        "events": len(events),
        "profile_active": profile is not None and not profile.is_empty,
    }


def test_stack_outputs_come_from_describe_stacks(deployed: dict[str, Any]) -> None:
    response = boto3.client("cloudformation", region_name=REGION).describe_stacks(StackName="catalens")
    outputs = StackOutputs.from_describe_stacks(response, "catalens")
    assert outputs.api_url == API_URL
    assert outputs.api_key_id == deployed["api_key_id"]
    assert outputs.catalog_bucket == deployed["stack"].names["CatalogBucket"]


def test_a_working_stack_passes_every_step_and_is_left_clean(deployed: dict[str, Any]) -> None:
    test, fake = smoke_for(deployed)
    report = test.run()

    assert report["ok"], [s for s in report["steps"] if not s["ok"]]
    assert [s["step"] for s in report["steps"]] == [
        "health", "upload", "searchable", "click_event", "profile", "personalized_search", "delete", "gone", "cleanup",
    ]  # fmt: skip
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["searchable"]["rank"] == 1
    assert steps["searchable"]["seconds"] > 0  # it had to wait for "ingest"
    assert steps["profile"]["events"] == {"click": 1}
    assert steps["personalized_search"]["personalized"] is True
    assert steps["personalized_search"]["unsigned_user_id_status"] == 401  # a bare user_id is refused
    assert steps["cleanup"]["profile_erased"]["deleted"] is True
    assert ("DELETE", f"/users/{test.user_id}/profile") in fake.requests
    assert leftovers(test, deployed) == {"photo_versions": 0, "events": 0, "profile_active": False}


def test_a_photo_that_never_becomes_searchable_fails_the_run_and_still_cleans_up(deployed: dict[str, Any]) -> None:
    test, _ = smoke_for(deployed, ingest=False, timeout=10.0)
    report = test.run()

    assert report["ok"] is False
    failed = [s for s in report["steps"] if not s["ok"]]
    assert [s["step"] for s in failed] == ["searchable"]
    assert "timed out after 10 s" in failed[0]["error"]
    assert report["steps"][-1]["step"] == "cleanup"
    assert report["steps"][-1]["ok"] is True
    assert leftovers(test, deployed)["photo_versions"] == 0


def test_a_wrong_api_key_fails_at_the_first_request(deployed: dict[str, Any]) -> None:
    test, _ = smoke_for(deployed)
    test.api_key = "wrong"
    report = test.run()
    assert report["ok"] is False
    assert report["steps"][0]["step"] == "health"
    assert "403" in report["steps"][0]["error"]


@pytest.mark.parametrize(
    ("stacks", "message"),
    [
        ([], "not found"),
        ([{"StackStatus": "ROLLBACK_COMPLETE", "Outputs": []}], "ROLLBACK_COMPLETE, not deployed"),
        ([{"StackStatus": "CREATE_COMPLETE", "Outputs": [{"OutputKey": "ApiUrl", "OutputValue": "https://x"}]}],
         "no outputs ApiKeyId, CatalogBucketName"),
    ],
)  # fmt: skip
def test_stack_outputs_name_what_is_wrong(stacks: list, message: str) -> None:
    with pytest.raises(SmokeError, match=message):
        StackOutputs.from_describe_stacks({"Stacks": stacks}, "shop")


def test_without_the_token_key_the_personalised_search_fails_and_erasure_is_refused(deployed: dict[str, Any]) -> None:
    test, _ = smoke_for(deployed)
    test.token_key = ""
    report = test.run()
    failed = {s["step"]: s for s in report["steps"] if not s["ok"]}
    assert set(failed) == {"personalized_search", "cleanup"}
    assert "no shopper-token key" in failed["personalized_search"]["error"]
    assert "401" in failed["cleanup"]["error"]  # DELETE /users/{id}/profile without a token
