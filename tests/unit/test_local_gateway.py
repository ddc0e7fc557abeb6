"""The local gateway's translation between HTTP and API Gateway's REST proxy events (no sockets)."""

from __future__ import annotations

import base64
import json
import logging
import socket
from pathlib import Path

import pytest

from catalens_tools.local.gateway import (
    GATEWAY_RESPONSES,
    MAX_LAMBDA_EVENT_BYTES,
    ApiConfig,
    Gateway,
    Request,
    Route,
    _RequestHandler,
    event_size,
    gateway_response,
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
    Route("GET", "/openapi.json", api_key_required=False),
    Route("DELETE", "/users/{id}/profile"),
]
REPO_ROOT = Path(__file__).resolve().parents[2]


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
    assert json.loads(missing.body)["code"] == "forbidden"
    assert "Missing Authentication Token" in json.loads(missing.body)["message"]
    failed = gateway.handle(request("GET", "/api/health"))
    assert failed.status == 502
    assert json.loads(failed.body) == {"message": "Internal server error"}


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


# ------------------------------------------------------------------------------- API Gateway's own answers (issue 6)
def test_a_missing_or_wrong_key_is_403_in_the_products_error_shape() -> None:
    gateway = Gateway(config(), lambda event: pytest.fail("the handler must not run without a key"))
    for headers in ([], [("X-Api-Key", "wrong")]):
        denied = gateway.handle(request("GET", "/api/items/x", headers=headers))
        assert denied.status == 403
        body = json.loads(denied.body)
        assert body["code"] == "invalid_api_key"
        assert "x-api-key" in body["message"]
        assert ("x-amzn-ErrorType", "ForbiddenException") in denied.headers


def _photo_search(gateway: Gateway, size: int) -> tuple[int, dict]:
    headers = [("Content-Type", "image/jpeg"), ("X-Api-Key", "k3y"), ("Host", "127.0.0.1:8080")]
    response = gateway.handle(request("POST", "/api/search?k=5", body=b"\xff" * size, headers=headers))
    return response.status, json.loads(response.body)


def test_a_body_whose_lambda_event_would_pass_6_mb_is_413_and_never_reaches_the_handler() -> None:
    sizes: list[int] = []

    def invoke(event: dict) -> dict:
        assert event_size(event) <= MAX_LAMBDA_EVENT_BYTES
        sizes.append(len(base64.b64decode(event["body"])))
        return {"statusCode": 200, "body": "{}"}

    gateway = Gateway(config(), invoke)
    assert _photo_search(gateway, 4_400_000)[0] == 200  # a 4.4 MB photo is 5.9 MB in base64: it fits
    status, body = _photo_search(gateway, 4_800_000)  # 6.4 MB in base64: Lambda would refuse the invoke
    assert status == 413
    assert body["code"] == "payload_too_large"
    largest = int(body["message"].rsplit("at most ", 1)[1].split()[0])
    assert 4_700_000 < largest < 6 * 1024 * 1024 * 3 // 4
    assert _photo_search(gateway, largest)[0] == 200  # the number the message gives is exact
    assert _photo_search(gateway, largest + 3)[0] == 413
    assert sizes == [4_400_000, largest]


def test_a_text_body_counts_as_sent_and_api_gateways_own_10_mb_limit_is_413_too() -> None:
    gateway = Gateway(config(), lambda event: {"statusCode": 200, "body": "{}"})
    headers = [("Content-Type", "application/json"), ("X-Api-Key", "k3y")]
    for size in (6_300_000, 11 * 1024 * 1024):
        response = gateway.handle(request("POST", "/api/search", body=b"x" * size, headers=headers))
        assert response.status == 413
        assert json.loads(response.body)["code"] == "payload_too_large"


