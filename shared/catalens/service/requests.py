"""Parsing and validation of search requests, independent of the transport.

An API Gateway REST proxy event becomes an :class:`HttpRequest` (headers case-folded, body decoded
from base64 when API Gateway says so); :func:`parse_search_request` turns that into a
:class:`SearchRequest`. Every way a request can be malformed raises a
:class:`~catalens.service.errors.RequestError` whose code and message name the problem, so the API
can answer 4xx and never guess.

Accepted bodies of ``POST /search``:

- raw ``image/jpeg``, ``image/png``, ``image/webp``, ``image/gif``, ``image/bmp``, ``image/tiff``, ``image/avif``
  (or ``application/octet-stream``); options in the query string;
- ``application/json``: ``{"image": "<base64 or data: URL>"}`` or ``{"item_id": "..."}`` plus options;
- ``multipart/form-data``: a file part named ``image`` (or ``file``/``photo``) plus text parts for options.

Options (query string, JSON keys, or form fields): ``k`` (1..100, default 12), ``offset`` (0..),
``user_id``, ``personalize``, ``calibrate``, ``explain``, filters ``category`` (``auto``: the predicted one),
``brand``, ``price_min``, ``price_max``, and any indexed field as ``filter.<field>`` (JSON: ``"filters":
{"<field>": value-or-list}``). Photo queries also take ``region``: ``left,top,right,bottom`` (pixels of the upright
photo, or fractions 0..1; JSON: a list of four numbers), ``auto`` (the main subject) or ``full`` (the whole photo);
and ``groups`` (1..5): also one result list per distinct product found in the photo.

Words: ``q`` (query string, JSON or form field; at most ``MAX_QUERY_TEXT`` characters) searches items' titles,
descriptions and the text read off their photos. Alone it is a text query (``GET /search?q=oat+milk`` or
``POST /search`` with ``{"q": "oat milk"}``); beside a photo or an item_id it re-ranks that query's results by
words as well (:mod:`catalens.text.fusion`).

>>> req = HttpRequest.from_event({"httpMethod": "POST", "path": "/search",
...     "headers": {"Content-Type": "application/json"}, "body": '{"item_id": "a1", "k": 3}'})
>>> parse_search_request(req).options.k
3
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from catalens.groups import MAX_GROUPS
from catalens.imaging import Region
from catalens.service.errors import PayloadTooLargeError, RequestError, UnsupportedMediaTypeError

DEFAULT_K = 12
MAX_K = 100
MAX_WINDOW = 1000  # offset + k: how deep a client may page
MAX_FILTER_FIELDS = 20
MAX_FILTER_VALUES = 50
MAX_ID_LENGTH = 512  # user ids
MAX_ITEM_ID_LENGTH = 1024  # S3's key limit: every key's item id fits
MAX_TEXT_LENGTH = 1024
MAX_QUERY_TEXT = 200  # q: a shopper's words, not a document (bounded work: docs/design.md, invariant 7)
# A request reaches the function as a Lambda invoke of at most 6 MB, and API Gateway base64-encodes a binary body
# (a JSON body carries its photo as base64 already): 4/3 of the photo must fit with the event's headers and fields.
LAMBDA_INVOKE_PAYLOAD_BYTES = 6 * 1024 * 1024
MAX_QUERY_IMAGE_BYTES = 4 * 1024 * 1024  # the API's photo limit: the one number clients, docs and gateway share
REQUEST_OVERHEAD_BYTES = 64 * 1024  # form fields, JSON options and multipart framing around the photo


def base64_length(size: int) -> int:
    """Characters of the padded base64 of ``size`` bytes."""
    return 4 * ((size + 2) // 3)


def body_limit_for(max_image_bytes: int) -> int:
    """The largest body a request with a photo of ``max_image_bytes`` may have (as JSON: base64 plus options)."""
    return base64_length(max_image_bytes) + REQUEST_OVERHEAD_BYTES


def check_query_image_limit(max_image_bytes: int) -> int:
    """``max_image_bytes`` if a request with such a photo still fits one Lambda invoke; else a ValueError at init,
    since a larger setting would only move the refusal from the function's JSON 413 to the gateway's."""
    room = LAMBDA_INVOKE_PAYLOAD_BYTES - REQUEST_OVERHEAD_BYTES  # the event's own fields take the overhead once more
    if not max_image_bytes > 0 or body_limit_for(max_image_bytes) > room:
        largest = (room - REQUEST_OVERHEAD_BYTES) // 4 * 3
        raise ValueError(
            f"the query photo limit must be 1 to {largest} bytes to fit a Lambda invoke, got {max_image_bytes}"
        )
    return max_image_bytes


DEFAULT_MAX_BODY_BYTES = body_limit_for(MAX_QUERY_IMAGE_BYTES)

# Every format the decoder opens (catalens.imaging.ALLOWED_FORMATS), under the names clients send; the API's binary
# media types in template.yaml list the same, so none of them arrives as mangled text.
RAW_IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
     "image/avif"}
)  # fmt: skip
RAW_BINARY_TYPES = RAW_IMAGE_TYPES | {"application/octet-stream"}
IMAGE_PART_NAMES = ("image", "file", "photo")
FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
PRICE_FILTERS = ("price_min", "price_max")
SHORTHAND_FILTERS = ("category", "brand")
FILTER_PREFIX = "filter."
AUTO_CATEGORY, AUTO_CATEGORY_FIELD = "auto", "category"
REGION_FULL = "full"  # the whole photo (its centre crop)
REGION_AUTO = "auto"  # the photo's main subject (catalens.subject), when it has one apart from its surroundings
REGION_WORDS = (REGION_AUTO, REGION_FULL)

Scalar = str | int | float | bool


@dataclass(frozen=True)
class HttpRequest:
    """What the services need from an HTTP request; built from an API Gateway REST proxy event."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names
    query: Mapping[str, tuple[str, ...]]  # every value of each parameter, in order
    body: bytes

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-cased ("" when absent)."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> HttpRequest:
        """Read a REST proxy event (payload v1). ``isBase64Encoded`` bodies are decoded; plain ones UTF-8 encoded."""
        headers: dict[str, str] = {}
        for name, values in (event.get("multiValueHeaders") or {}).items():
            if values:
                headers[str(name).lower()] = str(values[-1])
        for name, value in (event.get("headers") or {}).items():
            if value is not None:
                headers[str(name).lower()] = str(value)
        query: dict[str, tuple[str, ...]] = {}
        for name, value in (event.get("queryStringParameters") or {}).items():
            if value is not None:
                query[str(name)] = (str(value),)
        for name, values in (event.get("multiValueQueryStringParameters") or {}).items():
            if values:
                query[str(name)] = tuple(str(v) for v in values)
        return cls(
            method=str(event.get("httpMethod") or "GET").upper(),
            path=str(event.get("path") or "/"),
            headers=headers,
            query=query,
            body=_event_body(event),
        )


