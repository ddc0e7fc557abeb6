"""``catalens smoke --stack NAME``: prove a deployed stack works end to end, then leave no trace.

Reads the stack's outputs (CloudFormation ``DescribeStacks``), fetches the API key's value, and walks the loop a
shop goes through: upload a photo to the catalog bucket → wait until a photo search finds it → write a click
event to the events table → wait until the profile function has built the shopper's profile → search as that
shopper, with a shopper token signed by the key in the stack's SecureString parameter (as the shop's backend signs
one) → delete the photo → wait until the item is gone → erase the shopper (``DELETE /users/{id}/profile``, with
the token) and delete every version of the photo. Prints one JSON document with each step's outcome and seconds; exits 1
if a step failed. Cleanup runs even after a failure (``--keep`` skips it, to look at what is left).

It talks to real AWS with the caller's credentials (``--profile``/``--region`` or the usual AWS variables); the
logic lives in :class:`SmokeTest`, whose clients, HTTP function, clock and sleep are injected for tests.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from catalens.errors import CatalensError

REQUIRED_OUTPUTS = (
    "ApiUrl",
    "ApiKeyId",
    "CatalogBucketName",
    "EventsTableName",
    "ProfilesTableName",
    "ShopperTokenParameterName",
)


class SmokeError(CatalensError):
    """A smoke-test step failed: the message says which and what was seen."""

    code = "smoke_failed"


class HttpResponse(NamedTuple):
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise SmokeError(
                f"the API answered {self.status} with a body that is not JSON: {self.body[:200]!r}"
            ) from exc


Http = Callable[[str, str, Mapping[str, str], bytes | None], HttpResponse]


def urllib_http(
    method: str, url: str, headers: Mapping[str, str], body: bytes | None, *, timeout: float = 30.0
) -> HttpResponse:
    """The real HTTP call (stdlib): 4xx/5xx come back as responses, not exceptions."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpResponse(response.status, response.read())
    except urllib.error.HTTPError as exc:
        return HttpResponse(exc.code, exc.read())


@dataclass(frozen=True)
class StackOutputs:
    """The deployed stack's outputs the smoke test needs."""

    api_url: str
    api_key_id: str
    catalog_bucket: str
    events_table: str
    profiles_table: str
    shopper_token_parameter: str

    @classmethod
    def from_describe_stacks(cls, response: Mapping[str, Any], stack: str) -> StackOutputs:
        stacks = response.get("Stacks") or []
        if not stacks:
            raise SmokeError(f"stack {stack!r} not found")
        status = stacks[0].get("StackStatus", "")
        if not status.endswith("_COMPLETE") or "ROLLBACK" in status or "DELETE" in status:
            raise SmokeError(f"stack {stack!r} is {status}, not deployed")
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        missing = [name for name in REQUIRED_OUTPUTS if not outputs.get(name)]
        if missing:
            raise SmokeError(f"stack {stack!r} has no outputs {', '.join(missing)} (is it a catalens stack?)")
        return cls(
            api_url=outputs["ApiUrl"].rstrip("/"),
            api_key_id=outputs["ApiKeyId"],
            catalog_bucket=outputs["CatalogBucketName"],
            events_table=outputs["EventsTableName"],
            profiles_table=outputs["ProfilesTableName"],
            shopper_token_parameter=outputs["ShopperTokenParameterName"],
        )


