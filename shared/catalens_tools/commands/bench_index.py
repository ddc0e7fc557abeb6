"""``catalens bench index``: build, size, load and single-query latency of the index, with peers.

For each N, on synthetic clustered vectors (a Gaussian mixture with log-normal cluster sizes,
normalised; queries drawn from the same mixture but not indexed), prints one JSON line with the
build time, snapshot bytes, load time from disk, p50/p99 latency on one thread of exact and
graph search, recall@10 against exact search, filtered search at several selectivities, and, in
the same run, pynndescent's own ``query`` and hnswlib as reference peers. Then a cold-start
figure (fresh process -> import -> load a snapshot -> first answer) and, when the grocery photos
and a built model are present, recall on real embeddings of augmented grocery photos.

Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from catalens_tools.cli import group

K = 10


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    commands = group(sub, groups, "bench", "benchmarks (print JSON)")
    parser = commands.add_parser(
        "index",
        help="index build/size/load/latency/recall per N, with pynndescent and hnswlib as peers",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated catalog sizes")
    parser.add_argument("--dim", type=int, default=256, help="vector dimension (index space)")
    parser.add_argument("--queries", type=int, default=500, help="queries per measurement")
    parser.add_argument("--exact-queries", type=int, default=200, help="queries timed for exact search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build-threads", type=int, default=2, help="threads for pynndescent/hnswlib builds")
    parser.add_argument("--ef", type=int, default=None, help="graph pool size (default: SearchParams.ef)")
    parser.add_argument("--entry-points", type=int, default=None, help="entry-point budget (default: builder's)")
    parser.add_argument(
        "--graph-threshold", type=int, default=2, help="build the graph from this N (default: always, to compare)"
    )
    parser.add_argument("--no-peers", action="store_true", help="skip pynndescent query and hnswlib")
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--hnsw-ef-construction", type=int, default=200)
    parser.add_argument("--cold-start-size", type=int, default=100_000, help="0 to skip the cold-start figure")
    parser.add_argument("--grocery", type=Path, default=None, help="grocery photos (default: ../shared/data/grocery)")
    parser.add_argument("--grocery-augment", type=int, default=1, help="augmented copies of each photo to index")
    parser.add_argument("--no-grocery", action="store_true", help="skip the real-embedding recall")
    parser.add_argument("--model-dir", type=Path, default=None, help="built models (default: Settings.model_dir)")
    parser.add_argument("--keep", type=Path, default=None, help="keep snapshots in this folder (else a temp dir)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="catalens-bench-index-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        snapshot_dirs: dict[int, Path] = {}
        for n in sizes:
            result, snapshot_dir = bench_size(n, args, root)
            snapshot_dirs[n] = snapshot_dir
            _emit(result)
        if args.cold_start_size:
            n = args.cold_start_size
            if n not in snapshot_dirs:
                snapshot_dirs[n] = _write_snapshot(_synthetic_snapshot(n, args)[0], root / f"snapshot-{n}")
            _emit(cold_start(snapshot_dirs[n], n, args.dim))
        if not args.no_grocery:
            _emit(grocery_recall(args))
    return 0


def _emit(result: dict[str, Any]) -> None:
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, sort_keys=False), flush=True)


class Timings(list):
    """Wall-clock seconds per call, with the calling thread's CPU seconds beside them (``cpu``).

    The machine is shared: wall time includes waiting for a core, CPU time does not. Both are reported.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cpu: list[float] = []


def _percentiles(seconds: Timings | list[float]) -> dict[str, float]:
    def summary(values: list[float], prefix: str) -> dict[str, float]:
        ms = sorted(v * 1000 for v in values)
        return {
            f"{prefix}p50_ms": round(statistics.median(ms), 4),
            f"{prefix}p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 4),
        }

    out = summary(list(seconds), "")
    if getattr(seconds, "cpu", None):
        out.update(summary(seconds.cpu, "cpu_"))
    return out


