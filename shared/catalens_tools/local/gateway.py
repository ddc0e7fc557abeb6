"""The local API Gateway: HTTP requests in, REST proxy events to the search handler, its responses out.

It does what API Gateway (REST, Lambda proxy integration) does for the deployed API, and nothing clever:

- matches the request against the template's resources (``/items/{id}``), else 403 MISSING_AUTHENTICATION_TOKEN;
- checks ``x-api-key`` (403 INVALID_API_KEY when missing or wrong, as a usage-plan key does);
- builds the proxy event: ``resource``, ``path``, ``httpMethod``, ``headers``/``multiValueHeaders``,
  ``queryStringParameters``/``multiValueQueryStringParameters``, ``pathParameters``, ``requestContext``, and the body
  base64-encoded with ``isBase64Encoded: true`` when its Content-Type is one of the API's binary media types;
- refuses with 413 REQUEST_TOO_LARGE a body over API Gateway's 10 MB, or one whose event (as JSON, base64 body
  included) would exceed Lambda's 6 MB synchronous invoke payload, which on AWS never reaches the handler;
- returns the handler's ``statusCode``/``headers``/``multiValueHeaders``/``body`` (base64 bodies decoded), and 502
  "Internal server error" when the handler raises or returns something that is not a proxy response.

Its own answers (403, 413, 502) are API Gateway's gateway responses: the template's ``GatewayResponses`` (status code,
static headers, body template) when it has them, else the product's ``{"code": ..., "message": ...}`` error shape.
It does no throttling (the usage plan's 429 THROTTLED / QUOTA_EXCEEDED would be rendered the same way).

The API lives under ``/api`` (so a client's base URL is ``http://127.0.0.1:PORT/api``, as it is
``https://ID.execute-api.REGION.amazonaws.com/Prod`` when deployed), and events say so: ``requestContext.path`` is
the path the client asked for (``/api/openapi.json``), as API Gateway's is (``/Prod/openapi.json``). Beside it, the
local-only ``/local/*`` routes of :class:`LocalRoutes` back the web page (catalog uploads and deletes, shopper
events, photo bytes, status).
"""

from __future__ import annotations

import base64
import fnmatch
import json
import logging
import mimetypes
import re
import secrets
import sys
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

from catalens.service.requests import LAMBDA_INVOKE_PAYLOAD_BYTES
from catalens_tools.local.runtime import LOCAL_ACCOUNT, describe
from catalens_tools.local.server import ensure_port_free

log = logging.getLogger("catalens_tools.local")

API_PREFIX = "/api"
MAX_API_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
MAX_LAMBDA_EVENT_BYTES = LAMBDA_INVOKE_PAYLOAD_BYTES  # the product sizes its photo limit by the same number
API_KEY_HEADER = "x-api-key"

# API Gateway's own answers: response type -> (default status, the product's error code, API Gateway's message).
GATEWAY_RESPONSES: dict[str, tuple[int, str, str]] = {
    "MISSING_AUTHENTICATION_TOKEN": (403, "forbidden", "Missing Authentication Token"),
    "INVALID_API_KEY": (403, "invalid_api_key", "Forbidden"),
    "REQUEST_TOO_LARGE": (413, "payload_too_large", "Request Too Long"),
    "THROTTLED": (429, "throttled", "Too Many Requests"),
    "QUOTA_EXCEEDED": (429, "quota_exceeded", "Limit Exceeded"),
    "DEFAULT_5XX": (502, "", "Internal server error"),
}
_ERROR_TYPES = {
    403: "ForbiddenException",
    413: "RequestTooLargeException",
    429: "TooManyRequestsException",
    502: "InternalServerErrorException",
}
_CLIENT_GONE = (ConnectionError, TimeoutError)  # a client that hung up or reset; nobody is left to answer


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
    gateway_responses: dict[str, Any] = field(default_factory=dict)  # the template's GatewayResponses, resolved


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
    base_path: str | None = None,
) -> dict:
    """API Gateway's REST proxy event (payload format 1.0) for one request.

    ``base_path`` is what the client's URL has before the resource path: ``/Prod`` on the execute-api domain (the
    default), ``/api`` behind the local gateway. ``requestContext.path`` is the two joined, as API Gateway's is, so a
    handler can tell where the API really is (``requestContext.domainName`` + that path, minus ``path``).
    """
    request_id = request_id or str(uuid.uuid4())
    base_path = f"/{config.stage}" if base_path is None else base_path.rstrip("/")
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
            "path": f"{base_path}{path}",
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


