"""The builder image compiles pynndescent's numba functions once, when it is built, so a fresh container does not.

A fresh builder process spends about 107 s of CPU compiling pynndescent's ``cache=True`` numba functions before its
first graph. numba can keep what it compiled in ``NUMBA_CACHE_DIR``, but it writes a probe file into that directory
before it reads it, so the cache must be writable, and a Lambda image is read-only except ``/tmp``. Hence:

1. at image build time ``python -m catalens.service.builder_warmup`` runs a tiny build through the same
   :func:`~catalens.index.build.build_snapshot` path compaction takes, with ``NUMBA_CACHE_DIR`` pointing at a
   directory of the image (``/opt/numba-cache``);
2. at container start :func:`seed_numba_cache` copies that directory to the writable ``NUMBA_CACHE_DIR``
   (``/tmp/numba-cache``) before anything imports pynndescent.

numba's cache entries are keyed by the CPU model and its features; the image sets ``NUMBA_CPU_NAME=generic`` (for
both steps) so what was compiled on the build machine is used on whichever CPU Lambda runs it. numba keys entries by
a hash of each source file too, so a cache from another pynndescent release is ignored, never misused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

SEED_DIR_ENV = "CATALENS_NUMBA_CACHE_SEED"
"""Where the image keeps the cache compiled at build time (read-only at run time)."""


def seed_numba_cache(seed_dir: str | os.PathLike[str] | None = None, cache_dir: str | None = None) -> int:
    """Copy the image's compiled cache into the writable ``NUMBA_CACHE_DIR``; how many files were copied.

    Files already there are kept (a warm container keeps what it compiled since). Nothing happens without a seed
    directory or a cache directory, so the same handler runs outside the image.
    """
    seed = Path(seed_dir or os.environ.get(SEED_DIR_ENV, ""))
    target = cache_dir or os.environ.get("NUMBA_CACHE_DIR")
    if not str(seed) or str(seed) == "." or not seed.is_dir() or not target:
        return 0
    copied = 0
    for source in seed.rglob("*"):
        if not source.is_file():
            continue
        destination = Path(target) / source.relative_to(seed)
        if destination.exists():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        copied += 1
    return copied


def warm_up(items: int = 2_000, dim: int = 32) -> float:
    """Build a small snapshot with a graph, the way compaction does (same dtypes, metric, code path); seconds."""
    import numpy as np

    from catalens.index.build import DEFAULT_PARAMS, build_snapshot
    from catalens.index.records import ItemRecord

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((items, dim)).astype(np.float32)
    records = [
        ItemRecord(f"warm-{i}", vectors[i], {"title": f"t{i}"}, f"warm/{i}.jpg", f"e{i}", f"{i + 1:016X}")
        for i in range(items)
    ]
    params = replace(DEFAULT_PARAMS, graph_threshold=min(items, 1_000))  # a graph even for this few items
    started = time.perf_counter()
    build_snapshot(records, model_fingerprint="warm-up", params=params)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compile the builder's numba functions into NUMBA_CACHE_DIR")
    parser.add_argument("--items", type=int, default=2_000)
    args = parser.parse_args(argv)
    if not os.environ.get("NUMBA_CACHE_DIR"):
        print("NUMBA_CACHE_DIR must name the directory to compile into", file=sys.stderr)
        return 2
    cpu_started = time.process_time()
    seconds = warm_up(args.items)
    files = sum(1 for p in Path(os.environ["NUMBA_CACHE_DIR"]).rglob("*.nbc"))
    cpu = time.process_time() - cpu_started
    print(json.dumps({"build_seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "cached_overloads": files}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