def _timed(call: Callable[[Any], Any], inputs, warmup: int = 10) -> tuple[list[Any], Timings]:
    for item in inputs[:warmup]:
        call(item)
    results, times = [], Timings()
    for item in inputs:
        cpu_started = time.thread_time()
        started = time.perf_counter()
        results.append(call(item))
        times.append(time.perf_counter() - started)
        times.cpu.append(time.thread_time() - cpu_started)
    return results, times


def _recall(found: list[list[Any]], truth: list[list[Any]]) -> float:
    from catalens_tools.synthetic import recall_at_k

    return round(recall_at_k(found, truth), 4)


def _ids(hit_lists) -> list[list[str]]:
    return [[h.item_id for h in hits] for hits in hit_lists]


def _records(vectors, labels):
    from catalens.index import ItemRecord

    return [
        ItemRecord(
            item_id=f"item-{i:07d}",
            vector=vectors[i],
            fields={"category": f"c{int(labels[i]) % 50:02d}", "price": float(i % 1000) / 10},
            image_key=f"catalog/item-{i:07d}.jpg",
            source_etag="etag",
            sequencer="01",
        )
        for i in range(len(vectors))
    ]


def _synthetic_snapshot(n: int, args: argparse.Namespace, keep_index: bool = False):
    """(snapshot, queries, build seconds, pynndescent index or None) for N synthetic items."""
    from catalens.index import BuildParams, build_snapshot
    from catalens.index.build import export_search_graph, nndescent
    from catalens_tools.synthetic import clustered_vectors

    vectors, labels = clustered_vectors(n + args.queries, args.dim, seed=args.seed)
    queries, vectors, labels = vectors[: args.queries], vectors[args.queries :], labels[args.queries :]
    records = _records(vectors, labels)
    kept: dict[str, Any] = {}

    def keeping_builder(v, **kwargs):
        kept["index"] = nndescent(v, **kwargs)
        return export_search_graph(kept["index"])

    started = time.perf_counter()
    snapshot = build_snapshot(
        records,
        model_fingerprint="bench-synthetic",
        params=BuildParams(
            n_jobs=args.build_threads,
            seed=args.seed,
            entry_points=args.entry_points,
            graph_threshold=args.graph_threshold,
            graph_builder=keeping_builder if keep_index else None,
        ),
    )
    return snapshot, queries, time.perf_counter() - started, kept.get("index"), vectors


