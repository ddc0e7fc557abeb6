"""The local gateway's translation between HTTP and API Gateway's REST proxy events (no sockets)."""

from __future__ import annotations

import base64
import json

import pytest

from catalens.local.gateway import (
    ApiConfig,
    Gateway,
    Request,
    Route,
    is_binary_media_type,
    match_route,
    proxy_response,
    rest_event,
)

ROUTES = [
    Route("POST", "/search"),
    Route("GET", "/items/{id}"),
    Route("GET", "/items/{id}/similar"),
    Route("GET", "/health", api_key_required=False),
    Route("DELETE", "/users/{id}/profile"),
]


def config() -> ApiConfig:
    return ApiConfig(routes=ROUTES, binary_media_types=["image~1*", "multipart/form-data"], api_key="k3y")


def request(method: str, path: str, *, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> Request:
    path, _, query = path.partition("?")
    return Request(method, path, query, headers or [], body, "127.0.0.1")


@pytest.mark.parametrize(
    ("method", "path", "resource", "params"),
    [
        ("GET", "/items/a%20b", "/items/{id}", {"id": "a b"}),
        ("GET", "/items/x/similar", "/items/{id}/similar", {"id": "x"}),
        ("POST", "/search", "/search", {}),
        ("DELETE", "/users/u1/profile", "/users/{id}/profile", {"id": "u1"}),
    ],
)
def test_match_route_picks_the_resource_and_decodes_parameters(
    method: str, path: str, resource: str, params: dict[str, str]
) -> None:
    found = match_route(ROUTES, method, path)
    assert found is not None
    assert found[0].resource == resource
    assert found[1] == params


def test_match_route_misses_wrong_method_and_unknown_path() -> None:
    assert match_route(ROUTES, "GET", "/search") is None
    assert match_route(ROUTES, "GET", "/items") is None
    assert match_route(ROUTES, "GET", "/items/a/b/c") is None


def test_literal_segment_beats_parameter_and_greedy_proxy() -> None:
    routes = [Route("ANY", "/{proxy+}"), Route("GET", "/items/{id}"), Route("GET", "/items/special")]
    assert match_route(routes, "GET", "/items/special")[0].resource == "/items/special"
    assert match_route(routes, "GET", "/items/other")[0].resource == "/items/{id}"
    assert match_route(routes, "GET", "/a/b")[1] == {"proxy": "a/b"}


def test_binary_media_types_accept_wildcards_and_the_template_escape() -> None:
    assert is_binary_media_type("image/jpeg", ["image~1*"])
    assert is_binary_media_type("multipart/form-data; boundary=x", ["multipart/form-data"])
    assert not is_binary_media_type("application/json", ["image/*"])
    assert not is_binary_media_type(None, ["*/*"])


def test_rest_event_base64_encodes_a_binary_body() -> None:
    body = b"\xff\xd8\xff\x00binary"
    route, params = match_route(ROUTES, "POST", "/search")
    event = rest_event(
        method="POST",
        path="/search",
        query="k=5&category=a&category=b",
        headers=[("Content-Type", "image/jpeg"), ("x-api-key", "k3y"), ("Accept", "a"), ("Accept", "b")],
        body=body,
        route=route,
        path_params=params,
        config=config(),
    )
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body
    assert event["resource"] == "/search"
    assert event["httpMethod"] == "POST"
    assert event["queryStringParameters"] == {"k": "5", "category": "b"}
    assert event["multiValueQueryStringParameters"]["category"] == ["a", "b"]
    assert event["headers"]["Accept"] == "b"
    assert event["multiValueHeaders"]["Accept"] == ["a", "b"]
    assert event["pathParameters"] is None
    context = event["requestContext"]
    assert context["identity"]["apiKey"] == "k3y"
    assert context["stage"] == "Prod"
    assert context["path"] == "/Prod/search"
    assert context["resourcePath"] == "/search"
    assert context["requestId"]
    json.dumps(event)


def test_rest_event_keeps_a_text_body_as_text_and_an_empty_one_as_null() -> None:
    route, params = match_route(ROUTES, "POST", "/search")
    common = {"method": "POST", "path": "/search", "query": "", "route": route, "path_params": params}
    text = rest_event(headers=[("Content-Type", "application/json")], body=b'{"k":1}', config=config(), **common)
    assert text["isBase64Encoded"] is False
    assert text["body"] == '{"k":1}'
    empty = rest_event(headers=[], body=b"", config=config(), **common)
    assert empty["body"] is None
    assert empty["queryStringParameters"] is None


def test_proxy_response_decodes_base64_and_merges_headers() -> None:
    response = proxy_response(
        {
            "statusCode": 200,
            "headers": {"Content-Type": "image/png", "X-One": "1"},
            "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
            "body": base64.b64encode(b"\x89PNG").decode(),
            "isBase64Encoded": True,
        }
    )
    assert response.status == 200
    assert response.body == b"\x89PNG"
    assert ("Set-Cookie", "a=1") in response.headers
    assert ("Set-Cookie", "b=2") in response.headers
    assert ("X-One", "1") in response.headers


@pytest.mark.parametrize("result", [None, "text", {"body": "no status"}, {"statusCode": "200"}])
def test_malformed_proxy_result_is_a_502_like_api_gateway(result: object) -> None:
    response = proxy_response(result)
    assert response.status == 502
    assert json.loads(response.body) == {"message": "Internal server error"}


def test_gateway_checks_the_api_key_before_invoking() -> None:
    calls: list[dict] = []

    def invoke(event: dict) -> dict:
        calls.append(event)
        return {"statusCode": 200, "body": json.dumps({"path": event["path"]})}

    gateway = Gateway(config(), invoke)
    assert gateway.handle(request("GET", "/api/items/x")).status == 403
    assert gateway.handle(request("GET", "/api/items/x", headers=[("X-Api-Key", "wrong")])).status == 403
    assert calls == []
    ok = gateway.handle(request("GET", "/api/items/x", headers=[("X-Api-Key", "k3y")]))
    assert ok.status == 200
    assert json.loads(ok.body) == {"path": "/items/x"}
    assert gateway.handle(request("GET", "/api/health")).status == 200  # route without ApiKeyRequired


def test_gateway_unknown_route_is_missing_authentication_token_and_a_raise_is_502() -> None:
    def invoke(event: dict) -> dict:
        raise RuntimeError("handler bug")

    gateway = Gateway(config(), invoke)
    missing = gateway.handle(request("GET", "/api/nope", headers=[("X-Api-Key", "k3y")]))
    assert missing.status == 403
    assert json.loads(missing.body) == {"message": "Missing Authentication Token"}
    assert gateway.handle(request("GET", "/api/health")).status == 502


def test_static_files_get_the_api_key_and_cannot_escape_the_web_root(tmp_path) -> None:
    (tmp_path / "index.html").write_text('<meta name="k" content="__CATALENS_API_KEY__">')
    (tmp_path.parent / "secret.txt").write_text("no")
    gateway = Gateway(config(), lambda e: {}, web_root=tmp_path)
    page = gateway.handle(request("GET", "/"))
    assert page.status == 200
    assert b'content="k3y"' in page.body
    assert gateway.handle(request("GET", "/../secret.txt")).status == 404
    assert gateway.handle(request("GET", "/%2e%2e/secret.txt")).status == 404


def test_gateway_errors_carry_the_cors_origin_like_gateway_responses() -> None:
    cors = ApiConfig(routes=ROUTES, api_key="k3y", cors_allow_origin="https://shop.example")
    gateway = Gateway(cors, lambda event: {"statusCode": 200, "body": "{}"})
    denied = gateway.handle(request("GET", "/api/items/x"))
    assert denied.status == 403
    assert ("Access-Control-Allow-Origin", "https://shop.example") in denied.headers
    preflight = gateway.handle(request("OPTIONS", "/api/search"))
    assert preflight.status == 204
    assert ("Access-Control-Allow-Origin", "https://shop.example") in preflight.headers