def _event_body(event: Mapping[str, Any]) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(str(body), validate=True)
        except (binascii.Error, ValueError) as exc:
            message = "the request body is flagged base64 but is not valid base64"
            raise RequestError(message, code="invalid_base64") from exc
    # A binary body that API Gateway passed as text (no binary media type configured) cannot be recovered
    # exactly; surrogateescape keeps whatever survived so the decoder can name the problem.
    return str(body).encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Filters:
    """Field filters: each named field must equal one of its values; price within [min, max]."""

    equals: Mapping[str, tuple[Scalar, ...]] = field(default_factory=dict)
    price_min: float | None = None
    price_max: float | None = None

    def __bool__(self) -> bool:
        return bool(self.equals) or self.price_min is not None or self.price_max is not None

    def field_names(self) -> set[str]:
        """Every field these filters read (``price`` for the range)."""
        names = set(self.equals)
        if self.price_min is not None or self.price_max is not None:
            names.add("price")
        return names

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: list(values) for name, values in self.equals.items()}
        if self.price_min is not None:
            out["price_min"] = self.price_min
        if self.price_max is not None:
            out["price_max"] = self.price_max
        return out


@dataclass(frozen=True)
class SearchOptions:
    """How to search, page, filter and personalise; shared by ``/search`` and ``/items/{id}/similar``."""

    k: int = DEFAULT_K
    offset: int = 0
    filters: Filters = field(default_factory=Filters)
    user_id: str | None = None
    personalize: bool = True
    calibrate: bool = True  # False: plain cosine for a photo query even where the index has a query domain
    explain: bool = False
    category_auto: bool = False  # category=auto: only the predicted category (item queries: the item's own)


