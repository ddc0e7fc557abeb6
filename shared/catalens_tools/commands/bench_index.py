"""``catalens bench index``: what the index the builder writes costs, per item, at the serving dimension.

For each index layout (``compact``, what the builder writes: int8 full vectors behind an int8 PCA first stage;
``float32``: unit vectors at the model's dimension, the layout before it) and each N, on synthetic clustered vectors
(a Gaussian mixture with log-normal cluster sizes and a power-law spectrum, normalised; queries drawn from the same
mixture but not indexed), prints one JSON line: snapshot bytes, builder peak RSS of a first build and of a
compaction folding 1,000 changes into it (child processes), search-process RSS after loading (another child), bytes
read before the first answer, the cold-start split (import, read, verify sha256 on parallel threads, parse, first
answer, then the full vectors), and single-thread search p50/p99 with recall@10 against float32 exact search. An N
that cannot fit in this machine's memory or disk is not tried: its line gives the estimate instead, from the
per-item costs measured at the smaller sizes. ``--peers`` adds pynndescent's own query and hnswlib; when the grocery
photos are present, recall on real embeddings follows.

Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from catalens_tools.cli import group

K = 10
LAMBDA_MEMORY_BYTES = 10_240 * 2**20
FIT_MARGIN = 0.85  # of the memory available: the rest is left for the page cache and whatever else runs


@dataclass(frozen=True)
class Layout:
    """A named way of storing the index, so layouts can be benchmarked side by side on the same vectors.

    ``params`` turns the builder's parameters (``BuildParams()`` with the bench's seed and threads) into the ones
    this layout builds with.
    """

    name: str
    description: str
    params: Callable[[Any], Any] = lambda params: params


LAYOUTS: dict[str, Layout] = {
    "compact": Layout(
        "compact",
        "int8 full vectors in slot chunks behind an int8 PCA-320 first stage: BuildParams() as compaction uses it",
        lambda params: replace(params, layout="compact"),
    ),
    "float32": Layout(
        "float32", "float32 unit vectors at the model's dimension", lambda params: replace(params, layout="float32")
    ),
    "compact-m16": Layout(
        "compact-m16",
        "the compact layout with the sparser HNSW graph it had before (M 16: up to 32 links per item, not 64)",
        lambda params: replace(params, layout="compact", hnsw_m=16),
    ),
    "compact-nndescent": Layout(
        "compact-nndescent",
        "the compact layout with pynndescent's search graph instead of the HNSW bottom layer (the graph before it)",
        lambda params: replace(params, layout="compact", graph_method="nndescent"),
    ),
}
# Spectrum of the synthetic vectors (synthetic.clustered_vectors): with 1.0 a 256-axis PCA alone finds 0.84 of the
# float32 top 10 at 6k (spread 1.5), below the 0.89 it finds on real grocery embeddings.
DEFAULT_DECAY = 1.0
# Within-cluster spread, set by the gap between the 10th and 11th float32 score (what int8 codes must resolve): on
# the grocery embeddings (6,034 items, 3,984-d) its median is 0.0022; synthetic at the same size and decay 1.0 gives
# 0.00036 with spread 0.35, 0.0012 with 1.0, 0.0020 with 1.5 (docs/operations.md). 0.35 stays by --spread: 6x harder.
DEFAULT_SPREAD = 1.5
CHANGES_PER_COMPACTION = 1_000


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    commands = group(sub, groups, "bench", "benchmarks (print JSON)")
    parser = commands.add_parser(
        "index",
        help="index bytes, builder and search memory, cold start, latency and recall per item and N",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated catalog sizes (1000000 allowed)")
    parser.add_argument(
        "--layouts", default="compact,float32", help=f"comma-separated index layouts ({', '.join(LAYOUTS)})"
    )
    parser.add_argument(
        "--decay",
        type=float,
        default=DEFAULT_DECAY,
        help="spectrum of the synthetic vectors (0: isotropic, worst case)",
    )
    parser.add_argument(
        "--spread",
        type=float,
        default=DEFAULT_SPREAD,
        help=f"within-cluster spread of the synthetic vectors (default {DEFAULT_SPREAD}: neighbour score gaps like "
        "the grocery embeddings'; 0.35: ~6x smaller gaps, the harder setting)",
    )
    parser.add_argument("--dim", type=int, default=None, help="vector dimension (default: the serving model's card)")
    parser.add_argument("--model", default=None, help="built model whose card gives --dim (default: serving model)")
    parser.add_argument("--model-dir", type=Path, default=None, help="built models (default: Settings.model_dir)")
    parser.add_argument("--queries", type=int, default=500, help="queries per measurement")
    parser.add_argument("--exact-queries", type=int, default=100, help="queries timed for forced exact search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build-threads", type=int, default=2, help="threads for pynndescent/hnswlib builds")
    parser.add_argument("--graph-threshold", type=int, default=None, help="default: the builder's (GRAPH_THRESHOLD)")
    parser.add_argument("--ef", type=int, default=None, help="graph pool size (default: SearchParams.ef)")
    parser.add_argument(
        "--candidates",
        default="",
        help="comma-separated walk pools also timed as served, in the same search process (SearchCandidates: what "
        "a deployment trades for recall)",
    )
    parser.add_argument("--cold-starts", type=int, default=3, help="fresh search processes timed per N (median)")
    parser.add_argument("--detail", action="store_true", help="also the ef sweep and filtered search")
    parser.add_argument("--peers", action="store_true", help="also pynndescent's own query and hnswlib")
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--hnsw-ef-construction", type=int, default=200)
    parser.add_argument("--memory-budget", type=float, default=None, help="bytes (default: MemAvailable now)")
    parser.add_argument("--grocery", type=Path, default=None, help="grocery photos (default: ../shared/data/grocery)")
    parser.add_argument("--grocery-augment", type=int, default=1, help="augmented copies of each photo to index")
    parser.add_argument("--no-grocery", action="store_true", help="skip the real-embedding recall")
    parser.add_argument("--keep", type=Path, default=None, help="keep snapshots in this folder (else a temp dir)")
    parser.set_defaults(func=run)


def resolve_dim(args: argparse.Namespace) -> tuple[int, str]:
    """(dimension, where it came from): ``--dim`` if given, else the serving model's card."""
    if args.dim:
        return args.dim, "--dim"
    from catalens_tools.serving import serving_card

    card = serving_card(args.model_dir, "fp32", args.model)
    return card.dim, f"card {card.name}.{card.variant}"


