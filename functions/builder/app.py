"""Index builder Lambda (container image): one :func:`catalens.service.builder.run_build` per invocation.

A payload it cannot read (``[]``, ``"x"``, ``null``, ``{"force": "maybe"}``) fails the invocation with a
``BuildRequestError`` naming the problem, logged and counted; nothing is built.
"""

from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from catalens.composition import index_store
from catalens.service.builder import BuildRequestError, parse_build_request, run_build, run_metrics
from catalens.service.telemetry import PowertoolsMetrics
from catalens.settings import load_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
emf = PowertoolsMetrics(metrics)
settings = load_settings()
store = index_store(settings, boto3.client("s3"))
copy_config_to_registered_loggers(source_logger=logger, include={"catalens"})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: Any, context: Any) -> dict:
    try:
        request = parse_build_request(event)
    except BuildRequestError as exc:
        logger.error("builder invoked with an unreadable payload", code=exc.code, reason=str(exc))
        emf.emit("InvalidInvocations", 1)
        raise
    outcome = run_build(store, request, gc_grace_seconds=settings.gc_grace_seconds)
    emf.emit_group(run_metrics(outcome), {"trigger": request.trigger})
    logger.info("index builder run", extra=outcome)
    return outcome
