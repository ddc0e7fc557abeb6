"""Index builder Lambda (container image): fold the index deltas into a new snapshot, then collect garbage.

Started by the schedule (``{"trigger": "schedule"}``), by the threshold alarm through EventBridge
(``{"trigger": "threshold"}``) or by hand (``{"trigger": "manual", "force": true}`` rebuilds even without deltas).
:meth:`catalens.index.store.IndexStore.compact` does the work with
:func:`catalens.index.build.build_snapshot` (pynndescent for large catalogs: the reason this function is an image);
a run with no pending deltas ends after one manifest GET and one LIST.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from catalens.adapters.s3 import S3BlobStore
from catalens.index.store import IndexStore, SnapshotCoverage
from catalens.settings import load_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = load_settings()
store = IndexStore(S3BlobStore(boto3.client("s3"), settings.index_bucket), settings.index_prefix)


def newest_delta_fingerprint(index: IndexStore) -> str | None:
    """The model fingerprint of the newest pending delta: what the first compaction builds with (no snapshot yet)."""
    deltas = index.fetch_deltas(index.list_deltas(), SnapshotCoverage(None))
    if not deltas:
        return None
    newest = max(deltas.values(), key=lambda d: (d.record.updated_at, d.record.sequencer))
    return newest.model_fingerprint or None


def compact(index: IndexStore, *, trigger: str, force: bool = False, gc_grace_seconds: float = 3600.0) -> dict:
    """One builder run: compact (if there are deltas, or ``force``), then delete what no retained version needs."""
    manifest, _ = index.read_manifest()
    fingerprint = None
    if manifest.current is None:
        fingerprint = newest_delta_fingerprint(index)
        if fingerprint is None:
            return {"trigger": trigger, "noop": True, "reason": "no index yet and no deltas to build one from"}
    result = index.compact(model_fingerprint=fingerprint, force=force)
    garbage = index.gc(gc_grace_seconds)
    return {"trigger": trigger, **asdict(result), "gc": asdict(garbage)}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict:
    trigger = str(event.get("trigger", "manual"))
    outcome = compact(
        store, trigger=trigger, force=bool(event.get("force")), gc_grace_seconds=settings.gc_grace_seconds
    )
    metrics.add_dimension(name="trigger", value=trigger)
    metrics.add_metric(name="CompactedDeltas", unit=MetricUnit.Count, value=outcome.get("deltas_included", 0))
    if "items" in outcome:
        metrics.add_metric(name="IndexItems", unit=MetricUnit.Count, value=outcome["items"])
    metrics.add_metric(name="BuildSeconds", unit=MetricUnit.Seconds, value=outcome.get("build_seconds", 0.0))
    logger.info("index builder run", extra=outcome)
    return outcome
