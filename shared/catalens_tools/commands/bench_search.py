"""``catalens bench search``: warm latency of the real search handler, event in → response out, in-process.

For each catalog size a synthetic index is built as the builder builds it (clustered unit vectors at the serving
model's dimension, ``BuildParams()``: no projection, a neighbour graph above the builder's threshold; ``--index-dim``
instead lifts clustered vectors of that dimension into the model's space through a fixed orthonormal projection, as a
PCA snapshot would, for comparison), published through the index protocol into an in-process moto S3, and
``functions/search/app.py`` is imported as Lambda would at a cold start. Then one 1 MP JPEG query, sent as API
Gateway sends it (REST proxy event, base64 body), is timed warm: p50/p99 of the whole handler call, plus the
handler's own breakdown (decode, locate, embed, search, rank) from the response body. The same query with
``region=auto`` (main subject) is timed alternately too, and its overhead over plain reported (``--no-subject``: not);
``--groups N`` times ``groups=N`` the same way. ``--text`` gives the items synthetic titles and descriptions (a Zipf
vocabulary, brands, sizes) and times text queries (``GET /search?q=``: two or three words of an item's title, or one
frequent word) instead of the photo, plus the first text query of a process, which builds the lexical index. ``--user``
also times the
same query personalised for a shopper whose profile (20 purchases) sits in an in-process moto DynamoDB table, read
through the real store; plain and personalised requests alternate, and the report gives the overhead.

The index carries a query domain, as a serving index does from its first day: ``--calibration log`` (the default)
folds 256 query samples into the reference the way the builder does, so each photo query pays the calibration
search serves once shoppers have searched (centring and the reference's hubness); ``seeded`` publishes ingest's seed
instead (the first day: centring only); ``none`` publishes no domain. With a domain, uncalibrated requests
(``calibrate=false``) alternate with the served ones and the report gives what calibration adds
(``calibration_overhead_ms``).
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from catalens_tools.cli import group

REPO_ROOT = Path(__file__).resolve().parents[3]
CALIBRATIONS = ("log", "seeded", "none")


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    commands = group(sub, groups, "bench", "benchmarks (print JSON)")
    parser = commands.add_parser(
        "search", help="warm search-handler latency p50/p99 for a 1 MP JPEG query, 10k and 100k items"
    )
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated catalog sizes")
    parser.add_argument("--requests", type=int, default=60, help="timed requests per size (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--megapixels", type=float, default=1.0, help="query photo size")
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--model-dir", type=Path, default=None, help="built models (default: Settings.model_dir)")
    parser.add_argument("--variant", default=None, help="fp32 or int8 (default: Settings.model_variant)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--index-dim", type=int, default=None, help="project to this index dimension (default: none, as the builder)"
    )
    parser.add_argument("--user", default=None, help="also time the query personalised for this shopper (moto profile)")
    parser.add_argument(
        "--no-subject", action="store_true", help="leave out timing region=auto (main-subject search) beside plain"
    )
    parser.add_argument("--groups", type=int, default=0, metavar="N", help="also time groups=N (default: not)")
    parser.add_argument(
        "--text", action="store_true", help="time text queries (GET /search?q=) over synthetic titles and descriptions"
    )
    parser.add_argument(
        "--calibration",
        choices=CALIBRATIONS,
        default="log",
        help="the query domain the index carries: a query log's reference (default, as served once shoppers have "
        "searched), ingest's seed (a shop's first day) or none",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from catalens.settings import load_settings

    settings = load_settings()
    model_dir = args.model_dir or settings.model_dir
    variant = args.variant or settings.model_variant
    _quiet_aws_environment(model_dir, variant)

    from moto import mock_aws

    results: dict[str, Any] = {}
    query = _query_jpeg(args.megapixels, args.seed)
    with mock_aws():
        import boto3

        from catalens.embedder import Embedder

        embedder = Embedder.from_dir(Path(model_dir), variant, threads=settings.onnx_threads)
        s3 = boto3.client("s3", region_name="us-east-1")
        dynamodb = _profiles_table(boto3.client("dynamodb", region_name="us-east-1")) if args.user else None
        for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
            bucket = f"bench-index-{size}"
            s3.create_bucket(Bucket=bucket)
            build_seconds = _publish_synthetic_index(s3, bucket, size, embedder, args)
            domain = _publish_query_domain(s3, bucket, embedder, args)
            os.environ["INDEX_BUCKET"] = bucket
            if dynamodb is not None:
                _put_profile(dynamodb, s3, bucket, args)
            handler, context = _cold_start()
            if args.text:
                measured = _measure_text(handler, context, args, size)
            else:
                measured = _measure(handler, context, query, args, calibrated=domain is not None)
            results[str(size)] = measured | {"index_build_s": round(build_seconds, 1), "query_domain": domain}
            del handler
    report = {
        "query": {"megapixels": args.megapixels, "jpeg_bytes": len(query), "k": args.k},
        "model": {"variant": variant, "dim": int(embedder.dim), "onnx_threads": settings.onnx_threads},
        "index": index_layout(args, int(embedder.dim)),
        "requests_per_size": args.requests,
        "cpu": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "sizes": results,
        "numpy": np.__version__,
    }
    print(json.dumps(report, indent=2))
    return 0


def _quiet_aws_environment(model_dir: Path, variant: str) -> None:
    """Fake credentials for in-process moto; handler logs and metrics off so stdout is only the JSON report."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_SESSION_TOKEN": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
        "POWERTOOLS_LOG_LEVEL": "ERROR",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_SERVICE_NAME": "search",
        "CATALENS_MODEL_DIR": str(model_dir),
        "CATALENS_MODEL_VARIANT": variant,
        "INDEX_PREFIX": "index/",
    }.items():
        os.environ[name] = value
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)


