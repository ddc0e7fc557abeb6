"""The query path imports numpy only: no numba, pynndescent, scipy or scikit-learn in the search Lambda."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ["numba", "llvmlite", "pynndescent", "scipy", "sklearn"]


def test_query_modules_import_numpy_only(tmp_path):
    # the snapshot is written by this process, then loaded and searched by a fresh one
    import numpy as np

    from catalens.index import ItemRecord, build_snapshot

    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    snapshot = build_snapshot(
        [ItemRecord(f"i{i}", x[i], {"c": "a"}, "k", "e", "1") for i in range(50)], model_fingerprint="fp"
    )
    for name, data in snapshot.to_files().items():
        (tmp_path / name).write_bytes(data)
    script = textwrap.dedent(
        f"""
        import json, pathlib, sys
        import numpy as np
        import catalens.index
        from catalens.index import Filter, IndexView, Snapshot
        import catalens.index.graph, catalens.index.view, catalens.index.snapshot, catalens.index.filters
        import catalens.index.reduce, catalens.index.records, catalens.index.build
        root = pathlib.Path({str(tmp_path)!r})
        snapshot = Snapshot.from_files({{p.name: p.read_bytes() for p in root.iterdir()}})
        hits = IndexView(snapshot).search(np.ones(8, np.float32), 3, filters=Filter.equals("c", "a"))
        print(json.dumps({{"hits": len(hits), "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["hits"] == 3
    assert report["heavy"] == []
