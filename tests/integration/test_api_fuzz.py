"""Fuzz the search API from its OpenAPI document (schemathesis) and find no 5xx.

The real handler runs in-process behind a tiny WSGI adapter that does what API Gateway (REST, proxy integration)
does: binary media types of template.yaml arrive base64-encoded with ``isBase64Encoded``, the path stays
percent-encoded as sent while ``pathParameters`` carry the decoded values, headers and query strings come single- and
multi-valued. Schemathesis generates valid and invalid requests for every
operation (bounded by ``max_examples``, deterministic so CI is repeatable).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

# Semantic rules the document cannot state (the base64 must be an image, exactly one of image/item_id, ids that
# exist) make schema-valid requests fail with 4xx, and lenient parsing lets some schema-invalid ones pass: both
# conformance checks are off. The API key is checked by API Gateway (usage plan), never by the function, so the
# auth checks (the key header is the only required header) are off too. Every other check (documented status
# codes, response schemas, content types, 405 for undeclared methods) runs.
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
)

from catalens.composition import index_store
from catalens.embedder import Embedder
from catalens.index.records import ItemRecord
from catalens.settings import Settings
from catalens_tools.local.gateway import Route, match_route, percent_encoded
from tests.unit.imagefactory import encode, photo

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = json.loads((REPO / "shared" / "catalens" / "data" / "openapi.json").read_text())
BINARY_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "multipart/form-data")  # as in template.yaml

ROUTES = [Route(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item]
schema = schemathesis.openapi.from_dict(DOCUMENT)
EXCLUDED_CHECKS = [negative_data_rejection, positive_data_acceptance, ignored_auth, missing_required_header]


@schemathesis.serializer("image/jpeg", "image/png", "image/webp")
def binary_image(ctx: Any, value: Any) -> dict[str, Any]:
    """Generated image bodies are arbitrary bytes or text; send them as they are."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    return {"data": value if isinstance(value, bytes) else json.dumps(value).encode()}


def api_gateway(handler: Callable[[dict, Any], dict], context: Any) -> Callable:
    """A WSGI app that turns each request into a REST proxy event, as API Gateway does, and back."""

    def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        headers = {
            key[5:].replace("_", "-").title(): value for key, value in environ.items() if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        media_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
        binary = media_type in BINARY_MEDIA_TYPES
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        path = percent_encoded(environ.get("RAW_URI", "/").split("?", 1)[0])
        route = match_route(ROUTES, environ["REQUEST_METHOD"], path)
        event = {
            "resource": route[0].resource if route else path,
            "path": path,
            "httpMethod": environ["REQUEST_METHOD"],
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
            "multiValueQueryStringParameters": query or None,
            "pathParameters": (route[1] or None) if route else None,
            "requestContext": {"stage": "prod", "requestId": "fuzz", "httpMethod": environ["REQUEST_METHOD"]},
            "body": (base64.b64encode(raw).decode() if binary else raw.decode("utf-8", "replace")) if raw else None,
            "isBase64Encoded": binary and bool(raw),
        }
        response = handler(event, context)
        body = response.get("body") or ""
        data = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
        out_headers = [(k, ", ".join(v)) for k, v in (response.get("multiValueHeaders") or {}).items()]
        out_headers += list((response.get("headers") or {}).items())
        start_response(f"{response['statusCode']} X", out_headers)
        return [data]

    return app


@pytest.fixture
def gateway(function_env: Any, model_dir: Path, load_function: Any, lambda_context: Any) -> Callable:
    """The search function (template resources and environment) over a small index (three items, one of them id
    ``sku-1``), behind the adapter."""
    env = function_env("SearchFunction", CATALENS_MODEL_DIR=str(model_dir))
    s3 = boto3.client("s3", region_name="us-east-1")
    embedder = Embedder.from_dir(model_dir)
    store = index_store(Settings(index_bucket=env["INDEX_BUCKET"], index_prefix=env["INDEX_PREFIX"]), s3)
    vectors = embedder.embed_images([encode(photo(160, 120, seed=s)) for s in range(3)])
    for i, vector in enumerate(vectors):
        fields = {"title": f"t{i}", "price": float(i), "category": "c", "brand": "b"}
        store.write_item(
            ItemRecord(f"sku-{i}", vector, fields, f"sku-{i}.jpg", "e", f"{i + 1:X}"),
            model_fingerprint=embedder.fingerprint,
        )
    module = load_function("search")

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        response = module.lambda_handler(event, context)
        if module.service.query_samples is not None:  # sampled photo queries are written inside the test's moto
            module.service.query_samples.flush(timeout=30)
        return response

    return api_gateway(handler, lambda_context)


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_request_gets_a_5xx(case: schemathesis.Case, gateway: Callable) -> None:
    response = case.call(app=gateway)
    assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}"
    body = response.json()
    if response.status_code >= 400:
        assert set(body) == {"code", "message"}, body
        assert body["code"]
        assert body["message"]
    case.validate_response(response, excluded_checks=EXCLUDED_CHECKS)
