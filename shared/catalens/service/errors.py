"""Errors a caller of the services can act on, and the HTTP status each error code maps to.

The API answers every :class:`~catalens.errors.CatalensError` with ``{"code", "message"}`` and the
status below. A code missing from the table is judged by its class: request and image errors are the
caller's (400), storage and model errors the deployment's (503), anything else a bug (500).
"""

from __future__ import annotations

from catalens.errors import CatalensError, ImageError, ModelError
from catalens.ports import BlobStoreError


class RequestError(CatalensError):
    """A malformed request: the message names the parameter and what was wrong with it."""

    code = "bad_request"


class UnsupportedMediaTypeError(RequestError):
    """The request body has a content type the endpoint does not accept."""

    code = "unsupported_media_type"


class PayloadTooLargeError(RequestError):
    """The body (or the image in it) is bigger than the configured limit."""

    code = "payload_too_large"


class ItemNotFoundError(CatalensError):
    """The item id names no item in the current index version."""

    code = "item_not_found"


class UnknownFilterError(RequestError):
    """A filter names a field the index does not know."""

    code = "unknown_filter"


class PageTooDeepError(RequestError):
    """The page reaches deeper than the index backend can answer (S3 Vectors: the first 100 results)."""

    code = "page_too_deep"


class FieldError(CatalensError):
    """A product field (object metadata or sidecar JSON) is invalid; recorded against the photo at ingest."""

    code = "invalid_field"


class ItemIdError(FieldError):
    """A catalog key whose item id ``GET /items/{id}`` could not serve (control characters, ``.`` or ``..``);
    recorded against the photo at ingest, so no item is indexed that the API cannot answer for."""

    code = "invalid_item_id"


# Stable code -> HTTP status. Image codes come from catalens.imaging.
HTTP_STATUS: dict[str, int] = {
    "bad_request": 400,
    "page_too_deep": 400,
    "invalid_json": 400,
    "invalid_base64": 400,
    "invalid_multipart": 400,
    "invalid_parameter": 400,
    "unknown_parameter": 400,
    "missing_image": 400,
    "ambiguous_query": 400,
    "invalid_region": 400,
    "invalid_query": 400,
    "missing_query": 400,
    "text_search_unavailable": 400,
    "read_text_unavailable": 400,
    "unknown_filter": 400,
    "invalid_filter": 400,
    "invalid_image": 400,
    "empty_image": 400,
    "not_an_image": 400,
    "truncated_image": 400,
    "unsupported_image": 400,
    "decompression_bomb": 400,
    "invalid_token": 401,  # shopper tokens (catalens.service.shopper_tokens)
    "token_expired": 401,
    "shopper_token_required": 401,
    "token_user_mismatch": 403,
    "image_too_small": 400,
    "blank_image": 400,
    "image_too_large": 413,
    "image_too_complex": 413,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "item_not_found": 404,
    "user_not_found": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "model_mismatch": 503,
    "index_unavailable": 503,
    "shopper_keys_unavailable": 503,
}


def http_status_for(error: CatalensError) -> int:
    """The HTTP status that answers ``error`` (see the module docstring for the fallback order)."""
    if error.code in HTTP_STATUS:
        return HTTP_STATUS[error.code]
    if isinstance(error, RequestError | ImageError | FieldError):
        return 400
    if isinstance(error, ModelError):
        return 503
    if isinstance(error, BlobStoreError):
        return 503
    return 500
