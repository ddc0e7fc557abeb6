"""OCR without OpenCV: connected components, DB boxes, CTC decoding, and the real PP-OCR models on rendered text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from catalens.ocr import DetectParams, TextReader, boxes_from_probability, ctc_decode, label_boxes
from catalens_tools.model.ocr import WHEEL, WHEEL_CACHE, build_ocr


def test_components_join_diagonal_neighbours_and_keep_apart_what_does_not_touch() -> None:
    mask = np.zeros((8, 10), dtype=bool)
    mask[1, 1:4] = True
    mask[2, 4] = True  # touches the run above only diagonally: one component
    mask[5:7, 6:9] = True
    mask[5, 0] = True
    boxes = sorted(label_boxes(mask))
    assert boxes == [(1, 1, 2, 4), (5, 0, 5, 0), (5, 6, 6, 8)]
    assert label_boxes(np.zeros((4, 4), dtype=bool)) == []


def test_a_u_shape_is_one_component_however_its_arms_meet() -> None:
    mask = np.zeros((6, 7), dtype=bool)
    mask[0:5, 1] = True
    mask[0:5, 5] = True
    mask[4, 1:6] = True
    assert label_boxes(mask) == [(0, 1, 4, 5)]


def test_db_boxes_are_scored_grown_and_scaled_to_the_photo() -> None:
    probability = np.zeros((64, 64), dtype=np.float32)
    probability[10:20, 8:40] = 0.9  # a text line
    probability[40:42, 50:52] = 0.9  # a speck: dilated to 3x3, its mean probability falls under box_threshold
    probability[50:60, 5:25] = 0.35  # above the threshold but not confident enough
    boxes = boxes_from_probability(probability, (128, 128), DetectParams())
    assert len(boxes) == 1
    left, top, right, bottom = boxes[0]
    # x2 scale, one map pixel of dilation up and left, and the unclip margin (32*11*1.6 / (2*43) = 6.5 px)
    assert (left, top, right, bottom) == (1, 5, 93, 53)


def test_ctc_decoding_merges_repeats_and_drops_blanks() -> None:
    characters = ["", "o", "a", "t", " "]
    steps = [1, 1, 0, 2, 0, 0, 3, 3, 4, 1]
    probabilities = np.full((len(steps), len(characters)), 0.01, dtype=np.float32)
    probabilities[np.arange(len(steps)), steps] = 0.9
    text, confidence = ctc_decode(probabilities, characters)
    assert text == "oat o"
    assert confidence == pytest.approx(0.9)
    assert ctc_decode(np.eye(5, dtype=np.float32)[[0, 0]], characters) == ("", 0.0)


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> TextReader:
    wheel = WHEEL_CACHE / WHEEL
    if not wheel.is_file():
        pytest.skip("the rapidocr-onnxruntime wheel is not cached (catalens model build fetches it)")
    out = tmp_path_factory.mktemp("models")
    build_ocr(out, wheel=wheel)
    return TextReader.from_dir(Path(out) / "ocr")


def test_the_real_models_read_rendered_label_text_and_nothing_off_a_blank(reader: TextReader) -> None:
    image = Image.new("RGB", (480, 320), (250, 245, 230))
    draw = ImageDraw.Draw(image)
    draw.text((30, 180), "LACTOSE FREE 1.5%", fill=(150, 20, 20), font=ImageFont.load_default(size=44))
    reading = reader.read(image)
    assert "LACTOSE" in reading.text.replace(" ", "")
    assert "1.5%" in reading.text
    assert reading.detect_ms > 0
    assert reader.read(Image.new("RGB", (300, 200), (200, 200, 200))).text == ""