def _query_jpeg(megapixels: float, seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    width = round((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = round(width * 3 / 4)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width * 200, y / height * 200, (1 - x / width) * 200], axis=-1)
    pixels += 8 * rng.standard_normal(pixels.shape, dtype=np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, y0 = rng.uniform(0, 0.8) * width, rng.uniform(0, 0.8) * height
        box = (x0, y0, x0 + rng.uniform(0.1, 0.3) * width, y0 + rng.uniform(0.1, 0.3) * height)
        draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def index_layout(args: argparse.Namespace, model_dim: int) -> dict[str, Any]:
    """What index the bench builds: the builder's (model space, ``BuildParams()``) unless ``--index-dim``."""
    from catalens.index.build import GRAPH_THRESHOLD

    if args.index_dim:
        projection = "orthonormal model->index (as a PCA snapshot)"
        return {"dim": args.index_dim, "projection": projection, "as_builder": False}
    return {"dim": model_dim, "projection": None, "graph_from_items": GRAPH_THRESHOLD, "as_builder": True}


def build_params(args: argparse.Namespace, model_dim: int) -> tuple[Any, Any]:
    """(BuildParams, basis or None): the builder's defaults, plus a fixed projection when ``--index-dim`` asks."""
    import numpy as np

    from catalens.index.build import BuildParams
    from catalens.index.reduce import Projection

    params = BuildParams(n_jobs=args.build_threads, seed=args.seed)
    if not args.index_dim:
        return params, None
    rng = np.random.default_rng(args.seed)
    basis, _ = np.linalg.qr(rng.standard_normal((model_dim, args.index_dim)).astype(np.float32))
    projection = Projection("pca", np.zeros(model_dim, np.float32), basis, np.ones(args.index_dim, np.float32))
    return replace(params, projection=projection), basis


def _publish_synthetic_index(s3: Any, bucket: str, size: int, embedder: Any, args: argparse.Namespace) -> float:
    """Build the snapshot as the builder does and swap it in with the real protocol."""
    from catalens.composition import index_store
    from catalens.index.build import build_snapshot
    from catalens.index.records import ItemRecord
    from catalens.settings import Settings
    from catalens_tools.synthetic import clustered_vectors

    params, basis = build_params(args, int(embedder.dim))
    if basis is None:
        model_vectors, labels = clustered_vectors(size, int(embedder.dim), seed=args.seed)
    else:
        index_vectors, labels = clustered_vectors(size, args.index_dim, seed=args.seed)
        model_vectors = index_vectors @ basis.T  # lifted: projecting gives index_vectors back
        del index_vectors

    words = synthetic_texts(size, args.seed) if args.text else None

    def records() -> Any:
        for i in range(size):
            fields = {"title": f"item {i}", "category": f"c{int(labels[i]) % 40:02d}", "price": float(i % 500)}
            if words is not None:
                fields["title"], fields["description"] = words[i]
            yield ItemRecord(f"item-{i:07d}", model_vectors[i], fields, f"catalog/item-{i:07d}.jpg", "e", "1")

    def build(_records: Any, *, model_fingerprint: str, previous: Any = None, version: str | None = None, **_: Any):
        return build_snapshot(
            records(),
            model_fingerprint=model_fingerprint,
            version=version,
            params=params,
        )

    store = index_store(Settings(index_bucket=bucket, index_prefix="index/"), s3)
    started = time.perf_counter()
    store.compact(build, model_fingerprint=embedder.fingerprint, force=True)
    return time.perf_counter() - started


def _publish_query_domain(s3: Any, bucket: str, embedder: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    """Give the index the query domain ``--calibration`` names, through the stores search and ingest write to and
    the builder's refresh; what the reference holds, or None for ``none``."""
    from catalens.composition import index_store
    from catalens.query_domain import MAX_REFERENCE, SEED_ITEMS, SEED_VIEWS, SeedSample, seed_item_hash
    from catalens.settings import Settings
    from catalens_tools.synthetic import clustered_vectors

    if args.calibration == "none":
        return None
    queries = index_store(Settings(index_bucket=bucket, index_prefix="index/"), s3).queries
    fingerprint = embedder.fingerprint
    if args.calibration == "log":
        # shoppers' photos: unlabelled vectors of the model's dimension, as many as the reference keeps
        samples, _ = clustered_vectors(MAX_REFERENCE, int(embedder.dim), seed=args.seed + 1)
        for vector in samples:
            queries.write_query_sample(vector, model_fingerprint=fingerprint)
    else:
        seeds, _ = clustered_vectors(SEED_ITEMS * SEED_VIEWS, int(embedder.dim), seed=args.seed + 1)
        for n, vector in enumerate(seeds):
            item_hash = seed_item_hash(f"item-{n // SEED_VIEWS:07d}", fingerprint)
            queries.write_seed_sample(SeedSample(item_hash, n % SEED_VIEWS, vector), model_fingerprint=fingerprint)
    entry = queries.refresh_query_domain()
    if entry is None:
        raise SystemExit(f"bench search: no query domain could be built for --calibration {args.calibration}")
    domain = queries.load_query_domain(entry)
    return {"calibration": args.calibration, "reference": len(domain), "seeded": domain.seeded}


def _profiles_table(client: Any) -> Any:
    """The profiles table (with its siblings) in moto; the handler finds it through ``PROFILES_TABLE``."""
    from catalens.adapters.dynamodb import create_tables

    create_tables(client, events="bench-events", profiles="bench-profiles", cooccurrence="bench-cooccurrence")
    os.environ["PROFILES_TABLE"] = "bench-profiles"
    return client


def _put_profile(dynamodb: Any, s3: Any, bucket: str, args: argparse.Namespace) -> None:
    """``args.user`` buys 20 items of the index just published (written by the real updater, so in its space)."""
    from catalens.adapters.dynamodb import DynamoProfileStore
    from catalens.composition import index_store
    from catalens.index.cache import IndexCache
    from catalens.profiles import ProfileUpdater, ShopperEvent, index_lookup
    from catalens.settings import Settings

    view = IndexCache(index_store(Settings(index_bucket=bucket, index_prefix="index/"), s3), background=False).view
    store = DynamoProfileStore(dynamodb, "bench-profiles")
    store.delete(args.user)  # a fresh profile per catalog size
    updater = ProfileUpdater(store=store, lookup=index_lookup(view), space=lambda: view().index_space)
    now = int(time.time() * 1000)
    for n in range(20):
        updater.handle(ShopperEvent(args.user, f"bench{n}", now + n, "purchase", f"item-{n * 37:07d}"))


def _cold_start() -> tuple[Any, Any]:
    from catalens_tools.local.runtime import LambdaContext, load_handler

    handler = load_handler(REPO_ROOT / "functions" / "search" / "app.py", f"bench_search_{uuid.uuid4().hex[:8]}")
    return handler, LambdaContext("catalens-bench-search", memory_limit_in_mb=2048, timeout_seconds=29)


def _timed_call(
    handler: Any, context: Any, template: dict[str, Any], parameters: dict[str, str]
) -> tuple[float, dict[str, Any]]:
    """One request with ``parameters`` as its query string: (milliseconds in the handler, the JSON body); a non-200
    answer ends the benchmark, since its timing would measure an error path."""
    event = copy.deepcopy(template)
    event["queryStringParameters"] = parameters
    event["multiValueQueryStringParameters"] = {key: [value] for key, value in parameters.items()}
    started = time.perf_counter()
    response = handler(event, context)
    elapsed = (time.perf_counter() - started) * 1000
    if response["statusCode"] != 200:
        print(f"bench search: handler answered {response['statusCode']}: {response['body']}", file=sys.stderr)
        raise SystemExit(1)
    return elapsed, json.loads(response["body"])


def _measure(handler: Any, context: Any, query: bytes, args: argparse.Namespace, *, calibrated: bool) -> dict[str, Any]:
    """Alternated timings of the served photo query and its variants; with ``calibrated`` the served query must
    come back calibrated (else the numbers would time a path search does not serve) and ``uncalibrated``
    (``calibrate=false``) is timed beside it."""
    template = json.loads((REPO_ROOT / "tests" / "events" / "apigw_search_image.json").read_text())
    template["body"] = base64.b64encode(query).decode()
    variants = {"plain": {"k": str(args.k)}}
    if calibrated:
        variants["uncalibrated"] = {"k": str(args.k), "calibrate": "false"}
    if args.user:
        variants["personalized"] = {"k": str(args.k), "user_id": args.user}
    if not args.no_subject:
        variants["subject"] = {"k": str(args.k), "region": "auto"}
    if args.groups:
        variants["groups"] = {"k": str(args.k), "groups": str(args.groups)}
    latencies: dict[str, list[float]] = {name: [] for name in variants}
    stages: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    item_count = 0
    for index in range(args.warmup + args.requests):
        for name, parameters in variants.items():  # alternated: drift on a shared machine hits both alike
            elapsed, body = _timed_call(handler, context, template, parameters)
            if body["personalized"] != (name == "personalized"):
                print(f"bench search: {name} request answered personalized={body['personalized']}", file=sys.stderr)
                raise SystemExit(1)
            if name in ("plain", "uncalibrated") and body["calibrated"] != (calibrated and name == "plain"):
                print(f"bench search: {name} request answered calibrated={body['calibrated']}", file=sys.stderr)
                raise SystemExit(1)
            if index < args.warmup:
                continue
            latencies[name].append(elapsed)
            item_count = body["item_count"]
            for stage, value in body["timings_ms"].items():
                stages[name].setdefault(stage, []).append(value)
    result = {"items": item_count} | _summary(latencies["plain"], stages["plain"])
    if args.user:
        personal = _summary(latencies["personalized"], stages["personalized"])
        result["personalized"] = personal
        result["personalization_overhead_ms"] = {
            stat: round(personal[f"{stat}_ms"] - result[f"{stat}_ms"], 2) for stat in ("p50", "mean")
        }
    if calibrated:  # what calibration adds: the served search against the same request with calibrate=false
        uncalibrated = _summary(latencies["uncalibrated"], stages["uncalibrated"])
        result["uncalibrated"] = uncalibrated
        result["calibration_overhead_ms"] = {
            stat: round(result[f"{stat}_ms"] - uncalibrated[f"{stat}_ms"], 2) for stat in ("p50", "mean")
        }
    for name in ("subject", "groups"):  # region=auto (main subject) and groups=N against the plain search
        if name not in variants:
            continue
        measured = _summary(latencies[name], stages[name])
        result[name] = measured
        result[f"{name}_overhead_ms"] = {
            stat: round(measured[f"{stat}_ms"] - result[f"{stat}_ms"], 2) for stat in ("p50", "mean")
        }
        result[f"{name}_overhead_share"] = round(measured["p50_ms"] / result["p50_ms"] - 1, 3)
    return result


def synthetic_texts(size: int, seed: int) -> list[tuple[str, str]]:
    """(title, description) per item: Zipf-distributed pseudo-words (5,000), 1 of 500 brands, a size; titles of 3 to
    6 words, descriptions of 20 to 40 — roughly a grocery catalog's shape, so postings lists have realistic lengths."""
    import numpy as np

    rng = np.random.default_rng(seed + 17)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ba", "de", "fo", "gu", "li", "mo", "pa", "ri"]
    vocabulary = ["".join(rng.choice(syllables, size=int(rng.integers(2, 4)))) for _ in range(5000)]
    brands = [f"{w.title()}co" for w in vocabulary[:500]]
    cdf = np.cumsum(1.0 / np.arange(1, len(vocabulary) + 1))
    words = np.searchsorted(cdf / cdf[-1], rng.random(size * 45)).tolist()
    units = ["g", "kg", "ml", "l", "pack"]
    out = []
    at = 0
    for _ in range(size):
        n_title, n_description = int(rng.integers(2, 5)), int(rng.integers(20, 41))
        title_words = " ".join(vocabulary[w] for w in words[at : at + n_title])
        description = " ".join(vocabulary[w] for w in words[at + n_title : at + n_title + n_description])
        at += n_title + n_description
        amount = f"{int(rng.integers(1, 20)) * 50} {units[int(rng.integers(0, len(units)))]}"
        out.append((f"{brands[int(rng.integers(0, len(brands)))]} {title_words} {amount}", description))
    return out


def text_queries(size: int, seed: int, count: int) -> list[str]:
    """Shoppers' words: two or three words of a random item's title (three in four), or one frequent word."""
    import numpy as np

    rng = np.random.default_rng(seed + 29)
    texts = synthetic_texts(size, seed)
    queries = []
    for n in range(count):
        if n % 4 == 3:
            queries.append(texts[int(rng.integers(0, size))][1].split()[0])
            continue
        words = texts[int(rng.integers(0, size))][0].split()
        start = int(rng.integers(0, max(1, len(words) - 2)))
        queries.append(" ".join(words[start : start + int(rng.integers(2, 4))]))
    return queries


def _measure_text(handler: Any, context: Any, args: argparse.Namespace, size: int) -> dict[str, Any]:
    """Text queries through the handler (GET /search?q=): the first builds the lexical index, the rest are timed."""
    template = json.loads((REPO_ROOT / "tests" / "events" / "apigw_search_image.json").read_text())
    template.update(httpMethod="GET", body=None, isBase64Encoded=False)
    template["requestContext"]["httpMethod"] = "GET"
    queries = text_queries(size, args.seed, args.warmup + args.requests)
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    first_ms = None
    item_count = hits = 0
    for index, words in enumerate(queries):
        elapsed, body = _timed_call(handler, context, template, {"q": words, "k": str(args.k)})
        if first_ms is None:
            first_ms = elapsed
        if index < args.warmup:
            continue
        latencies.append(elapsed)
        hits += len(body["hits"])
        item_count = body["item_count"]
        for stage, value in body["timings_ms"].items():
            stages.setdefault(stage, []).append(value)
    return (
        {"items": item_count, "mode": "text"}
        | _summary(latencies, stages)
        | {"first_query_ms": round(first_ms or 0.0, 1), "mean_hits": round(hits / max(1, len(latencies)), 1)}
    )


def _summary(latencies: list[float], stages: dict[str, list[float]]) -> dict[str, Any]:
    latencies = sorted(latencies)
    return {
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))], 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
        "breakdown_p50_ms": {stage: round(statistics.median(values), 3) for stage, values in stages.items()},
    }
