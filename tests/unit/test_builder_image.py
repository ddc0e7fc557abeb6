"""The builder image installs the builder extra and nothing that compiles at run time.

Docker does not run in the unit tier, so the Dockerfile is read as text, and the claim it makes (no numba on the
default build path, so a fresh container has nothing to compile) is checked by building a graph in a fresh process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "functions" / "builder" / "Dockerfile"
HEAVY_JIT = ("numba", "llvmlite", "pynndescent")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    parsed = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            parsed.append((word.upper(), rest.strip()))
    return parsed


def test_the_image_installs_the_builder_extra_and_checks_its_graph_library_imports() -> None:
    install = [rest for word, rest in instructions() if word == "RUN" and "pip install" in rest]
    assert len(install) == 1
    assert '"/tmp/catalens[builder]"' in install[0]
    assert "import faiss" in install[0]  # a broken wheel fails the image build, not the first compaction
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=\[ ]", requirement)[0] for requirement in extras["builder"]}
    assert "faiss-cpu" in names
    assert not names & set(HEAVY_JIT)


def test_the_image_sets_no_jit_cache() -> None:
    env_lines = [rest for word, rest in instructions() if word == "ENV"]
    assert not any("NUMBA" in rest for rest in env_lines)
    assert "numba" not in (ROOT / "functions" / "builder" / "app.py").read_text().lower()


def test_the_default_build_path_imports_no_jit_compiler() -> None:
    script = """
import json, sys
import numpy as np
from dataclasses import replace
from catalens.index.build import DEFAULT_PARAMS, build_snapshot
from catalens.index.records import ItemRecord
rng = np.random.default_rng(0)
vectors = rng.standard_normal((600, 16)).astype(np.float32)
records = [ItemRecord(f"i{i}", vectors[i], {}, f"p/{i}.jpg", f"e{i}", f"{i + 1:016X}") for i in range(600)]
snapshot = build_snapshot(records, model_fingerprint="fp", params=replace(DEFAULT_PARAMS, graph_threshold=100))
modules = sorted(m for m in sys.modules if "." not in m)
print(json.dumps({"graph": snapshot.info["graph"]["method"], "modules": modules}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["graph"] == "hnsw"
    assert "faiss" in result["modules"]
    assert not set(result["modules"]) & set(HEAVY_JIT)
