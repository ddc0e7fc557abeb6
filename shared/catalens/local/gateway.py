"""The local API Gateway: HTTP requests in, REST proxy events to the search handler, its responses out.

It does what API Gateway (REST, Lambda proxy integration) does for the deployed API, and nothing clever:

- matches the request against the template's resources (``/items/{id}``), else 403 "Missing Authentication Token";
- checks ``x-api-key`` (403 "Forbidden" when missing or wrong, as a usage-plan key does);
- builds the proxy event: ``resource``, ``path``, ``httpMethod``, ``headers``/``multiValueHeaders``,
  ``queryStringParameters``/``multiValueQueryStringParameters``, ``pathParameters``, ``requestContext``, and the body
  base64-encoded with ``isBase64Encoded: true`` when its Content-Type is one of the API's binary media types;
- returns the handler's ``statusCode``/``headers``/``multiValueHeaders``/``body`` (base64 bodies decoded), and 502
  "Internal server error" when the handler raises or returns something that is not a proxy response.

The API lives under ``/api`` (so a client's base URL is ``http://127.0.0.1:PORT/api``, as it is
``https://ID.execute-api.REGION.amazonaws.com/Prod`` when deployed). Beside it, the local-only ``/local/*`` routes of
:class:`LocalRoutes` back the web page (catalog uploads and deletes, shopper events, photo bytes, status).
"""

from __future__ import annotations

import base64
import fnmatch
import json
import logging
import mimetypes
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from catalens.local.runtime import LOCAL_ACCOUNT
from catalens.local.server import ensure_port_free

log = logging.getLogger("catalens.local")

API_PREFIX = "/api"
MAX_API_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
MAX_LAMBDA_EVENT_BYTES = 6 * 1024 * 1024  # synchronous invoke payload limit
API_KEY_HEADER = "x-api-key"


# ---------------------------------------------------------------------------------------------------------- routes
@dataclass(frozen=True)
class Route:
    """One API resource and method, as the template declares it (``/items/{id}``, ``GET``; ``ANY`` matches all)."""

    method: str
    resource: str
    api_key_required: bool = True

    @property
    def pattern(self) -> re.Pattern[str]:
        return _resource_pattern(self.resource)


def _resource_pattern(resource: str) -> re.Pattern[str]:
    parts = []
    for segment in resource.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith("+}"):
            parts.append(f"(?P<{_group(segment[1:-2])}>.+)")
        elif segment.startswith("{") and segment.endswith("}"):
            parts.append(f"(?P<{_group(segment[1:-1])}>[^/]+)")
        else:
            parts.append(re.escape(segment))
    return re.compile("^/" + "/".join(parts) + "$")


def _group(name: str) -> str:
    return "p_" + re.sub(r"\W", "_", name)


