"""Fixtures shared by every test tier."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GROCERY_DIR = REPO_ROOT.parent / "shared" / "data" / "grocery"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def grocery_dir() -> Path:
    """The evaluation photos beside the checkout; tests that need them skip cleanly when absent."""
    if not (GROCERY_DIR / "labels.csv").is_file():
        pytest.skip("../shared/data/grocery is not present")
    return GROCERY_DIR
