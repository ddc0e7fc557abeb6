"""Parsing and validation of search requests: every accepted shape, every malformed one named by its code."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from catalens.service.errors import RequestError, http_status_for
from catalens.service.requests import (
    DEFAULT_K,
    LAMBDA_INVOKE_PAYLOAD_BYTES,
    MAX_K,
    MAX_QUERY_IMAGE_BYTES,
    HttpRequest,
    body_limit_for,
    check_query_image_limit,
    decode_base64_image,
    parse_query_options,
    parse_search_request,
)

PHOTO = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\r\n--not-a-boundary\r\n\xff\xd9"


def rest_event(body: bytes | str | None, content_type: str | None, *, b64: bool = False, **query: Any) -> dict:
    """A REST proxy event (payload v1) as API Gateway sends it."""
    headers = {"Content-Type": content_type} if content_type else {}
    if isinstance(body, bytes) and b64:
        body = base64.b64encode(body).decode()
    return {
        "httpMethod": "POST",
        "path": "/search",
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: (v[-1] if isinstance(v, list) else v) for k, v in query.items()} or None,
        "multiValueQueryStringParameters": {k: (v if isinstance(v, list) else [v]) for k, v in query.items()} or None,
        "body": body,
        "isBase64Encoded": b64,
    }


def parse(event: dict, **kwargs: Any):
    return parse_search_request(HttpRequest.from_event(event), **kwargs)


def error_of(event: dict, **kwargs: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(event, **kwargs)
    return caught.value


def multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "b0undary") -> tuple[bytes, str]:
    out = b""
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += b"Content-Type: image/jpeg\r\n" if filename else b""
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# ------------------------------------------------------------------------------------------------ accepted shapes


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "image/webp", "application/octet-stream"])
def test_raw_binary_body_base64_encoded_by_api_gateway(content_type: str) -> None:
    request = parse(rest_event(PHOTO, content_type, b64=True, k="5", category="shoes"))
    assert request.image == PHOTO
    assert request.item_id is None
    assert request.options.k == 5
    assert request.options.filters.equals == {"category": ("shoes",)}


def test_raw_binary_body_passed_as_plain_text_is_kept() -> None:
    ascii_body = b"not really an image but ascii"
    assert parse(rest_event(ascii_body.decode(), "image/jpeg")).image == ascii_body


def test_json_with_base64_image_and_options() -> None:
    body = {
        "image": base64.b64encode(PHOTO).decode(),
        "k": 20,
        "offset": 40,
        "filters": {"color": ["red", "blue"], "price_max": 30},
        "brand": "acme",
        "user_id": "u-1",
        "personalize": False,
        "explain": True,
    }
    request = parse(rest_event(json.dumps(body), "application/json; charset=utf-8"))
    options = request.options
    assert request.image == PHOTO
    assert (options.k, options.offset, options.user_id, options.personalize, options.explain) == (
        20,
        40,
        "u-1",
        False,
        True,
    )
    assert options.filters.equals == {"brand": ("acme",), "color": ("red", "blue")}
    assert options.filters.price_max == 30.0
    assert options.filters.price_min is None


@pytest.mark.parametrize(
    "encoded",
    [
        base64.b64encode(PHOTO).decode(),
        base64.urlsafe_b64encode(PHOTO).decode().rstrip("="),
        "data:image/jpeg;base64," + base64.b64encode(PHOTO).decode(),
        base64.encodebytes(PHOTO).decode(),  # MIME line breaks
    ],
)
def test_base64_variants_decode_to_the_same_bytes(encoded: str) -> None:
    assert decode_base64_image(encoded) == PHOTO


def test_json_item_id_query_uses_defaults() -> None:
    request = parse(rest_event('{"item_id": "sku 42/ü"}', "application/json"))
    assert request.item_id == "sku 42/ü"
    assert request.image is None
    assert request.options.k == DEFAULT_K
    assert request.options.offset == 0
    assert not request.options.filters


def test_multipart_form_keeps_binary_bytes_and_reads_fields() -> None:
    body, content_type = multipart([("k", b"7", None), ("image", PHOTO, "p.jpg"), ("price_min", b"2.5", None)])
    request = parse(rest_event(body, content_type, b64=True))
    assert request.image == PHOTO
    assert request.options.k == 7
    assert request.options.filters.price_min == 2.5


def test_query_string_filters_repeat_and_any_field() -> None:
    options = parse_query_options({"category": ("a", "b"), "filter.color": ("red",), "explain": ("true",)})
    assert options.filters.equals == {"category": ("a", "b"), "color": ("red",)}
    assert options.explain is True


def test_headers_are_case_insensitive() -> None:
    event = rest_event(PHOTO, None, b64=True)
    event["headers"] = {"content-TYPE": "image/png"}
    event["multiValueHeaders"] = None
    assert parse(event).image == PHOTO


# ------------------------------------------------------------------------------------------------ malformed requests


@pytest.mark.parametrize(
    ("event", "code", "status"),
    [
        (rest_event('{"image": "@@@not base64@@@"}', "application/json"), "invalid_base64", 400),
        (rest_event('{"image": 12}', "application/json"), "invalid_base64", 400),
        (rest_event('{"image": ""}', "application/json"), "missing_image", 400),
        (rest_event("{not json", "application/json"), "invalid_json", 400),
        (rest_event('{"k": NaN, "item_id": "a"}', "application/json"), "invalid_json", 400),
        (rest_event("[1, 2]", "application/json"), "invalid_json", 400),
        (rest_event("", "application/json"), "invalid_json", 400),
        (rest_event("{}", "application/json"), "missing_image", 400),
        (rest_event('{"item_id": "a", "image": "QUJD"}', "application/json"), "ambiguous_query", 400),
        (rest_event('{"item_id": "a", "colour": "red"}', "application/json"), "unknown_parameter", 400),
        (rest_event('{"item_id": ""}', "application/json"), "invalid_parameter", 400),
        (rest_event('{"item_id": "a\\u0000b"}', "application/json"), "invalid_parameter", 400),
        (rest_event('{"item_id": "a", "k": 0}', "application/json"), "invalid_parameter", 400),
        (rest_event('{"item_id": "a", "k": 101}', "application/json"), "invalid_parameter", 400),
        (rest_event('{"item_id": "a", "k": 2.5}', "application/json"), "invalid_parameter", 400),
        (rest_event('{"item_id": "a", "k": true}', "application/json"), "invalid_parameter", 400),
        (rest_event('{"item_id": "a", "offset": -1}', "application/json"), "invalid_parameter", 400),
        (rest_event('{"item_id": "a", "offset": 990, "k": 20}', "application/json"), "invalid_parameter", 400),
        (rest_event('{"item_id": "a", "explain": "maybe"}', "application/json"), "invalid_parameter", 400),
        (rest_event('{"item_id": "a", "filters": []}', "application/json"), "invalid_filter", 400),
        (rest_event('{"item_id": "a", "filters": {"a b": 1}}', "application/json"), "invalid_filter", 400),
        (rest_event('{"item_id": "a", "filters": {"c": {"x": 1}}}', "application/json"), "invalid_filter", 400),
        (rest_event('{"item_id": "a", "filters": {"c": []}}', "application/json"), "invalid_filter", 400),
        (rest_event('{"item_id": "a", "price_min": "cheap"}', "application/json"), "invalid_filter", 400),
        (rest_event('{"item_id": "a", "price_min": 5, "price_max": 1}', "application/json"), "invalid_filter", 400),
        (
            rest_event('{"item_id": "a", "category": "x", "filters": {"category": "y"}}', "application/json"),
            "invalid_filter",
            400,
        ),
        (rest_event(PHOTO, "text/plain", b64=True), "unsupported_media_type", 415),
        (rest_event(b"", "image/jpeg", b64=True), "missing_image", 400),
        (rest_event("***", "image/jpeg", b64=True), "invalid_base64", 400),
        (rest_event(PHOTO, "image/jpeg", b64=True, k="ten"), "invalid_parameter", 400),
        (rest_event(PHOTO, "image/jpeg", b64=True, sort="price"), "unknown_parameter", 400),
        (rest_event(b"--x\r\n", "multipart/form-data", b64=True), "invalid_multipart", 400),
        (rest_event(b"garbage", "multipart/form-data; boundary=zz", b64=True), "invalid_multipart", 400),
    ],
)
def test_malformed_requests_are_named_client_errors(event: dict, code: str, status: int) -> None:
    error = error_of(event)
    assert error.code == code
    assert http_status_for(error) == status
    assert str(error)


def test_image_over_the_limit_is_413() -> None:
    error = error_of(rest_event(PHOTO, "image/jpeg", b64=True), max_image_bytes=100)
    assert (error.code, http_status_for(error)) == ("image_too_large", 413)


def test_body_over_the_limit_is_413() -> None:
    limit = body_limit_for(100)
    padding = " " * (limit - len('{"item_id": "a"}') + 1)  # a body the photo limit cannot explain
    error = error_of(rest_event('{"item_id": "a"}' + padding, "application/json"), max_image_bytes=100)
    assert (error.code, http_status_for(error)) == ("payload_too_large", 413)
    assert parse(rest_event('{"item_id": "a"}' + padding[1:], "application/json"), max_image_bytes=100).item_id == "a"


def test_a_photo_at_the_limit_fits_as_json_and_one_byte_more_does_not() -> None:
    photo = b"\xff\xd8\xff" + bytes(97)
    body = json.dumps({"image": base64.b64encode(photo).decode(), "k": 5})
    assert parse(rest_event(body, "application/json"), max_image_bytes=100).image == photo
    body = json.dumps({"image": base64.b64encode(photo + b"x").decode()})
    assert error_of(rest_event(body, "application/json"), max_image_bytes=100).code == "image_too_large"


def test_the_query_photo_limit_must_fit_a_lambda_invoke() -> None:
    assert check_query_image_limit(MAX_QUERY_IMAGE_BYTES) == MAX_QUERY_IMAGE_BYTES
    assert body_limit_for(MAX_QUERY_IMAGE_BYTES) < LAMBDA_INVOKE_PAYLOAD_BYTES
    with pytest.raises(ValueError, match="to fit a Lambda invoke"):
        check_query_image_limit(5 * 1024 * 1024)


def test_multipart_with_two_images_is_rejected() -> None:
    body, content_type = multipart([("image", PHOTO, "a.jpg"), ("file", PHOTO, "b.jpg")])
    assert error_of(rest_event(body, content_type, b64=True)).code == "invalid_multipart"


def test_k_boundaries_are_inclusive() -> None:
    for k in (1, MAX_K):
        assert parse(rest_event(json.dumps({"item_id": "a", "k": k}), "application/json")).options.k == k


# ------------------------------------------------------------------------------------------------ calibrate


def test_calibrate_is_on_unless_the_request_turns_it_off_in_any_transport() -> None:
    assert parse(rest_event(PHOTO, "image/jpeg", b64=True)).options.calibrate is True
    assert parse(rest_event(PHOTO, "image/jpeg", b64=True, calibrate="false")).options.calibrate is False
    body = json.dumps({"image": base64.b64encode(PHOTO).decode(), "calibrate": False})
    assert parse(rest_event(body, "application/json")).options.calibrate is False
    form, content_type = multipart([("image", PHOTO, "p.jpg"), ("calibrate", b"off", None)])
    assert parse(rest_event(form, content_type, b64=True)).options.calibrate is False
    assert parse_query_options({"calibrate": ("0",)}).calibrate is False
    assert parse_query_options({"calibrate": ("yes",)}).calibrate is True


@pytest.mark.parametrize("value", ["maybe", "", "2"])
def test_a_calibrate_value_that_is_not_a_boolean_is_a_400(value: str) -> None:
    error = error_of(rest_event(PHOTO, "image/jpeg", b64=True, calibrate=value))
    assert (error.code, http_status_for(error)) == ("invalid_parameter", 400)
    assert "calibrate" in str(error)
    body = json.dumps({"item_id": "sku-1", "calibrate": "sometimes"})
    assert error_of(rest_event(body, "application/json")).code == "invalid_parameter"