def event_size(event: dict) -> int:
    """Bytes of the event as Lambda receives it: compact JSON in UTF-8 (a base64 body is 4/3 of the raw one)."""
    return len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def gateway_response(
    kind: str,
    config: ApiConfig | None = None,
    *,
    detail: str | None = None,
    context: dict[str, Any] | None = None,
) -> HttpResponse:
    """API Gateway's own answer of response type ``kind``, as the template's ``GatewayResponses`` shape it.

    A type the template does not customise falls back to its ``DEFAULT_4XX``/``DEFAULT_5XX``, as on AWS; with no
    body template at all, 4xx answers take the product's error shape (``detail`` as the message, when given) and
    5xx answers API Gateway's plain ``{"message": ...}``.
    """
    status, code, aws_message = GATEWAY_RESPONSES[kind]
    declared = (config.gateway_responses if config else None) or {}
    own = declared.get(kind) or {}
    family = declared.get("DEFAULT_5XX" if status >= 500 else "DEFAULT_4XX") or {}
    status = int(own.get("StatusCode") or family.get("StatusCode") or status)
    templates = own.get("ResponseTemplates") or family.get("ResponseTemplates") or {}
    template = templates.get("application/json") or next(iter(templates.values()), None)
    if template is not None:
        body = _render(str(template), kind, aws_message, context or {}).encode()
    elif code:
        body = json.dumps({"code": code, "message": detail or aws_message}).encode()
    else:
        body = json.dumps({"message": aws_message}).encode()
    headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", _ERROR_TYPES.get(status, "Exception"))]
    for source in (family, own):
        for name, value in ((source.get("ResponseParameters") or {}).get("Headers") or {}).items():
            if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == "'":  # static values only
                headers = [(k, v) for k, v in headers if k.lower() != name.lower()] + [(name, value[1:-1])]
    return HttpResponse(status, headers, body)


_KEY_DETAIL = f"missing or wrong API key: send the key in the {API_KEY_HEADER} header"


def _no_route(request: Request) -> str:
    return f"no {request.method} {request.path} in this API (Missing Authentication Token)"


