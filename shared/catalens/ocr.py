"""Reading the words printed on a product: PP-OCR detection and recognition with onnxruntime, numpy and Pillow.

A packaged product is mostly its label, and two cartons of one brand often differ by one word ("organic",
"lactose free", "1.5%"). The models are PaddleOCR's PP-OCRv4 text detector (DB, ~4.7 MB) and recogniser (CRNN +
CTC, ~10.9 MB, its character list in the model's metadata), Apache-2.0, as the ``rapidocr-onnxruntime`` wheel ships
them. That wheel's own pipeline needs OpenCV, pyclipper and shapely (too big for the zip layers), so the steps around
the two networks are re-done here with numpy and Pillow:

1. **Detect.** The photo, upright, is scaled so its short side reaches ``DetectParams.upscale_to`` (small print)
   while its long side stays at most ``max_side`` (each a multiple of 32),
   normalised as PaddleOCR trained it (BGR, ``(x/255 − 0.5) / 0.5``), and the detector gives a text-probability map.
   Pixels above ``threshold`` are dilated by 2×2 and grouped into 8-connected components (run-length labelling with a
   union-find, no OpenCV); each component's bounding box, kept when its mean probability reaches ``box_threshold``,
   is grown by the DB "unclip" distance ``area · unclip_ratio / perimeter`` on every side.
2. **Recognise.** Each box is cut from the photo (a box twice as tall as wide is turned a quarter: vertical text),
   resized to height 48 keeping its aspect ratio, padded to the batch's widest, and read; CTC decoding drops repeats
   and blanks, and a line whose mean character confidence is under ``min_confidence`` is dropped.

Boxes are axis-aligned (PaddleOCR fits rotated rectangles): labels photographed roughly upright lose little, and a
tilted line is still cut whole, only with more background. No direction classifier: upside-down text reads as noise
and is dropped by the confidence floor.

Example
-------
>>> reader = TextReader.from_dir(Path("/opt/model/ocr"))               # doctest: +SKIP
>>> reader.read_text(Image.open("oat-milk.jpg"))                       # doctest: +SKIP
'OATLY OAT DRINK BARISTA EDITION 1L'
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DETECTOR_FILE = "ppocr-det.onnx"
RECOGNISER_FILE = "ppocr-rec.onnx"
CARD_FILE = "ocr.card.json"
REC_HEIGHT = 48
REC_MIN_WIDTH = 320  # PaddleOCR's rec_img_shape: a batch is at least this wide
MAX_TEXT_CHARS = 2000  # the read text kept per photo (a description field holds 5,000)


@dataclass(frozen=True)
class DetectParams:
    """Detection settings (PaddleOCR's DB defaults, except the size cap: a long side of 960 bounds the cost)."""

    max_side: int = 960
    upscale_to: int = 736  # a smaller photo's short side is scaled up to this (PaddleOCR's limit_side_len): small print
    threshold: float = 0.3
    box_threshold: float = 0.5
    unclip_ratio: float = 1.6
    min_side: int = 3
    max_boxes: int = 60  # most confident first: bounded work per photo (docs/design.md, invariant 7)


@dataclass(frozen=True)
class RecogniseParams:
    batch: int = 6
    min_confidence: float = 0.5
    max_width: int = 1600  # a longer line is resized down rather than fed whole


@dataclass(frozen=True)
class TextLine:
    """One line read off a photo: its text, mean character confidence and box (left, top, right, bottom) in pixels."""

    text: str
    confidence: float
    box: tuple[int, int, int, int]


@dataclass
class Reading:
    """What :meth:`TextReader.read` found, and where the time went (milliseconds)."""

    lines: list[TextLine] = field(default_factory=list)
    detect_ms: float = 0.0
    recognise_ms: float = 0.0

    @property
    def text(self) -> str:
        """The lines top to bottom, left to right, joined by spaces (at most ``MAX_TEXT_CHARS``)."""
        ordered = sorted(self.lines, key=lambda line: (line.box[1] // 16, line.box[0]))
        return " ".join(line.text for line in ordered)[:MAX_TEXT_CHARS]


class TextReader:
    """The two OCR networks, one onnxruntime session each (created once per process, like the embedder).

    Parameters
    ----------
    detector, recogniser
        onnxruntime ``InferenceSession`` objects.
    characters
        The recogniser's classes after the CTC blank: its dictionary, then a space.
    """

    def __init__(
        self,
        detector: Any,
        recogniser: Any,
        characters: Sequence[str],
        *,
        detect: DetectParams | None = None,
        recognise: RecogniseParams | None = None,
    ) -> None:
        self.detector = detector
        self.recogniser = recogniser
        self.characters = ["", *characters]  # class 0 is the CTC blank
        self.detect_params = detect or DetectParams()
        self.recognise_params = recognise or RecogniseParams()

    @classmethod
    def from_dir(cls, directory: Path, *, threads: int = 1) -> TextReader:
        """Sessions for the models in ``directory`` (what ``catalens model build`` writes to ``<out>/ocr``)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        detector = ort.InferenceSession(str(directory / DETECTOR_FILE), options, providers=providers)
        recogniser = ort.InferenceSession(str(directory / RECOGNISER_FILE), options, providers=providers)
        meta = recogniser.get_modelmeta().custom_metadata_map
        characters = [*meta["character"].splitlines(), " "]
        card = directory / CARD_FILE
        detect = DetectParams(**json.loads(card.read_text()).get("detect", {})) if card.exists() else None
        return cls(detector, recogniser, characters, detect=detect)

    # ------------------------------------------------------------------------------------------------ reading
    def read_text(self, image: Image.Image) -> str:
        return self.read(image).text

    def read(self, image: Image.Image) -> Reading:
        """Every line of text found on ``image`` (an upright RGB photo, already size-checked by the caller)."""
        reading = Reading()
        rgb = image.convert("RGB")
        t0 = time.perf_counter()
        boxes = self.detect(rgb)
        t1 = time.perf_counter()
        reading.detect_ms = (t1 - t0) * 1000
        if boxes:
            reading.lines = self.recognise(rgb, boxes)
        reading.recognise_ms = (time.perf_counter() - t1) * 1000
        return reading

    def detect(self, image: Image.Image) -> list[tuple[int, int, int, int]]:
        """Text boxes (left, top, right, bottom) in ``image`` pixels, most confident first."""
        params = self.detect_params
        width, height = image.size
        scale = min(max(1.0, params.upscale_to / min(width, height)), params.max_side / max(width, height))
        scale = max(scale, min(1.0, params.max_side / max(width, height)))
        w32 = max(32, round(width * scale / 32) * 32)
        h32 = max(32, round(height * scale / 32) * 32)
        pixels = np.asarray(image.resize((w32, h32), Image.Resampling.BILINEAR), dtype=np.float32)
        tensor = ((pixels[:, :, ::-1] / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[np.newaxis]
        name = self.detector.get_inputs()[0].name
        probability = self.detector.run(None, {name: np.ascontiguousarray(tensor, dtype=np.float32)})[0][0, 0]
        return boxes_from_probability(probability, (width, height), params)

    def recognise(self, image: Image.Image, boxes: Sequence[tuple[int, int, int, int]]) -> list[TextLine]:
        params = self.recognise_params
        crops = []
        for box in boxes:
            crop = image.crop(box)
            if crop.height >= 2 * crop.width:
                crop = crop.transpose(Image.Transpose.ROTATE_90)
            crops.append(crop)
        order = sorted(range(len(crops)), key=lambda i: crops[i].width / max(crops[i].height, 1))
        lines: list[TextLine] = []
        name = self.recogniser.get_inputs()[0].name
        for start in range(0, len(order), params.batch):
            chosen = order[start : start + params.batch]
            widths = [
                min(params.max_width, math.ceil(REC_HEIGHT * crops[i].width / max(crops[i].height, 1))) for i in chosen
            ]
            batch_width = max(REC_MIN_WIDTH, *widths)
            batch = np.zeros((len(chosen), 3, REC_HEIGHT, batch_width), dtype=np.float32)
            for row, (index, width) in enumerate(zip(chosen, widths, strict=True)):
                resized = crops[index].resize((max(1, width), REC_HEIGHT), Image.Resampling.BILINEAR)
                pixels = np.asarray(resized, dtype=np.float32)[:, :, ::-1]
                batch[row, :, :, :width] = ((pixels / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
            output = self.recogniser.run(None, {name: batch})[0]
            for row, index in enumerate(chosen):
                text, confidence = ctc_decode(output[row], self.characters)
                text = text.strip()
                if text and confidence >= params.min_confidence:
                    lines.append(TextLine(text, confidence, tuple(boxes[index])))
        return lines


def ctc_decode(probabilities: np.ndarray, characters: Sequence[str]) -> tuple[str, float]:
    """Greedy CTC: the best class per step, repeats merged, blanks (class 0) dropped; and the kept steps' mean."""
    best = probabilities.argmax(axis=1)
    keep = np.ones(best.size, dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    keep &= best != 0
    if not keep.any():
        return "", 0.0
    confidence = float(probabilities.max(axis=1)[keep].mean())
    return "".join(characters[i] if i < len(characters) else "" for i in best[keep].tolist()), confidence


# ---------------------------------------------------------------------------------------------------- boxes


def boxes_from_probability(
    probability: np.ndarray, size: tuple[int, int], params: DetectParams
) -> list[tuple[int, int, int, int]]:
    """DB post-processing without OpenCV: threshold, dilate 2×2, label, score, unclip, scale to ``size``."""
    mask = probability > params.threshold
    dilated = mask.copy()  # OpenCV's 2x2 dilation anchors at the kernel's centre: a pixel lights its upper-left ones
    dilated[:-1, :] |= mask[1:, :]
    dilated[:, :-1] |= mask[:, 1:]
    dilated[:-1, :-1] |= mask[1:, 1:]
    components = label_boxes(dilated)
    map_h, map_w = probability.shape
    width, height = size
    found = []
    for top, left, bottom, right in components:  # inclusive pixel bounds on the map
        box_w, box_h = right - left + 1, bottom - top + 1
        if min(box_w, box_h) < params.min_side:
            continue
        score = float(
            probability[top : bottom + 1, left : right + 1][dilated[top : bottom + 1, left : right + 1]].mean()
        )
        if score < params.box_threshold:
            continue
        grow = box_w * box_h * params.unclip_ratio / (2 * (box_w + box_h))
        x0, x1 = (left - grow) * width / map_w, (right + 1 + grow) * width / map_w
        y0, y1 = (top - grow) * height / map_h, (bottom + 1 + grow) * height / map_h
        box = (max(0, round(x0)), max(0, round(y0)), min(width, round(x1)), min(height, round(y1)))
        if box[2] - box[0] > 3 and box[3] - box[1] > 3:
            found.append((score, box))
    found.sort(key=lambda pair: -pair[0])
    return [box for _, box in found[: params.max_boxes]]


def label_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (top, left, bottom, right; inclusive) of the 8-connected components of a bool mask.

    Runs of set pixels per row are found with numpy; runs touching a run of the row above (columns overlapping by
    at least a diagonal) are joined with a union-find. Work grows with the number of runs, not of pixels.
    """
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    change = np.diff(padded, axis=1)
    start_rows, start_cols = np.nonzero(change == 1)
    _, end_cols = np.nonzero(change == -1)  # same row order as the starts; end is exclusive
    if start_rows.size == 0:
        return []
    parent = list(range(start_rows.size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    rows, starts, ends = start_rows.tolist(), start_cols.tolist(), end_cols.tolist()
    row_begin = np.searchsorted(start_rows, np.arange(mask.shape[0] + 1)).tolist()
    for row in range(1, mask.shape[0]):
        above, here = range(row_begin[row - 1], row_begin[row]), range(row_begin[row], row_begin[row + 1])
        if not above or not here:
            continue
        j = above.start
        for i in here:
            while j < above.stop and ends[j] < starts[i]:  # run j ends left of run i's diagonal reach
                j += 1
            k = j
            while k < above.stop and starts[k] <= ends[i]:
                a, b = find(i), find(k)
                if a != b:
                    parent[b] = a
                k += 1
    roots = np.array([find(i) for i in range(len(parent))])
    labels, inverse = np.unique(roots, return_inverse=True)
    top = np.full(labels.size, mask.shape[0], dtype=np.int64)
    bottom = np.full(labels.size, -1, dtype=np.int64)
    left = np.full(labels.size, mask.shape[1], dtype=np.int64)
    right = np.full(labels.size, -1, dtype=np.int64)
    np.minimum.at(top, inverse, start_rows)
    np.maximum.at(bottom, inverse, start_rows)
    np.minimum.at(left, inverse, start_cols)
    np.maximum.at(right, inverse, end_cols - 1)
    del rows, starts, ends
    return list(zip(top.tolist(), left.tolist(), bottom.tolist(), right.tolist(), strict=True))
