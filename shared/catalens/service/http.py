"""HTTP plumbing of the search API for Powertools' ``APIGatewayRestResolver``: responses, errors, OpenAPI.

The routes are declared in :mod:`catalens.service.api`; this module keeps the details out of them:
how a path parameter becomes the id it names (:class:`RestResolver`), how a
:class:`~catalens.service.search.SearchResponse` becomes JSON with ``Server-Timing`` headers, how
every :class:`~catalens.errors.CatalensError` becomes ``{"code", "message"}`` with a 4xx status, and
where the OpenAPI document lives.
"""

from __future__ import annotations

import json
import logging
import re
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import unquote

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError

from catalens.errors import CatalensError
from catalens.ports import MetricsSink
from catalens.service.errors import http_status_for
from catalens.service.requests import HttpRequest
from catalens.service.search import SearchResponse
from catalens.service.telemetry import NullMetrics

OPENAPI_RESOURCE = "openapi.json"
INDEX_VERSION_HEADER = "X-Catalens-Index-Version"


ROUTE_PARAMETER = re.compile(r"<(\w+)>")


class RestResolver(APIGatewayRestResolver):
    """Powertools' REST resolver, with path parameters that can hold any item id ingest makes.

    API Gateway REST keeps ``event["path"]`` percent-encoded (``/items/red%20shoe``, a ``/`` inside an id as ``%2F``)
    and hands the decoded values in ``pathParameters``. Powertools matches ``<id>`` against a character allow-list
    and passes the matched text on as it is, so ``red%20shoe`` reached the service still encoded, and a raw
    non-ASCII character (``÷``, from a client that does not encode it) matched no route at all. Here a parameter
    is one whole path segment, as API Gateway matches ``{id}``, and its value is API Gateway's decoded one
    (the segment percent-decoded when an event carries no ``pathParameters``).

    >>> app = RestResolver()
    >>> @app.get("/items/<id>")
    ... def get_item(id: str) -> dict:
    ...     return {"id": id}
    >>> event = {"httpMethod": "GET", "path": "/items/shoes%2Fred%20shoe", "requestContext": {}}
    >>> json.loads(app.resolve(event, None)["body"])
    {'id': 'shoes/red shoe'}
    """

    unsupported_event: Any = None  # set by register_error_handlers: answers an event this resolver cannot read

    def resolve(self, event: Any, context: Any) -> dict[str, Any]:
        """Answer a REST (payload 1.0) proxy event; any other shape (an HTTP API 2.0 event, a test invoke with a
        hand-made payload) gets a 400 JSON error naming it, not a ``KeyError`` from inside the resolver."""
        problem = unsupported_event_problem(event)
        if problem is None:
            return super().resolve(event, context)
        response = self.unsupported_event(problem) if self.unsupported_event else error_response(*problem, 400)
        return {
            "statusCode": response.status_code,
            "headers": {"Content-Type": content_types.APPLICATION_JSON},
            "body": response.body,
            "isBase64Encoded": False,
        }

    @staticmethod
    def _compile_regex(rule: str, base_regex: str = "^{}/*$") -> re.Pattern[str]:
        # Powertools' REST form (optional trailing slashes), each <name> one segment of the encoded path.
        return re.compile(base_regex.format(ROUTE_PARAMETER.sub(r"(?P<\1>[^/]+)", rule)))

    def _convert_matches_into_route_keys(self, match: re.Match[str]) -> dict[str, str]:
        decoded = self.current_event.path_parameters or {}
        # surrogateescape: bytes that are not UTF-8 survive to the id check, which answers 400 for them
        return {
            name: decoded.get(name, unquote(raw, errors="surrogateescape")) for name, raw in match.groupdict().items()
        }


def unsupported_event_problem(event: Any) -> tuple[str, str] | None:
    """``(code, message)`` when ``event`` is not an API Gateway REST proxy event (payload 1.0), else None."""
    if not isinstance(event, dict):
        return (
            "unsupported_event",
            f"expected an API Gateway REST proxy event (a JSON object), got {type(event).__name__}",
        )
    if event.get("version") == "2.0" or "rawPath" in event:
        message = (
            "this function serves API Gateway REST API events (payload 1.0); an HTTP API (payload 2.0) event arrived"
        )
        return "unsupported_event", message
    if not isinstance(event.get("httpMethod"), str) or not isinstance(event.get("path"), str):
        return "unsupported_event", "the event has no httpMethod and path: not an API Gateway REST proxy event"
    return None