def _event_too_large(size: int, body_bytes: int, base64_body: bool) -> str:
    """Why a body was refused, and the largest body of that kind that would have fitted."""
    overhead = size - (4 * ((body_bytes + 2) // 3) if base64_body else body_bytes)
    room = MAX_LAMBDA_EVENT_BYTES - overhead
    largest = room // 4 * 3 if base64_body else room
    encoded = " (the body base64-encoded)" if base64_body else ""
    return (
        f"the request body is {body_bytes} bytes: its Lambda event{encoded} would be {size} bytes, over Lambda's "
        f"{MAX_LAMBDA_EVENT_BYTES}-byte invoke limit; send at most {largest} bytes"
    )


def _render(template: str, kind: str, message: str, context: dict[str, Any]) -> str:
    """The ``$context`` variables a gateway response template may use; unknown ones render empty, as on AWS."""
    values = {
        "error.messageString": json.dumps(message),
        "error.message": message,
        "error.responseType": kind,
        **{name: str(value) for name, value in context.items() if isinstance(value, str | int)},
    }
    return re.sub(r"\$context\.([A-Za-z0-9_.]+)", lambda m: values.get(m.group(1), ""), template)


def proxy_response(result: Any, config: ApiConfig | None = None) -> HttpResponse:
    """The HTTP response API Gateway makes of a Lambda proxy result, or its 502 when the result is malformed."""
    if not isinstance(result, dict) or not isinstance(result.get("statusCode"), int):
        log.warning("gateway: handler returned a malformed proxy response: %r", str(result)[:200])
        return gateway_response("DEFAULT_5XX", config)
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
            return gateway_response("DEFAULT_5XX", config)
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

        self._server = _Server((self.host, self.port), _Handler)
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
                    return gateway_response("INVALID_API_KEY", self.config, detail=_KEY_DETAIL)
                return handler(request, **found.groupdict())
        if request.method in ("GET", "HEAD"):
            return self.handle_static(request.path)
        return gateway_response("MISSING_AUTHENTICATION_TOKEN", self.config, detail=_no_route(request))

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
        host = request.header("Host", self.host) or self.host
        context = {"stage": self.config.stage, "path": request.path, "httpMethod": request.method, "domainName": host}
        if found is None:
            detail = _no_route(request)
            return gateway_response("MISSING_AUTHENTICATION_TOKEN", self.config, detail=detail, context=context)
        route, params = found
        context["resourcePath"] = route.resource
        if route.api_key_required and not self.key_ok(request):
            return gateway_response("INVALID_API_KEY", self.config, detail=_KEY_DETAIL, context=context)
        if len(request.body) > MAX_API_BODY_BYTES:
            detail = f"the request body is {len(request.body)} bytes; API Gateway takes at most {MAX_API_BODY_BYTES}"
            return gateway_response("REQUEST_TOO_LARGE", self.config, detail=detail, context=context)
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
            host=host,
            base_path=API_PREFIX,
        )
        size = event_size(event)
        if size > MAX_LAMBDA_EVENT_BYTES:  # on AWS, Lambda refuses the invoke and the handler never sees it
            context["requestId"] = event["requestContext"]["requestId"]
            detail = _event_too_large(size, len(request.body), event["isBase64Encoded"])
            return gateway_response("REQUEST_TOO_LARGE", self.config, detail=detail, context=context)
        try:
            result = self.invoke_api(event)
        except Exception:
            return gateway_response("DEFAULT_5XX", self.config, context=context)
        return proxy_response(result, self.config)

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
            return gateway_response("MISSING_AUTHENTICATION_TOKEN", self.config, detail=f"nothing is served at {path}")
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


class _Server(ThreadingHTTPServer):
    """socketserver prints a traceback to stderr for whatever escapes a handler; this logs it instead."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _CLIENT_GONE):
            log.debug("gateway: client %s went away: %s", client_address[0], describe(exc))
        else:
            log.error("gateway: request from %s failed: %s", client_address[0], describe(exc), exc_info=True)


class _RequestHandler(BaseHTTPRequestHandler):
    owner: Gateway
    protocol_version = "HTTP/1.1"
    server_version = "catalens-local"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("gateway: " + format, *args)

    def handle(self) -> None:
        """Serve the connection; a client that hangs up mid-request (a closed tab, curl's Ctrl-C) is no error here."""
        try:
            super().handle()
        except _CLIENT_GONE as exc:
            self.close_connection = True
            log.debug("gateway: client %s went away: %s", self.client_address[0], describe(exc))

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_API_BODY_BYTES * 2:
            detail = f"the request body is {length} bytes; the local gateway takes at most {MAX_API_BODY_BYTES * 2}"
            self._send(gateway_response("REQUEST_TOO_LARGE", self.owner.config, detail=detail), close=True)
            return
        body = self.rfile.read(length) if length else b""
        if len(body) < length:  # the client closed before sending its whole body: nobody waits for an answer
            self.close_connection = True
            log.debug("gateway: %s %s: client sent %d of %d body bytes", self.command, url.path, len(body), length)
            return
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