def run(args: argparse.Namespace) -> int:
    args.dim, dim_source = resolve_dim(args)
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    layouts = [LAYOUTS[name.strip()] for name in args.layouts.split(",") if name.strip()]
    with tempfile.TemporaryDirectory(prefix="catalens-bench-index-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for layout in layouts:
            costs = Costs()
            for n in sizes:
                estimate = estimate_needs(n, args, costs, root)
                if not estimate["fits"]:
                    _emit({"bench": "index", "layout": layout.name, "n": n, "dim": args.dim, "skipped": estimate})
                    continue
                result = bench_size(n, layout, args, root / f"{layout.name}-{n}-d{args.decay:g}-s{args.spread:g}")
                result["dim_from"] = dim_source
                costs.add(n, result)
                _emit(result)
        if not args.no_grocery:
            _emit(grocery_recall(args))
    return 0


def _emit(result: dict[str, Any]) -> None:
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, sort_keys=False), flush=True)


# ---- will it fit? ------------------------------------------------------------------------------------------------


class Costs:
    """Bytes measured per N for one layout, to extrapolate to an N not tried."""

    KEYS = ("snapshot_bytes", "builder_peak_rss_bytes", "search_rss_bytes")

    def __init__(self) -> None:
        self.points: list[tuple[int, dict[str, int]]] = []

    def add(self, n: int, result: dict[str, Any]) -> None:
        self.points.append(
            (
                n,
                {
                    "snapshot_bytes": result["snapshot"]["bytes"],
                    "builder_peak_rss_bytes": result["builder"]["peak_rss_bytes"],
                    "search_rss_bytes": result["search_process"]["rss_bytes"],
                },
            )
        )

    def predict(self, n: int) -> tuple[dict[str, int], str] | None:
        """Linear in N through the two largest sizes measured (or proportional to the one), with the formula."""
        if not self.points:
            return None
        if len(self.points) == 1:
            n1, y1 = self.points[-1]
            per = {k: y1[k] / n1 for k in self.KEYS}
            return {k: int(per[k] * n) for k in self.KEYS}, f"bytes = N * (bytes per item at N={n1})"
        (n1, y1), (n2, y2) = self.points[-2:]
        out = {}
        for key in self.KEYS:
            slope = (y2[key] - y1[key]) / (n2 - n1)
            out[key] = int(y2[key] + slope * (n - n2))
        return out, f"bytes = a + b * N through the measured N={n1} and N={n2}"


