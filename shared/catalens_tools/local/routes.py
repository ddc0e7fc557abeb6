"""The local-only endpoints behind ``/local/*`` that the web page uses beside the search API.

They stand in for what a shop's own systems do on AWS — a merchant tool writing to the catalog bucket, a shop app
writing shopper events to the events table — and go through the same emulated AWS APIs, so everything downstream
(S3 notification → SQS → ingest; table → stream → profile function) is the real path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from catalens.service.ingest import item_id_for_key
from catalens.settings import Settings
from catalens_tools.local.catalog import CONTENT_TYPES, IMAGE_SUFFIXES, metadata_for, safe_name
from catalens_tools.local.gateway import HttpResponse, Request, json_response

MAX_UPLOAD_BYTES = Settings().max_image_bytes  # what ingest will read: a larger photo would only fail there


def error(status: int, code: str, message: str) -> HttpResponse:
    return json_response(status, {"code": code, "message": message})


@dataclass
class LocalResources:
    """The emulated resources the local routes touch, and the stack's hooks for status and compaction."""

    s3: Any
    ddb: Any
    catalog_bucket: str
    catalog_prefix: str
    events_table: str
    profiles_table: str
    status: Callable[[], dict[str, Any]]
    compact: Callable[[], None]
    users: tuple[str, ...] = ("alice", "bob", "carol", "dave")
    facets: Callable[[], dict[str, list[str]]] | None = None
    shopper_token_key: str = ""  # the key of the stack's shopper-token parameter (the shop's backend holds it)


