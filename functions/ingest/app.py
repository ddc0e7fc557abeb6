"""Ingest Lambda: SQS batches of S3 catalog events → IngestService; a photo that fails is one failed batch item."""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from catalens.composition import build_ingest_service
from catalens.service.telemetry import PowertoolsMetrics

logger, tracer, metrics = Logger(), Tracer(), Metrics()
processor = BatchProcessor(event_type=EventType.SQS, logger=logger)  # logs each failed record with its exception
service = build_ingest_service(metrics=PowertoolsMetrics(metrics), logger=logger)


@tracer.capture_method
def record_handler(record: SQSRecord) -> list:
    logger.append_keys(message_id=record.message_id)
    return service.handle_message(record.body)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: object) -> dict:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