def _meminfo(name: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def estimate_needs(n: int, args: argparse.Namespace, costs: Costs, root: Path) -> dict[str, Any]:
    """What measuring N would take (memory per step, disk), against what this machine has free now."""
    vectors_bytes = (n + args.queries) * args.dim * 4
    predicted = costs.predict(n)
    if predicted is None:
        needs = {key: vectors_bytes for key in Costs.KEYS}
        formula = "lower bound: N * dim * 4 (nothing measured yet at a smaller N)"
    else:
        needs, formula = predicted
    # the parent draws the vectors block by block into a file it maps; the truth pass streams over it
    needs["generate_bytes"] = 0
    budget = args.memory_budget or _meminfo("MemAvailable") or float("inf")
    disk_free = shutil.disk_usage(root).free
    disk_needed = 2 * needs["snapshot_bytes"] + vectors_bytes
    memory_needed = max(needs["builder_peak_rss_bytes"], needs["search_rss_bytes"], needs["generate_bytes"])
    return {
        "fits": memory_needed <= FIT_MARGIN * budget and disk_needed <= FIT_MARGIN * disk_free,
        "estimate": {key: int(value) for key, value in needs.items()},
        "formula": formula,
        "memory_needed_bytes": int(memory_needed),
        "memory_budget_bytes": int(budget) if budget != float("inf") else None,
        "disk_needed_bytes": int(disk_needed),
        "disk_free_bytes": int(disk_free),
        "search_fits_lambda_10240mb": needs["search_rss_bytes"] <= LAMBDA_MEMORY_BYTES,
        "builder_fits_lambda_10240mb": needs["builder_peak_rss_bytes"] <= LAMBDA_MEMORY_BYTES,
    }


# ---- measuring -----------------------------------------------------------------------------------------------------


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


def _served(view, queries, truth, strategy: str = "auto", filters=None) -> dict[str, Any]:
    """Latency and recall@10 of ``view`` searched as a photo query is served: hits without their vectors."""
    hits, seconds = _timed(lambda q: view.search(q, K, filters=filters, strategy=strategy, vectors=False), queries)
    return {**_percentiles(seconds), "recall_at_10": _recall(_ids(hits), truth)}


def _item_id(row: int) -> str:
    return f"item-{row:07d}"


def _records(vectors, labels, sequencer: str = "01"):
    """Item records shaped like ingest's: an S3 ETag (32 hex digits), an 18-digit S3 sequencer whose first byte is
    ``sequencer`` (so a later phase supersedes an earlier one) and a wall-clock time, so a snapshot's per-item record
    bytes are what a real catalog's would be, not a few placeholder characters."""
    import hashlib

    from catalens.index import ItemRecord

    records = []
    for i in range(len(vectors)):
        digest = hashlib.md5(f"{_item_id(i)}:{sequencer}".encode()).hexdigest()
        records.append(
            ItemRecord(
                item_id=_item_id(i),
                vector=vectors[i],
                fields={"category": f"c{int(labels[i]) % 50:02d}", "price": float(i % 1000) / 10},
                image_key=f"catalog/item-{i:07d}.jpg",
                source_etag=digest,
                sequencer=f"{sequencer}{digest[:16].upper()}",
                updated_at=1_764_979_200.0 + i * 0.731 + int(sequencer, 16) * 86_400,
            )
        )
    return records


def _exact_truth(vectors, queries, k: int):
    """Row indices of the float32 exact top-k of each query (one pass over the rows in blocks, all threads)."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(vectors), 65_536):
        scores = queries @ np.asarray(vectors[start : start + 65_536]).T
        scores = np.concatenate((best_scores, scores), axis=1)
        rows = np.concatenate(
            (
                best_rows,
                np.broadcast_to(np.arange(start, start + scores.shape[1] - k), (len(queries), scores.shape[1] - k)),
            ),
            axis=1,
        )
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores, best_rows = np.take_along_axis(scores, part, axis=1), np.take_along_axis(rows, part, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_rows, order, axis=1)


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process in bytes, from /proc (Linux)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                out[key] = int(line.split()[1]) * 1024
    except OSError:
        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def _child_env() -> dict[str, str]:
    """One BLAS thread (a search is single-threaded) and the same packages as this process."""
    import catalens
    import catalens_tools

    paths = {str(Path(m.__file__).resolve().parents[1]) for m in (catalens, catalens_tools)}
    existing = os.environ.get("PYTHONPATH", "")
    pythonpath = os.pathsep.join([*sorted(paths), *([existing] if existing else [])])
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**os.environ, **threads, "PYTHONPATH": pythonpath}


def _child(script: str, *argv: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env or _child_env(), check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench child failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


BUILD_SCRIPT = "import sys; from catalens_tools.commands.bench_index import build_child; build_child(sys.argv[1])"


class _PeakAnon:
    """The largest RssAnon seen (sampled every 50 ms on a thread): what a builder must hold, without the pages of
    the memory-mapped input vectors that VmHWM also counts (a real builder reads deltas, not a vector file)."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _proc_status().get("RssAnon", 0))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _proc_status().get("RssAnon", 0))


def build_child(spec_json: str) -> None:
    """In a fresh process: build the snapshot as the layout says and write its files; or, with ``compact_into``,
    load that snapshot and fold ``CHANGES_PER_COMPACTION`` changed items into it (a builder run). Print peaks."""
    from catalens.index import BuildParams, Snapshot, build_snapshot

    spec = json.loads(spec_json)
    work = Path(spec["work"])
    started = time.perf_counter()
    peak = _PeakAnon()
    vectors, labels = np.load(work / "vectors.npy", mmap_mode="r"), np.load(work / "labels.npy")
    params = LAYOUTS[spec["layout"]].params(
        replace(BuildParams(), **{k: v for k, v in spec["params"].items() if v is not None})
    )
    previous = None
    if spec.get("compact_into"):
        source = Path(spec["compact_into"])
        previous = Snapshot.from_files({p.name: p.read_bytes() for p in source.iterdir() if p.is_file()})
        # changed items: the first rows again, nudged, under a newer sequencer
        changed = np.asarray(vectors[:CHANGES_PER_COMPACTION]) + np.float32(0.01)
        records = _records(changed, labels[:CHANGES_PER_COMPACTION], sequencer="02")
    else:
        records = _records(vectors, labels)
    loaded = _proc_status()
    build_started = time.perf_counter()
    snapshot = build_snapshot(records, model_fingerprint="bench-synthetic", previous=previous, params=params)
    build_seconds = time.perf_counter() - build_started
    del records, vectors, previous
    folder = work / spec["out"]
    folder.mkdir(parents=True, exist_ok=True)
    files = snapshot.to_files()
    for name in files:
        (folder / name).write_bytes(files[name])
    status = _proc_status()
    result = {
        "load_records_s": round(build_started - started, 2),
        "build_s": round(build_seconds, 2),
        "write_s": round(time.perf_counter() - build_started - build_seconds, 2),
        "records_rss_bytes": loaded.get("VmRSS"),
        "peak_rss_bytes": status["VmHWM"],
        "peak_anon_bytes": peak.stop(),
        "graph": dict(snapshot.info.get("graph") or {}) or None,
        "chunks_reused": snapshot.info.get("chunks_reused"),
    }
    print(json.dumps(result))


SEARCH_SCRIPT = textwrap.dedent(
    """
    import time
    t0 = time.perf_counter()
    import hashlib, json, pathlib, sys
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    from catalens.index import IndexView, Snapshot
    from catalens.index.snapshot import is_second_stage_file
    from catalens.index.vectors import is_chunk_file
    t1 = time.perf_counter()
    root = pathlib.Path(sys.argv[1])
    meta_bytes = (root / "snapshot.json").read_bytes()
    meta = json.loads(meta_bytes)
    # as the search cache: a compact version's full-vector chunks and lexical index come after the first answer;
    # a float32 one loads whole
    staged = any(is_chunk_file(n) for n in meta["files"])
    first = [n for n in meta["files"] if not (staged and is_second_stage_file(n))]
    rest = [n for n in meta["files"] if staged and is_second_stage_file(n)]
    pool = ThreadPoolExecutor(4)  # hashlib releases the GIL: files are checked in parallel, as the store does

    def read_and_check(names):
        files = {n: (root / n).read_bytes() for n in names}
        started = time.perf_counter()
        ok = pool.map(lambda n: hashlib.sha256(files[n]).hexdigest() == meta["files"][n]["sha256"], names)
        bad = [n for n, good in zip(names, ok) if not good]
        assert not bad, bad
        return files, time.perf_counter() - started

    files, verify_s = read_and_check(first)
    files["snapshot.json"] = meta_bytes
    t3 = time.perf_counter()
    snapshot = Snapshot.from_files(files, verify=False, first_stage=True)
    t4 = time.perf_counter()
    query = np.random.default_rng(1).standard_normal(snapshot.model_dim).astype(np.float32)
    hits = IndexView(snapshot).search(query, 10)
    t5 = time.perf_counter()
    first_rss = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS")][0]
    stage = snapshot.stage
    if rest:
        chunks, chunk_verify_s = read_and_check(rest)
        snapshot = snapshot.with_full_vectors(chunks)
        IndexView(snapshot).search(query, 10)
    t6 = time.perf_counter()
    heavy = [m for m in ("numba", "pynndescent", "scipy", "sklearn") if m in sys.modules]
    lines = [line.split() for line in open("/proc/self/status") if line[:5] in ("VmRSS", "VmHWM")]
    status = {line[0].rstrip(":"): int(line[1]) * 1024 for line in lines}
    first_bytes = sum(len(b) for b in files.values())
    out = {"import_s": t1 - t0, "read_s": t3 - t1 - verify_s, "verify_sha256_s": verify_s, "parse_s": t4 - t3,
           "first_answer_s": t5 - t4, "total_s": t5 - t0, "full_vectors_s": t6 - t5, "first_stage": stage,
           "bytes_read": first_bytes, "bytes_total": first_bytes + sum((root / n).stat().st_size for n in rest),
           "first_stage_rss_bytes": first_rss, "rss_bytes": status["VmRSS"], "peak_rss_bytes": status["VmHWM"],
           "resident_array_bytes": snapshot.resident_bytes(), "hits": len(hits), "heavy_modules": heavy}
    if sys.argv[2] != "cold":
        from catalens_tools.commands.bench_index import measure_search
        out["measured"] = measure_search(snapshot, json.loads(sys.argv[2]))
    print(json.dumps(out))
    """
)


def measure_search(snapshot, spec: dict[str, Any]) -> dict[str, Any]:
    """Single-thread latency and recall@10 against float32 exact (in the search child, after the cold start)."""
    from threadpoolctl import threadpool_limits

    from catalens.index import IndexView, SearchParams

    params = SearchParams(ef=spec["ef"]) if spec.get("ef") else SearchParams()
    view = IndexView(snapshot, params=params)
    queries = list(np.load(spec["queries"]))
    truth = [[_item_id(int(r)) for r in row] for row in np.load(spec["truth"])]
    out: dict[str, Any] = {"strategy": "graph" if snapshot.graph is not None else "exact"}
    with threadpool_limits(1):
        # as search serves a photo query: only the re-ranker reads hits' vectors, and calibration scores its pool
        # from the codes (`catalens bench search` times that)
        out["search"] = _served(view, queries, truth)
        if spec.get("candidates"):
            out["search_candidates"] = _candidates(snapshot, queries, truth, spec["candidates"])
        timed = queries[: spec["exact_queries"]]
        hits, seconds = _timed(lambda q: view.search(q, K, strategy="exact"), timed)
        out["exact"] = {**_percentiles(seconds), "recall_at_10": _recall(_ids(hits), truth[: len(timed)])}
        if snapshot.graph is not None and spec.get("detail"):
            out["graph_ef_sweep"] = _ef_sweep(snapshot, queries, truth, params)
        if spec.get("detail"):
            out["filtered"] = _filtered(snapshot, queries[: min(200, len(queries))], params)
    return out


def bench_size(n: int, layout: Layout, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One JSON line for N items of ``layout``: build in one child, search in others, truth computed here."""
    from catalens_tools.synthetic import clustered_vectors

    work.mkdir(parents=True, exist_ok=True)
    if not (work / "truth.npy").is_file():  # the same vectors for every layout (--keep reuses them)
        stored = np.lib.format.open_memmap(
            work / "vectors.npy", mode="w+", dtype=np.float32, shape=(n + args.queries, args.dim)
        )
        labels = clustered_vectors(
            n + args.queries, args.dim, seed=args.seed, decay=args.decay, spread=args.spread, out=stored
        )[1]
        np.save(work / "queries.npy", np.asarray(stored[: args.queries]))
        np.save(work / "labels.npy", labels[args.queries :])
        stored.flush()
        del stored
        # the index rows are the file's rows after the queries: keep them as a .npy of their own, without a copy
        _drop_leading_rows(work / "vectors.npy", args.queries)
        vectors = np.load(work / "vectors.npy", mmap_mode="r")
        np.save(work / "truth.npy", _exact_truth(vectors, np.load(work / "queries.npy"), K))
        del vectors

    result: dict[str, Any] = {"bench": "index", "layout": layout.name, "n": n, "dim": args.dim}
    result["queries"] = args.queries
    result["synthetic_decay"] = args.decay
    result["synthetic_spread"] = args.spread
    params = {"seed": args.seed, "n_jobs": args.build_threads, "graph_threshold": args.graph_threshold}
    spec = {"work": str(work), "layout": layout.name, "params": params, "out": f"snapshot-{layout.name}"}
    shutil.rmtree(work / spec["out"], ignore_errors=True)  # a kept folder's earlier files would count as this one's
    build_env = {**os.environ, "PYTHONPATH": _child_env()["PYTHONPATH"]}
    built = _child(BUILD_SCRIPT, json.dumps(spec), env=build_env)
    folder = work / spec["out"]
    compaction_spec = {**spec, "compact_into": str(folder), "out": f"compacted-{layout.name}"}
    compacted = _child(BUILD_SCRIPT, json.dumps(compaction_spec), env=build_env)
    shutil.rmtree(work / compaction_spec["out"], ignore_errors=True)
    size = sum(p.stat().st_size for p in folder.iterdir())
    result["snapshot"] = {
        "bytes": size,
        "bytes_per_item": round(size / n, 1),
        "files": {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.stat().st_size > 1e6},
    }
    result["builder"] = {
        **built,
        "peak_rss_per_item": round(built["peak_rss_bytes"] / n, 1),
        "peak_anon_per_item": round(built["peak_anon_bytes"] / n, 1),
        "note": "first build from N records whose vectors are mapped from a file: VmHWM counts the mapped pages "
        "read, RssAnon (sampled) what the build holds",
    }
    result["compaction"] = {
        **compacted,
        "changed_items": CHANGES_PER_COMPACTION,
        "peak_rss_per_item": round(compacted["peak_rss_bytes"] / n, 1),
        "note": "a builder run: the previous version loaded from its files, 1,000 changed items folded in, written",
    }

    measure = {"queries": str(work / "queries.npy"), "truth": str(work / "truth.npy")}
    measure |= {"exact_queries": args.exact_queries, "ef": args.ef, "detail": args.detail}
    measure["candidates"] = [int(c) for c in args.candidates.split(",") if c.strip()]
    runs = [_child(SEARCH_SCRIPT, str(folder), json.dumps(measure))]
    runs += [_child(SEARCH_SCRIPT, str(folder), "cold") for _ in range(max(0, args.cold_starts - 1))]
    first = runs[0]
    measured = first.pop("measured")
    result["search_process"] = {
        "rss_bytes": first["rss_bytes"],
        "rss_per_item": round(first["rss_bytes"] / n, 1),
        "first_stage_rss_bytes": first["first_stage_rss_bytes"],
        "resident_array_bytes": first["resident_array_bytes"],
        "resident_array_per_item": round(first["resident_array_bytes"] / n, 1),
        "peak_rss_bytes": first["peak_rss_bytes"],
        "heavy_modules": first["heavy_modules"],
        "note": "RSS of a fresh process after loading the snapshot and answering once",
    }
    result["bytes_read_before_first_answer"] = first["bytes_read"]
    result["bytes_read_before_first_answer_per_item"] = round(first["bytes_read"] / n, 1)
    result["bytes_total"] = first["bytes_total"]
    result["first_answer_stage"] = first["first_stage"]
    split = ("import_s", "read_s", "verify_sha256_s", "parse_s", "first_answer_s", "total_s", "full_vectors_s")
    result["cold_start"] = {key: round(statistics.median(r[key] for r in runs), 4) for key in split}
    result["cold_start"] |= {
        "runs": len(runs),
        "note": "median; local disk, page cache warm (not S3); total_s ends at the first answer, full_vectors_s is "
        "the background load after it",
    }
    result.update(measured)
    if args.peers:
        result.update(_peers(work, args))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _drop_leading_rows(path: Path, rows: int) -> None:
    """Rewrite a 2-D .npy file without its first ``rows`` rows, block by block (never the whole array in memory)."""
    source = np.load(path, mmap_mode="r")
    target_path = path.with_suffix(".tmp.npy")
    target = np.lib.format.open_memmap(
        target_path, mode="w+", dtype=source.dtype, shape=(source.shape[0] - rows, source.shape[1])
    )
    for start in range(0, target.shape[0], 65_536):
        target[start : start + 65_536] = source[rows + start : rows + start + 65_536]
    target.flush()
    del source, target
    target_path.replace(path)


def _candidates(snapshot, queries, truth, pools: list[int]) -> list[dict[str, Any]]:
    """Searches as served with other walk pools (the search function's SEARCH_CANDIDATES), after the default's."""
    from catalens.index import IndexView, SearchParams

    return [
        {"candidates": ef, **_served(IndexView(snapshot, params=SearchParams.for_candidates(ef)), queries, truth)}
        for ef in pools
    ]


def _ef_sweep(snapshot, queries, truth, params) -> list[dict[str, Any]]:
    """Walk pools at and below the default, searched as served: a compact table's walk runs on its first stage and
    its pool is re-scored with the full codes (`--candidates` times larger pools). A compact search keeps at least
    k + RERANK_EXTRA = 200 candidates, so the sweep starts there: smaller pools would all walk as 200."""
    from dataclasses import replace

    from catalens.index import IndexView

    return [
        {"ef": ef, **_served(IndexView(snapshot, params=replace(params, ef=ef)), queries, truth, strategy="graph")}
        for ef in sorted({200, 256, 304, params.ef})
    ]


def _filtered(snapshot, queries, params) -> list[dict[str, Any]]:
    """Filtered search at several selectivities, timed as served: auto strategy, forced graph, forced exact."""
    from catalens.index import Filter, IndexView

    out = []
    price_cut = {0.005: 0.45, 0.02: 1.95, 0.1: 9.95, 0.5: 49.95}  # price = (i % 1000) / 10
    specs = [(f"price<= ({s:.1%})", Filter.between("price", None, cut)) for s, cut in price_cut.items()]
    specs.append(("category (~2%, cluster-correlated)", Filter.equals("category", "c07")))
    view = IndexView(snapshot, params=params)
    for name, flt in specs:
        selected = int(snapshot.filter_mask(flt).sum())
        exact_hits, exact_s = _timed(
            lambda q, f=flt: view.search(q, K, filters=f, strategy="exact", vectors=False), queries
        )
        truth = _ids(exact_hits)
        entry: dict[str, Any] = {"filter": name, "rows": selected, "exact": _percentiles(exact_s)}
        entry["auto"] = _served(view, queries, truth, filters=flt)
        if snapshot.graph is not None:
            entry["graph"] = _served(view, queries, truth, strategy="graph", filters=flt)
        out.append(entry)
    return out


def _peers(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """pynndescent's own query and hnswlib on the same vectors, queries and float32 exact truth."""
    from catalens.index.build import nndescent

    vectors = np.load(work / "vectors.npy")
    queries = np.load(work / "queries.npy")
    truth = [[_item_id(int(r)) for r in row] for row in np.load(work / "truth.npy")]
    index = nndescent(vectors, seed=args.seed, n_jobs=args.build_threads)
    out = {"pynndescent_query": _pynndescent_peer(index, queries, truth)}
    del index
    out["hnswlib"] = _hnswlib_peer(vectors, queries, truth, args)
    return out


def _pynndescent_peer(index, queries, truth) -> list[dict[str, Any]]:
    """pynndescent's own single-query search (1 thread); it answers in input order, as the truth is."""
    import numba

    numba.set_num_threads(1)
    out = []
    for epsilon in (0.1, 0.2, 0.3):
        index.query(queries[:5], k=K, epsilon=epsilon)  # compile outside the timing
        found, seconds = _timed(lambda q, e=epsilon: index.query(q[None, :], k=K, epsilon=e)[0][0], list(queries))
        ids = [[_item_id(int(i)) for i in np.asarray(row)] for row in found]
        out.append({"epsilon": epsilon, **_percentiles(seconds), "recall_at_10": _recall(ids, truth)})
    return out


def _hnswlib_peer(input_vectors, queries, truth, args) -> dict[str, Any]:
    import hnswlib

    n, dim = input_vectors.shape
    index = hnswlib.Index(space="ip", dim=dim)
    started = time.perf_counter()
    index.init_index(max_elements=n, ef_construction=args.hnsw_ef_construction, M=args.hnsw_m, random_seed=args.seed)
    index.add_items(input_vectors, num_threads=args.build_threads)
    build_seconds = time.perf_counter() - started
    index.set_num_threads(1)
    sweep = []
    for ef in (16, 32, 64, 128, 256):
        index.set_ef(ef)
        found, seconds = _timed(lambda q: index.knn_query(q, k=K)[0][0], list(queries))
        ids = [[_item_id(int(i)) for i in row] for row in found]
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


def _grocery_vectors(
    grocery: Path, model_dir: Path | None, augment: int, n_queries: int, seed: int, threads: int, name: str | None
):
    """(index vectors, index photo ids, index labels, query vectors, query photo ids, query labels, card, seconds)."""
    import csv

    from catalens.embedder import Embedder
    from catalens.imaging import decode_image, preprocess
    from catalens.settings import load_settings

    embedder = Embedder.from_dir(model_dir or load_settings().model_dir, "fp32", threads=threads, name=name)
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
    """Recall@10 and score error of each layout against float32 exact search on real embeddings of grocery photos.

    Index = every photo of the dataset (train, val, iconic) plus ``--grocery-augment`` augmented copies;
    queries = another augmented copy of 500 of them (not indexed). One row per layout: ``compact`` (what the
    builder writes, default parameters), ``float32``, ``float32_pca256`` (float32 in a PCA-256 space), each searched
    as served (``auto``) and exactly, with how often the query's own photo is in the top 10 and the fraction of the
    top 10 with the query's fine class. ``codes`` compares the full-vector codes alone with the same vectors, and
    ``score_gaps`` says how far apart neighbours' scores are (:func:`code_study`), to compare with the synthetic set.
    """
    from threadpoolctl import threadpool_limits

    from catalens.index import BuildParams, IndexView, ItemRecord, build_snapshot
    from catalens.index.reduce import normalise

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
                grocery, args.model_dir, args.grocery_augment, 500, args.seed, args.build_threads, args.model
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
    unit_index = normalise(index_vectors)
    unit_queries = normalise(query_vectors)
    truth_scores = unit_queries @ unit_index.T
    truth = [[f"g{i:06d}" for i in np.argsort(-row, kind="stable")[:K]] for row in truth_scores]
    row_photo = {f"g{i:06d}": int(p) for i, p in enumerate(index_photo)}
    row_label = {f"g{i:06d}": int(label) for i, label in enumerate(index_label)}
    layouts = []
    base = BuildParams(graph_threshold=2, n_jobs=args.build_threads, seed=args.seed)
    reduced = min(base.coarse_dim, int(index_vectors.shape[1]))
    for name, params in (
        ("compact", base),
        ("float32", replace(base, layout="float32")),
        (f"float32_pca{reduced}", replace(base, layout="float32", reduce_dim=reduced)),
    ):
        started = time.perf_counter()
        snapshot = build_snapshot(records, model_fingerprint=fingerprint, params=params)
        build_seconds = time.perf_counter() - started
        view = IndexView(snapshot)
        with threadpool_limits(1):
            served, served_s = _timed(lambda q, v=view: v.search(q, K, vectors=False), list(query_vectors))
            exact, exact_s = _timed(lambda q, v=view: v.search(q, K, strategy="exact"), list(query_vectors))
        errors = [
            abs(hit.score - float(truth_scores[qi, int(hit.item_id[1:])]))
            for qi, hits in enumerate(served)
            for hit in hits
        ]
        layouts.append(
            {
                "layout": name,
                "index_dim": snapshot.dim,
                "build_seconds": round(build_seconds, 2),
                "graph": snapshot.info["graph"],
                "recall_at_10": _recall(_ids(served), truth),
                "exact_recall_at_10": _recall(_ids(exact), truth),
                "score_error": {
                    "median": round(float(np.median(errors)), 6),
                    "p99": round(float(np.percentile(errors, 99)), 6),
                    "max": round(float(np.max(errors)), 6),
                },
                "latency": _percentiles(served_s),
                "exact_latency": _percentiles(exact_s),
                **_retrieval_quality(_ids(exact), query_photo, query_label, row_photo, row_label),
            }
        )
    result["layouts"] = layouts
    result.update(code_study(unit_index, unit_queries))
    return result


def code_study(vectors: np.ndarray, queries: np.ndarray, sample: int = 8192, seed: int = 0) -> dict[str, Any]:
    """How hard a vector set is for int8 codes, and how each code does on it (unit rows, queries not indexed).

    ``score_gaps``: per query, the float32 gap between the 10th and 11th score (what a code's score error must stay
    below for the top 10 to hold), also relative to the spread of the top 100 (1st − 100th score). ``codes``:
    recall@10 against float32 exact when *every* row is ranked by its decoded code (no first stage), and the median
    score error on the true top 10: ``int8_direct`` (the vector, one step per dimension from the largest magnitude
    in a ``sample``-row sample), ``int8_residual`` (what the compact layout stores: the residual to a PCA-320 first
    stage, :class:`catalens.index.vectors.CompactCodec`), ``float16``.
    """
    from catalens.index.vectors import COARSE_DIM, CompactCodec, Quantiser

    scores = queries @ vectors.T
    ranked = -np.sort(-scores, axis=1)[:, : min(100, scores.shape[1])]
    gap = ranked[:, K - 1] - ranked[:, K]
    spread = ranked[:, 0] - ranked[:, -1]
    truth = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    picks = np.sort(np.random.default_rng(seed).choice(len(vectors), min(len(vectors), sample), replace=False))
    fit = vectors[picks]
    codec = CompactCodec.fit(fit, COARSE_DIM, seed=seed)
    direct = Quantiser.fit(fit, headroom=1.0 if len(fit) >= sample else 1.5)

    decoders = {
        "int8_direct": lambda block: direct.decode(direct.encode(block)),
        "int8_residual": lambda block: codec.decode(*codec.encode(block)),
        "float16": lambda block: block.astype(np.float16).astype(np.float32),
    }
    codes = {}
    for name, decode in decoders.items():
        approx = np.empty_like(scores)
        for start in range(0, len(vectors), 4096):
            approx[:, start : start + 4096] = queries @ decode(vectors[start : start + 4096]).T
        found = np.argsort(-approx, axis=1, kind="stable")[:, :K]
        recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(found.tolist(), truth.tolist(), strict=True)])
        error = np.abs(np.take_along_axis(approx - scores, truth, axis=1))
        codes[name] = {"recall_at_10": round(float(recall), 4), "score_error_median": round(float(np.median(error)), 6)}

    def quantiles(values: np.ndarray) -> dict[str, float]:
        return {f"p{q}": round(float(np.percentile(values, q)), 6) for q in (10, 25, 50, 75)}

    return {
        "score_gaps": {
            "gap_10_11": quantiles(gap),
            "gap_over_top100_spread": quantiles(gap / np.maximum(spread, 1e-12)),
            "score_10th_median": round(float(np.median(ranked[:, K - 1])), 4),
        },
        "codes": codes,
    }