def http_request(app: Any) -> HttpRequest:
    """The current request of a Powertools resolver, transport-neutral."""
    return HttpRequest.from_event(app.current_event.raw_event)


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response; NaN/inf never reach the client (they are not JSON)."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_jsonable)
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers)


def search_response(result: SearchResponse) -> Response:
    """A page of hits; timings and index version also in headers for clients that only log headers."""
    headers = {"Server-Timing": result.timings.server_timing(), INDEX_VERSION_HEADER: result.index_version}
    return json_response(result.to_dict(), headers=headers)


def error_response(code: str, message: str, status: int) -> Response:
    return json_response({"code": code, "message": message}, status=status)


def register_error_handlers(app: Any, logger: logging.Logger | Any, metrics: MetricsSink | None = None) -> None:
    """Map every failure to a JSON error: typed errors to their status, unknown routes to 404, bugs to 500.

    Each error answer is counted once: ``ClientErrors`` (4xx) or ``ServerErrors`` (5xx) by ``code``, so a
    dashboard shows which mistakes clients make and an alarm can watch the errors API Gateway sees as 200s
    from a function that never raises. An error that names ``retry_after_seconds`` (a part of the index still
    loading, by design) is a 503 with ``Retry-After``, logged at info and counted as ``RetryLater``: it is
    expected after every cold start and must not page anyone.
    """
    sink = metrics or NullMetrics()

    def answer(code: str, message: str, status: int, kind: str | None = None) -> Response:
        kind = kind or ("ServerErrors" if status >= 500 else "ClientErrors")
        sink.emit_group({kind: (1, "Count")}, {"code": code})
        return error_response(code, message, status)

    @app.exception_handler(CatalensError)
    def _catalens_error(exc: CatalensError) -> Response:
        status = http_status_for(exc)
        retry_after = getattr(exc, "retry_after_seconds", None)
        if retry_after is not None:
            logger.info("request deferred", extra={"code": exc.code, "status": status, "reason": str(exc)})
            response = answer(exc.code, str(exc), status, kind="RetryLater")
            response.headers["Retry-After"] = str(retry_after)
            return response
        if status >= 500:
            logger.exception("request failed on the server side", extra={"code": exc.code})
        else:
            logger.info("request rejected", extra={"code": exc.code, "status": status, "reason": str(exc)})
        return answer(exc.code, str(exc), status)

    @app.not_found
    def _not_found(_exc: NotFoundError) -> Response:
        event = app.current_event
        allowed = allowed_methods(app, event.path)
        if allowed:
            message = f"{event.http_method} is not allowed on {event.path}; use {', '.join(allowed)}"
            response = answer("method_not_allowed", message, 405)
            response.headers["Allow"] = ", ".join(allowed)
            return response
        return answer("not_found", f"no route for {event.http_method} {event.path}", 404)

    def _unsupported(problem: tuple[str, str]) -> Response:
        logger.warning("event of an unsupported shape refused", extra={"code": problem[0], "reason": problem[1]})
        return answer(*problem, 400)

    app.unsupported_event = _unsupported

    @app.exception_handler(Exception)
    def _bug(exc: Exception) -> Response:
        logger.exception("unhandled error while answering a request")
        return answer("internal_error", f"internal error ({type(exc).__name__}); it has been logged", 500)


def allowed_methods(app: Any, path: str) -> list[str]:
    """Methods some route serves at ``path`` (Powertools keeps its routes in these two lists)."""
    routes = [*app._static_routes, *app._dynamic_routes]
    return sorted({route.method.upper() for route in routes if route.rule.match(path)})


@cache
def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI 3 document, shipped as package data."""
    text = resources.files("catalens").joinpath("data", OPENAPI_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def openapi_response(event: dict[str, Any] | None = None) -> Response:
    """The document, its ``servers`` pointing where this request came in (``/prod`` on AWS, ``/api`` locally)."""
    document = dict(openapi_document())
    document["servers"] = [{"url": api_base_path(event or {}) or "/"}]
    return json_response(document, headers={"Cache-Control": "public, max-age=300"})


def api_base_path(event: dict[str, Any]) -> str:
    """The part of the client's path before the route: the stage (and any base-path mapping), or ``""``.

    API Gateway gives the route path in ``path`` and the full one in ``requestContext.path``
    (``/prod/openapi.json``); a custom domain without a stage in the URL gives the same for both.
    """
    route = str(event.get("path") or "")
    full = str((event.get("requestContext") or {}).get("path") or "")
    if route and full.endswith(route):
        return full[: len(full) - len(route)].rstrip("/")
    return ""


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays that slip into product fields or explain maps."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
