"""``catalens eval personalization``: what personal re-ranking buys (NDCG@10) and costs (visual top-1, ms), as JSON.

Simulated shoppers with hidden tastes (a preferred category, brand or colour) browse a real catalog —
the Grocery Store Dataset's iconic and train photos, embedded with the project's model — and their
events build profiles through the real profile updater. The re-ranking weights are tuned on
train-derived data (train photos as leave-one-out queries, one set of shoppers) under a top-1 budget,
then reported on val-derived data (val photos as queries, other shoppers, another background
population). See :mod:`catalens_tools.simulation` for the rules.

Examples::

    catalens eval personalization --data ../shared/data/grocery
    catalens eval personalization --synthetic --shoppers 60 --population 120
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from catalens_tools.cli import group

COOC_MIN_GAIN = 0.005
# personalisation adds: the wider first stage (pool - k12), the profile decode, the re-rank of the pool
_OVERHEAD_TERMS = (
    ("search_pool", 1),
    ("search_k12", -1),
    ("decode", 1),
    ("rerank_pool_page12", 1),
)  # blend co-occurrence only when it adds at least this much NDCG@10 on the tuning data


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    evals = group(sub, groups, "eval", "retrieval-quality evaluations (print JSON)")
    parser = evals.add_parser(
        "personalization",
        help="NDCG@10 and visual top-1 with vs without personal re-ranking (simulated shoppers)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="the grocery folder, e.g. ../shared/data/grocery")
    source.add_argument("--synthetic", action="store_true", help="clustered random vectors instead of photos")
    parser.add_argument("--events", type=int, default=30, help="events per shopper before measuring (default 30)")
    parser.add_argument("--shoppers", type=int, default=300, help="measured shoppers per split (default 300)")
    parser.add_argument("--population", type=int, default=300, help="background shoppers feeding co-occurrence")
    parser.add_argument("--queries", type=int, default=10, help="queries per measured shopper (default 10)")
    parser.add_argument("--pool", type=int, default=50, help="first-stage candidates re-ranked (default 50)")
    parser.add_argument(
        "--max-top1-drop", type=float, default=0.5, help="tuning budget, points of top-1 (default 0.5; target ≤ 1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=("fp32", "int8"), default=None, help="model variant (default: settings)")
    parser.add_argument("--model-dir", type=Path, default=None, help="built model folder (default: settings)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: settings)")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path("build/cache"), help="embeddings cache (default build/cache)"
    )
    parser.add_argument("--bench-repeats", type=int, default=300, help="timed repeats of the cost bench")
    parser.set_defaults(func=run)


def _grocery_embedder(args: argparse.Namespace):
    """``embed(paths) -> (vectors, colours)`` with the built model, cached per model fingerprint and file list."""
    import numpy as np

    from catalens.embedder import Embedder
    from catalens.settings import load_settings
    from catalens_tools.simulation import COLOUR_VERSION, dominant_colour

    settings = load_settings()
    embedder = Embedder.from_dir(
        args.model_dir or settings.model_dir,
        args.variant or settings.model_variant,
        threads=args.threads or settings.onnx_threads,
    )
    model = {"name": embedder.card.name, "variant": embedder.card.variant, "fingerprint": embedder.card.fingerprint()}

    def cached(kind: str, version: str, paths: list[Path], compute):
        key = hashlib.sha256("\n".join([kind, version, *map(str, paths)]).encode()).hexdigest()[:16]
        path = args.cache_dir / f"personalization-{kind}-{key}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
        value = compute()
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(path, value, allow_pickle=False)
        return value

    def embed_all(paths: list[Path]) -> np.ndarray:
        chunks = []
        for start in range(0, len(paths), 32):
            chunks.append(embedder.embed_images([path.read_bytes() for path in paths[start : start + 32]]))
        return np.concatenate(chunks)

    def embed(paths: list[Path]) -> tuple[np.ndarray, list[str]]:
        vectors = cached("vectors", model["fingerprint"], paths, lambda: embed_all(paths))
        colours = cached(
            "colours", str(COLOUR_VERSION), paths, lambda: np.array([dominant_colour(p.read_bytes()) for p in paths])
        )
        return vectors, [str(colour) for colour in colours]

    return embed, model


def _split(world, queries, *, args, seed: int, name: str, base):
    """Shoppers and a background population for one split; returns the samples and event outcomes."""
    import random

    from catalens_tools.simulation import Population, collect_samples, make_shoppers, simulate_events

    catalog, neighbours, view = world
    rng = random.Random(seed)
    population = Population(catalog)
    outcomes = population.apply(
        event
        for shopper in make_shoppers(catalog, args.population, rng, f"{name}-bg")
        for event in simulate_events(shopper, catalog, neighbours, args.events, rng)
    )
    shoppers = make_shoppers(catalog, args.shoppers, rng, f"{name}-shopper")
    last_ms = {}
    for shopper in shoppers:
        events = simulate_events(shopper, catalog, neighbours, args.events, rng)
        outcomes += population.apply(events)
        last_ms[shopper.user_id] = max(e.ts_ms for e in events)
    profiles = {s.user_id: population.store.load_for_ranking(s.user_id) for s in shoppers}  # what search reads
    samples = collect_samples(
        catalog,
        view,
        queries,
        shoppers,
        profiles,
        last_ms,
        per_shopper=args.queries,
        pool=args.pool,
        rng=rng,
        base=base,
    )
    return samples, population, dict(outcomes)


def _params_dict(params) -> dict[str, float]:
    names = ("personal_weight", "category_weight", "brand_weight", "price_weight", "cooc_weight", "max_boost")
    return {name: getattr(params, name) for name in names}


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    import numpy as np

    values = np.asarray(samples_ms)
    return {name: round(float(np.percentile(values, q)), 4) for name, q in (("min", 0), ("p50", 50), ("p99", 99))}


def _item_bytes(value: Any) -> int:
    """Approximate DynamoDB size of a value (what read and write units are charged on)."""
    if isinstance(value, dict):
        return 3 + sum(len(str(k).encode()) + _item_bytes(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return 3 + sum(1 + _item_bytes(v) for v in value)
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    return len(str(value)) // 2 + 1  # numbers: about one byte per two significant digits


def _bench(world, samples, population, params, repeats: int) -> dict[str, Any]:
    """Per-query cost of personalisation: a wider first stage, the profile decode (DynamoDB wire format), re-rank.

    The steps are timed interleaved, query after query, so that machine load hits all of them alike.
    """
    from catalens.adapters.dynamodb import from_attribute_values, to_attribute_values
    from catalens.profiles import RANKING_ATTRIBUTES, Profile
    from catalens.ranking import first_stage_k, rerank

    catalog, _, view = world
    richest = max({s.user_id for s in samples.shoppers}, key=lambda u: population.store.load(u).evidence)
    full_item = population.store.load(richest).to_item()
    item = {k: v for k, v in full_item.items() if k in RANKING_ATTRIBUTES}
    wire = to_attribute_values(item)
    pool_k = first_stage_k(12)
    names = ("search_k12", "search_pool", "decode", "rerank_pool_page12", "rerank_100_page12")
    timings: dict[str, list[float]] = {name: [] for name in names}
    for attempt in range(repeats + 20):
        query = catalog.vectors[attempt % len(catalog.vectors)]
        marks = [time.perf_counter()]
        view.search(query, 12, query_in_index_space=True)
        marks.append(time.perf_counter())
        hits = view.search(query, pool_k, query_in_index_space=True)
        marks.append(time.perf_counter())
        decoded = Profile.from_item(from_attribute_values(wire))
        marks.append(time.perf_counter())
        rerank(hits, decoded, params=params, now_ms=decoded.last_ms, limit=12)
        marks.append(time.perf_counter())
        hits_100 = view.search(query, 100, query_in_index_space=True)
        marks.append(time.perf_counter())
        rerank(hits_100, decoded, params=params, now_ms=decoded.last_ms, limit=12)
        marks.append(time.perf_counter())
        if attempt >= 20:  # warm-up first
            spans = [b - a for a, b in itertools.pairwise(marks)]
            for name, span in zip(names, [spans[0], spans[1], spans[2], spans[3], spans[5]], strict=True):
                timings[name].append(span * 1000)
    overhead = [
        pool - k12 + decode + rerank_ms
        for k12, pool, decode, rerank_ms in zip(
            timings["search_k12"], timings["search_pool"], timings["decode"], timings["rerank_pool_page12"], strict=True
        )
    ]
    stats = {name: _percentiles(values) for name, values in timings.items()}
    return {
        "catalog_items": len(catalog.items),
        "dim": int(catalog.vectors.shape[1]),
        "first_stage_k": pool_k,
        "profile_item_bytes": {"ranking_projection": _item_bytes(item), "whole": _item_bytes(full_item)},
        "ms": stats,
        "personalisation_overhead_ms": _percentiles(overhead),
        "personalisation_overhead_from_medians_ms": round(
            sum(stats[q]["p50"] * sign for q, sign in _OVERHEAD_TERMS), 4
        ),
        "personalisation_overhead_from_minimums_ms": round(
            sum(stats[q]["min"] * sign for q, sign in _OVERHEAD_TERMS), 4
        ),
        "load_average": round(os.getloadavg()[0], 2),
        "note": "in-process, single query at a time; the DynamoDB GetItem round trip (network) is not included",
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 5) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from catalens.ranking import DEFAULT_RERANK
    from catalens_tools.simulation import browse_neighbours, evaluate, grocery_world, synthetic_world, tune

    started = time.perf_counter()
    model = None
    if args.synthetic:
        catalog, tune_queries, report_queries = synthetic_world(args.seed)
    else:
        embed, model = _grocery_embedder(args)
        catalog, tune_queries, report_queries = grocery_world(args.data, embed)
    world = (catalog, browse_neighbours(catalog, 12), catalog.view())
    world_seconds = time.perf_counter() - started

    base = DEFAULT_RERANK
    tune_samples, _, tune_outcomes = _split(
        world, tune_queries, args=args, seed=args.seed * 1000 + 1, name="tune", base=base
    )
    report_samples, report_population, report_outcomes = _split(
        world, report_queries, args=args, seed=args.seed * 1000 + 2, name="report", base=base
    )

    tuning = tune(tune_samples, base, max_top1_drop=args.max_top1_drop / 100)
    best = tuning["best"]
    without_cooc = best[False][1]
    with_cooc = best.get(True, (None, None, None))[1]
    cooc_gain = (best[True][0] - best[False][0]) if True in best else 0.0
    chosen = with_cooc if with_cooc is not None and cooc_gain >= COOC_MIN_GAIN else without_cooc

    plain = evaluate(report_samples, None)
    variants = {"chosen": chosen, "without_cooc": without_cooc, "shipped_defaults": DEFAULT_RERANK}
    if with_cooc is not None:
        variants["with_cooc"] = with_cooc
    report = {}
    for name, params in variants.items():
        metrics = evaluate(report_samples, params)
        report[name] = {
            "params": _params_dict(params),
            **metrics,
            "ndcg_gain": metrics["ndcg@10"] - plain["ndcg@10"],
            "top1_change_points": 100 * (metrics["top1"] - plain["top1"]),
        }
    estimate = evaluate(report_samples, chosen, exact=False)
    diverse = replace(chosen, diversity_weight=0.05, near_duplicate=0.95)
    diverse_metrics = evaluate(report_samples, diverse)

    result = {
        "protocol": "personalization",
        "source": "synthetic" if args.synthetic else str(args.data),
        "model": model,
        "catalog": catalog.describe(),
        "setup": {
            "events_per_shopper": args.events,
            "shoppers_per_split": args.shoppers,
            "background_population": args.population,
            "queries_per_shopper": args.queries,
            "pool": args.pool,
            "seed": args.seed,
            "tune_queries": tune_queries.name,
            "report_queries": report_queries.name,
            "event_outcomes": {"tune": tune_outcomes, "report": report_outcomes},
        },
        "tuning": {
            "on": "train-derived (tune) samples",
            "max_top1_drop_points": args.max_top1_drop,
            "grid_size": tuning["tried"],
            "plain": tuning["plain"],
            "best_without_cooc": {"params": _params_dict(best[False][1]), **best[False][2]},
            "best_with_cooc": {"params": _params_dict(best[True][1]), **best[True][2]} if True in best else None,
            "cooc_ndcg_gain": cooc_gain,
            "cooc_blended": chosen is with_cooc,
        },
        "report": {
            "on": "val-derived (report) samples, measured with catalens.ranking.rerank",
            "samples": len(report_samples),
            "plain": plain,
            **report,
            "chosen_with_diversity": {
                "diversity_weight": 0.05,
                **diverse_metrics,
                "top1_change_points": 100 * (diverse_metrics["top1"] - plain["top1"]),
            },
            "vectorised_estimate_matches": abs(estimate["ndcg@10"] - report["chosen"]["ndcg@10"]) < 1e-9,
        },
        "cost": _bench(world, report_samples, report_population, chosen, args.bench_repeats),
        "seconds": {"world": world_seconds, "total": time.perf_counter() - started},
    }
    json.dump(_json_safe(result), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
    return 0
