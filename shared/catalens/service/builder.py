"""The index builder's run: fold the index deltas into a new snapshot, refresh the query domain, collect garbage.

The builder Lambda (a container image: faiss) is started by the schedule (``{"trigger": "schedule"}``), by
the threshold alarm through EventBridge (``{"trigger": "threshold"}``) or by hand (``{"trigger": "manual",
"force": true}`` rebuilds even without deltas). :func:`parse_build_request` reads that payload strictly, since a
hand-typed ``{"force": "false"}`` must not force a rebuild; :func:`run_build` does the work with
:meth:`~catalens.index.store.IndexStore.compact`. A run with no pending deltas ends after one manifest GET and one
LIST, then refreshes the query-domain reference before GC, so GC sees the new reference as the one to keep. A
failed refresh is reported in the result; it never fails the compaction. :class:`IndexBuilder` is what the function
runs per invocation: read the payload, run, log and count the outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from catalens.errors import CatalensError
from catalens.index.deltas import SnapshotCoverage
from catalens.index.store import IndexStore
from catalens.ports import MetricsSink
from catalens.service.requests import read_flag
from catalens.service.telemetry import NullMetrics

if TYPE_CHECKING:
    from catalens.adapters.s3vectors import S3VectorsIndex

log = logging.getLogger(__name__)

TRIGGERS = ("schedule", "threshold", "manual")


class BuildRequestError(CatalensError):
    """The builder was invoked with a payload it does not understand; nothing was built."""

    code = "invalid_build_request"


@dataclass(frozen=True)
class BuildRequest:
    """What one builder invocation asks for."""

    trigger: str = "manual"
    force: bool = False


def parse_build_request(payload: Any) -> BuildRequest:
    """Read an invocation payload: a JSON object with optional ``trigger`` and ``force``, nothing else.

    >>> parse_build_request({"trigger": "manual", "force": "false"})
    BuildRequest(trigger='manual', force=False)
    """
    if not isinstance(payload, Mapping):
        raise BuildRequestError(
            f'the payload must be a JSON object like {{"trigger": "manual", "force": true}}, got {_kind(payload)}'
        )
    unknown = sorted(str(name) for name in payload if name not in ("trigger", "force"))
    if unknown:
        raise BuildRequestError(f"unknown field(s) {', '.join(repr(u[:40]) for u in unknown)}; use trigger, force")
    trigger = payload.get("trigger", "manual")
    if trigger not in TRIGGERS:
        raise BuildRequestError(f"trigger must be one of {', '.join(TRIGGERS)}, got {str(trigger)[:40]!r}")
    return BuildRequest(trigger=trigger, force=_flag(payload.get("force", False)))


def _flag(value: Any) -> bool:
    flag = read_flag(value)
    if flag is None:
        raise BuildRequestError(f"force must be true or false, got {_kind(value)} {str(value)[:40]!r}")
    return flag


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def newest_delta_fingerprint(index: IndexStore) -> str | None:
    """The model fingerprint of the newest pending delta: what the first compaction builds with (no snapshot yet)."""
    deltas = index.fetch_deltas(index.list_deltas(), SnapshotCoverage(None))
    if not deltas:
        return None
    newest = max(deltas.values(), key=lambda d: (d.record.updated_at, d.record.sequencer))
    return newest.model_fingerprint or None


def run_build(index: IndexStore, request: BuildRequest, *, gc_grace_seconds: float = 3600.0) -> dict[str, Any]:
    """One builder run: compact (if there are deltas, or ``force``), refresh the query domain, then delete what no
    retained version (nor the manifest's query domain) needs."""
    trigger = request.trigger
    manifest, _ = index.read_manifest()
    fingerprint = None
    if manifest.current is None:
        fingerprint = newest_delta_fingerprint(index)
        if fingerprint is None:
            return {"trigger": trigger, "noop": True, "reason": "no index yet and no deltas to build one from"}
    result = index.compact(model_fingerprint=fingerprint, force=request.force)
    query_domain = refresh_query_domain(index)
    garbage = index.gc(gc_grace_seconds)
    return {"trigger": trigger, **asdict(result), "query_domain": query_domain, "gc": asdict(garbage)}


def run_vector_build(
    index: IndexStore, vectors: S3VectorsIndex, request: BuildRequest, *, gc_grace_seconds: float = 3600.0
) -> dict[str, Any]:
    """One builder run beside an S3 Vectors index: S3 Vectors indexes each vector as it is put, so there is nothing
    to compact. The run refreshes the query domain for the model the index holds, recounts the index's stats when
    forced (a full read of the index: see :meth:`~catalens.adapters.s3vectors.S3VectorsIndex.recount`), and
    collects old query samples and references."""
    trigger = request.trigger
    outcome: dict[str, Any] = {"trigger": trigger, "backend": "s3vectors"}
    if request.force:
        stats = vectors.recount()
        outcome["recounted"] = True
    else:
        stats, _ = vectors.read_stats()
    outcome["items"] = stats.count
    if not stats.model_fingerprint:
        return {**outcome, "noop": True, "reason": "the vector index holds no item yet"}
    outcome["query_domain"] = refresh_query_domain(index, model_fingerprint=stats.model_fingerprint)
    outcome["gc"] = asdict(index.gc(gc_grace_seconds))
    return outcome


def refresh_query_domain(index: IndexStore, *, model_fingerprint: str | None = None) -> dict[str, Any]:
    """Refresh the query-domain reference; what happened, for the run's result and logs (never raises)."""
    try:
        before, _ = index.read_manifest()
        entry = index.queries.refresh_query_domain(model_fingerprint=model_fingerprint)
    except Exception as exc:  # calibration is an optimisation: the compaction above stands
        log.warning("query-domain refresh failed", exc_info=True)
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    if entry is None:
        return {"status": "too_few_samples", "entry": None}
    changed = before.query_domain is None or not entry.same_reference(before.query_domain)
    return {"status": "refreshed" if changed else "unchanged", "entry": entry.to_dict()}


def run_metrics(outcome: Mapping[str, Any]) -> dict[str, tuple[float, str]]:
    """The run's CloudWatch points (name -> value, unit)."""
    points: dict[str, tuple[float, str]] = {
        "CompactedDeltas": (outcome.get("deltas_included", 0), "Count"),
        "BuildSeconds": (outcome.get("build_seconds", 0.0), "Seconds"),
    }
    if "items" in outcome:
        points["IndexItems"] = (outcome["items"], "Count")
    query_domain = outcome.get("query_domain") or {}
    if query_domain.get("entry"):
        points["QueryReferenceSize"] = (query_domain["entry"]["count"], "Count")
    if query_domain.get("status") == "error":
        points["QueryDomainRefreshErrors"] = (1, "Count")
    return points


class IndexBuilder:
    """The builder function's service: one invocation payload in, one run's outcome out, logged and counted.

    A payload it cannot read (``[]``, ``"x"``, ``null``, ``{"force": "maybe"}``) fails the invocation with a
    :class:`BuildRequestError` naming the problem, logged and counted (``InvalidInvocations``); nothing is built.
    A run's points (:func:`run_metrics`) are recorded by ``trigger``.
    """

    def __init__(
        self,
        store: IndexStore,
        *,
        gc_grace_seconds: float = 3600.0,
        metrics: MetricsSink | None = None,
        vectors: S3VectorsIndex | None = None,
    ):
        self.store = store
        self.vectors = vectors
        self.gc_grace_seconds = gc_grace_seconds
        self.metrics = metrics or NullMetrics()

    def handle(self, payload: Any) -> dict[str, Any]:
        """Run the build ``payload`` asks for; its outcome is logged, counted and returned."""
        try:
            request = parse_build_request(payload)
        except BuildRequestError as exc:
            log.error("builder invoked with an unreadable payload", extra={"code": exc.code, "reason": str(exc)})
            self.metrics.emit("InvalidInvocations", 1)
            raise
        if self.vectors is not None:
            outcome = run_vector_build(self.store, self.vectors, request, gc_grace_seconds=self.gc_grace_seconds)
        else:
            outcome = run_build(self.store, request, gc_grace_seconds=self.gc_grace_seconds)
        self.metrics.emit_group(run_metrics(outcome), {"trigger": request.trigger})
        log.info("index builder run", extra=outcome)
        return outcome
