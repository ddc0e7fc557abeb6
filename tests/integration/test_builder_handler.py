"""The index builder's handler as plain Python (its image needs Docker; its logic does not), over an in-memory index.

In the integration tier only because importing the handler creates the X-Ray SDK's UDP emitter socket.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from catalens.adapters.memory import MemoryBlobStore
from catalens.adapters.s3 import S3BlobStore
from catalens.domain import MIN_REFERENCE
from catalens.index.records import ItemRecord
from catalens.index.store import IndexStore

APP = Path(__file__).resolve().parents[2] / "functions" / "builder" / "app.py"


@pytest.fixture
def builder(monkeypatch: pytest.MonkeyPatch) -> Any:
    """functions/builder/app.py, imported with a region and a bucket name (its init creates an S3 client, offline)."""
    env = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "INDEX_BUCKET": "unused", "POWERTOOLS_TRACE_DISABLED": "true"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("catalens_test_builder_app", APP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def record(i: int, updated_at: float) -> ItemRecord:
    vector = np.random.default_rng(i).normal(size=8).astype(np.float32)
    return ItemRecord(item_id=f"sku-{i}", vector=vector / np.linalg.norm(vector), fields={}, image_key=f"sku-{i}.jpg",
                      source_etag=f"e{i}", sequencer=f"{i + 1:016X}", updated_at=updated_at)  # fmt: skip


def test_the_first_build_takes_the_model_of_the_newest_delta(builder: Any) -> None:
    store = IndexStore(MemoryBlobStore(), "index/")
    store.write_item(record(0, updated_at=1.0), model_fingerprint="old-model")
    store.write_item(record(1, updated_at=2.0), model_fingerprint="new-model")
    assert builder.newest_delta_fingerprint(store) == "new-model"

    outcome = builder.compact(store, trigger="schedule", gc_grace_seconds=0)

    assert outcome["noop"] is False
    assert (outcome["deltas_included"], outcome["deltas_skipped"]) == (1, 1)  # the old model's vector is not mixed in
    assert store.load_view().get("sku-1") is not None
    assert store.load_view().get("sku-0") is None


def test_later_runs_compact_only_when_there_is_something_new_or_when_forced(builder: Any) -> None:
    store = IndexStore(MemoryBlobStore(), "index/")
    assert builder.compact(store, trigger="schedule")["noop"] is True  # no index, no deltas: nothing to build
    store.write_item(record(0, updated_at=1.0), model_fingerprint="m")
    first = builder.compact(store, trigger="schedule")
    assert builder.compact(store, trigger="threshold") == {**first, "trigger": "threshold", "noop": True,
        "deltas_included": 0, "build_seconds": 0.0, "attempts": 1}  # fmt: skip
    store.write_item(record(1, updated_at=2.0), model_fingerprint="")  # a delta without fingerprint joins the index
    second = builder.compact(store, trigger="schedule")
    forced = builder.compact(store, trigger="manual", force=True)
    assert (second["deltas_included"], second["items"]) == (1, 2)
    assert forced["noop"] is False
    assert forced["version"] != second["version"]


def write_query_samples(store: IndexStore, n: int, *, fingerprint: str = "m", offset: int = 0) -> None:
    for i in range(n):
        vector = np.random.default_rng(500 + offset + i).normal(size=8).astype(np.float32)
        store.write_query_sample(vector / np.linalg.norm(vector), model_fingerprint=fingerprint)


def test_every_run_refreshes_the_query_domain_after_compaction_and_gc_keeps_it(builder: Any) -> None:
    store = IndexStore(MemoryBlobStore(), "index/")
    store.write_item(record(0, updated_at=1.0), model_fingerprint="m")
    write_query_samples(store, MIN_REFERENCE - 1)
    first = builder.compact(store, trigger="schedule", gc_grace_seconds=0)
    assert first["noop"] is False
    assert first["query_domain"] == {"status": "too_few_samples", "entry": None}

    write_query_samples(store, 1, offset=100)
    second = builder.compact(store, trigger="schedule", gc_grace_seconds=-1)  # GC deletes anything unreferenced
    assert second["noop"] is True, "no new deltas: the refresh runs anyway"
    assert second["query_domain"]["status"] == "refreshed"
    entry = store.read_manifest()[0].query_domain
    assert entry is not None
    assert second["query_domain"]["entry"] == entry.to_dict()
    assert entry.count == MIN_REFERENCE
    store.load_query_domain(entry)  # GC kept the object the manifest names

    third = builder.compact(store, trigger="schedule", gc_grace_seconds=-1)
    assert third["query_domain"] == {"status": "unchanged", "entry": entry.to_dict()}
    store.write_item(record(1, updated_at=2.0), model_fingerprint="m")
    fourth = builder.compact(store, trigger="threshold", gc_grace_seconds=-1)
    assert fourth["deltas_included"] == 1
    assert store.read_manifest()[0].query_domain == entry, "compaction kept the entry"


def test_a_failed_refresh_is_reported_and_does_not_fail_the_compaction(
    builder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = IndexStore(MemoryBlobStore(), "index/")
    store.write_item(record(0, updated_at=1.0), model_fingerprint="m")

    def broken(**_: Any) -> None:
        raise RuntimeError("S3 said no")

    monkeypatch.setattr(store, "refresh_query_domain", broken)
    outcome = builder.compact(store, trigger="schedule", gc_grace_seconds=0)
    assert outcome["noop"] is False
    assert outcome["items"] == 1
    assert outcome["query_domain"] == {"status": "error", "error": "RuntimeError: S3 said no"}
    assert store.load_view().get("sku-0") is not None


def test_the_handler_on_s3_compacts_refreshes_and_reports(
    load_function: Any, s3_client: Any, s3_bucket: str, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INDEX_BUCKET", s3_bucket)
    builder = load_function("builder")  # its own S3 store, on moto's bucket
    store = IndexStore(S3BlobStore(s3_client, s3_bucket), "index/")
    assert builder.store.prefix == store.prefix
    store.write_item(record(0, updated_at=1.0), model_fingerprint="m")
    write_query_samples(store, MIN_REFERENCE + 3)

    outcome = builder.lambda_handler({"trigger": "schedule"}, lambda_context)

    assert outcome["noop"] is False
    assert outcome["query_domain"]["status"] == "refreshed"
    manifest, _ = store.read_manifest()
    assert manifest.query_domain is not None
    assert outcome["query_domain"]["entry"]["key"] == manifest.query_domain.key
    assert manifest.query_domain.count == MIN_REFERENCE + 3
    assert store.load_view().query_domain is not None