def _write_snapshot(snapshot, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in snapshot.to_files().items():
        (folder / name).write_bytes(data)
    return folder


def _read_snapshot_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _exact_truth(vectors, queries, k: int):
    """Row indices of the exact top-k of each query (batched, all threads)."""
    import numpy as np

    truth = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ vectors.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        truth[start : start + 256] = np.take_along_axis(part, order, axis=1)
    return truth


def bench_size(n: int, args: argparse.Namespace, root: Path) -> tuple[dict[str, Any], Path]:
    from threadpoolctl import threadpool_limits

    from catalens.index import IndexView, SearchParams, Snapshot
    from catalens.index.build import GRAPH_THRESHOLD

    result: dict[str, Any] = {"bench": "index", "n": n, "dim": args.dim, "queries": args.queries}
    result["default_strategy"] = "graph" if n >= GRAPH_THRESHOLD else "exact"
    snapshot, queries, build_seconds, pynnd_index, input_vectors = _synthetic_snapshot(
        n, args, keep_index=not args.no_peers
    )
    result["build_seconds"] = round(build_seconds, 2)
    result["graph"] = dict(snapshot.info.get("graph") or {}) or None

    folder = _write_snapshot(snapshot, root / f"snapshot-{n}")
    result["snapshot_bytes"] = sum(p.stat().st_size for p in folder.iterdir())
    result["snapshot_files"] = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.stat().st_size > 1e6}
    started = time.perf_counter()
    files = _read_snapshot_files(folder)
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    loaded = Snapshot.from_files(files)
    parse_seconds = time.perf_counter() - started
    started = time.perf_counter()
    Snapshot.from_files(files, verify=False)
    parse_unverified = time.perf_counter() - started
    result["load"] = {
        "read_files_s": round(read_seconds, 4),
        "from_files_verified_s": round(parse_seconds, 4),
        "from_files_unverified_s": round(parse_unverified, 4),
        "note": "files just written: page cache warm",
    }
    del snapshot, files

    params = SearchParams(ef=args.ef) if args.ef else SearchParams()
    view = IndexView(loaded, params=params)
    truth_rows = _exact_truth(loaded.vectors, queries, K)
    truth = [[loaded.item_id(int(r)) for r in row] for row in truth_rows]
    query_list = list(queries)

    with threadpool_limits(1):
        timed = query_list[: args.exact_queries]
        hits, seconds = _timed(lambda q: view.search(q, K, strategy="exact"), timed)
        result["exact"] = {**_percentiles(seconds), "recall_at_10": _recall(_ids(hits), truth[: len(timed)])}
        if loaded.graph is not None:
            hits, seconds = _timed(lambda q: view.search(q, K, strategy="graph"), query_list)
            found = [[h.item_id for h in r] for r in hits]
            result["graph_search"] = {**_percentiles(seconds), "recall_at_10": _recall(found, truth), "ef": params.ef}
            searcher = loaded.graph_searcher
            rows, seconds = _timed(lambda q: searcher.search(q, K, ef=params.ef, expand=params.expand)[0], query_list)
            result["graph_core"] = {
                **_percentiles(seconds),
                "recall_at_10": _recall([[loaded.item_id(int(r)) for r in row] for row in rows], truth),
                "note": "GraphSearcher.search alone (no Hit objects)",
            }
            result["graph_ef_sweep"] = _ef_sweep(searcher, loaded, query_list, truth, params.expand)
        result["filtered"] = _filtered(loaded, query_list[: min(200, len(query_list))], params)

    if not args.no_peers and loaded.graph is not None and pynnd_index is not None:
        result["pynndescent_query"] = _pynndescent_peer(pynnd_index, queries, truth_rows, input_vectors, loaded)
    del pynnd_index
    if not args.no_peers:
        result["hnswlib"] = _hnswlib_peer(input_vectors, queries, truth_rows, loaded, args)
    return result, folder


def _ef_sweep(searcher, snapshot, queries, truth, expand: int) -> list[dict[str, Any]]:
    sweep = []
    for ef in (32, 48, 64, 96, 128):
        rows, seconds = _timed(lambda q, ef=ef: searcher.search(q, K, ef=ef, expand=expand)[0], queries)
        found = [[snapshot.item_id(int(r)) for r in row] for row in rows]
        sweep.append({"ef": ef, "recall_at_10": _recall(found, truth), **_percentiles(seconds)})
    return sweep


def _filtered(snapshot, queries, params) -> list[dict[str, Any]]:
    """Filtered search at several selectivities: auto strategy, forced graph, forced exact."""
    from dataclasses import replace

    from catalens.index import Filter, IndexView

    out = []
    price_cut = {0.005: 0.45, 0.02: 1.95, 0.1: 9.95, 0.5: 49.95}  # price = (i % 1000) / 10
    specs = [(f"price<= ({s:.1%})", Filter.between("price", None, cut)) for s, cut in price_cut.items()]
    specs.append(("category (~2%, cluster-correlated)", Filter.equals("category", "c07")))
    auto = IndexView(snapshot, params=params)
    forced = IndexView(snapshot, params=replace(params, filtered_exact_below=0))
    for name, flt in specs:
        selected = int(snapshot.filter_mask(flt).sum())
        exact_hits, exact_s = _timed(lambda q, f=flt: auto.search(q, K, filters=f, strategy="exact"), queries)
        truth = [[h.item_id for h in r] for r in exact_hits]
        entry: dict[str, Any] = {"filter": name, "rows": selected, "exact": _percentiles(exact_s)}
        hits, seconds = _timed(lambda q, f=flt: auto.search(q, K, filters=f), queries)
        entry["auto"] = {**_percentiles(seconds), "recall_at_10": _recall(_ids(hits), truth)}
        if snapshot.graph is not None:
            hits, seconds = _timed(lambda q, f=flt: forced.search(q, K, filters=f, strategy="graph"), queries)
            entry["graph"] = {
                **_percentiles(seconds),
                "recall_at_10": _recall([[h.item_id for h in r] for r in hits], truth),
            }
        out.append(entry)
    return out


