"""The builder image compiles numba's cache at build time and hands it to the run-time cache directory.

Docker does not run in the unit tier, so the Dockerfile is read as text: each claim its comments make is checked
against its instructions, and the seeding it relies on is run for real.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from catalens.service.builder_warmup import SEED_DIR_ENV, seed_numba_cache

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "functions" / "builder" / "Dockerfile"


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


def env_at(steps: list[tuple[str, str]], upto: int) -> dict[str, str]:
    """The ENV values in force before instruction ``upto``."""
    env: dict[str, str] = {}
    for word, rest in steps[:upto]:
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def test_the_image_compiles_the_cache_into_an_image_directory_after_installing_the_package() -> None:
    steps = instructions()
    warm = next(i for i, (word, rest) in enumerate(steps) if word == "RUN" and "builder_warmup" in rest)
    install = next(i for i, (word, rest) in enumerate(steps) if word == "RUN" and "pip install" in rest)
    assert install < warm
    compile_dir = re.search(r"NUMBA_CACHE_DIR=(\S+)", steps[warm][1])
    assert compile_dir is not None
    assert not compile_dir.group(1).startswith("/tmp")  # /tmp of the build is not in the image Lambda runs
    env = env_at(steps, warm)
    assert env["NUMBA_CPU_NAME"] == "generic"  # valid on another CPU than the build machine's
    assert env[SEED_DIR_ENV] == compile_dir.group(1)


def test_at_run_time_the_cache_is_writable_and_the_handler_seeds_it_before_building() -> None:
    steps = instructions()
    final = env_at(steps, len(steps))
    assert final["NUMBA_CACHE_DIR"].startswith("/tmp/")  # the only writable place in a Lambda container
    assert final["NUMBA_CPU_NAME"] == "generic"
    handler = (ROOT / "functions" / "builder" / "app.py").read_text()
    assert handler.index("seed_numba_cache()") < handler.index("build_index_builder(")


def test_seeding_copies_the_compiled_cache_and_keeps_what_the_container_compiled(tmp_path: Path) -> None:
    seed, cache = tmp_path / "opt", tmp_path / "tmp" / "numba-cache"
    (seed / "pynndescent").mkdir(parents=True)
    (seed / "pynndescent" / "utils.f-1.py312.nbi").write_bytes(b"index")
    (seed / "pynndescent" / "utils.f-1.py312.1.nbc").write_bytes(b"code")
    assert seed_numba_cache(seed, str(cache)) == 2
    assert (cache / "pynndescent" / "utils.f-1.py312.1.nbc").read_bytes() == b"code"
    (cache / "pynndescent" / "utils.f-1.py312.nbi").write_bytes(b"newer")
    assert seed_numba_cache(seed, str(cache)) == 0
    assert (cache / "pynndescent" / "utils.f-1.py312.nbi").read_bytes() == b"newer"


def test_seeding_does_nothing_outside_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SEED_DIR_ENV, raising=False)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert seed_numba_cache() == 0
    assert seed_numba_cache(tmp_path / "absent", str(tmp_path / "cache")) == 0
    assert not (tmp_path / "cache").exists()
