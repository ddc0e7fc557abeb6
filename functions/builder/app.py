"""Index builder Lambda (container image): fold the index deltas into a new snapshot, then collect garbage.

Started by the schedule (``{"trigger": "schedule"}``), by the threshold alarm through EventBridge
(``{"trigger": "threshold"}``) or by hand (``{"trigger": "manual", "force": true}`` rebuilds even without deltas).
:meth:`catalens.index.store.IndexStore.compact` does the work with
:func:`catalens.index.build.build_snapshot` (pynndescent for large catalogs: the reason this function is an image);
a run with no pending deltas ends after one manifest GET and one LIST.

Every run then refreshes the query-domain reference (:meth:`~catalens.index.store.IndexStore.refresh_query_domain`:
the newest query samples search stored, folded into the object the manifest names) before GC, so GC sees the new
reference as the one to keep. A failed refresh is logged and reported; it never fails the compaction.
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
    """One builder run: compact (if there are deltas, or ``force``), refresh the query domain, then delete what no
    retained version (nor the manifest's query domain) needs."""
    manifest, _ = index.read_manifest()
    fingerprint = None
    if manifest.current is None:
        fingerprint = newest_delta_fingerprint(index)
        if fingerprint is None:
            return {"trigger": trigger, "noop": True, "reason": "no index yet and no deltas to build one from"}
    result = index.compact(model_fingerprint=fingerprint, force=force)
    query_domain = refresh_query_domain(index)
    garbage = index.gc(gc_grace_seconds)
    return {"trigger": trigger, **asdict(result), "query_domain": query_domain, "gc": asdict(garbage)}


def refresh_query_domain(index: IndexStore) -> dict[str, Any]:
    """Refresh the query-domain reference; what happened, for the run's result and logs (never raises)."""
    try:
        before, _ = index.read_manifest()
        entry = index.refresh_query_domain()
    except Exception as exc:  # calibration is an optimisation: the compaction above stands
        logger.warning("query-domain refresh failed", exc_info=True)
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    if entry is None:
        return {"status": "too_few_samples", "entry": None}
    changed = before.query_domain is None or not entry.same_reference(before.query_domain)
    return {"status": "refreshed" if changed else "unchanged", "entry": entry.to_dict()}


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
    query_domain = outcome.get("query_domain") or {}
    if query_domain.get("entry"):
        metrics.add_metric(name="QueryReferenceSize", unit=MetricUnit.Count, value=query_domain["entry"]["count"])
    if query_domain.get("status") == "error":
        metrics.add_metric(name="QueryDomainRefreshErrors", unit=MetricUnit.Count, value=1)
    logger.info("index builder run", extra=outcome)
    return outcome