def _pynndescent_peer(index, queries, truth_rows, input_vectors, snapshot) -> list[dict[str, Any]]:
    """pynndescent's own single-query search (1 thread), recall against the same exact truth."""
    import numba
    import numpy as np

    numba.set_num_threads(1)
    # truth_rows are snapshot rows; pynndescent answers in input order: map through item ids.
    truth = [[snapshot.item_id(int(r)) for r in row] for row in truth_rows]
    out = []
    for epsilon in (0.1, 0.2, 0.3):
        index.query(queries[:5], k=K, epsilon=epsilon)  # compile outside the timing
        found, seconds = _timed(lambda q, e=epsilon: index.query(q[None, :], k=K, epsilon=e)[0][0], list(queries))
        ids = [[f"item-{int(i):07d}" for i in np.asarray(row)] for row in found]
        out.append({"epsilon": epsilon, **_percentiles(seconds), "recall_at_10": _recall(ids, truth)})
    return out


def _hnswlib_peer(input_vectors, queries, truth_rows, snapshot, args) -> dict[str, Any]:
    import hnswlib

    n, dim = input_vectors.shape
    index = hnswlib.Index(space="ip", dim=dim)
    started = time.perf_counter()
    index.init_index(max_elements=n, ef_construction=args.hnsw_ef_construction, M=args.hnsw_m, random_seed=args.seed)
    index.add_items(input_vectors, num_threads=args.build_threads)
    build_seconds = time.perf_counter() - started
    index.set_num_threads(1)
    truth = [[snapshot.item_id(int(r)) for r in row] for row in truth_rows]
    sweep = []
    for ef in (16, 32, 64, 128, 256):
        index.set_ef(ef)
        found, seconds = _timed(lambda q: index.knn_query(q, k=K)[0][0], list(queries))
        ids = [[f"item-{int(i):07d}" for i in row] for row in found]
        sweep.append({"ef": ef, **_percentiles(seconds), "recall_at_10": _recall(ids, truth)})
    good = [s for s in sweep if s["recall_at_10"] >= 0.99]
    return {
        "M": args.hnsw_m,
        "ef_construction": args.hnsw_ef_construction,
        "build_seconds": round(build_seconds, 2),
        "index_bytes": int(index.get_current_count() * (dim * 4 + args.hnsw_m * 2 * 4 + 8)),
        "first_ef_with_recall_0.99": good[0] if good else None,
        "sweep": sweep,
    }


COLD_START_SCRIPT = textwrap.dedent(
    """
    import time
    t0 = time.perf_counter()
    import json, pathlib, sys
    import numpy as np
    from catalens.index import IndexView, Snapshot
    t1 = time.perf_counter()
    root = pathlib.Path(sys.argv[1])
    files = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
    t2 = time.perf_counter()
    snapshot = Snapshot.from_files(files)
    t3 = time.perf_counter()
    view = IndexView(snapshot)
    query = np.random.default_rng(1).standard_normal(snapshot.model_dim).astype(np.float32)
    hits = view.search(query, 10)
    t4 = time.perf_counter()
    heavy = [m for m in ("numba", "pynndescent", "scipy", "sklearn") if m in sys.modules]
    print(json.dumps({"import_s": t1 - t0, "read_s": t2 - t1, "from_files_s": t3 - t2, "first_search_s": t4 - t3,
                      "in_process_s": t4 - t0, "hits": len(hits), "heavy_modules": heavy}))
    """
)


