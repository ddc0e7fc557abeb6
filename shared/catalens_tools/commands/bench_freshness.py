"""``catalens bench freshness``: seconds from a photo upload to its first appearance in search results (local stack).

Starts the local stack in a temporary data folder (demo catalog loaded), then, one at a time, PUTs a new photo into the
catalog bucket (as a merchant would) and searches with that same photo over HTTP until the new item is among the
hits. Everything a real upload goes through is in the number: the S3 notification, SQS, the event source mapping's
batching window, ingest (decode, embed, delta write) and the search function's index revalidation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    from catalens_tools.cli import group

    parser = group(sub, groups, "bench", "benchmarks").add_parser(
        "freshness", help="p50/p95 seconds from an upload to its first appearance in search results (local stack)"
    )
    parser.add_argument("--uploads", type=int, default=20, help="photos to upload, one after another (default 20)")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between searches while waiting (default 0.1)")
    parser.add_argument("--timeout", type=float, default=30.0, help="give up on one photo after this many seconds")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between uploads (default 0.5)")
    parser.add_argument("--data-dir", type=Path, default=None, help="stack data folder (default: a temporary one)")
    parser.set_defaults(func=run)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _photo(seed: int) -> bytes:
    """A new product photo: a demo photo cropped, recoloured and noised by ``seed`` (unique bytes and vector)."""
    import io

    import numpy as np
    from PIL import Image, ImageOps

    from catalens_tools.local.demo import PRODUCTS, skimage_data_dir

    rng = np.random.default_rng(seed)
    product = PRODUCTS[seed % len(PRODUCTS)]
    with Image.open(skimage_data_dir() / product.source) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    left, top = int(rng.integers(0, width // 4)), int(rng.integers(0, height // 4))
    image = ImageOps.fit(image.crop((left, top, left + width * 3 // 4, top + height * 3 // 4)), (480, 480))
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.8, 1.2, size=3) + rng.normal(0, 6, (480, 480, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    import tempfile
    import urllib.request

    from catalens_tools.local.stack import LocalConfig, LocalStack

    with tempfile.TemporaryDirectory(prefix="catalens-bench-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        stack = LocalStack(LocalConfig(data_dir=data_dir, port=0, moto_port=0, fresh=True, quiet=True))
        info = stack.start()
        try:
            stack.wait_idle(timeout=120)

            def search(photo: bytes) -> tuple[list[str], float]:
                request = urllib.request.Request(
                    f"{info.api_url}/search?k=5",
                    data=photo,
                    method="POST",
                    headers={"x-api-key": info.api_key, "Content-Type": "image/jpeg"},
                )
                started = time.perf_counter()
                with urllib.request.urlopen(request, timeout=30) as response:
                    hits = json.loads(response.read())["hits"]
                return [hit["item_id"] for hit in hits], time.perf_counter() - started

            latencies: list[float] = []
            search_seconds: list[float] = []
            missed = 0
            for number in range(args.uploads):
                item_id = f"fresh-{number:03d}-{int(time.time())}"
                photo = _photo(1000 + number)
                search(photo)  # warm: the query's own embedding cost is not what is measured
                uploaded = time.perf_counter()
                stack.s3.put_object(
                    Bucket=info.catalog_bucket, Key=f"{item_id}.jpg", Body=photo, ContentType="image/jpeg"
                )
                found = None
                while found is None:
                    ids, took = search(photo)
                    search_seconds.append(took)
                    if item_id in ids:
                        found = time.perf_counter() - uploaded
                    elif time.perf_counter() - uploaded > args.timeout:
                        break
                    else:
                        time.sleep(args.poll)
                if found is None:
                    missed += 1
                    line = "missed"
                else:
                    latencies.append(found)
                    line = f"{found:.2f}s"
                print(f"  {number + 1}/{args.uploads}: {line}", file=sys.stderr)
                time.sleep(args.pause)
            ingest = next(s for s in stack.specs.values() if any(e.get("Type") == "SQS" for e in s.events.values()))
            window = next(e["Properties"].get("MaximumBatchingWindowInSeconds", 0) for e in ingest.events.values())
            result = {
                "benchmark": "freshness",
                "uploads": args.uploads,
                "found": len(latencies),
                "missed": missed,
                "p50_seconds": round(_percentile(latencies, 0.5), 3),
                "p95_seconds": round(_percentile(latencies, 0.95), 3),
                "max_seconds": round(max(latencies), 3) if latencies else None,
                "min_seconds": round(min(latencies), 3) if latencies else None,
                "search_request_p50_ms": round(_percentile(search_seconds, 0.5) * 1000, 1),
                "poll_interval_seconds": args.poll,
                "catalog_items": stack.status().get("item_count"),
                "sqs_batching_window_seconds": window,
                "manifest_ttl_seconds": stack.functions[stack.search_function_id].environment.get(
                    "CATALENS_MANIFEST_TTL_SECONDS", "2 (default)"
                ),
            }
        finally:
            stack.stop(save=False)
    print(json.dumps(result, indent=1))
    return 0 if missed == 0 else 1
