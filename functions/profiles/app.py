"""Profile Lambda: the events table's stream → shopper profiles and co-occurrence counts, one event per record."""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from catalens.composition import build_profile_stream
from catalens.service.telemetry import PowertoolsMetrics

logger, tracer, metrics = Logger(), Tracer(), Metrics()
processor = BatchProcessor(event_type=EventType.DynamoDBStreams, logger=logger)  # logs each failed record
stream = build_profile_stream(metrics=PowertoolsMetrics(metrics), logger=logger)


@tracer.capture_method
def record_handler(record: DynamoDBRecord) -> None:
    logger.append_keys(sequence_number=record.dynamodb.sequence_number if record.dynamodb else None)
    stream.handle(record)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: object) -> dict:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
