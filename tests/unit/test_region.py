"""Region search: a box in the photo is parsed, checked against the photo and embedded as that part's own photo."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from catalens.imaging import (
    ImageLimits,
    InvalidRegionError,
    PreprocessConfig,
    Region,
    load_and_preprocess,
    load_region_and_preprocess,
)
from catalens.service.errors import RequestError, http_status_for
from catalens.service.requests import HttpRequest, parse_region, parse_search_request
from tests.unit.imagefactory import encode, jpeg_with_orientation, photo

CONFIG = PreprocessConfig()


def search_event(query: dict[str, str] | None = None, body: bytes | str = b"\xff\xd8\xff photo", **kw: Any) -> dict:
    content_type = kw.get("content_type", "image/jpeg")
    return {
        "httpMethod": "POST",
        "path": "/search",
        "headers": {"Content-Type": content_type},
        "queryStringParameters": query,
        "body": body.decode("latin-1") if isinstance(body, bytes) else body,
    }


# ------------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10,20,300,400", Region(10, 20, 300, 400)),
        (" 0.1, 0.2 ,0.9,1 ", Region(0.1, 0.2, 0.9, 1.0)),
        ([0, 0, 1, 1], Region(0, 0, 1, 1)),
        ("FULL", "full"),
    ],
)
def test_a_region_is_a_box_or_a_word(value: Any, expected: Any) -> None:
    assert parse_region(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "1,2,3", "1,2,3,4,5", "a,b,c,d", "10,20,5,400", "10,20,300,20", "-1,0,50,50", "nan,0,1,1", "1e999,0,1,1",
     "everything", [1, 2, 3], [0, 0, "1", 1], [0, 0, True, 1], [0, 0, float("inf"), 1], {"left": 0}, 7, None],
)  # fmt: skip
def test_a_malformed_region_is_a_typed_400(value: Any) -> None:
    with pytest.raises((RequestError, InvalidRegionError)) as caught:
        parse_region(value)
    assert caught.value.code == "invalid_region"
    assert http_status_for(caught.value) == 400
    assert "region" in str(caught.value)


def test_region_comes_from_the_query_string_json_or_a_form_and_not_with_an_item() -> None:
    by_query = parse_search_request(HttpRequest.from_event(search_event({"region": "0,0,0.5,0.5", "k": "3"})))
    assert by_query.region == Region(0, 0, 0.5, 0.5)
    assert by_query.options.k == 3
    body = json.dumps({"image": "/9j/AAAA", "region": [5, 6, 70, 80]})
    by_json = parse_search_request(HttpRequest.from_event(search_event(body=body, content_type="application/json")))
    assert by_json.region == Region(5, 6, 70, 80)
    assert parse_search_request(HttpRequest.from_event(search_event())).region is None
    item_body = json.dumps({"item_id": "sku-1", "region": "full"})
    with pytest.raises(RequestError) as caught:
        parse_search_request(HttpRequest.from_event(search_event(body=item_body, content_type="application/json")))
    assert caught.value.code == "invalid_region"


# ------------------------------------------------------------------------------------------------ against the photo


def test_pixel_and_fraction_boxes_name_the_same_pixels() -> None:
    assert Region(0.25, 0.5, 0.75, 1.0).to_pixels(400, 200) == (100, 100, 300, 200)
    assert Region(100, 100, 300, 200).to_pixels(400, 200) == (100, 100, 300, 200)


@pytest.mark.parametrize(
    ("region", "words"),
    [
        (Region(0, 0, 401, 100), "outside"),
        (Region(0, 0, 100, 250), "outside"),
        (Region(10, 10, 30, 200), "at least 32"),
        (Region(0, 0, 0.05, 1), "at least 32"),
    ],
)
def test_a_box_outside_the_photo_or_too_small_is_refused_by_name(region: Region, words: str) -> None:
    with pytest.raises(InvalidRegionError, match=words):
        region.to_pixels(400, 200, min_side=32)


def test_without_a_region_the_query_is_prepared_exactly_as_ingest_prepares_a_photo() -> None:
    data = encode(photo(640, 480, seed=3))
    prepared = load_region_and_preprocess(data, CONFIG)
    assert np.array_equal(prepared.tensor, load_and_preprocess(data, CONFIG))
    assert (prepared.box, prepared.size) == ((0, 0, 640, 480), (640, 480))
    assert prepared.describe("full") == {
        "source": "full",
        "box": [0, 0, 640, 480],
        "normalized": [0.0, 0.0, 1.0, 1.0],
        "image_size": [640, 480],
    }


def test_a_region_is_embedded_as_that_part_of_the_photo_would_be_on_its_own() -> None:
    image = photo(640, 480, seed=4)
    data = encode(image, "PNG")
    prepared = load_region_and_preprocess(data, CONFIG, region=Region(320, 0, 640, 480))
    alone = load_and_preprocess(encode(image.crop((320, 0, 640, 480)), "PNG"), CONFIG)
    assert np.array_equal(prepared.tensor, alone)
    assert prepared.describe("request")["normalized"] == [0.5, 0.0, 1.0, 1.0]
    whole = load_and_preprocess(data, CONFIG)
    assert not np.allclose(prepared.tensor, whole)


def test_a_small_region_of_a_large_jpeg_is_decoded_finely_enough() -> None:
    image = photo(3200, 2400, seed=5, noise=2)
    data = encode(image, quality=95)
    box = (1600, 1200, 2000, 1600)  # 400 px: an 1/8-scale draft of the photo would give it 50 px
    prepared = load_region_and_preprocess(data, CONFIG, region=Region(*box))
    alone = load_and_preprocess(encode(image.crop(box), "PNG"), CONFIG)
    assert float(np.abs(prepared.tensor - alone).mean()) < 0.02  # JPEG noise only, not a 5× upscale's blur


def test_a_region_is_in_the_upright_photos_pixels() -> None:
    upright = photo(480, 320, seed=6)
    data = jpeg_with_orientation(upright, 6, quality=95)  # stored 320×480, shown 480×320
    prepared = load_region_and_preprocess(data, CONFIG, region=Region(0, 0, 240, 320))
    assert prepared.size == (480, 320)
    alone = load_and_preprocess(encode(upright.crop((0, 0, 240, 320)), "PNG"), CONFIG)
    assert float(np.abs(prepared.tensor - alone).mean()) < 0.03


def test_a_region_outside_the_photo_is_found_before_any_pixel_is_decoded() -> None:
    with pytest.raises(InvalidRegionError):
        load_region_and_preprocess(encode(photo(200, 100)), CONFIG, ImageLimits(), Region(0, 0, 300, 100))
