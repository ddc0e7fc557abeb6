"""Main-subject detection: a box around the product a photo is centred on, none when the product fills the photo."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from catalens.imaging import PreprocessConfig, load_region_and_preprocess
from catalens.service.requests import SearchOptions, SearchRequest, parse_region
from catalens.service.search import SearchService
from catalens.subject import SubjectParams, main_subject_box
from tests.unit.imagefactory import encode
from tests.unit.test_search_service import StubEmbedder, view  # noqa: F401  (the fixture)


def product_on(background: tuple[int, int, int], box: tuple[int, int, int, int], size=(400, 300)) -> Image.Image:
    """A red-and-blue pack inside ``box`` on a plain, slightly noisy background."""
    rng = np.random.default_rng(0)
    pixels = np.clip(np.array(background, dtype=np.float32) + rng.normal(0, 3, (size[1], size[0], 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, fill=(200, 30, 40))
    left, top, right, bottom = box
    draw.rectangle((left, (top + bottom) // 2, right, bottom), fill=(30, 60, 200))
    return image


def inside(outer: tuple[int, int, int, int], inner: tuple[int, int, int, int], slack: int = 0) -> bool:
    return (
        outer[0] <= inner[0] + slack
        and outer[1] <= inner[1] + slack
        and outer[2] >= inner[2] - slack
        and outer[3] >= inner[3] - slack
    )


def test_a_product_on_a_plain_background_is_boxed_with_a_margin() -> None:
    product = (150, 100, 230, 200)
    found = main_subject_box(product_on((245, 245, 245), product))
    assert found is not None
    assert inside(found, product, slack=8)  # the whole product, give or take a thumbnail pixel
    width, height = found[2] - found[0], found[3] - found[1]
    assert abs(width - height) <= 2  # square: the model's centre crop keeps all of it
    assert width * height < 0.6 * 400 * 300  # and far less than the photo


def test_a_product_filling_the_photo_gives_no_box() -> None:
    rng = np.random.default_rng(1)
    pile = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), "RGB")  # texture edge to edge
    assert main_subject_box(pile) is None
    assert main_subject_box(Image.new("RGB", (300, 200), (90, 90, 90))) is None  # nothing stands out at all


def test_the_detector_knobs_change_the_box_and_name_themselves() -> None:
    image = product_on((245, 245, 245), (150, 100, 230, 200))
    tight, loose = main_subject_box(image), main_subject_box(image, SubjectParams(margin=1.6))
    assert tight is not None
    assert loose is not None
    assert loose[2] - loose[0] > tight[2] - tight[0]
    assert SubjectParams(margin=1.6).key() != SubjectParams().key()


def test_a_located_box_is_reported_in_the_photos_own_pixels() -> None:
    data = encode(product_on((245, 245, 245), (150, 100, 230, 200)), "PNG")
    prepared = load_region_and_preprocess(data, PreprocessConfig(), locate=main_subject_box)
    assert prepared.located
    assert inside(prepared.box, (150, 100, 230, 200), slack=8)
    assert prepared.describe("subject")["image_size"] == [400, 300]


def test_region_auto_searches_the_main_subject_and_full_does_not(view) -> None:  # noqa: F811
    data = encode(product_on((245, 245, 245), (150, 100, 230, 200)), "PNG")
    off = SearchService(embedder=StubEmbedder(), views=lambda: view)
    on = SearchService(embedder=StubEmbedder(), views=lambda: view, main_subject=True)
    assert parse_region("auto") == "auto"

    def source(service: SearchService, region: str | None) -> str:
        request = SearchRequest(image=data, options=SearchOptions(k=1), region=region)
        return service.search(request).query["region"]["source"]

    assert source(off, None) == "full"
    assert source(off, "auto") == "subject"
    assert source(on, None) == "subject"
    assert source(on, "full") == "full"
    answer = on.search(SearchRequest(image=data))
    assert answer.timings.locate > 0
    assert inside(tuple(answer.query["region"]["box"]), (150, 100, 230, 200), slack=8)