@dataclass(frozen=True)
class SearchRequest:
    """A query (exactly one of ``image`` bytes or ``item_id``) and its options.

    ``region`` (photo queries only): a :class:`~catalens.imaging.Region` to search, one of ``REGION_WORDS``, or None
    for the default.
    """

    image: bytes | None = None
    item_id: str | None = None
    options: SearchOptions = field(default_factory=SearchOptions)
    region: Region | str | None = None
    groups: int | None = None  # photo queries: also search up to this many distinct product regions
    text: str | None = None  # q: words to search by (alone: a text query; beside a photo or item: fused with it)
    read_text: bool | None = (
        None  # photo queries: read the photo's own text and fuse it (None: the deployment's choice)
    )


# ----------------------------------------------------------------------------------------------------------------
# Entry points


def parse_search_request(request: HttpRequest, *, max_image_bytes: int = MAX_QUERY_IMAGE_BYTES) -> SearchRequest:
    """Validate a ``POST /search`` request; raises :class:`RequestError` naming the first problem."""
    max_body_bytes = body_limit_for(max_image_bytes)
    if len(request.body) > max_body_bytes:
        raise PayloadTooLargeError(
            f"the request body is {len(request.body)} bytes; the limit is {max_body_bytes} "
            f"(a photo of at most {max_image_bytes} bytes, {_mib(max_image_bytes)})"
        )
    media_type = request.content_type
    params: dict[str, Any] = dict(_query_params(request.query))
    image: bytes | None = None
    if media_type in RAW_BINARY_TYPES or (media_type == "" and request.body and not _looks_like_json(request.body)):
        image = request.body
        if not image:
            raise RequestError("the request body is empty; send the photo's bytes", code="missing_image")
    elif media_type in ("application/json", "") or media_type.endswith("+json"):
        body = _parse_json_body(request.body)
        image = _pop_base64_image(body)
        params.update(body)
    elif media_type == "multipart/form-data":
        form_image, form_params = _parse_multipart(request)
        image = form_image
        params.update(form_params)
    else:
        raise UnsupportedMediaTypeError(
            f"content type {_short(media_type, 80)!r} is not accepted; send the photo as image/jpeg, image/png, "
            "image/webp, image/gif, image/bmp, image/tiff or image/avif, or as application/json or multipart/form-data"
        )
    item_id = params.pop("item_id", None)
    if item_id is not None:
        item_id = _parse_id(item_id, "item_id", MAX_ITEM_ID_LENGTH)
    text = parse_query_text(params.pop("q")) if "q" in params else None
    if image is not None and item_id is not None:
        raise RequestError("send either an image or an item_id, not both", code="ambiguous_query")
    if image is None and item_id is None and text is None:
        raise RequestError("the request names no query: send an image, an item_id or q", code="missing_image")
    if image is not None and len(image) > max_image_bytes:
        raise PayloadTooLargeError(
            f"the image is {len(image)} bytes; the limit is {max_image_bytes} ({_mib(max_image_bytes)})",
            code="image_too_large",
        )
    region = parse_region(params.pop("region")) if "region" in params else None
    if region is not None and item_id is not None:
        raise RequestError("region applies to photo queries, not to an item_id", code="invalid_region")
    if region is not None and image is None:
        raise RequestError("region applies to photo queries, not to words alone", code="invalid_region")
    groups = _parse_int(params.pop("groups"), "groups", 1, MAX_GROUPS) if "groups" in params else None
    if groups is not None and item_id is not None:
        raise RequestError("groups applies to photo queries, not to an item_id", code="invalid_parameter")
    if groups is not None and image is None:
        raise RequestError("groups applies to photo queries, not to words alone", code="invalid_parameter")
    read_text = _parse_bool(params.pop("read_text"), "read_text") if "read_text" in params else None
    if read_text is not None and image is None:
        raise RequestError("read_text applies to photo queries", code="invalid_parameter")
    options = parse_options(params)
    return SearchRequest(
        image=image, item_id=item_id, options=options, region=region, groups=groups, text=text, read_text=read_text
    )


