"""int8 variant of the fp32 model: static, per-channel, QDQ quantisation with onnxruntime's quantiser.

Measured on this project (see the report of issue 2): per-channel static QDQ keeps the embedding close to fp32 and
runs ~2× faster on CPU; per-tensor or dynamic quantisation ruin the depthwise convolutions, whose per-channel
weight ranges differ by orders of magnitude once batch norm is folded in.

Activation ranges come from :mod:`catalens_tools.model.quantization_photos` photos (generated from a seed, never
evaluation data), preprocessed by the project's own :func:`catalens.imaging.preprocess`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from catalens.imaging import PreprocessConfig, preprocess
from catalens_tools.model.efficientnet import INPUT_NAME
from catalens_tools.model.quantization_photos import synthetic_product_photos

DEFAULT_CALIBRATION_IMAGES = 96
DEFAULT_CALIBRATION_SEED = 20240601
CALIBRATION_BATCH = 8


class _NoPreProcessNag(logging.Filter):
    """Drop the quantiser's "consider pre-processing" warning: quant_pre_process changed neither the cosine to fp32
    nor the speed of this graph when measured (it is already shape-complete and BN-folded)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantiser() -> Iterator[None]:
    root, nag = logging.getLogger(), _NoPreProcessNag()
    root.addFilter(nag)
    try:
        yield
    finally:
        root.removeFilter(nag)


class _BatchReader(CalibrationDataReader):
    """Feeds preprocessed calibration batches to the quantiser's calibration session."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def calibration_batches(
    config: PreprocessConfig, count: int = DEFAULT_CALIBRATION_IMAGES, seed: int = DEFAULT_CALIBRATION_SEED
) -> list[np.ndarray]:
    """Generated product photos → model inputs, in batches of :data:`CALIBRATION_BATCH`."""
    inputs = [preprocess(image, config) for image in synthetic_product_photos(count, seed)]
    return [np.stack(inputs[i : i + CALIBRATION_BATCH]) for i in range(0, len(inputs), CALIBRATION_BATCH)]


def quantize_int8(
    fp32_model: bytes,
    batches: list[np.ndarray],
    *,
    per_channel: bool = True,
    quantize_classifier: bool = False,
) -> tuple[bytes, dict[str, Any]]:
    """Quantise the fp32 ONNX bytes; returns the int8 model bytes and a description for the model card.

    Parameters
    ----------
    fp32_model
        The fp32 model as built by :func:`catalens_tools.model.efficientnet.build_onnx`.
    batches
        Preprocessed calibration batches ``float32[n, 3, S, S]``.
    per_channel
        Per-output-channel weight scales (needed: per-tensor collapses the depthwise convs).
    quantize_classifier
        Also quantise the ``logits`` Gemm; off by default, since only the embedding is served. The colour
        histogram's nodes (``colour.*``) are never quantised.
    """
    model = onnx.load_from_string(fp32_model)
    exclude = [] if quantize_classifier else [n.name for n in model.graph.node if n.op_type == "Gemm"]
    # the colour histogram (+colour pooling) stays fp32: a few tiny ops, no speed to win, and 8-bit steps would blur
    # its narrow chroma bins
    exclude += [n.name for n in model.graph.node if n.name.startswith("colour.")]
    with tempfile.TemporaryDirectory(prefix="catalens-quant-") as tmp, _quiet_quantiser():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32_model)
        quantize_static(
            str(src),
            str(dst),
            _BatchReader(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
        quantized = dst.read_bytes()
    description = {
        "method": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "per_channel": per_channel,
        "activations": "uint8",
        "weights": "int8",
        "calibration": "minmax",
        "calibration_images": int(sum(len(b) for b in batches)),
        "calibration_source": "catalens_tools.model.quantization_photos.synthetic_product_photos",
        "classifier_quantized": quantize_classifier,
    }
    return quantized, description
