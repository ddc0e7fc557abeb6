"""Ingest Lambda: SQS batches of S3 catalog events -> IngestService (embed, near-duplicate check, index delta).

Each SQS record is processed on its own; a photo that fails (bad image, invalid fields, S3 trouble) is reported
in ``batchItemFailures`` so only it is retried and, after maxReceiveCount, lands in the dead-letter queue. Every
failed record leaves one structured log line with its message id and exception (the processor logs it), and the
core's own log lines come out as the same JSON.
"""

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from catalens.composition import build_ingest_service
from catalens.service.telemetry import PowertoolsMetrics
from catalens.settings import load_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS, logger=logger)
service = build_ingest_service(load_settings(), s3_client=boto3.client("s3"), metrics=PowertoolsMetrics(metrics))
copy_config_to_registered_loggers(source_logger=logger, include={"catalens"})


@tracer.capture_method
def record_handler(record: SQSRecord) -> list:
    logger.append_keys(message_id=record.message_id)
    return service.handle_message(record.body)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: object) -> dict:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
