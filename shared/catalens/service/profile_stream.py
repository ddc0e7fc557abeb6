"""What the profile function does per record of the events table's stream: apply its event, count the outcome.

Each record is one shopper event (``NEW_IMAGE``); :class:`~catalens.profiles.ProfileUpdater` applies it with a
conditional write. A record that cannot be applied raises, so Powertools reports it in ``batchItemFailures`` while
its neighbours land (template: ``FunctionResponseTypes: [ReportBatchItemFailures]``, bounded
``MaximumRetryAttempts`` and an ``OnFailure`` destination); every failure is counted by kind first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecordEventName

from catalens.ports import MetricsSink
from catalens.profiles import ProfileUpdater, ShopperEventError, event_from_stream_image
from catalens.service.telemetry import NullMetrics

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

log = logging.getLogger(__name__)


class ProfileStream:
    """Applies stream records to profiles.

    Parameters
    ----------
    updater
        Applies one event (read, apply, conditional write).
    metrics
        Per record one of ``RemovedEventsSkipped``, ``InvalidEvents``, ``FailedEvents`` or ``Events<Outcome>``
        (``EventsApplied``, ``EventsDuplicate``, ...).
    annotate
        Adds keys to the log lines of this record (the handler's ``logger.append_keys``): a failed record's line,
        which the batch processor writes, then names the failure's ``reason``.
    """

    def __init__(
        self,
        updater: ProfileUpdater,
        *,
        metrics: MetricsSink | None = None,
        annotate: Callable[..., None] | None = None,
    ) -> None:
        self.updater = updater
        self.metrics = metrics or NullMetrics()
        self._annotate = annotate

    def handle(self, record: DynamoDBRecord) -> str | None:
        """Apply one record's event; returns the outcome (None for a removal), raises when it cannot be applied."""
        if record.event_name == DynamoDBRecordEventName.REMOVE:  # TTL expiry or erasure: nothing to learn
            self.metrics.emit("RemovedEventsSkipped", 1)
            return None
        try:
            event = event_from_stream_image(record.dynamodb.raw_event.get("NewImage") if record.dynamodb else None)
            outcome = self.updater.handle(event)
        except ShopperEventError:
            self.metrics.emit("InvalidEvents", 1)
            raise
        except Exception as exc:  # DynamoDB trouble or a bug: retried by the mapping, then sent to the OnFailure queue
            self.metrics.emit("FailedEvents", 1)
            if self._annotate is not None:
                self._annotate(reason=type(exc).__name__)
            raise
        self.metrics.emit(f"Events{outcome.title()}", 1)
        log.debug("event processed", extra={"user_id": event.user_id, "event_key": event.key, "outcome": outcome})
        return outcome
