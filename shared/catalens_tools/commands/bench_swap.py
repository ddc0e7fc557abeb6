"""``catalens bench swap``: a compact index built, compacted and swapped through moto's S3, and what a swap costs the
search process in memory.

Starts moto's S3 server (the local stack's emulator) on a free port and, on synthetic clustered vectors mapped from a
file in ``--work``: a builder child writes a first version of N items (``IndexStore.compact`` with a build function
over the mapped vectors); a search child (one BLAS thread) serves it through ``IndexCache`` (staged loading, 1 s TTL)
and samples its RSS every 20 ms; then two swaps while it serves. Swap A is the real compaction path: the parent
writes ``--changes`` changed items as deltas and a builder child runs ``compact()`` (previous version loaded from
the store, deltas folded, unchanged chunks copied server-side), so the search process shares the unchanged chunks.
Swap B is a rebuild of every item (``previous=None``, every vector nudged), so no chunk is shared and the search
process must let the old version go first (the first-stage path). Prints one JSON line per phase and a summary with
each swap's peak RSS over the steady state (the goal: under 1.3).

Speed and memory are measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import numpy as np

FINGERPRINT = "bench-synthetic"
BUCKET = "catalens-bench-swap"
PREFIX = "index/"
RATIO_GOAL = 1.3
SAMPLE_SECONDS = 0.02
SEQUENCERS = {"first": "01", "changes": "02", "rebuild": "03"}  # each phase's items supersede the one before
NUDGE = {"changes": 0.01, "rebuild": 0.02}  # added to every component, renormalised by the builder


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    from catalens_tools.cli import group

    parser = group(sub, groups, "bench", "benchmarks").add_parser(
        "swap",
        help="build and compact a compact index through moto S3; search-process RSS during two version swaps",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--items", type=int, default=100_000, help="catalog size (default 100000)")
    parser.add_argument("--dim", type=int, default=None, help="vector dimension (default: the serving model's card)")
    parser.add_argument("--model", default=None, help="built model whose card gives --dim (default: serving model)")
    parser.add_argument("--model-dir", type=Path, default=None, help="built models (default: Settings.model_dir)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the vectors (reused; default: temporary)")
    parser.add_argument("--changes", type=int, default=1_000, help="items changed by swap A's deltas (the first N)")
    parser.add_argument("--decay", type=float, default=1.0, help="spectrum of the synthetic vectors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build-threads", type=int, default=2, help="builder threads (pynndescent)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="slots per full-vector chunk (default: builder's)")
    parser.add_argument("--coarse-dim", type=int, default=None, help="first-stage axes (default: builder's)")
    parser.add_argument("--graph-threshold", type=int, default=None, help="default: the builder's (GRAPH_THRESHOLD)")
    parser.add_argument("--swap-headroom", type=float, default=None, help="the cache's (default DEFAULT_SWAP_HEADROOM)")
    parser.add_argument(
        "--stage-above-bytes",
        type=int,
        default=None,
        help="full vectors below this load whole (default the cache's DEFAULT_STAGE_ABOVE_BYTES)",
    )
    parser.add_argument("--steady-searches", type=int, default=300, help="searches before the steady-state RSS")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one phase may take")
    parser.set_defaults(func=run)


# ---- the parent ------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from catalens_tools.commands.bench_index import resolve_dim
    from catalens_tools.local.server import LocalMotoServer

    args.dim, dim_source = resolve_dim(args)
    with tempfile.TemporaryDirectory(prefix="catalens-bench-swap-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        vectors = synthetic_vectors(work, args)
        _emit(
            {
                "bench": "swap",
                "phase": "vectors",
                "items": args.items,
                "dim": args.dim,
                "dim_from": dim_source,
                "seconds": round(time.perf_counter() - started, 2),
                "path": str(vectors),
            }
        )
        server = LocalMotoServer(port=0)
        server.start()
        search: SearchChild | None = None
        try:
            store = make_store(server.endpoint_url)
            store.blob._client.create_bucket(Bucket=BUCKET)
            spec = {"endpoint": server.endpoint_url, "work": str(work), "params": build_params(args)}
            first = _builder({**spec, "mode": "first"}, args)
            _emit({"bench": "swap", "phase": "first_build", **first})

            search = SearchChild(server.endpoint_url, args)
            ready = search.read("steady", args.timeout)
            _emit({"bench": "swap", "phase": "search_cold_start", **ready})

            swap_a = run_swap(search, store, args, lambda: swap_a_builder(store, spec, args), "swap_a_compaction")
            rebuild = {**spec, "mode": "rebuild"}
            swap_b = run_swap(search, store, args, lambda: _builder(rebuild, args), "swap_b_rebuild")
            stats = search.quit(args.timeout)
            search = None
            _emit({"bench": "swap", "phase": "search_stats", **stats})
            _emit(summary(first, ready, swap_a, swap_b, stats))
        finally:
            if search is not None:
                search.kill()
            server.stop()
    return 0


def build_params(args: argparse.Namespace) -> dict[str, Any]:
    """BuildParams fields the options set (the rest are the builder's defaults)."""
    params = {"seed": args.seed, "n_jobs": args.build_threads}
    if args.chunk_rows:
        params["chunk_rows"] = args.chunk_rows
    if args.coarse_dim:
        params["coarse_dim"] = args.coarse_dim
    if args.graph_threshold is not None:
        params["graph_threshold"] = args.graph_threshold
    return params


def synthetic_vectors(work: Path, args: argparse.Namespace) -> Path:
    """``vectors.npy`` (N unit rows, drawn block by block into a memory-mapped file) and ``labels.npy``; reused when
    a previous run left them with the same shape and draw. The rebuild's nudged copy is ``rebuild.npy``."""
    from catalens_tools.synthetic import clustered_vectors

    path, marker = work / "vectors.npy", work / "vectors.json"
    wanted = {"items": args.items, "dim": args.dim, "seed": args.seed, "decay": args.decay}
    if path.is_file() and marker.is_file() and json.loads(marker.read_text()) == wanted:
        return path
    stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.items, args.dim))
    labels = clustered_vectors(args.items, args.dim, seed=args.seed, decay=args.decay, out=stored)[1]
    stored.flush()
    np.save(work / "labels.npy", labels)
    nudged = np.lib.format.open_memmap(work / "rebuild.npy", mode="w+", dtype=np.float32, shape=stored.shape)
    for start in range(0, args.items, 65_536):
        nudged[start : start + 65_536] = stored[start : start + 65_536] + np.float32(NUDGE["rebuild"])
    nudged.flush()
    del stored, nudged
    marker.write_text(json.dumps(wanted))
    return path


