"""``catalens bench transport``: how fast a large index version travels between the store and memory, and its peak RSS.

Writes one synthetic version (a file of ``--size-mb`` MB plus a few small ones, in parts of ``--part-mb``) to moto's
S3 server (the local stack's emulator, over HTTP on 127.0.0.1) and to the in-memory store, then loads it back with
:meth:`~catalens.index.store.IndexStore.fetch_version_files` in fresh child processes, for each mode: serial or
parallel fetch (``--workers``), sha256 on the calling thread after all parts arrived or in the fetch threads as they
arrive. Prints one JSON line per store and mode: median seconds over ``--repeats`` loads and the peak RSS the load
added (Linux VmHWM, reset before the load), plus the write's seconds and bytes per store. Speed is measured here,
never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

MODES = {  # name -> (fetch workers or None for the store's, sha256 in the fetch threads)
    "serial+hash-after": (1, False),
    "serial+hash-inline": (1, True),
    "parallel+hash-after": (None, False),
    "parallel+hash-in-threads": (None, True),
}
VERSION = "00000001-bench"
PREFIX = "index/"
BUCKET = "catalens-bench-transport"


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    from catalens_tools.cli import group

    parser = group(sub, groups, "bench", "benchmarks").add_parser(
        "transport", help="load time and peak RSS of a large version from moto S3 and memory, serial vs parallel"
    )
    parser.add_argument("--size-mb", type=int, default=1700, help="the large file's size in MB (default 1700)")
    parser.add_argument("--part-mb", type=int, default=64, help="part size in MiB (default 64, the store's)")
    parser.add_argument("--workers", type=int, default=16, help="parallel fetch threads (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="loads per store and mode (median)")
    parser.add_argument("--stores", default="moto,memory", help="comma-separated: moto, memory")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    parser.set_defaults(func=run)


def synthetic_files(size: int) -> dict[str, bytes]:
    """A version's files: one large (distinct bytes per MiB, so parts differ) and a few small ones."""
    big = np.zeros(size, dtype=np.uint8)
    big[:: 2**20] = np.arange(len(big[:: 2**20])) % 251 + 1
    big[1::4096] = 7
    return {
        "snapshot/full.0.npy": big.tobytes(),
        "snapshot/ids.npy": bytes(range(256)) * 4096,
        "snapshot/snapshot.json": b'{"bench": true}',
    }


def rss_peak_bytes() -> int:
    """VmHWM of this process (Linux): the peak resident set since the last :func:`reset_rss_peak`."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_rss_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def make_store(kind: str, endpoint: str | None, part_size: int, workers: int) -> Any:
    from catalens.index.store import IndexStore

    if kind == "memory":
        from catalens_tools.in_memory.blobs import MemoryBlobStore

        blob: Any = MemoryBlobStore()
    else:
        from catalens.adapters.s3 import S3BlobStore

        blob = S3BlobStore(moto_s3_client(endpoint, workers), BUCKET)
    return IndexStore(blob, PREFIX, part_size=part_size, fetch_workers=workers)


def moto_s3_client(endpoint: str | None, workers: int, **config: Any) -> Any:
    """A boto3 S3 client for a benchmark's moto server, with a connection per fetch thread (``config``: more
    botocore ``Config`` settings)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(max_pool_connections=max(10, workers), **config),
    )


def write_version(store: Any, size: int) -> dict[str, Any]:
    """Write the synthetic version; its manifest entry (as a dict) and the write's cost."""
    from catalens.index.manifest import VersionEntry
    from catalens.index.transport import write_files

    files = synthetic_files(size)
    started = time.perf_counter()
    metas, stats = write_files(
        store.blob,
        files,
        lambda name: store.version_key(VERSION, name),
        part_size=store.part_size,
        workers=store.fetch_workers,
    )
    seconds = time.perf_counter() - started
    entry = VersionEntry(VERSION, 1, "", 0, "bench", "1", metas, 0, "")
    return {"entry": entry.to_dict(), "write_seconds": round(seconds, 2), "bytes": stats.bytes_uploaded}


def load_once(store: Any, entry_dict: dict[str, Any], mode: str) -> dict[str, float]:
    from catalens.index.manifest import VersionEntry

    workers, inline = MODES[mode]
    entry = VersionEntry.from_dict(entry_dict)
    if workers is not None:
        store.fetch_workers = workers
    reset_rss_peak()
    before = rss_peak_bytes()
    started = time.perf_counter()
    files = store.fetch_version_files(entry, hash_in_fetch_threads=inline)
    seconds = time.perf_counter() - started
    peak = rss_peak_bytes()
    assert sum(len(v) for v in files.values()) == sum(m["size"] for m in entry.files.values())
    return {"seconds": seconds, "rss_added_mb": (peak - before) / 1e6}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One load in a fresh process (moto), or a write then the loads in one process (memory: the store lives here)."""
    store = make_store(spec["store"], spec.get("endpoint"), spec["part_size"], spec["workers"])
    if spec["store"] == "memory":
        written = write_version(store, spec["size"])
        results = [load_once(store, written["entry"], spec["mode"]) for _ in range(spec["repeats"])]
        return {"write_seconds": written["write_seconds"], "loads": results}
    return {"loads": [load_once(store, spec["entry"], spec["mode"])]}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-m", "catalens_tools.commands.bench_transport"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> int:
    size = args.size_mb * 10**6
    part_size = args.part_mb * 2**20
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES] + [s for s in stores if s not in ("moto", "memory")]
    if unknown:
        print(f"unknown store or mode: {', '.join(unknown)}", file=sys.stderr)
        return 2
    base = {"size": size, "part_size": part_size, "workers": args.workers, "repeats": args.repeats}
    if "moto" in stores:
        from catalens_tools.local.server import LocalMotoServer

        server = LocalMotoServer(port=0)
        server.start()
        try:
            store = make_store("moto", server.endpoint_url, part_size, args.workers)
            store.blob._client.create_bucket(Bucket=BUCKET)
            written = write_version(store, size)
            print(json.dumps({"store": "moto", "write_seconds": written["write_seconds"], "bytes": written["bytes"]}))
            for mode in modes:
                spec = {**base, "store": "moto", "mode": mode, "endpoint": server.endpoint_url}
                loads = [run_child({**spec, "entry": written["entry"]})["loads"][0] for _ in range(args.repeats)]
                print(json.dumps(summary("moto", mode, size, loads)), flush=True)
        finally:
            server.stop()
    if "memory" in stores:
        for mode in modes:
            result = run_child({**base, "store": "memory", "mode": mode})
            print(json.dumps(summary("memory", mode, size, result["loads"])), flush=True)
    return 0


def summary(store: str, mode: str, size: int, loads: list[dict[str, float]]) -> dict[str, Any]:
    seconds = statistics.median(load["seconds"] for load in loads)
    return {
        "store": store,
        "mode": mode,
        "bytes": size,
        "load_seconds_median": round(seconds, 2),
        "load_seconds": [round(load["seconds"], 2) for load in loads],
        "mb_per_s": round(size / 1e6 / seconds),
        "rss_added_mb_median": round(statistics.median(load["rss_added_mb"] for load in loads)),
    }


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.stdin.read()))))