def match_route(routes: Sequence[Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route API Gateway would pick: literal segments beat path parameters, which beat greedy ``{proxy+}``."""
    candidates = []
    for route in routes:
        if route.method not in (method, "ANY"):
            continue
        found = route.pattern.match(path)
        if not found:
            continue
        names = re.findall(r"\{([^}]+?)\+?\}", route.resource)
        params = {name: unquote(found.group(_group(name))) for name in names}
        specificity = (route.resource.count("+}") == 0, -len(names), route.method != "ANY")
        candidates.append((specificity, route, params))
    if not candidates:
        return None
    candidates.sort(key=lambda c: c[0], reverse=True)
    return candidates[0][1], candidates[0][2]


def is_binary_media_type(content_type: str | None, binary_media_types: Iterable[str]) -> bool:
    """API Gateway's test: the request's Content-Type (without parameters) against the API's list, wildcards allowed.

    The template writes ``image/*`` as ``image~1*`` (a JSON-pointer escape); both spellings are accepted.
    """
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return any(fnmatch.fnmatchcase(media_type, pattern.replace("~1", "/").lower()) for pattern in binary_media_types)


# ---------------------------------------------------------------------------------------------------------- events
@dataclass
class ApiConfig:
    """What the gateway needs from the template's API definition."""

    routes: list[Route]
    binary_media_types: list[str] = field(default_factory=lambda: ["image/*", "multipart/form-data"])
    stage: str = "Prod"
    api_id: str = "local"
    api_key: str = ""
    api_key_id: str = "local-key"
    cors_allow_origin: str | None = None  # the API's Cors AllowOrigin; also on API Gateway's own 4xx/5xx answers


def rest_event(
    *,
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    route: Route,
    path_params: dict[str, str],
    config: ApiConfig,
    source_ip: str = "127.0.0.1",
    host: str = "127.0.0.1",
    request_id: str | None = None,
) -> dict:
    """API Gateway's REST proxy event (payload format 1.0) for one request."""
    request_id = request_id or str(uuid.uuid4())
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in headers:
        single[name] = value
        multi.setdefault(name, []).append(value)
    single.setdefault("X-Forwarded-For", source_ip)
    multi.setdefault("X-Forwarded-For", [source_ip])
    single.setdefault("X-Forwarded-Proto", "http")
    multi.setdefault("X-Forwarded-Proto", ["http"])
    query_single: dict[str, str] = {}
    query_multi: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        query_single[name] = value
        query_multi.setdefault(name, []).append(value)
    content_type = next((v for k, v in headers if k.lower() == "content-type"), None)
    if not body:
        event_body, encoded = None, False
    elif is_binary_media_type(content_type, config.binary_media_types):
        event_body, encoded = base64.b64encode(body).decode("ascii"), True
    else:
        event_body, encoded = body.decode("utf-8", errors="replace"), False
    user_agent = next((v for k, v in headers if k.lower() == "user-agent"), None)
    api_key = next((v for k, v in headers if k.lower() == API_KEY_HEADER), None)
    now = time.time()
    return {
        "resource": route.resource,
        "path": path,
        "httpMethod": method,
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": query_single or None,
        "multiValueQueryStringParameters": query_multi or None,
        "pathParameters": path_params or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": re.sub(r"\W", "", route.resource)[:10] or "root",
            "resourcePath": route.resource,
            "httpMethod": method,
            "extendedRequestId": request_id.replace("-", "")[:16],
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "path": f"/{config.stage}{path}",
            "accountId": LOCAL_ACCOUNT,
            "protocol": "HTTP/1.1",
            "stage": config.stage,
            "domainPrefix": host.split(".", 1)[0],
            "requestTimeEpoch": int(now * 1000),
            "requestId": request_id,
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "sourceIp": source_ip,
                "principalOrgId": None,
                "accessKey": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": user_agent,
                "user": None,
                "apiKey": api_key if route.api_key_required else None,
                "apiKeyId": config.api_key_id if route.api_key_required else None,
            },
            "domainName": host,
            "apiId": config.api_id,
        },
        "body": event_body,
        "isBase64Encoded": encoded,
    }


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def json_response(status: int, payload: Any, headers: Sequence[tuple[str, str]] = ()) -> HttpResponse:
    body = json.dumps(payload, default=str).encode()
    return HttpResponse(status, [("Content-Type", "application/json"), *headers], body)


def gateway_error(status: int, message: str) -> HttpResponse:
    """API Gateway's own error body (``{"message": ...}``) and its ``x-amzn-ErrorType`` header."""
    kind = {403: "ForbiddenException", 413: "RequestTooLargeException", 502: "InternalServerErrorException"}
    return json_response(status, {"message": message}, [("x-amzn-ErrorType", kind.get(status, "Exception"))])


def proxy_response(result: Any) -> HttpResponse:
    """The HTTP response API Gateway makes of a Lambda proxy result, or its 502 when the result is malformed."""
    if not isinstance(result, dict) or not isinstance(result.get("statusCode"), int):
        log.warning("gateway: handler returned a malformed proxy response: %r", str(result)[:200])
        return gateway_error(502, "Internal server error")
    headers: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, values in (result.get("multiValueHeaders") or {}).items():
        for value in values if isinstance(values, list) else [values]:
            headers.append((name, str(value)))
        seen.add(name.lower())
    for name, value in (result.get("headers") or {}).items():
        if name.lower() not in seen:
            headers.append((name, str(value)))
    raw = result.get("body")
    if raw is None:
        body = b""
    elif result.get("isBase64Encoded"):
        try:
            body = base64.b64decode(raw, validate=True)
        except ValueError:
            return gateway_error(502, "Internal server error")
    else:
        body = str(raw).encode("utf-8")
    return HttpResponse(result["statusCode"], headers, body)


# --------------------------------------------------------------------------------------------------------- server
_ASCII_PRINTABLE = "".join(chr(code) for code in range(0x21, 0x7F))


def percent_encoded(raw_path: str) -> str:
    """The request path as API Gateway REST hands it on: percent-encoded, existing escapes kept as sent.

    http.server reads the request line as Latin-1, so a client that sends an id's UTF-8 bytes unencoded
    (``/items/a÷b``) would otherwise reach the route matcher as mojibake (``a\u00c3\u00b7b``).
    """
    return quote(raw_path.encode("latin-1"), safe=_ASCII_PRINTABLE)


LocalHandler = Callable[["Request"], HttpResponse]


@dataclass
class Request:
    """One HTTP request, as the local routes see it."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    client_ip: str

    def header(self, name: str, default: str | None = None) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), default)

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    @property
    def params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query, keep_blank_values=True))


class Gateway:
    """The HTTP front door: ``/api/*`` to the search function, ``/local/*`` to local routes, the rest to the web page.

    Parameters
    ----------
    config:
        Routes, binary media types, stage and the API key.
    invoke_api:
        Calls the search function with a proxy event and returns its result.
    local_routes:
        ``(method, path regex) -> handler`` for the local-only endpoints; a handler gets the :class:`Request` and the
        regex match's groups as keyword arguments.
    web_root:
        Folder of the static web page; ``index.html`` gets the API key injected.
    """

    def __init__(
        self,
        config: ApiConfig,
        invoke_api: Callable[[dict], Any],
        *,
        local_routes: Sequence[tuple[str, str, Callable[..., HttpResponse], bool]] = (),
        web_root: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
    ) -> None:
        self.config = config
        self.invoke_api = invoke_api
        self.local_routes = [(m, re.compile(f"^{p}$"), h, needs_key) for m, p, h, needs_key in local_routes]
        self.web_root = web_root
        self.host = host
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0

    # -- lifecycle
    def start(self) -> None:
        ensure_port_free(self.host, self.port, "web page and API", "--port")
        gateway = self

        class _Handler(_RequestHandler):
            owner = gateway

        self._server = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="gateway", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- dispatch
    def handle(self, request: Request) -> HttpResponse:
        self.requests += 1
        if request.path == API_PREFIX or request.path.startswith(API_PREFIX + "/"):
            return self.handle_api(request)
        for method, pattern, handler, needs_key in self.local_routes:
            found = pattern.match(request.path)
            if found and method == request.method:
                if needs_key and not self.key_ok(request):
                    return gateway_error(403, "Forbidden")
                return handler(request, **found.groupdict())
        if request.method in ("GET", "HEAD"):
            return self.handle_static(request.path)
        return gateway_error(403, "Missing Authentication Token")

    def key_ok(self, request: Request) -> bool:
        given = request.header(API_KEY_HEADER) or ""
        return bool(self.config.api_key) and secrets.compare_digest(given, self.config.api_key)

    def handle_api(self, request: Request) -> HttpResponse:
        response = self._handle_api(request)
        origin = self.config.cors_allow_origin
        if (
            origin
            and response.status >= 400
            and not any(k.lower() == "access-control-allow-origin" for k, _ in response.headers)
        ):
            response.headers.append(("Access-Control-Allow-Origin", origin))  # GatewayResponses DEFAULT_4XX/5XX
        return response

    def _handle_api(self, request: Request) -> HttpResponse:
        path = request.path[len(API_PREFIX) :] or "/"
        if request.method == "OPTIONS":
            return self._preflight(request)
        found = match_route(self.config.routes, request.method, path)
        if found is None:
            return gateway_error(403, "Missing Authentication Token")
        route, params = found
        if route.api_key_required and not self.key_ok(request):
            return gateway_error(403, "Forbidden")
        if len(request.body) > MAX_API_BODY_BYTES:
            return gateway_error(413, "Request Too Long")
        event = rest_event(
            method=request.method,
            path=path,
            query=request.query,
            headers=request.headers,
            body=request.body,
            route=route,
            path_params=params,
            config=self.config,
            source_ip=request.client_ip,
            host=request.header("Host", self.host) or self.host,
        )
        if len(json.dumps(event)) > MAX_LAMBDA_EVENT_BYTES:
            return gateway_error(413, "Request Too Long")
        try:
            result = self.invoke_api(event)
        except Exception:
            return gateway_error(502, "Internal server error")
        return proxy_response(result)

    def _preflight(self, request: Request) -> HttpResponse:
        return HttpResponse(
            204,
            [
                ("Access-Control-Allow-Origin", self.config.cors_allow_origin or "*"),
                ("Access-Control-Allow-Methods", "GET,POST,DELETE,OPTIONS"),
                ("Access-Control-Allow-Headers", "Content-Type,X-Api-Key,X-Shopper-Token"),  # the template's Cors
            ],
            b"",
        )

    def handle_static(self, path: str) -> HttpResponse:
        if self.web_root is None:
            return gateway_error(403, "Missing Authentication Token")
        relative = unquote(path).lstrip("/") or "index.html"
        target = (self.web_root / relative).resolve()
        root = self.web_root.resolve()
        if (root not in target.parents and target != root) or not target.is_file():
            return json_response(404, {"code": "not_found", "message": f"no such page: {path}"})
        body = target.read_bytes()
        if target.name == "index.html":
            body = body.replace(b"__CATALENS_API_KEY__", self.config.api_key.encode())
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type in ("application/javascript", "application/json"):
            content_type += "; charset=utf-8"
        return HttpResponse(200, [("Content-Type", content_type), ("Cache-Control", "no-cache")], body)


class _RequestHandler(BaseHTTPRequestHandler):
    owner: Gateway
    protocol_version = "HTTP/1.1"
    server_version = "catalens-local"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("gateway: " + format, *args)

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_API_BODY_BYTES * 2:
            self._send(gateway_error(413, "Request Too Long"), close=True)
            return
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=percent_encoded(url.path),
            query=url.query,
            headers=list(self.headers.items()),
            body=body,
            client_ip=self.client_address[0],
        )
        try:
            response = self.owner.handle(request)
        except Exception as exc:  # a bug in a local route must not kill the connection without an answer
            log.exception("gateway: %s %s failed", self.command, url.path)
            response = json_response(500, {"code": "local_error", "message": f"{type(exc).__name__}: {exc}"})
        self._send(response)

    def _send(self, response: HttpResponse, *, close: bool = False) -> None:
        self.send_response(response.status, HTTPStatus(response.status).phrase if response.status in _PHRASES else "")
        names = {name.lower() for name, _ in response.headers}
        for name, value in response.headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        if "content-type" not in names and response.body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(response.body)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _serve  # noqa: N815


_PHRASES = {s.value for s in HTTPStatus}