def make_store(endpoint: str, workers: int = 16) -> Any:
    """An IndexStore on the bench bucket of the moto server at ``endpoint``."""
    from catalens.adapters.s3 import S3BlobStore
    from catalens.index.store import IndexStore
    from catalens_tools.commands.bench_transport import moto_s3_client

    client = moto_s3_client(endpoint, workers, retries={"max_attempts": 3, "mode": "standard"})
    return IndexStore(S3BlobStore(client, BUCKET), PREFIX, fetch_workers=workers)


def swap_a_builder(store: Any, spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Write the changed items as deltas (as ingest would), then run a builder child's ``compact()`` over them."""
    from catalens_tools.commands.bench_index import _records

    vectors = np.load(Path(spec["work"]) / "vectors.npy", mmap_mode="r")
    labels = np.load(Path(spec["work"]) / "labels.npy")
    n = min(args.changes, len(vectors))
    changed = np.asarray(vectors[:n]) + np.float32(NUDGE["changes"])
    records = _records(changed, labels[:n], sequencer=SEQUENCERS["changes"])
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        written = sum(pool.map(lambda r: store.write_item(r, model_fingerprint=FINGERPRINT), records))
    deltas_s = time.perf_counter() - started
    result = _builder({**spec, "mode": "compact"}, args)
    return {"deltas_written": written, "deltas_write_s": round(deltas_s, 2), **result}


def run_swap(search: SearchChild, store: Any, args: argparse.Namespace, build: Any, phase: str) -> dict[str, Any]:
    """Arm the search child (its peak window starts), build the new version, and wait until it serves it whole."""
    search.send("swap")
    search.read("armed", args.timeout)
    builder = build()
    swapped = search.read("swapped", args.timeout)
    steady = swapped["steady_rss_bytes"]
    result = {
        "builder": builder,
        "search": swapped,
        "version_bytes": version_bytes(store),
        "served_version": swapped["version"] == builder["version"],
        "peak_over_steady": round(swapped["peak_rss_bytes"] / steady, 3),
        "after_over_steady": round(swapped["rss_after_bytes"] / steady, 3),
    }
    _emit({"bench": "swap", "phase": phase, **result})
    return result


def version_bytes(store: Any) -> dict[str, Any]:
    """What the cache's swap rule weighs: the old version's snapshot bytes, and those of the new one whose sha256 the
    old one lacks (above ``swap_headroom`` of the old, the swap goes through the first stage)."""
    from catalens.index.layout import SNAPSHOT_DIR

    manifest, _ = store.read_manifest()
    new, old = manifest.current, manifest.history[0]
    files = {name: meta for name, meta in old.files.items() if name.startswith(SNAPSHOT_DIR)}
    held_shas = {meta["sha256"] for meta in files.values()}
    held = sum(int(meta["size"]) for meta in files.values())
    added = sum(
        int(meta["size"])
        for name, meta in new.files.items()
        if name.startswith(SNAPSHOT_DIR) and meta["sha256"] not in held_shas
    )
    total = sum(int(meta["size"]) for name, meta in new.files.items() if name.startswith(SNAPSHOT_DIR))
    return {"old": held, "new": total, "added": added, "added_over_old": round(added / held, 3)}


def summary(
    first: dict[str, Any], ready: dict[str, Any], swap_a: dict[str, Any], swap_b: dict[str, Any], stats: dict[str, Any]
) -> dict[str, Any]:
    ratio_a, ratio_b = swap_a["peak_over_steady"], swap_b["peak_over_steady"]
    checks = {
        "compacts_and_serves_through_moto": bool(first["version"])
        and ready["stage"] == "full"
        and swap_a["served_version"]
        and swap_b["served_version"],
        "swap_a_shares_chunks": swap_a["builder"]["objects_copied"] > 0 and swap_a["search"]["first_stage_swaps"] == 0,
        f"swap_a_peak_under_{RATIO_GOAL}x_steady": ratio_a < RATIO_GOAL,
        "swap_b_through_first_stage": swap_b["search"]["first_stage_swaps"] == 1,
        f"swap_b_peak_under_{RATIO_GOAL}x_steady": ratio_b < RATIO_GOAL,
    }
    return {
        "bench": "swap",
        "phase": "summary",
        "items": first["items"],
        "steady_rss_bytes": ready["steady_rss_bytes"],
        "swap_a_peak_over_steady": ratio_a,
        "swap_b_peak_over_steady": ratio_b,
        "swaps_through_first_stage": stats["swaps_through_first_stage"],
        "checks": checks,
        "pass": all(checks.values()),
    }


def _emit(result: dict[str, Any]) -> None:
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result), flush=True)


