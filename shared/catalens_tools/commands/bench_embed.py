"""``catalens bench embed``: embedding throughput, model-only and end to end, against a naive pipeline.

Measures the serving model (the card ``Settings.model_dir`` holds) unless ``--model`` names another built model for
comparison; a smaller stand-in would report speeds the search and ingest functions never see. Prints JSON.
Everything runs on generated photos (product-like scenes with sensor noise, saved as phone-like JPEGs of 1 MP and
12 MP in a temporary folder), so the numbers are reproducible on any machine. Speed is measured here,
never asserted in tests.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from catalens_tools.cli import group

SIZES = {1: (1152, 864), 12: (4000, 3000)}  # megapixels → (width, height), 4:3 like a phone camera


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    commands = group(sub, groups, "bench", "benchmarks (print JSON)")
    parser = commands.add_parser(
        "embed",
        help="images/second: model-only and decode+preprocess+model, fp32/int8, 1/2 threads, batch 1/16",
        description="Throughput of the embedder on generated 1 MP and 12 MP JPEGs, and of a naive pipeline "
        "(full decode, no draft, a new onnxruntime session per image) measured in the same run.",
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="built models (default: Settings.model_dir)")
    parser.add_argument("--model", default=None, help="another built model to measure (default: the serving model)")
    parser.add_argument("--variants", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--megapixels", nargs="+", type=int, default=[1, 12], choices=sorted(SIZES))
    parser.add_argument("--model-images", type=int, default=48, help="images per model-only measurement")
    parser.add_argument("--e2e-images", type=int, default=32, help="images per end-to-end measurement (1 MP)")
    parser.add_argument("--e2e-images-12mp", type=int, default=16, help="images per end-to-end measurement (12 MP)")
    parser.add_argument("--naive-images", type=int, default=6, help="images through the naive pipeline per size")
    parser.add_argument("--photos", type=int, default=4, help="distinct generated photos per size (cycled)")
    parser.set_defaults(func=run)


def bench_photo(width: int, height: int, seed: int) -> bytes:
    """A phone-like JPEG: a generated product scene upscaled to full size, with fine texture and sensor noise."""
    import numpy as np
    from PIL import Image

    from catalens_tools.model.quantization_photos import synthetic_product_photo

    rng = np.random.default_rng(seed)
    scene = synthetic_product_photo(rng).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(scene, dtype=np.float32)
    pixels += rng.normal(0.0, 4.0, size=(height, width, 1)).astype(np.float32)  # luminance noise
    pixels += rng.normal(0.0, 2.0, size=(height, width, 3)).astype(np.float32)  # chroma noise
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _rate(count: int, work: Callable[[], None], *, warmup: Callable[[], None] | None = None) -> float:
    """Images per second of ``work`` (which processes ``count`` images), after one warm-up call."""
    (warmup or work)()
    started = time.perf_counter()
    work()
    return round(count / (time.perf_counter() - started), 1)


def _cycle(items: Sequence[Any], count: int) -> list[Any]:
    return [items[i % len(items)] for i in range(count)]


def _naive_preprocess(data: bytes, config: Any) -> Any:
    """How a typical tutorial prepares a photo: decode everything at full resolution, then resize and crop.

    Same output size and normalisation as the model's card, so only the way of getting there differs.
    """
    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")  # no draft, no EXIF
    scale = config.resize_short / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    size = config.size
    left, top = (image.width - size) // 2, (image.height - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32)
    return ((pixels - config.mean) / config.std).transpose(2, 0, 1)[None]


def _naive_embed(data: bytes, model_path: Path, config: Any) -> Any:
    """The tutorial pipeline: full decode, and a fresh onnxruntime session for every image."""
    import onnxruntime as ort

    batch = _naive_preprocess(data, config)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {session.get_inputs()[0].name: batch})[0]


def model_cards(model_dir: Path | None, variants: Sequence[str], name: str | None = None) -> dict[str, Any]:
    """The card of each variant to measure: the serving model's unless ``name`` picks another built model.

    Never builds a stand-in: a missing model is an error naming it, not a faster model measured in its place.
    """
    from catalens_tools.serving import serving_card

    cards = {variant: serving_card(model_dir, variant, name) for variant in variants}
    names = {card.name for card in cards.values()}
    if len(names) > 1:
        raise SystemExit(f"bench embed: the variants come from different models ({', '.join(sorted(names))})")
    return cards


def _model_only_rate(embedder: Any, inputs: Any, batch: int, images: int) -> float:
    """Preprocessed arrays through the session only."""
    import numpy as np

    block = np.stack(_cycle(list(inputs), batch))
    runs = max(1, images // batch)

    def work() -> None:
        for _ in range(runs):
            embedder.embed(block)

    return _rate(runs * batch, work)


def _end_to_end_rate(embedder: Any, photos: list[bytes], batch: int, images: int) -> float:
    """JPEG bytes → vectors through :meth:`Embedder.embed_images` (decode with draft, EXIF, resize, model)."""
    count = max(batch, images // batch * batch)
    sample = _cycle(photos, count)
    chunks = [sample[i : i + batch] for i in range(0, count, batch)]

    def work() -> None:
        for chunk in chunks:
            embedder.embed_images(chunk)

    return _rate(count, work, warmup=lambda: embedder.embed_images(photos[:1]))


def _decode_ms(photos: list[bytes], config: Any) -> dict[str, float]:
    """Decode + preprocess alone: the project's path (draft, EXIF) vs the naive full-resolution decode."""
    from catalens.imaging import load_and_preprocess

    def project() -> None:
        for data in photos:
            load_and_preprocess(data, config)

    def naive() -> None:
        for data in photos:
            _naive_preprocess(data, config)

    return {
        "project_decode_preprocess_ms": round(1000 / _rate(len(photos), project), 1),
        "naive_decode_preprocess_ms": round(1000 / _rate(len(photos), naive), 1),
    }


