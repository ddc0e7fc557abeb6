"""Remove what the Lambda functions never import from an installed layer tree (stdlib only; run by the Makefile).

Every byte counts against the 250 MB unzipped limit of a function plus its layers, and against cold-start
unzip time. Only files that no import at run time reaches are removed: test suites, byte-code caches, type
stubs, C headers, console scripts, numpy's Fortran wrapper generator, onnxruntime's offline tools (quantisation,
transformer optimisers: they need onnx/sympy, which the layer does not carry) and wheel RECORD files (which
would list the removed files). Licence files stay: the wheels' licences require shipping them. (The Makefile
then compiles fresh byte-code: Lambda cannot write ``__pycache__`` under /opt, so shipped .pyc files save import time.)
Shared libraries are not stripped: the wheels ship most of them stripped already, and stripping auditwheel-patched
libraries (OpenBLAS) risks breaking them for ~1 MB.

Usage: ``python trim.py DIR`` — prints what it removed as one JSON line.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

# Directories removed wherever they occur inside a package.
NAMED_DIRS = {"__pycache__", "tests", "test"}
# Paths relative to the layer's python/ directory.
PATHS = [
    "bin",
    "numpy/f2py",
    "numpy/_pyinstaller",
    "numpy/_core/include",
    "numpy/_core/lib/pkgconfig",
    "numpy/distutils",
    "onnxruntime/transformers",
    "onnxruntime/quantization",
    "onnxruntime/tools",
    "onnxruntime/datasets",
]
SUFFIXES = {".pyc", ".pyi", ".h"}
DIST_INFO_FILES = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def tree_bytes(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def trim(root: Path) -> dict[str, int]:
    """Delete the unused files under ``root``; returns bytes removed by category."""
    removed = {"named_dirs": 0, "paths": 0, "files": 0, "dist_info": 0}
    for relative in PATHS:
        target = root / relative
        if target.exists():
            removed["paths"] += tree_bytes(target)
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    for directory in sorted((p for p in root.rglob("*") if p.is_dir() and p.name in NAMED_DIRS), reverse=True):
        if directory.exists() and not directory.parent.name.endswith(".dist-info"):
            removed["named_dirs"] += tree_bytes(directory)
            shutil.rmtree(directory)
    for path in list(root.rglob("*")):
        if not path.is_file():
            continue
        if path.parent.name.endswith(".dist-info") and path.name in DIST_INFO_FILES:
            removed["dist_info"] += path.stat().st_size
            path.unlink()
        elif path.suffix in SUFFIXES:
            removed["files"] += path.stat().st_size
            path.unlink()
    return removed


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not Path(argv[1]).is_dir():
        print("usage: trim.py LAYER_PYTHON_DIR", file=sys.stderr)
        return 2
    root = Path(argv[1])
    before = tree_bytes(root)
    removed = trim(root)
    after = tree_bytes(root)
    print(json.dumps({"layer_dir": str(root), "bytes_before": before, "bytes_after": after, "removed": removed}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
