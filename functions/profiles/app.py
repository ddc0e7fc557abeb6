"""Profile Lambda: shopper events from the events table's stream → the shopper's profile (and co-occurrence).

Each stream record is one event (``NEW_IMAGE``); :class:`catalens.profiles.ProfileUpdater` applies it
with a conditional write. A malformed record raises, so Powertools reports it in
``batchItemFailures`` while its neighbours land (template: ``FunctionResponseTypes:
[ReportBatchItemFailures]``, bounded ``MaximumRetryAttempts`` and an ``OnFailure`` destination). Every failed
record is counted by reason and leaves one structured log line with its sequence number and exception.
"""

from __future__ import annotations

from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
    DynamoDBRecordEventName,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from catalens.adapters.dynamodb import DynamoCooccurrenceStore, DynamoProfileStore
from catalens.adapters.s3 import S3BlobStore
from catalens.index.cache import IndexCache
from catalens.index.store import IndexStore
from catalens.profiles import ProfileUpdater, ShopperEventError, event_from_stream_image, index_lookup
from catalens.settings import load_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.DynamoDBStreams, logger=logger)

settings = load_settings()
dynamodb = boto3.client("dynamodb")
index = IndexCache(
    IndexStore(S3BlobStore(boto3.client("s3"), settings.index_bucket), settings.index_prefix),
    ttl_seconds=settings.manifest_ttl_seconds,
)
cooccurrence = DynamoCooccurrenceStore(dynamodb, settings.cooccurrence_table) if settings.cooccurrence_table else None
updater = ProfileUpdater(
    store=DynamoProfileStore(dynamodb, settings.profiles_table, cooccurrence_table=settings.cooccurrence_table),
    lookup=index_lookup(index.view),
    cooccurrence=cooccurrence,
    space=lambda: index.view().index_space,
)
copy_config_to_registered_loggers(source_logger=logger, include={"catalens"})


@tracer.capture_method
def record_handler(record: DynamoDBRecord) -> None:
    """Apply one event; raise (→ batch item failure, logged by the processor) when it cannot be applied."""
    logger.append_keys(sequence_number=record.dynamodb.sequence_number if record.dynamodb else None)
    if record.event_name == DynamoDBRecordEventName.REMOVE:  # TTL expiry or erasure: nothing to learn
        metrics.add_metric(name="RemovedEventsSkipped", unit=MetricUnit.Count, value=1)
        return
    try:
        event = event_from_stream_image(record.dynamodb.raw_event.get("NewImage") if record.dynamodb else None)
        outcome = updater.handle(event)
    except ShopperEventError:
        metrics.add_metric(name="InvalidEvents", unit=MetricUnit.Count, value=1)
        raise
    except Exception as exc:  # DynamoDB trouble or a bug: retried by the mapping, then sent to the OnFailure queue
        metrics.add_metric(name="FailedEvents", unit=MetricUnit.Count, value=1)
        logger.append_keys(reason=type(exc).__name__)
        raise
    metrics.add_metric(name=f"Events{outcome.title()}", unit=MetricUnit.Count, value=1)
    logger.debug("event processed", user_id=event.user_id, event_key=event.key, outcome=outcome)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