class LocalRoutes:
    """``(method, path regex, handler, needs API key)`` rows for :class:`~catalens_tools.local.gateway.Gateway`."""

    def __init__(self, resources: LocalResources) -> None:
        self.r = resources

    def table(self) -> list[tuple[str, str, Callable[..., HttpResponse], bool]]:
        return [
            ("GET", "/local/config", self.config, False),
            ("GET", "/local/status", self.status, False),
            ("GET", "/local/catalog", self.list_catalog, True),
            ("PUT", "/local/catalog/(?P<name>[^/]+)", self.put_photo, True),
            ("DELETE", "/local/catalog/(?P<name>[^/]+)", self.delete_photo, True),
            ("GET", "/local/photos/(?P<key>.+)", self.photo, False),
            ("POST", "/local/events", self.put_event, True),
            ("GET", "/local/profile/(?P<user>[^/]+)", self.profile, True),
            ("GET", "/local/shopper-token", self.shopper_token, True),
            ("POST", "/local/compact", self.compact, True),
        ]

    # ---------------------------------------------------------------------------------------------------- page
    def config(self, request: Request) -> HttpResponse:
        facets = self.r.facets() if self.r.facets else {}
        return json_response(
            200,
            {
                "users": list(self.r.users),
                "catalog_bucket": self.r.catalog_bucket,
                "catalog_prefix": self.r.catalog_prefix,
                "categories": facets.get("category", []),
                "brands": facets.get("brand", []),
            },
        )

    def status(self, request: Request) -> HttpResponse:
        return json_response(200, self.r.status())

    def compact(self, request: Request) -> HttpResponse:
        self.r.compact()
        return json_response(202, {"started": True})

    # ------------------------------------------------------------------------------------------------- catalog
    def list_catalog(self, request: Request) -> HttpResponse:
        items = []
        paginator = self.r.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.r.catalog_bucket, Prefix=self.r.catalog_prefix):
            for entry in page.get("Contents", []):
                key = entry["Key"]
                name = key[len(self.r.catalog_prefix) :]
                if "." + name.rsplit(".", 1)[-1].lower() not in IMAGE_SUFFIXES:
                    continue
                items.append(
                    {
                        "key": key,
                        "name": name,
                        "item_id": item_id_for_key(key, self.r.catalog_prefix),
                        "size": entry["Size"],
                        "last_modified": entry["LastModified"].timestamp(),
                    }
                )
        items.sort(key=lambda item: -item["last_modified"])
        return json_response(200, {"items": items, "bucket": self.r.catalog_bucket})

    def put_photo(self, request: Request, name: str) -> HttpResponse:
        name = safe_name(unquote(name))
        suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if suffix not in IMAGE_SUFFIXES:
            return error(
                400, "bad_name", f"{name!r} needs an image file extension ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        if not request.body:
            return error(400, "empty_upload", "the request body (the photo) is empty")
        if len(request.body) > MAX_UPLOAD_BYTES:
            return error(
                413, "too_large", f"the photo is {len(request.body)} bytes; the local limit is {MAX_UPLOAD_BYTES}"
            )
        fields = {k: v for k, v in request.params.items() if v != ""}
        metadata = metadata_for(fields) or {}
        key = self.r.catalog_prefix + name
        if fields and not metadata:  # too big for metadata: the sidecar goes first, as catalens upload does
            self.r.s3.put_object(
                Bucket=self.r.catalog_bucket,
                Key=key + ".json",
                Body=json.dumps(fields).encode(),
                ContentType="application/json",
            )
        response = self.r.s3.put_object(
            Bucket=self.r.catalog_bucket,
            Key=key,
            Body=request.body,
            ContentType=CONTENT_TYPES.get(suffix, "application/octet-stream"),
            Metadata=metadata,
        )
        return json_response(
            201, {"key": key, "item_id": item_id_for_key(key, self.r.catalog_prefix), "etag": response.get("ETag")}
        )

    def delete_photo(self, request: Request, name: str) -> HttpResponse:
        key = self.r.catalog_prefix + safe_name(unquote(name))
        self.r.s3.delete_object(Bucket=self.r.catalog_bucket, Key=key)
        return json_response(200, {"key": key, "deleted": True})

    def photo(self, request: Request, key: str) -> HttpResponse:
        key = unquote(key)
        if not key.startswith(self.r.catalog_prefix):
            return error(404, "not_found", f"no photo {key!r}")
        try:
            response = self.r.s3.get_object(Bucket=self.r.catalog_bucket, Key=key)
        except self.r.s3.exceptions.NoSuchKey:
            return error(404, "not_found", f"no photo {key!r}")
        body = response["Body"].read()
        headers = [
            ("Content-Type", response.get("ContentType") or "application/octet-stream"),
            ("Cache-Control", "max-age=60"),
        ]
        return HttpResponse(200, headers, body)

    # ------------------------------------------------------------------------------------------------- shopper
    def put_event(self, request: Request) -> HttpResponse:
        """Write one shopper event to the events table, as a shop app would (the stream does the rest)."""
        from catalens.adapters.dynamodb import DynamoEventStore
        from catalens.profiles.events import ShopperEvent, ShopperEventError

        try:
            body = request.json()
        except ValueError as exc:
            return error(400, "invalid_json", f"the body is not JSON: {exc}")
        if not isinstance(body, dict):
            return error(400, "invalid_json", "the body must be a JSON object")
        optional = {name: body[name] for name in ("query_id", "dwell_ms") if body.get(name) is not None}
        try:
            event = ShopperEvent.new(
                str(body.get("user_id", "")),
                str(body.get("type", "")),
                str(body.get("item_id", "")),
                ts_ms=int(body.get("ts_ms") or time.time() * 1000),
                **optional,
            )
        except (ShopperEventError, ValueError, TypeError) as exc:
            return error(400, getattr(exc, "code", "invalid_event"), str(exc))
        DynamoEventStore(self.r.ddb, self.r.events_table).put(event)
        return json_response(201, {"user_id": event.user_id, "event_key": event.key, "type": event.type})

    def shopper_token(self, request: Request) -> HttpResponse:
        """A shopper token for ``?user=`` (and ``&ttl=`` seconds), signed as the shop's backend would sign it.

        On a real shop the backend signs only for the shopper its own session authenticated; this demo backend
        signs for whichever demo shopper the page selects, behind the API key, on 127.0.0.1 only.
        """
        from catalens.service.shopper_tokens import DEFAULT_TTL_SECONDS, HEADER, MAX_TTL_SECONDS, mint

        user = request.params.get("user", "")
        if not self.r.shopper_token_key:
            return error(501, "not_configured", "this stack has no shopper-token key")
        try:
            ttl = int(request.params.get("ttl") or DEFAULT_TTL_SECONDS)
            now = int(time.time())
            token = mint(user, self.r.shopper_token_key, ttl_seconds=ttl, now=now)
        except ValueError as exc:
            message = f"{exc} (user: 1 to 512 characters; ttl: 1 to {MAX_TTL_SECONDS} seconds)"
            return error(400, "invalid_parameter", message)
        return json_response(200, {"user_id": user, "token": token, "header": HEADER, "expires_at": now + ttl})

    def profile(self, request: Request, user: str) -> HttpResponse:
        """A readable summary of a shopper's profile (the page shows how events change it)."""
        from catalens.adapters.dynamodb import DynamoProfileStore

        profile = DynamoProfileStore(self.r.ddb, self.r.profiles_table).load(unquote(user))
        if profile is None or profile.is_empty:
            return json_response(200, {"user_id": unquote(user), "exists": False})

        def top(weights: dict[str, float]) -> dict[str, float]:
            return {k: round(v, 2) for k, v in sorted(weights.items(), key=lambda kv: -kv[1])[:3] if v > 0}

        summary = {
            "events": dict(profile.counts),
            "confidence": round(profile.confidence(), 2),
            "categories": top(profile.category),
            "brands": top(profile.brand),
            "recent": [r.item_id for r in profile.recent[-5:]],
        }
        return json_response(200, {"user_id": profile.user_id, "exists": True, "summary": summary})