def smoke_photo(run_id: str, size: int = 512) -> bytes:
    """A JPEG unlike any catalog photo (coloured blocks seeded by the run id), so the search hit is ours."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(int(uuid.UUID(run_id).int % 2**32))
    blocks = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(blocks, "RGB").resize((size, size), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92)
    return out.getvalue()


@dataclass
class SmokeTest:
    """One smoke run against one stack (see the module docstring for the steps).

    Parameters
    ----------
    outputs, api_key:
        Where the stack is and the API key's value.
    token_key:
        The value of the stack's shopper-token parameter: the smoke test signs its shopper's tokens with it.
    s3, dynamodb:
        boto3 clients (``dynamodb`` is the low-level client).
    http:
        ``http(method, url, headers, body) -> HttpResponse``.
    timeout, poll:
        Seconds to wait for each asynchronous step (ingest, profile, delete) and between polls. A first upload
        to a cold stack includes Lambda cold starts (model load), hence the generous default.
    """

    outputs: StackOutputs
    api_key: str
    s3: Any
    dynamodb: Any
    http: Http
    photo: bytes
    token_key: str = ""
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timeout: float = 300.0
    poll: float = 2.0
    keep: bool = False
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def item_id(self) -> str:
        return f"catalens-smoke-{self.run_id[:8]}"

    @property
    def photo_key(self) -> str:
        return f"{self.item_id}.jpg"  # at the bucket root: the item id is the key without its extension

    @property
    def user_id(self) -> str:
        return f"catalens-smoke-user-{self.run_id[:8]}"

    # ---------------------------------------------------------------------------------------------------- running
    def run(self) -> dict[str, Any]:
        """All steps in order; stops at the first failure, then cleans up. Returns the JSON-able report."""
        ok = True
        try:
            for name, step in (
                ("health", self.check_health),
                ("upload", self.upload),
                ("searchable", self.wait_until_searchable),
                ("click_event", self.post_click),
                ("profile", self.wait_for_profile),
                ("personalized_search", self.search_as_shopper),
                ("delete", self.delete_photo),
                ("gone", self.wait_until_gone),
            ):
                if not self._step(name, step):
                    ok = False
                    break
        finally:
            if not self.keep:
                ok = self._step("cleanup", self.clean_up) and ok
        return {"ok": ok, "api_url": self.outputs.api_url, "item_id": self.item_id, "user_id": self.user_id,
                "steps": self.steps}  # fmt: skip

    def _step(self, name: str, step: Callable[[], dict[str, Any]]) -> bool:
        started = self.clock()
        try:
            detail = step()
        except (SmokeError, OSError) as exc:
            self.steps.append(
                {"step": name, "ok": False, "seconds": round(self.clock() - started, 2), "error": str(exc)}
            )
            return False
        except Exception as exc:  # boto3 ClientError and friends: report them, keep cleaning up
            error = f"{type(exc).__name__}: {exc}"
            self.steps.append({"step": name, "ok": False, "seconds": round(self.clock() - started, 2), "error": error})
            return False
        self.steps.append({"step": name, "ok": True, "seconds": round(self.clock() - started, 2), **detail})
        return True

    def wait_for(self, what: str, check: Callable[[], Any]) -> Any:
        """Poll ``check`` until it returns something other than None; SmokeError after ``timeout`` seconds."""
        deadline = self.clock() + self.timeout
        while True:
            found = check()
            if found is not None:
                return found
            if self.clock() >= deadline:
                raise SmokeError(f"timed out after {self.timeout:.0f} s waiting for {what}")
            self.sleep(self.poll)

    # ---------------------------------------------------------------------------------------------------- API
    def api(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
            headers: Mapping[str, str] | None = None, **query: str) -> HttpResponse:  # fmt: skip
        url = self.outputs.api_url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        sent = {"x-api-key": self.api_key, "Accept": "application/json", **(headers or {})}
        if content_type:
            sent["Content-Type"] = content_type
        return self.http(method, url, sent, body)

    def shopper_headers(self) -> dict[str, str]:
        """The smoke shopper's token, as the shop's backend would sign it (five minutes are plenty)."""
        from catalens.service.shopper_tokens import HEADER, mint

        if not self.token_key:
            raise SmokeError("no shopper-token key: the personalised steps need the stack's parameter value")
        return {HEADER: mint(self.user_id, self.token_key, ttl_seconds=300)}

    def search(self, headers: Mapping[str, str] | None = None, **query: str) -> dict[str, Any]:
        response = self.api("POST", "/search", self.photo, "image/jpeg", headers=headers, k="12", **query)
        if response.status != 200:
            raise SmokeError(f"POST /search answered {response.status}: {response.body[:300]!r}")
        return response.json()

    def hit(self, result: Mapping[str, Any]) -> tuple[int, Mapping[str, Any]] | None:
        for rank, hit in enumerate(result.get("hits", []), start=1):
            if hit.get("item_id") == self.item_id:
                return rank, hit
        return None

    # ---------------------------------------------------------------------------------------------------- steps
    def check_health(self) -> dict[str, Any]:
        response = self.api("GET", "/health")
        if response.status != 200:
            raise SmokeError(f"GET /health answered {response.status}: {response.body[:300]!r}")
        return {"health": response.json()}

    def upload(self) -> dict[str, Any]:
        self.s3.put_object(
            Bucket=self.outputs.catalog_bucket, Key=self.photo_key, Body=self.photo, ContentType="image/jpeg",
            Metadata={"title": "catalens smoke test", "category": "smoke-test"},
        )  # fmt: skip
        return {"bucket": self.outputs.catalog_bucket, "key": self.photo_key, "bytes": len(self.photo)}

    def wait_until_searchable(self) -> dict[str, Any]:
        def found() -> tuple[int, Mapping[str, Any]] | None:
            return self.hit(self.search())

        rank, hit = self.wait_for(f"{self.item_id} to appear in search results", found)
        return {"rank": rank, "score": hit.get("score")}

    def post_click(self) -> dict[str, Any]:
        from catalens.adapters.dynamodb import DynamoEventStore
        from catalens.profiles.events import ShopperEvent

        event = ShopperEvent.new(self.user_id, "click", self.item_id, ts_ms=int(time.time() * 1000))
        DynamoEventStore(self.dynamodb, self.outputs.events_table, retention_days=1).put(event)
        return {"table": self.outputs.events_table, "event_key": event.key}

    def wait_for_profile(self) -> dict[str, Any]:
        from catalens.adapters.dynamodb import DynamoProfileStore

        store = DynamoProfileStore(self.dynamodb, self.outputs.profiles_table)

        def built() -> Any:
            profile = store.load(self.user_id)
            return None if profile is None or profile.is_empty else profile

        profile = self.wait_for(f"the profile of {self.user_id}", built)
        return {"events": dict(profile.counts), "version": profile.version}

    def search_as_shopper(self) -> dict[str, Any]:
        result = self.search(self.shopper_headers(), explain="true")
        found = self.hit(result)
        if found is None:
            raise SmokeError(f"{self.item_id} is missing from the shopper's results")
        # informational: 401 unless the stack was deployed with TrustUnsignedUserIds=true
        unsigned = self.api("POST", "/search", self.photo, "image/jpeg", k="1", user_id=self.user_id).status
        return {"rank": found[0], "personalized": result.get("personalized"), "unsigned_user_id_status": unsigned}

    def delete_photo(self) -> dict[str, Any]:
        self.s3.delete_object(Bucket=self.outputs.catalog_bucket, Key=self.photo_key)
        return {"key": self.photo_key}

    def wait_until_gone(self) -> dict[str, Any]:
        path = f"/items/{urllib.parse.quote(self.item_id, safe='')}"

        def gone() -> bool | None:
            status = self.api("GET", path).status
            if status not in (200, 404):
                raise SmokeError(f"GET {path} answered {status}")
            return True if status == 404 else None

        self.wait_for(f"{self.item_id} to leave the index", gone)
        return {}

    def clean_up(self) -> dict[str, Any]:
        """Erase the shopper through the API (profile and events), then every version of the photo."""
        path = f"/users/{urllib.parse.quote(self.user_id, safe='')}/profile"
        erase = self.api("DELETE", path, headers=self.shopper_headers() if self.token_key else None)
        from catalens.adapters.dynamodb import DynamoEventStore

        events_left = DynamoEventStore(self.dynamodb, self.outputs.events_table).delete_user(self.user_id)
        versions = self.s3.list_object_versions(Bucket=self.outputs.catalog_bucket, Prefix=self.photo_key)
        doomed = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in versions.get("Versions", []) + versions.get("DeleteMarkers", [])
            if v["Key"] == self.photo_key
        ]
        for version in doomed:  # one by one: few versions, and moto's DeleteObjects trips over delete markers
            self.s3.delete_object(Bucket=self.outputs.catalog_bucket, **version)
        if erase.status != 200:
            raise SmokeError(f"DELETE /users/{self.user_id}/profile answered {erase.status}: {erase.body[:300]!r}")
        return {
            "profile_erased": erase.json(),
            "events_deleted_directly": events_left,
            "photo_versions_deleted": len(doomed),
        }


# -------------------------------------------------------------------------------------------------------- command
def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser("smoke", help="end-to-end smoke test of a deployed stack (upload, search, click, delete)")
    parser.add_argument("--stack", required=True, help="CloudFormation stack name (samconfig: catalens)")
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS CLI's)")
    parser.add_argument("--profile", default=None, help="AWS named profile")
    parser.add_argument("--photo", type=Path, default=None, help="a JPEG to upload (default: a generated one)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each asynchronous step")
    parser.add_argument("--keep", action="store_true", help="skip the cleanup (leave the photo, event and profile)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from catalens.adapters.ssm import read_secure_parameter

    try:
        session = boto3.Session(profile_name=args.profile, region_name=args.region)
        described = session.client("cloudformation").describe_stacks(StackName=args.stack)
        outputs = StackOutputs.from_describe_stacks(described, args.stack)
        api_key = session.client("apigateway").get_api_key(apiKey=outputs.api_key_id, includeValue=True)["value"]
        token_key = read_secure_parameter(session.client("ssm"), outputs.shopper_token_parameter)
    except (BotoCoreError, ClientError) as exc:
        raise SmokeError(f"cannot read stack {args.stack!r}: {exc}") from exc
    run_id = str(uuid.uuid4())
    photo = args.photo.read_bytes() if args.photo else smoke_photo(run_id)
    test = SmokeTest(
        outputs=outputs, api_key=api_key, s3=session.client("s3"), dynamodb=session.client("dynamodb"),
        http=urllib_http, photo=photo, token_key=token_key, run_id=run_id, timeout=args.timeout, keep=args.keep,
    )  # fmt: skip
    report = test.run()
    print(json.dumps({"stack": args.stack, **report}, indent=2, default=str))
    if not report["ok"]:
        failed = next((s for s in report["steps"] if not s["ok"]), {})
        print(f"catalens smoke: {failed.get('step')}: {failed.get('error')}", file=sys.stderr)
    return 0 if report["ok"] else 1