def test_gateway_responses_follow_the_templates_and_fall_back_to_default_4xx() -> None:
    declared = {
        "INVALID_API_KEY": {
            "StatusCode": 403,
            "ResponseParameters": {"Headers": {"X-Why": "'key'", "X-Dynamic": "method.request.header.Host"}},
            "ResponseTemplates": {
                "application/json": '{"code": "invalid_api_key", "message": $context.error.messageString}'
            },
        },
        "DEFAULT_4XX": {
            "ResponseParameters": {"Headers": {"Access-Control-Allow-Origin": "'https://shop.example'"}},
            "ResponseTemplates": {"application/json": '{"code": "bad_request", "type": "$context.error.responseType"}'},
        },
    }
    gateway = Gateway(ApiConfig(routes=ROUTES, api_key="k3y", gateway_responses=declared), lambda e: {})
    denied = gateway.handle(request("GET", "/api/items/x"))
    assert (denied.status, json.loads(denied.body)) == (403, {"code": "invalid_api_key", "message": "Forbidden"})
    assert ("X-Why", "key") in denied.headers
    assert ("Access-Control-Allow-Origin", "https://shop.example") in denied.headers
    assert not any(name == "X-Dynamic" for name, _ in denied.headers)
    missing = gateway.handle(request("GET", "/api/nope"))
    assert json.loads(missing.body) == {"code": "bad_request", "type": "MISSING_AUTHENTICATION_TOKEN"}


def test_the_templates_gateway_responses_give_the_codes_the_local_gateway_gives() -> None:
    """Once the template restyles API Gateway's answers, local and deployed answers must carry the same codes."""
    from catalens_tools.provision import load_template

    api = load_template(REPO_ROOT / "template.yaml")["Resources"]["SearchApi"]["Properties"]
    declared = api.get("GatewayResponses") or {}
    for kind, (status, code, _) in GATEWAY_RESPONSES.items():
        templates = (declared.get(kind) or {}).get("ResponseTemplates") or {}
        template = templates.get("application/json")
        if not code or template is None:
            continue
        if isinstance(template, dict):  # !Sub "..." whose variables do not touch the code
            template = template.get("Fn::Sub")
        own = declared[kind] | {"ResponseTemplates": {"application/json": template}}
        response = gateway_response(kind, ApiConfig(routes=[], gateway_responses={kind: own}))
        assert response.status == status, kind
        assert json.loads(response.body)["code"] == code, kind


def test_events_say_where_the_api_is_like_api_gateways_request_context() -> None:
    events: list[dict] = []
    gateway = Gateway(config(), lambda event: events.append(event) or {"statusCode": 200, "body": "{}"})
    response = gateway.handle(request("GET", "/api/openapi.json", headers=[("Host", "127.0.0.1:8080")]))
    assert response.status == 200
    (event,) = events
    assert (event["resource"], event["path"]) == ("/openapi.json", "/openapi.json")
    context = event["requestContext"]
    assert context["path"] == "/api/openapi.json"  # what the client asked for: the API is at /api
    assert context["stage"] == "Prod"
    assert context["resourcePath"] == "/openapi.json"
    assert context["domainName"] == "127.0.0.1:8080"
    assert context["path"].removesuffix(event["path"]) == "/api"


# ------------------------------------------------------------------------------------- clients that hang up (issue 9)
class _Owner:
    def __init__(self) -> None:
        self.calls = 0
        self.config = config()

    def handle(self, request: Request):
        self.calls += 1
        return gateway_response("INVALID_API_KEY", self.config)


def _serve_one(raw: bytes) -> _Owner:
    """One request through the real request handler, over a socket pair whose client end has already closed."""
    owner = _Owner()

    class Handler(_RequestHandler):
        pass

    Handler.owner = owner  # type: ignore[assignment]
    server_end, client_end = socket.socketpair()
    client_end.sendall(raw)
    client_end.close()
    try:
        Handler(server_end, ("127.0.0.1", 5555), None)
    finally:
        server_end.close()
    return owner


def test_a_client_that_hangs_up_is_a_debug_line_not_a_traceback(caplog, capsys) -> None:
    caplog.set_level(logging.DEBUG, logger="catalens_tools.local")
    owner = _serve_one(b"GET /api/items/x HTTP/1.1\r\nHost: x\r\n\r\n")  # BrokenPipeError
    assert owner.calls == 1
    assert capsys.readouterr().err == ""
    assert any("went away" in record.getMessage() for record in caplog.records)


def test_a_body_cut_short_by_the_client_is_not_handled() -> None:
    owner = _serve_one(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    assert owner.calls == 0
