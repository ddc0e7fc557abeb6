"""The index builder's run over an in-memory index: what it compacts, when, and how it reads its payload."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from catalens.index.records import ItemRecord
from catalens.index.store import IndexStore
from catalens.query_domain import MIN_REFERENCE
from catalens.service.builder import (
    BuildRequest,
    BuildRequestError,
    IndexBuilder,
    newest_delta_fingerprint,
    parse_build_request,
    run_build,
)
from catalens.service.telemetry import RecordingMetrics
from catalens_tools.in_memory.blobs import MemoryBlobStore


def record(i: int, updated_at: float) -> ItemRecord:
    vector = np.random.default_rng(i).normal(size=8).astype(np.float32)
    return ItemRecord(item_id=f"sku-{i}", vector=vector / np.linalg.norm(vector), fields={}, image_key=f"sku-{i}.jpg",
                      source_etag=f"e{i}", sequencer=f"{i + 1:016X}", updated_at=updated_at)  # fmt: skip


def test_the_first_build_takes_the_model_of_the_newest_delta() -> None:
    store = IndexStore(MemoryBlobStore(), "index/")
    store.write_item(record(0, updated_at=1.0), model_fingerprint="old-model")
    store.write_item(record(1, updated_at=2.0), model_fingerprint="new-model")
    assert newest_delta_fingerprint(store) == "new-model"

    outcome = run_build(store, BuildRequest("schedule"), gc_grace_seconds=0)

    assert outcome["noop"] is False
    assert (outcome["deltas_included"], outcome["deltas_skipped"]) == (1, 1)  # the old model's vector is not mixed in
    assert store.load_view().get("sku-1") is not None
    assert store.load_view().get("sku-0") is None


def test_later_runs_compact_only_when_there_is_something_new_or_when_forced() -> None:
    store = IndexStore(MemoryBlobStore(), "index/")
    assert run_build(store, BuildRequest("schedule"))["noop"] is True  # no index, no deltas: nothing to build
    store.write_item(record(0, updated_at=1.0), model_fingerprint="m")
    first = run_build(store, BuildRequest("schedule"))
    assert run_build(store, BuildRequest("threshold")) == {**first, "trigger": "threshold", "noop": True,
        "deltas_included": 0, "build_seconds": 0.0, "attempts": 1,
        "bytes_uploaded": 0, "objects_uploaded": 0}  # fmt: skip
    store.write_item(record(1, updated_at=2.0), model_fingerprint="")  # a delta without fingerprint joins the index
    second = run_build(store, BuildRequest("schedule"))
    forced = run_build(store, BuildRequest("manual", force=True))
    assert (second["deltas_included"], second["items"]) == (1, 2)
    assert forced["noop"] is False
    assert forced["version"] != second["version"]
    assert first["bytes_uploaded"] > 0
    assert first["bytes_copied"] == 0
    assert forced["bytes_copied"] > 0  # a forced rebuild of the same items copies what did not change


def write_query_samples(store: IndexStore, n: int, *, fingerprint: str = "m", offset: int = 0) -> None:
    for i in range(n):
        vector = np.random.default_rng(500 + offset + i).normal(size=8).astype(np.float32)
        store.queries.write_query_sample(vector / np.linalg.norm(vector), model_fingerprint=fingerprint)


def test_every_run_refreshes_the_query_domain_after_compaction_and_gc_keeps_it() -> None:
    store = IndexStore(MemoryBlobStore(), "index/")
    store.write_item(record(0, updated_at=1.0), model_fingerprint="m")
    write_query_samples(store, MIN_REFERENCE - 1)
    first = run_build(store, BuildRequest("schedule"), gc_grace_seconds=0)
    assert first["noop"] is False
    assert first["query_domain"] == {"status": "too_few_samples", "entry": None}

    write_query_samples(store, 1, offset=100)
    second = run_build(store, BuildRequest("schedule"), gc_grace_seconds=-1)  # GC deletes anything unreferenced
    assert second["noop"] is True, "no new deltas: the refresh runs anyway"
    assert second["query_domain"]["status"] == "refreshed"
    entry = store.read_manifest()[0].query_domain
    assert entry is not None
    assert second["query_domain"]["entry"] == entry.to_dict()
    assert entry.count == MIN_REFERENCE
    store.queries.load_query_domain(entry)  # GC kept the object the manifest names

    third = run_build(store, BuildRequest("schedule"), gc_grace_seconds=-1)
    assert third["query_domain"] == {"status": "unchanged", "entry": entry.to_dict()}
    store.write_item(record(1, updated_at=2.0), model_fingerprint="m")
    fourth = run_build(store, BuildRequest("threshold"), gc_grace_seconds=-1)
    assert fourth["deltas_included"] == 1
    assert store.read_manifest()[0].query_domain == entry, "compaction kept the entry"


def test_a_failed_refresh_is_reported_and_does_not_fail_the_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    store = IndexStore(MemoryBlobStore(), "index/")
    store.write_item(record(0, updated_at=1.0), model_fingerprint="m")

    def broken(**_: Any) -> None:
        raise RuntimeError("S3 said no")

    monkeypatch.setattr(store.queries, "refresh_query_domain", broken)
    outcome = run_build(store, BuildRequest("schedule"), gc_grace_seconds=0)
    assert outcome["noop"] is False
    assert outcome["items"] == 1
    assert outcome["query_domain"] == {"status": "error", "error": "RuntimeError: S3 said no"}
    assert store.load_view().get("sku-0") is not None


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({}, BuildRequest("manual", force=False)),
        ({"trigger": "schedule"}, BuildRequest("schedule", force=False)),
        ({"trigger": "manual", "force": True}, BuildRequest("manual", force=True)),
        ({"force": "false"}, BuildRequest("manual", force=False)),  # a string that reads false must not force
        ({"force": "TRUE"}, BuildRequest("manual", force=True)),
    ],
)
def test_payloads_are_read_for_what_they_say(payload: Any, expected: BuildRequest) -> None:
    assert parse_build_request(payload) == expected


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ([], "got list"),
        ("x", "got str"),
        (None, "got null"),
        ({"force": "maybe"}, "force must be true or false"),
        ({"force": 1}, "force must be true or false"),
        ({"trigger": "nightly"}, "trigger must be one of"),
        ({"trigger": "manual", "forse": True}, "unknown field(s) 'forse'"),
    ],
)
def test_unreadable_payloads_are_refused_by_name(payload: Any, named: str) -> None:
    with pytest.raises(BuildRequestError, match=re.escape(named)):
        parse_build_request(payload)


def test_a_string_false_does_not_rebuild_an_index_with_nothing_new() -> None:
    store = IndexStore(MemoryBlobStore(), "index/")
    store.write_item(record(0, updated_at=1.0), model_fingerprint="m")
    first = run_build(store, parse_build_request({"trigger": "manual"}))
    again = run_build(store, parse_build_request({"trigger": "manual", "force": "false"}))
    assert again["noop"] is True
    assert again["version"] == first["version"]


def test_an_invocation_runs_the_build_and_counts_it_by_trigger() -> None:
    store = IndexStore(MemoryBlobStore(), "index/")
    store.write_item(record(0, updated_at=1.0), model_fingerprint="m")
    metrics = RecordingMetrics()

    outcome = IndexBuilder(store, metrics=metrics).handle({"trigger": "threshold"})

    assert (outcome["trigger"], outcome["noop"], outcome["items"]) == ("threshold", False, 1)
    assert metrics.total("CompactedDeltas", trigger="threshold") == 1
    assert metrics.total("IndexItems", trigger="threshold") == 1


def test_an_unreadable_invocation_builds_nothing_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    store = IndexStore(MemoryBlobStore(), "index/")
    store.write_item(record(0, updated_at=1.0), model_fingerprint="m")
    metrics = RecordingMetrics()

    with pytest.raises(BuildRequestError, match="force"):
        IndexBuilder(store, metrics=metrics).handle({"force": "maybe"})

    assert store.read_manifest()[0].current is None
    assert metrics.total("InvalidInvocations") == 1
    assert [r.code for r in caplog.records if r.levelname == "ERROR"] == ["invalid_build_request"]