def cold_start(folder: Path, n: int, dim: int) -> dict[str, Any]:
    """Fresh interpreter -> import the query path -> load the snapshot from disk -> first answer."""
    runs = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    for _ in range(3):
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", COLD_START_SCRIPT, str(folder)], capture_output=True, text=True, check=True, env=env
        )
        wall = time.perf_counter() - started
        inner = json.loads(out.stdout.strip().splitlines()[-1])
        rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in inner.items()}
        runs.append({"wall_s": round(wall, 3), **rounded})
    return {
        "bench": "index-cold-start",
        "n": n,
        "dim": dim,
        "snapshot_bytes": sum(p.stat().st_size for p in folder.iterdir()),
        "wall_s_median": statistics.median(r["wall_s"] for r in runs),
        "runs": runs,
        "note": "wall = process spawn to printed answer, 1 BLAS thread; snapshot read from local disk (page cache "
        "warm), not S3",
    }


GROCERY_DEFAULT = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "grocery"


def _augment(image, rng):
    """A shopper-like variant of a photo: random crop (60–100% area), maybe mirrored, colour shifted."""
    from PIL import ImageEnhance, ImageOps

    width, height = image.size
    area = rng.uniform(0.6, 1.0) * width * height
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    crop_w = int(min(width, round(np.sqrt(area * aspect))))
    crop_h = int(min(height, round(np.sqrt(area / aspect))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    for enhancer, low, high in (
        (ImageEnhance.Brightness, 0.75, 1.25),
        (ImageEnhance.Contrast, 0.75, 1.25),
        (ImageEnhance.Color, 0.7, 1.3),
    ):
        image = enhancer(image).enhance(float(rng.uniform(low, high)))
    return image.convert("RGB") if image.mode != "RGB" else image


def _grocery_vectors(grocery: Path, model_dir: Path | None, augment: int, n_queries: int, seed: int, threads: int):
    """(index vectors, index photo ids, index labels, query vectors, query photo ids, query labels, card, seconds)."""
    import csv

    from catalens.embedder import Embedder
    from catalens.imaging import decode_image, preprocess
    from catalens.settings import load_settings

    embedder = Embedder.from_dir(model_dir or load_settings().model_dir, "fp32", threads=threads)
    config = embedder.card.preprocess
    with (grocery / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rng = np.random.default_rng(seed)
    query_photos = set(rng.choice(len(rows), size=min(n_queries, len(rows)), replace=False).tolist())
    index_inputs, index_photo, index_label, query_inputs, query_photo, query_label = [], [], [], [], [], []
    started = time.perf_counter()
    index_vectors, query_vectors = [], []

    def flush(inputs, out):
        if inputs:
            out.append(embedder.embed(np.stack(inputs)))
            inputs.clear()

    for photo, row in enumerate(rows):
        image = decode_image((grocery / row["path"]).read_bytes(), target_short_side=config.decode_short_side)
        variants = [image] + [_augment(image, rng) for _ in range(augment)]
        for variant in variants:
            index_inputs.append(preprocess(variant, config))
            index_photo.append(photo)
            index_label.append(int(row["fine_id"]))
        if photo in query_photos:
            query_inputs.append(preprocess(_augment(image, rng), config))
            query_photo.append(photo)
            query_label.append(int(row["fine_id"]))
        if len(index_inputs) >= 64:
            flush(index_inputs, index_vectors)
        if len(query_inputs) >= 64:
            flush(query_inputs, query_vectors)
    flush(index_inputs, index_vectors)
    flush(query_inputs, query_vectors)
    return (
        np.concatenate(index_vectors),
        np.asarray(index_photo),
        np.asarray(index_label),
        np.concatenate(query_vectors),
        np.asarray(query_photo),
        np.asarray(query_label),
        embedder.card,
        time.perf_counter() - started,
    )


def _retrieval_quality(exact_ids, query_photo, query_label, row_photo, row_label) -> dict[str, float]:
    """How often the query's own photo is in the top 10; fraction of the top 10 sharing its fine class."""
    own, same_class = [], []
    for photo, label, ids in zip(query_photo, query_label, exact_ids, strict=True):
        own.append(int(photo) in {row_photo[i] for i in ids})
        same_class.append(np.mean([row_label[i] == int(label) for i in ids]))
    return {
        "own_photo_in_top10": round(float(np.mean(own)), 4),
        "same_class_precision_at_10": round(float(np.mean(same_class)), 4),
    }


def grocery_recall(args: argparse.Namespace) -> dict[str, Any]:
    """Recall@10 of the graph search against exact search on real embeddings of augmented grocery photos.

    Index = every photo of the dataset (train, val, iconic) plus ``--grocery-augment`` augmented copies;
    queries = another augmented copy of 500 of them (not indexed). Also reports, per index space
    (model space, PCA-256, PCA-256 whitened), how often the query's own photo is in the top 10 and
    the fraction of the top 10 with the query's fine class, to judge whether reduction helps.
    """
    from threadpoolctl import threadpool_limits

    from catalens.index import BuildParams, IndexView, ItemRecord, build_snapshot

    grocery = args.grocery or GROCERY_DEFAULT
    result: dict[str, Any] = {"bench": "index-grocery", "grocery_dir": str(grocery)}
    if not (grocery / "labels.csv").is_file():
        return {**result, "skipped": "grocery photos not found"}
    cache = (args.keep / f"grocery-vectors-v2-a{args.grocery_augment}-s{args.seed}.npz") if args.keep else None
    try:
        if cache is not None and cache.is_file():
            with np.load(cache, allow_pickle=False) as saved:
                arrays = [saved[name] for name in ("iv", "ip", "il", "qv", "qp", "ql")]
                fingerprint, model_name, embed_seconds = str(saved["fp"]), str(saved["model"]), None
        else:
            *arrays, card, embed_seconds = _grocery_vectors(
                grocery, args.model_dir, args.grocery_augment, 500, args.seed, args.build_threads
            )
            fingerprint, model_name = card.fingerprint(), f"{card.name}.{card.variant}"
            if cache is not None:
                named = dict(zip(("iv", "ip", "il", "qv", "qp", "ql"), arrays, strict=True))
                np.savez(cache, **named, fp=fingerprint, model=model_name)
    except Exception as exc:  # no model built, unreadable photo: report instead of failing the whole bench
        return {**result, "skipped": f"{type(exc).__name__}: {exc}"}
    index_vectors, index_photo, index_label, query_vectors, query_photo, query_label = arrays
    result.update(
        {
            "index_items": len(index_vectors),
            "queries": len(query_vectors),
            "model": model_name,
            "model_dim": int(index_vectors.shape[1]),
            "embed_seconds": round(embed_seconds, 1) if embed_seconds is not None else "cached",
        }
    )
    records = [
        ItemRecord(f"g{i:06d}", index_vectors[i], {"photo": int(index_photo[i])}, f"g/{i}.jpg", "e", "01")
        for i in range(len(index_vectors))
    ]
    spaces = []
    for name, reduce_dim, whiten in (("model", None, False), ("pca256", 256, False), ("pca256_whiten", 256, True)):
        started = time.perf_counter()
        snapshot = build_snapshot(
            records,
            model_fingerprint=fingerprint,
            params=BuildParams(
                reduce_dim=reduce_dim, whiten=whiten, graph_threshold=2, n_jobs=args.build_threads, seed=args.seed
            ),
        )
        build_seconds = time.perf_counter() - started
        view = IndexView(snapshot)
        with threadpool_limits(1):
            exact, exact_s = _timed(lambda q, v=view: v.search(q, K, strategy="exact"), list(query_vectors))
            graph, graph_s = _timed(lambda q, v=view: v.search(q, K, strategy="graph"), list(query_vectors))
        row_photo = {f"g{i:06d}": int(p) for i, p in enumerate(index_photo)}
        row_label = {f"g{i:06d}": int(label) for i, label in enumerate(index_label)}
        exact_ids = _ids(exact)
        spaces.append(
            {
                "space": name,
                "dim": snapshot.dim,
                "build_seconds": round(build_seconds, 2),
                "graph": snapshot.info["graph"],
                "graph_recall_at_10": _recall(_ids(graph), exact_ids),
                "graph_latency": _percentiles(graph_s),
                "exact_latency": _percentiles(exact_s),
                **_retrieval_quality(exact_ids, query_photo, query_label, row_photo, row_label),
            }
        )
    result["spaces"] = spaces
    return result