def parse_text_search(query: Mapping[str, tuple[str, ...]]) -> SearchRequest:
    """``GET /search``: a text query (``q``) and its options, all from the query string."""
    params = dict(_query_params(query))
    if "q" not in params:
        raise RequestError("GET /search needs q (the words to search for)", code="missing_query")
    text = parse_query_text(params.pop("q"))
    for name in ("item_id", "image", "region", "groups", "read_text"):
        if name in params:
            raise RequestError(
                f"{name} is not accepted by GET /search; send it with POST /search", code="invalid_parameter"
            )
    return SearchRequest(text=text, options=parse_options(params))


def parse_query_text(value: Any) -> str:
    """``q``: text of 1 to ``MAX_QUERY_TEXT`` characters with at least one searchable word (``invalid_query``)."""
    from catalens.text.lexical import query_terms

    if not isinstance(value, str):
        raise RequestError("q must be a string", code="invalid_query")
    text = value.strip()
    if len(text) > MAX_QUERY_TEXT:
        raise RequestError(f"q is {len(text)} characters; the limit is {MAX_QUERY_TEXT}", code="invalid_query")
    if any((ord(ch) < 0x20 and ch not in "\t\n") or ord(ch) == 0x7F for ch in text):
        raise RequestError("q contains control characters", code="invalid_query")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON escape: not text, and not echoable
        raise RequestError("q is not valid Unicode text", code="invalid_query") from exc
    if not query_terms(text):
        raise RequestError("q has no words or numbers to search for", code="invalid_query")
    return text


