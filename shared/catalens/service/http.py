"""HTTP plumbing of the search API for Powertools' ``APIGatewayRestResolver``: responses, errors, OpenAPI.

The handler (``functions/search/app.py``) declares the routes; this module keeps the details out of it:
how a :class:`~catalens.service.search.SearchResponse` becomes JSON with ``Server-Timing`` headers, how
every :class:`~catalens.errors.CatalensError` becomes ``{"code", "message"}`` with a 4xx status, and
where the OpenAPI document lives.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from importlib import resources
from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError

from catalens.errors import CatalensError
from catalens.service.errors import http_status_for
from catalens.service.requests import HttpRequest
from catalens.service.search import SearchResponse

OPENAPI_RESOURCE = "openapi.json"
INDEX_VERSION_HEADER = "X-Catalens-Index-Version"


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


def register_error_handlers(app: Any, logger: logging.Logger | Any) -> None:
    """Map every failure to a JSON error: typed errors to their status, unknown routes to 404, bugs to 500."""

    @app.exception_handler(CatalensError)
    def _catalens_error(exc: CatalensError) -> Response:
        status = http_status_for(exc)
        if status >= 500:
            logger.exception("request failed on the server side", extra={"code": exc.code})
        else:
            logger.info("request rejected", extra={"code": exc.code, "status": status, "reason": str(exc)})
        return error_response(exc.code, str(exc), status)

    @app.not_found
    def _not_found(_exc: NotFoundError) -> Response:
        event = app.current_event
        allowed = allowed_methods(app, event.path)
        if allowed:
            message = f"{event.http_method} is not allowed on {event.path}; use {', '.join(allowed)}"
            response = error_response("method_not_allowed", message, 405)
            response.headers["Allow"] = ", ".join(allowed)
            return response
        return error_response("not_found", f"no route for {event.http_method} {event.path}", 404)

    @app.exception_handler(Exception)
    def _bug(exc: Exception) -> Response:
        logger.exception("unhandled error while answering a request")
        return error_response("internal_error", f"internal error ({type(exc).__name__}); it has been logged", 500)


def allowed_methods(app: Any, path: str) -> list[str]:
    """Methods some route serves at ``path`` (Powertools keeps its routes in these two lists)."""
    routes = [*app._static_routes, *app._dynamic_routes]
    return sorted({route.method.upper() for route in routes if route.rule.match(path)})


@cache
def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI 3 document, shipped as package data."""
    text = resources.files("catalens").joinpath("data", OPENAPI_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def openapi_response() -> Response:
    return json_response(openapi_document(), headers={"Cache-Control": "public, max-age=300"})


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays that slip into product fields or explain maps."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
