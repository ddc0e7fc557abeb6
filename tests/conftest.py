"""Fixtures shared by every test tier."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GROCERY_DIR = REPO_ROOT.parent / "shared" / "data" / "grocery"


def _cache_numba_in_the_virtualenv() -> None:
    """pynndescent's numba code compiles for minutes per test process; its ``cache=True`` functions are kept in the
    virtualenv (numba checks each entry against its source file and its own version), so later runs load them.

    Set before anything imports numba, and inherited by the local stack's processes (the builder's compaction).
    """
    if "NUMBA_CACHE_DIR" not in os.environ and os.access(sys.prefix, os.W_OK):
        os.environ["NUMBA_CACHE_DIR"] = str(Path(sys.prefix) / "numba-cache")


_cache_numba_in_the_virtualenv()

# The serving default is the int8 model; the tests build the fp32 one only (the int8 quantisation costs seconds and
# is paid only by tests that ask for ``int8_model_dir``), so a command that reads its variant from the settings
# reads fp32 here.
os.environ.setdefault("CATALENS_MODEL_VARIANT", "fp32")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def grocery_dir() -> Path:
    """The evaluation photos beside the checkout; tests that need them skip cleanly when absent."""
    if not (GROCERY_DIR / "labels.csv").is_file():
        pytest.skip("../shared/data/grocery is not present")
    return GROCERY_DIR


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fp32 model (with its card), built torch-free once per session (< 1 s): tests never need `make setup`."""
    from catalens_tools.model.build import build_models

    out = tmp_path_factory.mktemp("models")
    build_models(out, variants=("fp32",))
    return out


@pytest.fixture(scope="session")
def int8_model_dir(model_dir: Path) -> Path:
    """``model_dir`` plus the int8 variant quantised from its fp32 model (~5 s, paid only by tests that ask)."""
    from catalens.model.card import ModelCard, model_paths
    from catalens_tools.model.build import build_int8, write_model

    onnx_path, card_path = model_paths(model_dir, "efficientnet-lite0", "fp32")
    write_model(model_dir, *build_int8(onnx_path.read_bytes(), ModelCard.load(card_path)))
    return model_dir
