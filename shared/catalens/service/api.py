"""The search API's routes: each one parses its request, asks :class:`~catalens.service.search.SearchService`, answers.

The search function's handler builds this resolver once, at init, and hands every event to it. The HTTP details
(responses, error mapping, OpenAPI) live in :mod:`catalens.service.http`; who may personalise or erase for a shopper
is :class:`~catalens.service.shopper_tokens.ShopperAuth`'s decision.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from aws_lambda_powertools.event_handler import Response

from catalens.ports import MetricsSink
from catalens.service import http
from catalens.service.requests import (
    parse_item_id,
    parse_query_options,
    parse_search_request,
    parse_text_search,
    parse_user_id,
)
from catalens.service.search import SearchService
from catalens.service.shopper_tokens import ShopperAuth


def search_api(
    service: SearchService, shoppers: ShopperAuth, *, logger: logging.Logger | Any, metrics: MetricsSink | None = None
) -> http.RestResolver:
    """The resolver answering ``/search``, ``/items/{id}[/similar]``, ``/health``, ``/openapi.json`` and
    ``DELETE /users/{id}/profile``; every error becomes a 4xx ``{"code", "message"}`` (logged, counted)."""
    app = http.RestResolver()
    http.register_error_handlers(app, logger, metrics=metrics)
    # Searches and errors are counted; health checks, item reads and the OpenAPI document have nothing to count.
    warnings.filterwarnings("ignore", message="No application metrics to publish")

    @app.post("/search")
    def search() -> Response:
        raw = http.http_request(app)
        request = parse_search_request(raw, max_image_bytes=service.limits.max_bytes)
        return http.search_response(service.search(shoppers.search(request, raw.headers)))

    @app.get("/search")
    def search_words() -> Response:
        raw = http.http_request(app)
        return http.search_response(service.search(shoppers.search(parse_text_search(raw.query), raw.headers)))

    @app.get("/items/<id>")
    def get_item(id: str) -> Response:
        return http.json_response(service.get_item(parse_item_id(id)))

    @app.get("/items/<id>/similar")
    def similar_items(id: str) -> Response:
        raw = http.http_request(app)
        options = shoppers.options(parse_query_options(raw.query), raw.headers)
        return http.search_response(service.similar(parse_item_id(id), options))

    @app.get("/health")
    def health() -> Response:
        return http.json_response(service.health())

    @app.get("/openapi.json")
    def openapi() -> Response:
        return http.openapi_response(app.current_event.raw_event)

    @app.delete("/users/<id>/profile")
    def erase_profile(id: str) -> Response:
        user_id = shoppers.erasable(parse_user_id(id), http.http_request(app).headers)
        return http.json_response(service.forget_user(user_id))

    return app
