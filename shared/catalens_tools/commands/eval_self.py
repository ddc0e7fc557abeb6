"""``catalens eval self``: a merchant's own retrieval quality, no labels needed.

The method is :mod:`catalens_tools.evaluation.selfcheck`.

Shopper-like query photos are made from the catalog itself (product cut out and put on a shelf, rotated, cropped,
relit, blurred, JPEG-compressed); each must find the item it came from. Prints JSON: recall@1/@5, the items most
often missed and the pairs most often confused.

Examples::

    catalens eval self --catalog ./my-catalog            # a folder of product photos
    catalens eval self --local                           # the local stack's catalog (saved in .catalens/state)
    catalens eval self --catalog ../shared/data/grocery/iconic-images-and-descriptions --variant int8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from catalens_tools.cli import group

LOCAL_CATALOG_STATE = Path("state") / "s3" / "CatalogBucket"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    evals = group(sub, groups, "eval", "retrieval-quality evaluations (print JSON)")
    parser = evals.add_parser(
        "self",
        help="label-free self-check: shopper-like photos made from a catalog must find their own item",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--catalog", type=Path, help="a folder of product photos (searched recursively)")
    source.add_argument(
        "--local",
        nargs="?",
        const=Path(".catalens"),
        type=Path,
        metavar="DATA_DIR",
        help="the local stack's catalog bucket as saved at its last clean stop (default data dir: .catalens)",
    )
    parser.add_argument("--variant", choices=("fp32", "int8"), default=None, help="model variant (default: settings)")
    parser.add_argument("--model-dir", type=Path, default=None, help="built model folder (default: settings)")
    parser.add_argument("--name", default=None, help="model name in the folder (default: the default model)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: settings)")
    parser.add_argument("--per-item", type=int, default=3, help="query photos made from each sampled item")
    parser.add_argument("--max-items", type=int, default=500, help="items that get queries (all stay candidates)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the item sample and the augmentations")
    parser.set_defaults(func=run)


def catalog_photos(folder: Path) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every photo under ``folder``, by path (names relative to it)."""
    from catalens.errors import CatalensError

    if not folder.is_dir():
        raise CatalensError(f"catalog folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    return [(str(p.relative_to(folder)), p.read_bytes()) for p in files]


def local_photos(data_dir: Path) -> list[tuple[str, bytes]]:
    """Photos of the local stack's catalog bucket from its saved state (``<data dir>/state/s3/CatalogBucket``)."""
    from catalens.errors import CatalensError

    folder = data_dir / LOCAL_CATALOG_STATE
    try:
        entries = json.loads((folder / "index.json").read_text())
    except (OSError, ValueError) as exc:
        raise CatalensError(
            f"no saved local catalog in {folder} ({exc}); run `catalens local` and stop it with Ctrl-C once"
        ) from exc
    photos = []
    for key in sorted(entries):
        entry = entries[key]
        if entry.get("content_type", "").startswith("image/") or key.lower().endswith(PHOTO_SUFFIXES):
            path = folder / "objects" / entry["file"]
            if path.is_file():
                photos.append((key, path.read_bytes()))
    return photos


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from catalens.embedder import Embedder
    from catalens.errors import CatalensError, ImageError
    from catalens.settings import load_settings
    from catalens_tools.evaluation.selfcheck import SelfCheckConfig, run_self_check

    settings = load_settings()
    embedder = Embedder.from_dir(
        args.model_dir or settings.model_dir,
        args.variant or settings.model_variant,
        threads=args.threads or settings.onnx_threads,
        name=args.name,
    )
    named = catalog_photos(args.catalog) if args.catalog else local_photos(args.local)
    started = time.perf_counter()
    usable, vectors, skipped = [], [], []
    for name, data in named:  # a photo ingest would refuse is not part of the searchable catalog either
        try:
            vectors.append(embedder.embed_images([data])[0])
            usable.append((name, data))
        except ImageError as exc:
            skipped.append({"photo": name, "error": exc.code})
    if len(usable) < 2:
        raise CatalensError(f"the catalog has {len(usable)} usable photo(s); a self-check needs at least two")

    def embed(photos: list[bytes]) -> np.ndarray:
        return embedder.embed_images(photos)

    config = SelfCheckConfig(queries_per_item=args.per_item, max_items=args.max_items, seed=args.seed)
    result = run_self_check(
        [d for _, d in usable], embed, config, catalog_vectors=np.stack(vectors), names=[n for n, _ in usable]
    )
    card = embedder.card
    report = {
        "check": "self",
        "source": str(args.catalog or args.local),
        "model": {"name": card.name, "variant": card.variant, "fingerprint": card.fingerprint()},
        "seed": args.seed,
        "skipped_photos": skipped,
        **result,
        "seconds": round(time.perf_counter() - started, 1),
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