def _naive_rate(photos: list[bytes], model_path: Path, config: Any) -> float:
    def work() -> None:
        for data in photos:
            _naive_embed(data, model_path, config)

    return _rate(len(photos), work, warmup=lambda: _naive_embed(photos[0], model_path, config))


def _generate_photos(scratch: Path, megapixels: Sequence[int], count: int) -> dict[int, list[bytes]]:
    """Write the bench photos to disk and read them back, as a photo arrives from storage."""
    photos: dict[int, list[bytes]] = {}
    for mp in megapixels:
        width, height = SIZES[mp]
        paths = [scratch / f"photo-{mp}mp-{i}.jpg" for i in range(count)]
        for i, path in enumerate(paths):
            path.write_bytes(bench_photo(width, height, seed=1000 * mp + i))
        photos[mp] = [path.read_bytes() for path in paths]
    return photos


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import onnxruntime as ort

    from catalens.embedder import Embedder
    from catalens.imaging import load_and_preprocess
    from catalens.model.card import model_paths
    from catalens.settings import load_settings

    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)
    model_dir = args.model_dir or load_settings().model_dir
    cards = model_cards(model_dir, args.variants, args.model)
    config = next(iter(cards.values())).preprocess
    model_only: dict[str, Any] = {}
    end_to_end: dict[str, Any] = {}
    decode: dict[str, Any] = {}
    naive: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="catalens-bench-") as tmp:
        scratch = Path(tmp)
        photos = _generate_photos(scratch, args.megapixels, max(1, args.photos))
        inputs = np.stack([load_and_preprocess(p, config) for p in photos[args.megapixels[0]]])
        for variant, card in cards.items():
            model = model_paths(model_dir, card.name, variant)[0].read_bytes()
            for threads in args.threads:
                embedder = Embedder(model, card, threads=threads)
                for batch in args.batches:
                    where = (variant, f"threads_{threads}", f"batch_{batch}")
                    model_only.setdefault(where[0], {}).setdefault(where[1], {})[where[2]] = _model_only_rate(
                        embedder, inputs, batch, args.model_images
                    )
                    rates = end_to_end.setdefault(where[0], {}).setdefault(where[1], {}).setdefault(where[2], {})
                    for mp in args.megapixels:
                        images = args.e2e_images_12mp if mp >= 12 else args.e2e_images
                        rates[f"{mp}MP"] = _end_to_end_rate(embedder, photos[mp], batch, images)

        naive_card = cards.get("fp32") or next(iter(cards.values()))
        naive_path = model_paths(model_dir, naive_card.name, naive_card.variant)[0]
        for mp in args.megapixels:
            sample = _cycle(photos[mp], max(1, args.naive_images))
            decode[f"{mp}MP"] = _decode_ms(sample, config)
            naive_rate = _naive_rate(sample, naive_path, config)
            same = end_to_end.get("fp32", {}).get("threads_1", {}).get("batch_1", {}).get(f"{mp}MP")
            best = max(
                (r[f"{mp}MP"] for v in end_to_end.values() for t in v.values() for r in t.values()), default=None
            )
            naive[f"{mp}MP"] = {
                "naive_images_per_s": naive_rate,
                "project_fp32_1thread_batch1_images_per_s": same,
                "ratio_same_settings": round(same / naive_rate, 1) if same else None,
                "project_best_images_per_s": best,
                "ratio_best": round(best / naive_rate, 1) if best else None,
            }

    report = {
        "unit": "images per second (higher is better) unless the key says ms",
        "machine": {
            "cpus": os.cpu_count(),
            "onnxruntime": ort.__version__,
            "load_average_1min_before_after": [load_before, round(os.getloadavg()[0], 2)],  # > cpus: numbers are low
        },
        "model_dir": str(model_dir),
        "model": {
            "name": naive_card.name,
            "dim": naive_card.dim,
            "input_size": config.size,
            "serving": args.model is None,
            "fingerprints": {variant: card.fingerprint() for variant, card in cards.items()},
        },
        "model_only": model_only,
        "end_to_end": end_to_end,
        "decode": decode,
        "naive_pipeline": naive,
        "notes": "end_to_end = JPEG bytes -> decode (Image.draft) + EXIF + resize/crop + normalise + model, one "
        "session per configuration; naive = full decode, resize/crop, a new InferenceSession per image (fp32 if "
        "measured)",
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))
    return 0
