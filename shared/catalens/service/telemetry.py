"""Metrics as the services emit them, behind a small port so the services never depend on a metrics backend.

On Lambda the handlers pass :class:`PowertoolsMetrics` (CloudWatch embedded metric format); tests pass
:class:`RecordingMetrics` and read what was emitted.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class MetricsSink(Protocol):
    def emit(self, name: str, value: float, unit: str = "Count", dimensions: Mapping[str, str] | None = None) -> None:
        """Record one data point; ``dimensions`` split it (e.g. failures by reason)."""
        ...


class NullMetrics:
    def emit(self, name: str, value: float, unit: str = "Count", dimensions: Mapping[str, str] | None = None) -> None:
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

    def total(self, name: str, **dimensions: str) -> float:
        wanted = dimensions.items()
        return sum(p.value for p in self.points if p.name == name and all(p.dimensions.get(k) == v for k, v in wanted))


class PowertoolsMetrics:
    """Adapter over ``aws_lambda_powertools.Metrics``: plain points join the handler's flush; dimensioned
    points go out as their own EMF blob (Powertools dimensions otherwise apply to every metric in a flush)."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics

    def emit(self, name: str, value: float, unit: str = "Count", dimensions: Mapping[str, str] | None = None) -> None:
        from aws_lambda_powertools.metrics import single_metric

        if not dimensions:
            self.metrics.add_metric(name=name, unit=unit, value=value)
            return
        namespace = getattr(self.metrics, "namespace", None)
        with single_metric(name=name, unit=unit, value=value, namespace=namespace) as metric:
            for dim_name, dim_value in dimensions.items():
                metric.add_dimension(name=dim_name, value=str(dim_value))
