"""Metrics as the services emit them: implementations of :class:`catalens.ports.MetricsSink`.

On Lambda the handlers pass :class:`PowertoolsMetrics` (CloudWatch embedded metric format); tests pass
:class:`RecordingMetrics` and read what was emitted.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from catalens.ports import MetricGroup


class NullMetrics:
    """Records nothing: a service built without a sink."""

    def emit(self, name: str, value: float, unit: str = "Count", dimensions: Mapping[str, str] | None = None) -> None:
        return None

    def emit_group(self, points: MetricGroup, dimensions: Mapping[str, str] | None = None) -> None:
        return None


@dataclass(frozen=True)
class MetricPoint:
    name: str
    value: float
    unit: str
    dimensions: Mapping[str, str]


class RecordingMetrics:
    """Keeps every point in memory (tests, benches)."""

    def __init__(self) -> None:
        self.points: list[MetricPoint] = []
        self._lock = threading.Lock()

    def emit(self, name: str, value: float, unit: str = "Count", dimensions: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self.points.append(MetricPoint(name, value, unit, dict(dimensions or {})))

    def emit_group(self, points: MetricGroup, dimensions: Mapping[str, str] | None = None) -> None:
        for name, (value, unit) in points.items():
            self.emit(name, value, unit, dimensions)

    def total(self, name: str, **dimensions: str) -> float:
        wanted = dimensions.items()
        return sum(p.value for p in self.points if p.name == name and all(p.dimensions.get(k) == v for k, v in wanted))


class PowertoolsMetrics:
    """Adapter over ``aws_lambda_powertools.Metrics`` (CloudWatch embedded metric format).

    Powertools applies its dimensions to every metric of a flush, so points join the handler's flush (the one
    EMF document ``@metrics.log_metrics`` prints at the end of the invocation) only while that flush holds
    nothing or holds points of the same dimensions; any other group goes out as its own document. A function that
    records one group per invocation (the search API: one request, one outcome) thus prints one document per
    call, and Powertools always has application metrics to publish. With ``POWERTOOLS_METRICS_DISABLED`` (the
    local stack) nothing is recorded at all: Powertools' own paths would still print some documents.
    """

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics

    def emit(self, name: str, value: float, unit: str = "Count", dimensions: Mapping[str, str] | None = None) -> None:
        self.emit_group({name: (value, unit)}, dimensions)

    def emit_group(self, points: MetricGroup, dimensions: Mapping[str, str] | None = None) -> None:
        from aws_lambda_powertools.metrics import EphemeralMetrics
        from aws_lambda_powertools.metrics.functions import is_metrics_disabled

        if is_metrics_disabled():
            return
        wanted = {name: str(value) for name, value in (dimensions or {}).items()}
        current = self._flush_dimensions()
        if current == wanted or (not current and not self.metrics.metric_set):
            target = self.metrics
        else:
            target = EphemeralMetrics(namespace=self.metrics.namespace, service=self.metrics.service)
            target.set_default_dimensions(**self.metrics.default_dimensions)
        for name, value in wanted.items():
            target.add_dimension(name=name, value=value)
        for name, (value, unit) in points.items():
            target.add_metric(name=name, unit=unit, value=value)
        if target is not self.metrics:
            target.flush_metrics()

    def _flush_dimensions(self) -> dict[str, str]:
        """Dimensions on the handler's flush beyond the defaults (``service`` and ``set_default_dimensions``)."""
        defaults = {"service", *self.metrics.default_dimensions}
        return {name: value for name, value in self.metrics.dimension_set.items() if name not in defaults}
