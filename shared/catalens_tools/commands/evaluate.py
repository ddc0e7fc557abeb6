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
import io
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    parser.add_argument(
        "--no-subject", action="store_true", help="leave out the main-subject rows (they embed every photo again)"
    )
    parser.add_argument(
        "--subject-params",
        default=None,
        metavar="JSON",
        help="main-subject detector settings to try, e.g. '{\"margin\": 1.4}' (catalens.subject.SubjectParams)",
    )
    parser.add_argument(
        "--composites",
        type=int,
        default=60,
        metavar="N",
        help="grouped-results benchmark on N composites of this split's photos with 2-3 catalog products placed "
        "in each (default 60; 0: off)",
    )
    parser.add_argument("--groups", type=int, default=3, help="regions asked for per composite (default 3)")
    parser.add_argument(
        "--samples",
        type=int,
        default=10,
        metavar="N",
        help="calibrated rows are scored for N reference samples (and N query-domain seeds): min-max and mean",
    )
    parser.add_argument(
        "--no-seed", action="store_true", help="leave out the row calibrated from the synthetic seed (cold start)"
    )
    parser.add_argument(
        "--catalog-views",
        type=int,
        default=16,
        metavar="N",
        help="a row with each catalog vector the mean of the photo and N synthetic shopper views (0: off)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="embed every photo afresh (default: vectors are kept per model in --cache-dir, "
        "~/.cache/catalens/grocery without --levers)",
    )
    parser.add_argument(
        "--words",
        action="store_true",
        help="only the words rows: text search by product names, photo search fused with the text OCR reads on "
        "each photo (a grid of fusion rules), OCR latency (docs/evaluation.md, Words)",
    )
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
    from catalens.imaging import ImageLimits, load_region_and_preprocess
    from catalens.query_domain import MAX_REFERENCE
    from catalens.settings import load_settings
    from catalens.subject import SubjectParams, main_subject_box
    from catalens_tools.evaluation.cache import DEFAULT_CACHE_DIR, VectorCache
    from catalens_tools.evaluation.grocery import SUBJECT_CATALOG_ROW, SUBJECT_ROW, evaluate_grocery

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

    def embed_subjects(params: SubjectParams) -> Callable[[list[Path]], np.ndarray]:
        """Each photo's main subject (the whole photo when none stands apart), as search would embed it."""
        preprocess, limits = embedder.card.preprocess, ImageLimits()

        def locate(image: Any) -> tuple[int, int, int, int] | None:
            return main_subject_box(image, params)

        def embed(paths: list[Path]) -> np.ndarray:
            chunks = []
            for start in range(0, len(paths), args.batch):
                tensors = [
                    load_region_and_preprocess(path.read_bytes(), preprocess, limits, locate=locate).tensor
                    for path in paths[start : start + args.batch]
                ]
                chunks.append(embedder.embed(np.stack(tensors)))
            return np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), dtype=np.float32)

        return embed

    card = embedder.card
    model_key = f"{card.name}.{card.variant}.{card.fingerprint()}"
    cache_dir = None if args.no_cache else (args.cache_dir or DEFAULT_CACHE_DIR)
    root = Path(args.data).resolve()

    def cached(mode: str, embed: Callable[[list[Path]], np.ndarray]) -> Callable[[list[Path]], np.ndarray]:
        cache = VectorCache.for_model(cache_dir, model_key, mode)
        return cache.wrap(embed, key=lambda path: str(Path(path).resolve().relative_to(root)))

    cached_embed = cached("whole", embed_files)
    if args.words:
        return _words(args, cached_embed, embedder, model_dir, cache_dir, threads)
    variants = {}
    if not args.no_subject:
        params = SubjectParams(**json.loads(args.subject_params)) if args.subject_params else SubjectParams()
        subject = cached(params.key(), embed_subjects(params))
        variants[SUBJECT_ROW] = (subject, None)
        variants[SUBJECT_CATALOG_ROW] = (subject, subject)

    seed_fn = catalog_views_fn = None
    if not args.no_seed:
        seed_fn = _seed_vectors(embedder, cached_views(cache_dir, model_key, root, "seed-v1"), args.samples)
    if args.catalog_views:
        catalog_views_fn = _catalog_views(
            embedder, cached_views(cache_dir, model_key, root, "catalog-views-v1"), args.catalog_views
        )
    reference = MAX_REFERENCE if args.reference is None else args.reference
    result = evaluate_grocery(
        cached_embed,
        args.data,
        split=args.split,
        max_photos_per_class=args.max_per_class,
        reference=reference,
        copy_cosine=embedder.card.copy_cosine,
        photo_variants=variants,
        seed_fn=seed_fn,
        catalog_views_fn=catalog_views_fn,
        samples=args.samples,
    )
    if args.composites:
        result["composites"] = _composite_benchmark(args, embedder, cached_embed, cache_dir, model_key, reference)
    report = {
        "protocol": "grocery",
        "model": {"name": card.name, "variant": card.variant, "fingerprint": card.fingerprint(), "dim": card.dim},
        "threads": threads,
        "batch": args.batch,
        **result,
    }
    json.dump(_json_safe(report), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
    sys.stderr.write(rows_table(result["rows"], result["split"]))
    return 0


def cached_views(cache_dir: Path | None, model_key: str, root: Path, mode: str) -> Any:
    """The vector cache of synthetic views of the catalog (keys ``<image>#<sample>-<view>``)."""
    from catalens_tools.evaluation.cache import VectorCache

    return VectorCache.for_model(cache_dir, model_key, mode)


def _views_of_catalog(embedder: Any, cache: Any, catalog: list, sample: int, count: int, seed_of: Callable) -> Any:
    """``[count, n, d]``: ``count`` synthetic shoppers' photos of each catalog image, made as ingest makes its seed
    (:func:`catalens.shopper_views.seed_views`, the shelf of the products seen last, in catalog order) and embedded
    by the product path; cached per sample."""
    import numpy as np

    from catalens.imaging import decode_image, preprocess
    from catalens.shopper_views import SEED_PHOTO_SIDE, RecentShelf, seed_views

    keys = [[f"{image.path}#{sample}-{view}" for image in catalog] for view in range(count)]
    stored = cache.get([k for row in keys for k in row])
    if any(vector is None for vector in stored):
        shelf, fresh = RecentShelf(), {}
        for i, image in enumerate(catalog):
            photo = decode_image(image.path.read_bytes(), target_short_side=SEED_PHOTO_SIDE)  # as ingest decodes
            shots = seed_views(photo, count, seed=seed_of(sample, i), shelf=shelf)
            vectors = embedder.embed(np.stack([preprocess(shot, embedder.card.preprocess) for shot in shots]))
            fresh.update({keys[view][i]: vectors[view] for view in range(count)})
        cache.put(fresh)
        stored = cache.get([k for row in keys for k in row])
    return np.stack(stored).reshape(count, len(catalog), -1)


def _seed_vectors(embedder: Any, cache: Any, samples: int) -> Callable:
    """``catalog -> [samples, SEED_VIEWS · n, d]``: the query-domain seed ingest would make, ``samples`` times."""
    import numpy as np

    from catalens.query_domain import SEED_VIEWS

    def seeds(catalog: list) -> np.ndarray:
        made = [_views_of_catalog(embedder, cache, catalog, s, SEED_VIEWS, lambda s, i: [s, i]) for s in range(samples)]
        return np.stack([m.reshape(-1, m.shape[-1]) for m in made])

    return seeds


def _catalog_views(embedder: Any, cache: Any, count: int) -> Callable:
    """``catalog -> [count, n, d]``: synthetic shoppers' photos added to each catalog image's searched vector."""

    def views(catalog: list) -> Any:
        return _views_of_catalog(embedder, cache, catalog, 1000, count, lambda s, i: [s, i])

    return views


def _words(
    args: argparse.Namespace,
    embed: Callable[[list[Path]], Any],
    embedder: Any,
    model_dir: Path,
    cache_dir: Any,
    threads: int,
) -> int:
    """``--words``: the rows of :mod:`catalens_tools.evaluation.words` as JSON, the served rule beside the grid."""
    from catalens.ocr import TextReader
    from catalens.query_domain import MAX_REFERENCE
    from catalens.service.search import DEFAULT_FUSION
    from catalens_tools.evaluation.query_domain import calibrated_scores, reference_domain
    from catalens_tools.evaluation.words import OcrCache, evaluate_words, ocr_cache_name, reader_function

    reader = TextReader.from_dir(Path(model_dir) / "ocr", threads=threads)
    cache = OcrCache(None if cache_dir is None else Path(cache_dir) / ocr_cache_name(reader.detect_params))
    reference = MAX_REFERENCE if args.reference is None else args.reference

    def calibrate(photos: Any, shop: Any, others: Any) -> Any:
        domain = reference_domain(others, reference) if reference else None
        if domain is None:
            return None
        return calibrated_scores(domain, photos, shop, copy_cosine=embedder.card.copy_cosine)

    report = evaluate_words(
        embed,
        Path(args.data),
        split=args.split,
        read=reader_function(reader),
        ocr_cache=cache,
        calibrate=calibrate,
        rule=DEFAULT_FUSION,
        max_photos_per_class=args.max_per_class,
    )
    json.dump(_json_safe({"protocol": "grocery-words", **report}), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
    return 0


def _composite_benchmark(
    args: argparse.Namespace, embedder: Any, embed: Callable, cache_dir: Path | None, model_key: str, reference: int
) -> dict:
    """The grouped-results benchmark on composites of this split's photos (catalens_tools.evaluation.composites)."""
    import numpy as np
    from PIL import Image

    from catalens.groups import WINDOW_SIDES, candidate_windows
    from catalens_tools.evaluation.cache import VectorCache
    from catalens_tools.evaluation.composites import evaluate_composites, make_composites, window_vectors
    from catalens_tools.evaluation.grocery import load_grocery
    from catalens_tools.evaluation.query_domain import calibrated_scores, reference_domain

    data = load_grocery(args.data)
    catalog = sorted(data.catalog, key=lambda image: str(image.path))
    composites = make_composites(data.photos(args.split), catalog, args.composites, seed=0)
    catalog_vectors = embed([image.path for image in catalog])
    other = data.photos("train" if args.split == "val" else "val")
    domain = reference_domain(embed([image.path for image in other]), reference) if reference else None

    def rank(vectors: np.ndarray) -> np.ndarray:
        if domain is None:
            return vectors @ catalog_vectors.T
        return calibrated_scores(domain, vectors, catalog_vectors, copy_cosine=embedder.card.copy_cosine)

    cache = VectorCache.for_model(cache_dir, model_key, "composites-v1-" + "-".join(f"{s:g}" for s in WINDOW_SIDES))
    windows = []
    for composite in composites:
        size = Image.open(io.BytesIO(composite.data)).size
        boxes = candidate_windows(*size)
        keys = [f"{composite.key}#{j}" for j in range(len(boxes))]
        stored = cache.get(keys)
        if any(vector is None for vector in stored):
            boxes, vectors = window_vectors([composite], embedder.embed, embedder.card.preprocess)[0]
            cache.put(dict(zip(keys, vectors, strict=True)))
        else:
            vectors = np.stack(stored)
        windows.append((boxes, vectors))
    report = evaluate_composites(composites, windows, catalog_vectors, rank, groups=args.groups)
    report["scoring"] = "calibrated" if domain is not None else "plain"
    report["split"] = args.split
    return report


def rows_table(rows: list[dict], split: str) -> str:
    """The comparison rows as a Markdown table (stderr; the JSON on stdout has every number)."""

    def number(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else "—"

    def spread(row: dict, key: str) -> str:
        low_high_mean = (row.get("calibrated_spread") or {}).get(key)
        if not low_high_mean:
            return "—"
        low, high, mean = low_high_mean
        return f"{low:.3f}–{high:.3f} ({mean:.3f})"

    head = (
        f"| {split}: configuration | scoring | top-1 | top-5 | fruit top-1 | vegetables top-1 | packages top-1 "
        "| category acc | category ECE | top-1 over samples | top-5 over samples |\n"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|\n"]
    for row in rows:
        for scoring in ("plain", "calibrated"):
            numbers, category = row.get(scoring), row.get(f"{scoring}_category")
            if numbers is None:
                continue
            cells = [numbers.get(k) for k in ("top1", "top5", "fruit_top1", "vegetables_top1", "packages_top1")]
            cells += [category.get("accuracy"), category.get("ece")] if category else [None, None]
            spreads = [spread(row, "top1"), spread(row, "top5")] if scoring == "calibrated" else ["—", "—"]
            lines.append(
                f"| {row['name']} | {scoring} | " + " | ".join([*(number(c) for c in cells), *spreads]) + " |\n"
            )
    return "".join(lines)