def parse_region(value: Any) -> Region | str:
    """``region`` as sent: a word of ``REGION_WORDS``, ``"left,top,right,bottom"`` or (JSON) a list of four numbers.

    Whether the box fits the photo is known only once the photo's header is read
    (:meth:`~catalens.imaging.Region.to_pixels`); here only its shape is checked. Errors are ``invalid_region``.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in REGION_WORDS:
            return text
        parts = [part.strip() for part in text.split(",")]
        numbers: list[Any] = []
        for part in parts:
            if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?", part):
                raise RequestError(
                    f"region must be {' or '.join(REGION_WORDS)} or left,top,right,bottom (pixels of the upright "
                    f"photo, or fractions 0..1), got {_short(repr(value), 60)}",
                    code="invalid_region",
                )
            numbers.append(float(part))
        return Region.from_values(numbers)
    if isinstance(value, list):
        return Region.from_values(value)
    raise RequestError(
        "region must be a string (a word or left,top,right,bottom) or a list of four numbers", code="invalid_region"
    )


def parse_query_options(query: Mapping[str, tuple[str, ...]]) -> SearchOptions:
    """Options of a GET request (``/items/{id}/similar``), from its query string."""
    return parse_options(dict(_query_params(query)))


def parse_item_id(raw: str) -> str:
    """Validate an item id taken from a path (ingest checks the ids it makes with this too)."""
    return _parse_id(raw, "item id", MAX_ITEM_ID_LENGTH)


def parse_user_id(raw: str) -> str:
    """Validate a user id taken from a path."""
    return _parse_id(raw, "user id")


def parse_options(params: Mapping[str, Any]) -> SearchOptions:
    """Validate options given as JSON values or query strings (strings are converted where a number is due)."""
    remaining = dict(params)
    k = _parse_int(remaining.pop("k", DEFAULT_K), "k", 1, MAX_K)
    offset = _parse_int(remaining.pop("offset", 0), "offset", 0, MAX_WINDOW - 1)
    if offset + k > MAX_WINDOW:
        raise RequestError(f"offset + k must be at most {MAX_WINDOW}; got {offset + k}", code="invalid_parameter")
    user_id = remaining.pop("user_id", None)
    if user_id is not None:
        user_id = _parse_id(user_id, "user_id")
    personalize = _parse_bool(remaining.pop("personalize", True), "personalize")
    calibrate = _parse_bool(remaining.pop("calibrate", True), "calibrate")
    explain = _parse_bool(remaining.pop("explain", False), "explain")
    filters, category_auto = _auto_category(_parse_filters(remaining))
    return SearchOptions(
        category_auto=category_auto,
        k=k,
        offset=offset,
        filters=filters,
        user_id=user_id,
        personalize=personalize,
        calibrate=calibrate,
        explain=explain,
    )


# ----------------------------------------------------------------------------------------------------------------
# Bodies


def _looks_like_json(body: bytes) -> bool:
    return body.lstrip()[:1] in (b"{", b"[")


def _parse_json_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise RequestError('the JSON body is empty; send {"image": ...} or {"item_id": ...}', code="invalid_json")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestError(f"the body is not valid JSON: {_short(str(exc))}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise RequestError(f"the JSON body must be an object, got {type(body).__name__}", code="invalid_json")
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _pop_base64_image(body: dict[str, Any]) -> bytes | None:
    if "image" not in body:
        return None
    value = body.pop("image")
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError("image must be a base64 string or a data: URL", code="invalid_base64")
    return decode_base64_image(value)


def decode_base64_image(text: str) -> bytes:
    """Decode standard or URL-safe base64 (padding optional, whitespace ignored, ``data:`` URLs accepted)."""
    payload = text.strip()
    if payload.startswith("data:"):
        header, sep, payload = payload.partition(",")
        if not sep or not header.endswith(";base64"):
            raise RequestError("a data: URL image must be base64 (data:image/jpeg;base64,...)", code="invalid_base64")
    payload = re.sub(r"\s+", "", payload)
    if not payload:
        raise RequestError("image is an empty string", code="missing_image")
    if "-" in payload or "_" in payload:
        payload = payload.replace("-", "+").replace("_", "/")
    payload += "=" * (-len(payload) % 4)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"image is not valid base64: {_short(str(exc))}", code="invalid_base64") from exc
    if not data:
        raise RequestError("image decodes to zero bytes", code="missing_image")
    return data


def _parse_multipart(request: HttpRequest) -> tuple[bytes | None, dict[str, Any]]:
    """Split a multipart/form-data body with the stdlib MIME parser (no extra dependency)."""
    content_type = request.headers.get("content-type", "")
    if "boundary=" not in content_type.lower():
        raise RequestError("multipart/form-data needs a boundary parameter", code="invalid_multipart")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    try:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
    except Exception as exc:  # the stdlib parser is lenient, but a hostile body must still be a 4xx
        message = f"the multipart body cannot be parsed: {_short(str(exc))}"
        raise RequestError(message, code="invalid_multipart") from exc
    if not message.is_multipart():
        raise RequestError("the multipart body has no parts", code="invalid_multipart")
    parts = message.get_payload()
    if not isinstance(parts, list) or not parts or message.defects:
        message = "the multipart body is malformed (boundary not found or truncated)"
        raise RequestError(message, code="invalid_multipart")
    image: bytes | None = None
    params: dict[str, Any] = {}
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise RequestError("every form part needs a Content-Disposition name", code="invalid_multipart")
        data = part.get_payload(decode=True) or b""
        if name in IMAGE_PART_NAMES:
            if image is not None:
                raise RequestError("send one image per request", code="invalid_multipart")
            image = data
            if not image:
                raise RequestError(f"the form part {name!r} is empty", code="missing_image")
        else:
            try:
                params[name] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RequestError(f"the form field {name!r} is not UTF-8 text", code="invalid_multipart") from exc
    if "filters" in params:
        try:
            params["filters"] = json.loads(params["filters"])
        except ValueError as exc:
            raise RequestError("the form field 'filters' must be a JSON object", code="invalid_filter") from exc
    return image, params


def _query_params(query: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    """Query parameters as option values; ``filter.<field>`` collected into ``filters``, repeats kept as lists."""
    params: dict[str, Any] = {}
    filters: dict[str, Any] = {}
    for name, values in query.items():
        if name.startswith(FILTER_PREFIX):
            filters[name[len(FILTER_PREFIX) :]] = list(values) if len(values) > 1 else values[0]
        elif name in SHORTHAND_FILTERS:
            params[name] = list(values) if len(values) > 1 else values[0]
        else:
            params[name] = values[-1]
    if filters:
        params["filters"] = filters
    return params


# ----------------------------------------------------------------------------------------------------------------
# Values


def _parse_filters(params: dict[str, Any]) -> Filters:
    nested = params.pop("filters", None)
    if nested is None:
        nested = {}
    if not isinstance(nested, dict):
        raise RequestError("filters must be an object of field -> value or list of values", code="invalid_filter")
    merged: dict[str, Any] = {}
    for name in (*SHORTHAND_FILTERS, *PRICE_FILTERS):
        if name in params:
            merged[name] = params.pop(name)
    for name, value in nested.items():
        if name in merged:
            raise RequestError(f"filter {name!r} is given twice", code="invalid_filter")
        merged[name] = value
    if params:
        unknown = sorted(str(name) for name in params)
        message = f"unknown parameter(s): {', '.join(_short(u, 64) for u in unknown)}"
        raise RequestError(message, code="unknown_parameter")
    if len(merged) > MAX_FILTER_FIELDS:
        raise RequestError(f"at most {MAX_FILTER_FIELDS} filters per request", code="invalid_filter")
    price_min = _parse_price(merged.pop("price_min", None), "price_min")
    price_max = _parse_price(merged.pop("price_max", None), "price_max")
    if price_min is not None and price_max is not None and price_min > price_max:
        raise RequestError(f"price_min ({price_min}) is greater than price_max ({price_max})", code="invalid_filter")
    equals: dict[str, tuple[Scalar, ...]] = {}
    for name, value in merged.items():
        if not isinstance(name, str) or not FIELD_NAME.match(name):
            raise RequestError(
                f"filter field {_short(str(name), 64)!r} is not a valid field name", code="invalid_filter"
            )
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > MAX_FILTER_VALUES:
            raise RequestError(
                f"filter {name!r} needs 1 to {MAX_FILTER_VALUES} values, got {len(values)}", code="invalid_filter"
            )
        equals[name] = tuple(_parse_filter_value(v, name) for v in values)
    return Filters(equals=equals, price_min=price_min, price_max=price_max)


def _auto_category(filters: Filters) -> tuple[Filters, bool]:
    """``category=auto`` is no filter value but a wish: only the category search predicts (taken out of ``filters``)."""
    values = filters.equals.get(AUTO_CATEGORY_FIELD)
    if not values or not any(isinstance(v, str) and v.strip().lower() == AUTO_CATEGORY for v in values):
        return filters, False
    if len(values) > 1:
        raise RequestError("category=auto cannot be combined with other categories", code="invalid_filter")
    equals = {name: value for name, value in filters.equals.items() if name != AUTO_CATEGORY_FIELD}
    return Filters(equals=equals, price_min=filters.price_min, price_max=filters.price_max), True


def _parse_filter_value(value: Any, name: str) -> Scalar:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RequestError(f"filter {name!r} must be finite", code="invalid_filter")
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT_LENGTH:
            message = f"filter {name!r} value is longer than {MAX_TEXT_LENGTH} characters"
            raise RequestError(message, code="invalid_filter")
        return value
    raise RequestError(f"filter {name!r} values must be strings, numbers or booleans", code="invalid_filter")


def _parse_price(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RequestError(f"{name} must be a number", code="invalid_filter")
    try:
        number = float(value)
    except ValueError as exc:
        raise RequestError(f"{name} must be a number, got {_short(str(value), 40)!r}", code="invalid_filter") from exc
    if not math.isfinite(number) or number < 0:
        raise RequestError(f"{name} must be a finite number >= 0", code="invalid_filter")
    return number


def _parse_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise RequestError(f"{name} must be an integer, got a boolean", code="invalid_parameter")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,9}\s*", value):
        value = int(value)
    if not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {_short(repr(value), 40)}", code="invalid_parameter")
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low} and {high}, got {value}", code="invalid_parameter")
    return value


def read_flag(value: Any) -> bool | None:
    """A JSON boolean, or the words a query string or a hand-typed payload says one with; None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    return None


def _parse_bool(value: Any, name: str) -> bool:
    flag = read_flag(value)
    if flag is None:
        raise RequestError(f"{name} must be true or false, got {_short(repr(value), 40)}", code="invalid_parameter")
    return flag


def _parse_id(value: Any, name: str, max_length: int = MAX_ID_LENGTH) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a string", code="invalid_parameter")
    if not value or len(value) > max_length:
        raise RequestError(f"{name} must have 1 to {max_length} characters", code="invalid_parameter")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise RequestError(f"{name} contains control characters", code="invalid_parameter")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(f"{name} is not valid Unicode text", code="invalid_parameter") from exc
    return value


def _mib(size: int) -> str:
    return f"{size / 2**20:.3g} MiB"


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
