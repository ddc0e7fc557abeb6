"""Index builder Lambda (container image): one IndexBuilder run per invocation; an unreadable payload fails by name."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer

from catalens.composition import build_index_builder
from catalens.service.telemetry import PowertoolsMetrics

logger, tracer, metrics = Logger(), Tracer(), Metrics()
builder = build_index_builder(metrics=PowertoolsMetrics(metrics), logger=logger)
store = builder.store


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: Any, context: Any) -> dict:
    return builder.handle(event)
