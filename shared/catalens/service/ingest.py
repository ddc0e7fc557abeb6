"""The ingest service: one S3 object event in, one index delta out (or a recorded, named failure).

For each event the service reads the object's *current* state rather than trusting the event alone: S3
and SQS deliver at least once and out of order, so a late create of a since-deleted photo finds nothing
and writes nothing, and a late delete of a since-re-uploaded photo is skipped. What it does write goes
through :class:`~catalens.index.store.IndexStore` — deterministic, conditional delta keys ordered by the
event's sequencer — so duplicates change nothing and the newest event wins (DESIGN invariant 1).

Per photo: read it (size checked before download) and its fields (object metadata, sidecar
``<key>.json``), decode + embed with the model card's preprocessing, look for near-duplicates among other
items, write an :class:`~catalens.index.records.ItemRecord`. A photo that can never succeed (not an
image, a decompression bomb, invalid fields) raises :class:`IngestFailedError` after its failure is
recorded three ways: a structured log line, the ``IngestFailures`` metric by reason, and an error marker
object a merchant can read (``ingest-errors/<bucket>/<key>.json`` in the index bucket). The handler
reports it as a failed batch item, so SQS retries it and finally moves it to the dead-letter queue.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from catalens.errors import CatalensError, ImageError, memory_error_as_image_error
from catalens.imaging import ImageLimits, decode_image, load_and_preprocess
from catalens.index.records import ItemRecord, sequencer_key
from catalens.index.vector_metadata import VectorRecordError
from catalens.ports import (
    BlobNotFoundError,
    BlobStore,
    CatalogObject,
    CatalogReader,
    Embedder,
    IndexReader,
    IndexWriter,
    MetricsSink,
    TextReader,
)
from catalens.service.errors import FieldError, ItemIdError, RequestError
from catalens.service.fields import parse_product_fields, parse_sidecar
from catalens.service.notifications import NotificationError, ObjectEvent, parse_notification
from catalens.service.requests import parse_item_id
from catalens.service.seeding import QuerySeeder
from catalens.service.telemetry import NullMetrics

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"
PERMANENT_ERRORS = (ImageError, FieldError, NotificationError, VectorRecordError)

Action = Literal["indexed", "deleted", "unchanged", "skipped"]


class ForeignBucketError(NotificationError):
    """An event names a bucket other than the catalog bucket: never acted on (a forged or misrouted record
    could otherwise delete a live item whose key it copies)."""

    code = "foreign_bucket"


class IngestFailedError(CatalensError):
    """A photo or event that will never index as it is; already recorded (log, metric, error marker)."""

    code = "ingest_failed"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class IngestConfig:
    """Knobs of ingest; every one has a default that suits production.

    Parameters
    ----------
    catalog_bucket
        The one bucket whose events are indexed; an event naming another is refused (``foreign_bucket``).
        ``""`` accepts any bucket (tools that index a bucket of their choosing).
    catalog_prefix
        Stripped from keys before the item id is derived (``photos/`` → ``photos/sku-1.jpg`` is ``sku-1``).
    limits
        Image safety limits (bytes before download, pixels before decode).
    near_duplicate_threshold
        Cosine similarity at or above which another item is reported as a near-duplicate; ``None``: the model
        card's ``copy_cosine`` (the same photo uploaded again, as measured for that model).
    near_duplicate_k
        How many neighbours to look at.
    error_prefix
        Where error markers go in the error store.
    """

    catalog_bucket: str = ""
    catalog_prefix: str = ""
    limits: ImageLimits = field(default_factory=ImageLimits)
    near_duplicate_threshold: float | None = None
    near_duplicate_k: int = 5
    error_prefix: str = "ingest-errors/"


@dataclass
class IngestOutcome:
    """What one event did (the handler logs it; tests assert on it)."""

    action: Action
    item_id: str | None
    key: str
    reason: str = ""
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    embed_ms: float = 0.0


class ErrorLog:
    """Error markers a merchant can list: one small JSON object per failing catalog key.

    A marker is overwritten by every failed attempt and deleted when the key later indexes or is removed,
    so the folder always shows what is wrong *now*.
    """

    def __init__(self, blob: BlobStore, prefix: str = "ingest-errors/", *, wall_clock: Callable[[], float] = time.time):
        self.blob = blob
        self.prefix = prefix
        self._wall_clock = wall_clock

    def marker_key(self, bucket: str, key: str) -> str:
        return f"{self.prefix}{bucket}/{key}.json"

    def record(self, event: ObjectEvent, photo_key: str, item_id: str | None, code: str, message: str) -> None:
        """Mark ``photo_key`` as failing (a broken sidecar marks its photo: that is what a merchant looks for)."""
        body = {
            "bucket": event.bucket,
            "key": photo_key,
            "event_key": event.key,
            "item_id": item_id,
            "code": code,
            "message": message,
            "event_name": event.event_name,
            "etag": event.etag,
            "sequencer": event.sequencer,
            "event_time": event.event_time,
            "recorded_at": self._wall_clock(),
        }
        self.blob.put(self.marker_key(event.bucket, photo_key), json.dumps(body, ensure_ascii=False).encode())

    def clear(self, bucket: str, key: str) -> None:
        """Remove the marker if there is one (a blind DELETE would leave a delete marker in a versioned bucket)."""
        marker = self.marker_key(bucket, key)
        try:
            self.blob.head(marker)
        except BlobNotFoundError:
            return
        self.blob.delete(marker)

    def list(self) -> list[dict[str, Any]]:
        """Every current marker (for tools and tests)."""
        return [json.loads(self.blob.get(info.key).data) for info in self.blob.list(self.prefix)]


def item_id_for_key(key: str, catalog_prefix: str = "") -> str:
    """The item id a photo key names: the key below the catalog prefix, without its file extension.

    >>> item_id_for_key("photos/red shoe.jpg", "photos/")
    'red shoe'
    >>> item_id_for_key("photos/shoes/sku-1.final.png", "photos/")
    'shoes/sku-1.final'
    """
    relative = key[len(catalog_prefix) :] if catalog_prefix and key.startswith(catalog_prefix) else key
    stem, ext = posixpath.splitext(relative)
    return stem if stem and not stem.endswith("/") and ext else relative


def check_item_id(item_id: str) -> str:
    """``item_id`` if the search API can serve it as ``GET /items/{id}``; else :class:`ItemIdError` naming why.

    The API takes the same ids (:func:`~catalens.service.requests.parse_item_id`); ``.`` and ``..`` pass that
    check but no client can send them as a path segment (URL parsers drop dot segments, ``%2E%2E`` included).
    """
    if item_id in (".", ".."):
        raise ItemIdError(f"the item id {item_id!r} cannot be a URL path segment; rename the photo")
    try:
        return parse_item_id(item_id)
    except RequestError as exc:
        raise ItemIdError(
            f"the item id {item_id[:80]!r} cannot be served by the API ({exc}); rename the photo"
        ) from exc


def is_sidecar(key: str) -> bool:
    return key.lower().endswith(SIDECAR_SUFFIX)


READ_TEXT_FIELD = "read_text"
READ_TEXT_SHORT_SIDE = 736  # JPEGs decode no smaller: catalens.ocr.DetectParams.upscale_to


class IngestService:
    """Turns S3 object events into index deltas.

    Parameters
    ----------
    catalog
        Reads photos, their metadata and sidecars.
    index
        Writes deltas (an :class:`~catalens.index.store.IndexStore`).
    embedder
        The process's embedder (one onnxruntime session, created at init).
    views
        The current index view (``IndexCache.view``) for near-duplicate checks and skipping unchanged
        re-deliveries; None turns both off.
    errors
        Where error markers go; None logs and counts failures only.
    metrics
        ItemsIndexed, ItemsDeleted, IngestFailures{reason}, EmbedMs, NearDuplicates, ReadTextMs, ReadTextFailures.
    seeder
        Makes the query domain's seed from the items of its sample (:mod:`catalens.service.seeding`); None: no seed.
    text_reader
        Reads the text printed on each photo into the item's ``read_text`` field (what text queries search beside
        the merchant's fields); None reads none. A reading that fails is logged and counted, and the item is
        indexed without it: OCR enriches, it never keeps a photo out of the index.
    """

    def __init__(
        self,
        *,
        catalog: CatalogReader,
        index: IndexWriter,
        embedder: Embedder,
        views: Callable[[], IndexReader] | None = None,
        errors: ErrorLog | None = None,
        metrics: MetricsSink | None = None,
        config: IngestConfig | None = None,
        seeder: QuerySeeder | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.perf_counter,
        text_reader: TextReader | None = None,
    ) -> None:
        self.text_reader = text_reader
        self.catalog = catalog
        self.seeder = seeder
        self.index = index
        self.embedder = embedder
        self._views = views
        self.errors = errors
        self.metrics = metrics or NullMetrics()
        self.config = config or IngestConfig()
        self._wall_clock = wall_clock
        self._clock = clock
        self._fingerprint = embedder.card.fingerprint()

    # ------------------------------------------------------------------------------------------------ entry points

    def handle_message(self, body: str | bytes | dict[str, Any]) -> list[IngestOutcome]:
        """One SQS message body: an S3 notification (usually one record) or S3's test event."""
        try:
            events = parse_notification(body)
        except NotificationError as exc:
            self._count_failure(exc.code)
            log.error("unreadable ingest message", extra={"code": exc.code, "reason": str(exc)})
            raise IngestFailedError(str(exc), reason=exc.code) from exc
        if not events:
            log.info("s3:TestEvent received; the notification configuration works")
            return []
        # every delivery counts (duplicates included): the throughput signal, and a batch of duplicates
        # still publishes a metric rather than an empty EMF blob
        self.metrics.emit("EventsReceived", len(events))
        return [self.handle_event(event) for event in events]

    def handle_event(self, event: ObjectEvent) -> IngestOutcome:
        expected = self.config.catalog_bucket
        if expected and event.bucket != expected:
            error = ForeignBucketError(f"the event names bucket {event.bucket!r}; this ingest indexes {expected!r}")
            self._count_failure(error.code)
            log.error(
                "event for another bucket refused",
                extra={"bucket": event.bucket, "key": event.key, "event_name": event.event_name, "code": error.code},
            )
            raise IngestFailedError(f"{event.key}: {error}", reason=error.code) from error
        if event.kind == "created":
            return self.handle_object_created(event)
        if event.kind == "removed":
            return self.handle_object_removed(event)
        log.info("ignoring S3 event", extra={"event_name": event.event_name, "key": event.key})
        return IngestOutcome("skipped", None, event.key, reason=f"event {event.event_name} is not indexed")

    def handle_object_created(self, event: ObjectEvent) -> IngestOutcome:
        """A photo (or a sidecar) was written: (re-)index the photo from its current state."""
        photo_key = event.key[: -len(SIDECAR_SUFFIX)] if is_sidecar(event.key) else event.key
        item_id = item_id_for_key(photo_key, self.config.catalog_prefix)
        try:
            return self._index_photo(event, photo_key, item_id)
        except PERMANENT_ERRORS as exc:
            raise self._record_failure(event, photo_key, item_id, exc) from exc
        except Exception as exc:
            self._count_failure("transient")  # S3/network trouble: retried by SQS, no marker
            log.warning(
                "photo not indexed; the message will be retried",
                extra={"item_id": item_id, "key": event.key, "code": "transient", "reason": _describe(exc)},
            )
            raise

    def handle_object_removed(self, event: ObjectEvent) -> IngestOutcome:
        """A photo was deleted: tombstone its item, unless it has been uploaded again since.

        A removed sidecar re-indexes its photo without the sidecar's fields.
        """
        if is_sidecar(event.key):
            return self.handle_object_created(event)
        item_id = item_id_for_key(event.key, self.config.catalog_prefix)
        if self.catalog.head(event.bucket, event.key) is not None:
            log.info("stale delete: the photo exists again", extra={"item_id": item_id, "key": event.key})
            return IngestOutcome("skipped", item_id, event.key, reason="the object exists again; its create indexes it")
        written = self.index.delete_item(
            item_id, sequencer=event.sequencer, image_key=event.key, updated_at=self._wall_clock()
        )
        if self.errors is not None:
            self.errors.clear(event.bucket, event.key)
        if written:
            self.metrics.emit("ItemsDeleted", 1)
        log.info("item deleted", extra={"item_id": item_id, "key": event.key, "duplicate": not written})
        return IngestOutcome("deleted", item_id, event.key, reason="" if written else "duplicate delivery")

    # ------------------------------------------------------------------------------------------------ steps

    def _index_photo(self, event: ObjectEvent, photo_key: str, item_id: str) -> IngestOutcome:
        check_item_id(item_id)
        limits = self.config.limits
        photo = self.catalog.read(event.bucket, photo_key, max_bytes=limits.max_bytes)
        if photo is None:
            log.info("photo is gone; its delete event removes it", extra={"item_id": item_id, "key": photo_key})
            return IngestOutcome("skipped", item_id, photo_key, reason="the photo no longer exists")
        if photo.data is None:
            raise ImageError(
                f"the photo is {photo.size} bytes; the limit is {limits.max_bytes}", code="image_too_large"
            )
        fields = self._fields(event.bucket, photo)
        if self._already_indexed(item_id, event.sequencer, photo.etag, fields):
            log.info("item unchanged (duplicate delivery)", extra={"item_id": item_id, "key": photo_key})
            self._clear_error(event.bucket, photo_key)
            return IngestOutcome("unchanged", item_id, photo_key, reason="same photo and fields already indexed")
        started = self._clock()
        with memory_error_as_image_error(len(photo.data)):
            tensor = load_and_preprocess(photo.data, self.embedder.card.preprocess, limits)
            vector = np.asarray(self.embedder.embed(tensor[np.newaxis])[0], dtype=np.float32)
        embed_ms = (self._clock() - started) * 1000
        self.metrics.emit("EmbedMs", embed_ms, unit="Milliseconds")
        read_text = self._read_text(photo.data, item_id, photo_key)
        if read_text:
            fields[READ_TEXT_FIELD] = read_text
        near = self._near_duplicates(item_id, vector)
        if near:
            fields["near_duplicates"] = near
            self.metrics.emit("NearDuplicates", 1)
            log.warning("near-duplicate photo", extra={"item_id": item_id, "key": photo_key, "near_duplicates": near})
        record = ItemRecord(
            item_id=item_id,
            vector=vector,
            fields=fields,
            image_key=photo_key,
            source_etag=photo.etag,
            sequencer=event.sequencer,
            updated_at=self._wall_clock(),
        )
        written = self.index.write_item(record, model_fingerprint=self._fingerprint)
        self._clear_error(event.bucket, photo_key)
        if written:
            self.metrics.emit("ItemsIndexed", 1)
            if self.seeder is not None:  # after the item is written: the seed never delays or fails indexing it
                self.seeder.seed(item_id, photo.data, limits)
        log.info(
            "item indexed",
            extra={"item_id": item_id, "key": photo_key, "embed_ms": round(embed_ms, 2), "duplicate": not written},
        )
        return IngestOutcome(
            "indexed",
            item_id,
            photo_key,
            reason="" if written else "duplicate delivery",
            near_duplicates=near,
            embed_ms=embed_ms,
        )

    def _fields(self, bucket: str, photo: CatalogObject) -> dict[str, Any]:
        sidecar_key = photo.key + SIDECAR_SUFFIX
        sidecar_obj = self.catalog.read(bucket, sidecar_key, max_bytes=64 * 1024)
        sidecar = None
        if sidecar_obj is not None:
            if sidecar_obj.data is None:
                raise FieldError(f"the sidecar {sidecar_key!r} is {sidecar_obj.size} bytes; the limit is 65536")
            sidecar = parse_sidecar(sidecar_obj.data)
        return parse_product_fields(photo.metadata, sidecar)

    def _already_indexed(self, item_id: str, sequencer: str, etag: str, fields: dict[str, Any]) -> bool:
        """True for a re-delivery: the index holds this photo with these fields from this event or a newer one.

        The sequencer matters: the same bytes uploaded again after a delete are a new event that must be
        written, even when a stale view still shows the first upload.
        """
        view = self._view()
        current = view.get(item_id) if view is not None else None
        if current is None or current.deleted or current.source_etag != etag:
            return False
        if sequencer_key(current.sequencer) < sequencer_key(sequencer):
            return False
        indexed = {k: v for k, v in current.fields.items() if k not in ("near_duplicates", READ_TEXT_FIELD)}
        return indexed == fields

    def _read_text(self, data: bytes, item_id: str, photo_key: str) -> str:
        """The text OCR reads on the photo ("" without a reader, or when reading fails: logged and counted)."""
        if self.text_reader is None:
            return ""
        started = self._clock()
        try:
            with memory_error_as_image_error(len(data)):
                image = decode_image(data, target_short_side=READ_TEXT_SHORT_SIDE, limits=self.config.limits)
                text = self.text_reader.read_text(image)
        except Exception as exc:  # enrichment only: the photo is indexed without read text
            log.warning(
                "reading the photo's text failed", extra={"item_id": item_id, "key": photo_key, "error": str(exc)[:200]}
            )
            self.metrics.emit("ReadTextFailures", 1)
            return ""
        self.metrics.emit("ReadTextMs", (self._clock() - started) * 1000, unit="Milliseconds")
        return text

    def _near_duplicates(self, item_id: str, vector: np.ndarray) -> list[dict[str, Any]]:
        view = self._view()
        if view is None or len(view) == 0:
            return []
        hits = view.search(vector, self.config.near_duplicate_k, exclude={item_id}, vectors=False)
        threshold = self.config.near_duplicate_threshold
        if threshold is None:
            threshold = self.embedder.card.copy_cosine
        return [{"item_id": h.item_id, "score": round(float(h.score), 4)} for h in hits if h.score >= threshold]

    def _view(self) -> IndexReader | None:
        if self._views is None:
            return None
        try:
            return self._views()
        except Exception:  # the checks are advisory: an unreadable index must not stop ingest
            log.warning("index view unavailable; skipping near-duplicate and unchanged checks", exc_info=True)
            return None

    # ------------------------------------------------------------------------------------------------ failures

    def _record_failure(self, event: ObjectEvent, photo_key: str, item_id: str, exc: CatalensError) -> Exception:
        """Log, count and mark a permanent failure; returns the error the handler reports for this record."""
        self._count_failure(exc.code)
        log.error(
            "photo rejected",
            extra={"item_id": item_id, "key": event.key, "code": exc.code, "reason": str(exc), "etag": event.etag},
        )
        if self.errors is not None:
            try:
                self.errors.record(event, photo_key, item_id, exc.code, str(exc))
            except Exception:  # the failure is still logged, counted and sent to the DLQ
                log.warning("could not write the error marker", extra={"key": event.key}, exc_info=True)
        return IngestFailedError(f"{event.key}: {exc}", reason=exc.code)

    def _count_failure(self, reason: str) -> None:
        self.metrics.emit("IngestFailures", 1, dimensions={"reason": reason})

    def _clear_error(self, bucket: str, key: str) -> None:
        if self.errors is not None:
            try:
                self.errors.clear(bucket, key)
            except Exception:
                log.warning("could not clear the error marker", extra={"key": key}, exc_info=True)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an unexpected error, short enough for one log line."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:299] + "…"