def _builder(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from catalens_tools.commands.bench_index import _child, _child_env

    env = {**os.environ, "PYTHONPATH": _child_env()["PYTHONPATH"]}  # all threads: the builder is a batch job
    return _child(BUILDER_SCRIPT, json.dumps(spec), env=env)


class SearchChild:
    """The search process: JSON events on its stdout (read on a thread), commands on its stdin."""

    def __init__(self, endpoint: str, args: argparse.Namespace) -> None:
        from catalens_tools.commands.bench_index import _child_env

        spec = {
            "endpoint": endpoint,
            "dim": args.dim,
            "seed": args.seed,
            "swap_headroom": args.swap_headroom,
            "stage_above_bytes": args.stage_above_bytes,
            "steady_searches": args.steady_searches,
            "timeout": args.timeout,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", SEARCH_SCRIPT, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if line.startswith("{"):
                self._events.put(json.loads(line))
        self._events.put(None)

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def read(self, event: str, timeout: float) -> dict[str, Any]:
        """The next event, which must be ``event`` (an ``error`` event or an exit raises)."""
        try:
            got = self._events.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"search child: no {event!r} within {timeout:.0f} s") from None
        if got is None:
            raise RuntimeError(f"search child exited ({self.process.wait()}) before {event!r}")
        if got.get("event") != event:
            raise RuntimeError(f"search child: expected {event!r}, got {got}")
        return {k: v for k, v in got.items() if k != "event"}

    def quit(self, timeout: float) -> dict[str, Any]:
        self.send("quit")
        stats = self.read("stats", timeout)
        self.process.wait(timeout)
        return stats

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# ---- the builder child -----------------------------------------------------------------------------------------------

BUILDER_SCRIPT = "import sys; from catalens_tools.commands.bench_swap import builder_child; builder_child(sys.argv[1])"


def builder_child(spec_json: str) -> None:
    """In a fresh process: one ``IndexStore.compact`` through moto (``mode`` first, compact or rebuild); print its
    result, wall time and peaks (VmHWM, and RssAnon sampled: VmHWM also counts the mapped input vectors' pages)."""
    from dataclasses import replace

    from catalens.index import BuildParams, build_snapshot
    from catalens_tools.commands.bench_index import _PeakAnon, _proc_status, _records

    spec = json.loads(spec_json)
    work = Path(spec["work"])
    peak = _PeakAnon()
    started = time.perf_counter()
    store = make_store(spec["endpoint"])
    params = replace(BuildParams(), **spec["params"])

    def from_vectors(path: Path, sequencer: str) -> Any:
        """A build function over every item of a vector file, ignoring the (empty) deltas and any previous."""

        def build_fn(records: Any, *, model_fingerprint: str, previous: Any, version: str, params: Any) -> Any:
            vectors = np.load(path, mmap_mode="r")
            items = _records(vectors, np.load(work / "labels.npy"), sequencer=sequencer)
            return build_snapshot(items, model_fingerprint=model_fingerprint, version=version, params=params)

        return build_fn

    if spec["mode"] == "first":
        build_fn = from_vectors(work / "vectors.npy", SEQUENCERS["first"])
        result = store.compact(build_fn, model_fingerprint=FINGERPRINT, force=True, params=params)
    elif spec["mode"] == "rebuild":
        build_fn = from_vectors(work / "rebuild.npy", SEQUENCERS["rebuild"])
        result = store.compact(build_fn, model_fingerprint=FINGERPRINT, force=True, params=params)
    else:
        result = store.compact(model_fingerprint=FINGERPRINT, params=params)
    status = _proc_status()
    out = {
        **asdict(result),
        "wall_s": round(time.perf_counter() - started, 2),
        "build_seconds": round(result.build_seconds, 2),
        "peak_rss_bytes": status["VmHWM"],
        "peak_anon_bytes": peak.stop(),
    }
    print(json.dumps(out))


# ---- the search child ------------------------------------------------------------------------------------------------

SEARCH_SCRIPT = "import sys; from catalens_tools.commands.bench_swap import search_child; search_child(sys.argv[1])"


class _Sampler:
    """VmRSS every 20 ms on a thread; the peak since :meth:`reset` (VmHWM, reset at the same time, is the backstop
    for a peak shorter than a sample interval)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="rss-sampler", daemon=True).start()

    @staticmethod
    def status() -> dict[str, int]:
        from catalens_tools.commands.bench_index import _proc_status

        return _proc_status()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, self.status().get("VmRSS", 0))

    def reset(self) -> None:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.peak = self.status().get("VmRSS", 0)

    def window_peak(self) -> int:
        status = self.status()
        return max(self.peak, status.get("VmHWM", 0), status.get("VmRSS", 0))


def _rss_after_malloc_trim() -> int | None:
    """VmRSS once glibc has returned its free pages (what freed but retained memory hides); None off glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return _Sampler.status().get("VmRSS")


def search_child(spec_json: str) -> None:
    """Serve through IndexCache and measure: the cold start, the steady state, and each swap the parent announces.

    Calls ``view()`` in a loop (every 10 ms) and searches a random query every 50 ms, as a warm search Lambda
    under steady traffic would; commands come on stdin: ``swap`` (arm, then report once a new version serves at
    stage full) and ``quit`` (report the cache's stats).
    """
    process_started = time.perf_counter()
    from catalens.index.cache import IndexCache

    spec = json.loads(spec_json)
    sampler = _Sampler()
    commands: queue.Queue[str] = queue.Queue()

    def read_commands() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("quit")

    threading.Thread(target=read_commands, name="commands", daemon=True).start()
    rng = np.random.default_rng(spec["seed"] + 1)

    def query() -> np.ndarray:
        return rng.standard_normal(spec["dim"]).astype(np.float32)

    def emit(event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, **fields}), flush=True)

    store = make_store(spec["endpoint"])
    settings = {name: spec.get(name) for name in ("swap_headroom", "stage_above_bytes")}
    cache = IndexCache(store, background=True, ttl_seconds=1.0, **{k: v for k, v in settings.items() if v is not None})
    started = time.perf_counter()
    view = cache.view()
    view.search(query(), 10)
    first_answer_s = time.perf_counter() - started
    first_stage = view.stage
    first_rss = sampler.status()["VmRSS"]
    while view.stage != "full":
        if time.perf_counter() - started > spec["timeout"]:
            emit("error", message="full vectors never arrived")
            return
        time.sleep(0.01)
        view = cache.view()
    full_s = time.perf_counter() - started
    for _ in range(spec["steady_searches"]):
        cache.view().search(query(), 10)
    steady = sampler.status()["VmRSS"]
    emit(
        "steady",
        version=cache.version,
        import_s=round(started - process_started, 3),
        first_answer_s=round(first_answer_s, 3),
        first_answer_stage=first_stage,
        first_answer_rss_bytes=first_rss,
        full_s=round(full_s, 3),
        stage=view.stage,
        steady_rss_bytes=steady,
        steady_after_searches=spec["steady_searches"],
        resident_array_bytes=view.snapshot.resident_bytes() if view.snapshot is not None else 0,
    )

    searches, last_search = 0, 0.0
    swap: dict[str, Any] | None = None
    while True:
        try:
            command = commands.get_nowait()
        except queue.Empty:
            command = None
        if command == "quit":
            emit("stats", **asdict(cache.stats), searches=searches)
            return
        if command == "swap":
            sampler.reset()
            swap = {
                "old": cache.version,
                "armed": time.perf_counter(),
                "through_first": cache.stats.swaps_through_first_stage,
                "seen_s": None,
                "seen_stage": None,
            }
            emit("armed", version=swap["old"])
        view = cache.view()
        now = time.perf_counter()
        if now - last_search >= 0.05:
            view.search(query(), 10)
            searches, last_search = searches + 1, now
        if swap is not None and cache.version != swap["old"]:
            if swap["seen_s"] is None:
                swap["seen_s"], swap["seen_stage"] = now - swap["armed"], view.stage
            if view.stage == "full":
                peak = sampler.window_peak()
                done_s = now - swap["armed"]
                for _ in range(50):  # a few answers from the new version before its resting RSS is read
                    cache.view().search(query(), 10)
                time.sleep(0.5)
                emit(
                    "swapped",
                    version=cache.version,
                    old_version=swap["old"],
                    new_version_seen_s=round(swap["seen_s"], 3),
                    new_version_first_seen_stage=swap["seen_stage"],
                    full_s=round(done_s, 3),
                    steady_rss_bytes=steady,
                    peak_rss_bytes=peak,
                    rss_after_bytes=sampler.status()["VmRSS"],
                    rss_after_malloc_trim_bytes=_rss_after_malloc_trim(),
                    first_stage_swaps=cache.stats.swaps_through_first_stage - swap["through_first"],
                    resident_array_bytes=view.snapshot.resident_bytes() if view.snapshot is not None else 0,
                )
                swap = None
        elif swap is not None and now - swap["armed"] > spec["timeout"]:
            emit("error", message=f"no new version within {spec['timeout']} s", stats=asdict(cache.stats))
            return
        time.sleep(0.01)
