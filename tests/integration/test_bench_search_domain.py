"""``catalens bench search`` gives its index the query domain an index serves with, through the real stores (moto)."""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

import pytest

from catalens.composition import index_store
from catalens.query_domain import MAX_REFERENCE
from catalens.settings import Settings
from catalens_tools.commands.bench_search import _publish_query_domain, _publish_synthetic_index

EMBEDDER = SimpleNamespace(dim=24, fingerprint="bench-model")


def _args(calibration: str) -> argparse.Namespace:
    return argparse.Namespace(seed=0, index_dim=None, build_threads=1, text=False, calibration=calibration)


@pytest.mark.parametrize(("calibration", "seeded"), [("log", False), ("seeded", True)])
def test_the_bench_index_carries_the_domain_it_names(
    s3_client: Any, s3_bucket: str, calibration: str, seeded: bool
) -> None:
    _publish_synthetic_index(s3_client, s3_bucket, 300, EMBEDDER, _args(calibration))
    described = _publish_query_domain(s3_client, s3_bucket, EMBEDDER, _args(calibration))
    assert described == {"calibration": calibration, "reference": MAX_REFERENCE, "seeded": seeded}
    store = index_store(Settings(index_bucket=s3_bucket, index_prefix="index/"), s3_client)
    manifest, _ = store.manifests.read()
    domain = store.queries.query_domain_of(manifest)
    assert domain is not None
    assert (len(domain), domain.seeded, domain.dim) == (MAX_REFERENCE, seeded, EMBEDDER.dim)


def test_no_calibration_publishes_no_domain(s3_client: Any, s3_bucket: str) -> None:
    _publish_synthetic_index(s3_client, s3_bucket, 300, EMBEDDER, _args("none"))
    assert _publish_query_domain(s3_client, s3_bucket, EMBEDDER, _args("none")) is None
    store = index_store(Settings(index_bucket=s3_bucket, index_prefix="index/"), s3_client)
    assert store.manifests.read()[0].query_domain is None
