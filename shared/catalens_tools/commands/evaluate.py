"""``catalens eval grocery``: retrieval quality of the built model on the Grocery Store Dataset, as JSON.

Example::

    catalens eval grocery --data ../shared/data/grocery --variant int8
    catalens eval grocery --data ../shared/data/grocery --split train --threads 2
    catalens eval grocery --data ../shared/data/grocery --reference 30   # calibrated from 30 photos
    catalens eval grocery --data ../shared/data/grocery --levers --plot infra/quality_vs_latency.png

``--levers`` runs the lever study of issue 8 instead (:mod:`catalens_tools.evaluation.levers`): every configuration
(pooling, crops, flips, catalog views, whitening, re-ranking, model size) on val and train-as-queries, with embed
and search ms/query and the label-free self-check; JSON on stdout, forward passes cached in ~/.cache/catalens.

Without ``--levers``, photo→catalog is reported plain and ``calibrated`` (query-domain calibration as search applies
it once a query log exists; the other split's photos, labels unread, are the log).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from catalens_tools.cli import group


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    evals = group(sub, groups, "eval", "retrieval-quality evaluations (print JSON)")
    parser = evals.add_parser(
        "grocery",
        help="photo→catalog and photo→photo retrieval on the Grocery Store Dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, type=Path, help="the grocery folder, e.g. ../shared/data/grocery")
    parser.add_argument("--variant", choices=("fp32", "int8"), default=None, help="model variant (default: settings)")
    parser.add_argument("--model-dir", type=Path, default=None, help="built model folder (default: settings)")
    parser.add_argument(
        "--split",
        choices=("val", "train"),
        default="val",
        help="query photos: val (the protocol; photo→photo catalog = train) or train (catalog = val)",
    )
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: settings)")
    parser.add_argument("--batch", type=int, default=32, help="images per model call (default 32)")
    parser.add_argument(
        "--max-per-class", type=int, default=None, metavar="N", help="only the first N photos per class and split"
    )
    parser.add_argument(
        "--reference",
        type=int,
        default=None,
        metavar="N",
        help="also report photo→catalog with query-domain calibration, N photos of the other split (unlabelled) as "
        "the query log (default 256; 0: off)",
    )
    parser.add_argument("--name", default=None, help="model name in the model folder (default: the default model)")
    levers = parser.add_argument_group("lever study (--levers)")
    levers.add_argument("--levers", action="store_true", help="evaluate every retrieval configuration in one table")
    levers.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default ~/.cache/catalens/levers)")
    levers.add_argument("--only", nargs="+", default=None, metavar="TEXT", help="rows whose name contains TEXT")
    levers.add_argument("--table", type=Path, default=None, help="also write the Markdown table to this file")
    levers.add_argument("--plot", type=Path, default=None, help="also draw quality vs latency to this PNG")
    parser.set_defaults(func=run)


def _json_safe(value):
    """NaN/inf are not JSON; an undefined metric prints as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def run(args: argparse.Namespace) -> int:
    if args.levers:
        from catalens_tools.evaluation.levers import run_command

        return run_command(args)
    import numpy as np

    from catalens.embedder import Embedder
    from catalens.query_domain import MAX_REFERENCE
    from catalens.settings import load_settings
    from catalens_tools.evaluation.grocery import evaluate_grocery

    settings = load_settings()
    model_dir = args.model_dir or settings.model_dir
    variant = args.variant or settings.model_variant
    threads = args.threads or settings.onnx_threads
    embedder = Embedder.from_dir(model_dir, variant, threads=threads, name=args.name)

    def embed_files(paths: list[Path]) -> np.ndarray:
        chunks = []
        for start in range(0, len(paths), args.batch):
            batch = [path.read_bytes() for path in paths[start : start + args.batch]]
            chunks.append(embedder.embed_images(batch))
        return np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), dtype=np.float32)

    reference = MAX_REFERENCE if args.reference is None else args.reference
    result = evaluate_grocery(
        embed_files,
        args.data,
        split=args.split,
        max_photos_per_class=args.max_per_class,
        reference=reference,
        copy_cosine=embedder.card.copy_cosine,
    )
    card = embedder.card
    report = {
        "protocol": "grocery",
        "model": {"name": card.name, "variant": card.variant, "fingerprint": card.fingerprint(), "dim": card.dim},
        "threads": threads,
        "batch": args.batch,
        **result,
    }
    json.dump(_json_safe(report), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
    return 0
