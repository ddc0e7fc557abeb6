"""The index on Amazon S3 Vectors: the second index backend (``INDEX_BACKEND=s3vectors``).

:class:`S3VectorsIndex` is the :class:`~catalens.ports.IndexWriter` ingest writes through, and hands out
:class:`S3VectorsView`, the :class:`~catalens.ports.IndexReader` search reads through. The services do not change:
search still embeds, filters, calibrates, re-ranks and pages; only the first stage runs in S3 Vectors.

What lives where:

* the vector index (one vector per **live** item, key = item id): the unit vector, the product fields that fit as
  filterable metadata, and the item's whole state under ``_record`` (:mod:`catalens.index.vector_metadata`);
* beside it in the index bucket, under ``<index prefix>s3vectors/``: one tombstone per deleted item (its delete
  event's sequencer, so a late create cannot resurrect it) and ``stats.json`` (count, vector sum, field names,
  model fingerprint: :class:`~catalens.index.vector_metadata.VectorStats`).

**Ordering (docs/design.md, invariant 1).** S3 event sequencers order the events of one key. A write reads the
stored vector's sequencer (``get_vectors``) and the tombstone's, and writes only when its event is newer (on a tie a
delete wins), so duplicates and late events change nothing. S3 Vectors has no conditional put, so one race
remains: two events of the *same key* handled at the same moment, where the older one reads before the newer one
writes and writes after it. After its write each writer reads the vector back and re-puts its state when an older
one replaced it, which closes the race unless the older write lands after that check too: both events must then
reach ingest within one get→put round trip (tens of ms) of each other, i.e. the merchant wrote one key twice
within that time. The index then holds the older state of that one item until its next event; the tombstone
(a conditional S3 write) keeps deletes exact. The stats follow the same writes: a crash between the vector write and
the stats write, or the race above, leaves the sum off by one item's vector (a mean off by 1/N);
:meth:`S3VectorsIndex.recount` rebuilds them exactly from the index (the builder's ``force`` run).

**Search round trips.** One ``QueryVectors`` (top ``k`` + excluded, at most 100), one ``GetVectors`` for the
candidates' vectors and metadata (≤ 100 keys: one call), re-scored exactly in float32 like the in-Lambda index,
plus one conditional GET of ``stats.json`` at most every ``ttl_seconds``. ``get``/``vector_of`` are one
``GetVectors`` each.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np
from botocore.exceptions import ClientError

from catalens.errors import CatalensError, ModelError, TextSearchUnavailableError
from catalens.index.filters import Filter
from catalens.index.records import Hit, IndexedItem, ItemRecord, sequencer_key
from catalens.index.reduce import normalise
from catalens.index.vector_metadata import (
    StoredItem,
    VectorStats,
    item_metadata,
    stored_item,
    vector_filter,
)
from catalens.ports import (
    BlobNotFoundError,
    BlobStore,
    ConflictError,
    NotModifiedError,
    PreconditionFailedError,
)
from catalens.query_domain import QueryDomain

log = logging.getLogger(__name__)

MAX_TOP_K = 100  # QueryVectors returns at most 100 neighbours per query
MAX_GET_KEYS = 100  # GetVectors takes at most 100 keys
STATE_DIR = "s3vectors/"
WRITE_ATTEMPTS = 12

QueryDomainSource = Callable[[str], QueryDomain | None]


class VectorIndexError(CatalensError):
    """S3 Vectors refused or failed a call (missing index, throttling after retries, a malformed answer)."""

    code = "index_unavailable"


class S3VectorsIndex:
    """One S3 Vectors index plus its tombstones and stats in the index bucket.

    Parameters
    ----------
    client:
        A boto3 ``s3vectors`` client.
    vector_bucket, index_name:
        Where the vectors are (the template's ``VectorBucket`` and ``VectorIndex``).
    blob, prefix:
        The index bucket (``S3BlobStore``) and its index prefix: tombstones and stats live under
        ``<prefix>s3vectors/``.
    ttl_seconds:
        Readers re-read the stats at most this often (a conditional GET).
    query_domain:
        Given the model fingerprint the index holds, the query domain to calibrate photo queries with (None: none).
    """

    def __init__(
        self,
        client: Any,
        *,
        vector_bucket: str,
        index_name: str,
        blob: BlobStore,
        prefix: str = "index/",
        ttl_seconds: float = 2.0,
        query_domain: QueryDomainSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.vector_bucket = vector_bucket
        self.index_name = index_name
        self.blob = blob
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self._query_domain = query_domain
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._view: S3VectorsView | None = None
        self._stats_etag: str | None = None
        self._checked_at = float("-inf")

    # ------------------------------------------------------------------------------------------------ keys

    @property
    def stats_key(self) -> str:
        return f"{self.prefix}{STATE_DIR}stats.json"

    def tombstone_key(self, item_id: str) -> str:
        return f"{self.prefix}{STATE_DIR}tombstones/{quote(item_id, safe='')}.json"

    def _where(self) -> dict[str, str]:
        return {"vectorBucketName": self.vector_bucket, "indexName": self.index_name}

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return getattr(self.client, operation)(**self._where(), **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            if code in ("NotFoundException", "ValidationException", "AccessDeniedException"):
                raise VectorIndexError(
                    f"S3 Vectors {operation} on {self.vector_bucket}/{self.index_name}: {code}: {error.get('Message')}"
                ) from exc
            raise  # throttling and 5xx: the caller (SQS, API Gateway's client) retries

    # ------------------------------------------------------------------------------------------------ reads

    def fetch(self, keys: Sequence[str], *, data: bool = True) -> dict[str, StoredItem]:
        """The stored items of ``keys`` that exist (``GetVectors``, 100 keys per call)."""
        found: dict[str, StoredItem] = {}
        for start in range(0, len(keys), MAX_GET_KEYS):
            chunk = list(keys[start : start + MAX_GET_KEYS])
            answer = self._call("get_vectors", keys=chunk, returnData=data, returnMetadata=True)
            for vector in answer.get("vectors", []):
                found[vector["key"]] = stored_item(vector["key"], vector.get("metadata"), vector.get("data"))
        return found

    def stored(self, item_id: str, *, data: bool = True) -> StoredItem | None:
        return self.fetch([item_id], data=data).get(item_id)

    def read_stats(self) -> tuple[VectorStats, str | None]:
        try:
            blob = self.blob.get(self.stats_key)
        except BlobNotFoundError:
            return VectorStats(), None
        return VectorStats.decode(blob.data), blob.etag

    def tombstone(self, item_id: str) -> tuple[str | None, str | None]:
        """(sequencer of the item's newest delete, the tombstone's ETag); (None, None) when never deleted."""
        try:
            blob = self.blob.get(self.tombstone_key(item_id))
        except BlobNotFoundError:
            return None, None
        return str(json.loads(blob.data)["sequencer"]), blob.etag

    # ------------------------------------------------------------------------------------------------ IndexWriter

    def write_item(self, record: ItemRecord, *, model_fingerprint: str = "") -> bool:
        """Store the item's new state unless the index already holds this event or a newer one (or a newer delete).

        Returns False for a duplicate or a late event. Raises
        :class:`~catalens.index.vector_metadata.VectorRecordError` when the fields cannot fit S3 Vectors' metadata.
        """
        if record.deleted or record.vector is None:
            return self.delete_item(record.item_id, sequencer=record.sequencer, updated_at=record.updated_at)
        metadata = item_metadata(record, model_fingerprint=model_fingerprint)
        vector = normalise(np.asarray(record.vector, dtype=np.float32))
        order = sequencer_key(record.sequencer)
        current = self.stored(record.item_id)
        if current is not None and sequencer_key(current.sequencer) >= order:
            return False
        deleted_at, _ = self.tombstone(record.item_id)
        if deleted_at is not None and sequencer_key(deleted_at) >= order:
            return False
        entry = {"key": record.item_id, "data": {"float32": vector.tolist()}, "metadata": metadata}
        self._call("put_vectors", vectors=[entry])
        self._update_stats(
            added=vector,
            removed=current.vector if current is not None else None,
            fields=record.fields.keys(),
            model_fingerprint=model_fingerprint,
        )
        after = self.stored(record.item_id, data=False)
        if after is None or sequencer_key(after.sequencer) < order:
            # an older event's put landed after our read: ours is newer, so put it back (see the module docstring)
            log.warning("older write replaced a newer one; re-putting", extra={"item_id": record.item_id})
            self._call("put_vectors", vectors=[entry])
        return True

    def delete_item(self, item_id: str, *, sequencer: str, image_key: str = "", updated_at: float = 0.0) -> bool:
        """Tombstone the item at ``sequencer`` and remove its vector, unless a newer create is stored.

        Returns False for a duplicate or a late delete.
        """
        order = sequencer_key(sequencer)
        current = self.stored(item_id)
        if current is not None and sequencer_key(current.sequencer) > order:
            return False
        advanced = self._advance_tombstone(item_id, sequencer, updated_at or self._wall_clock())
        if current is None:
            return advanced
        self._call("delete_vectors", keys=[item_id])
        self._update_stats(removed=current.vector)
        return True

    def _advance_tombstone(self, item_id: str, sequencer: str, deleted_at: float) -> bool:
        """Make the tombstone name ``sequencer`` unless it names a newer (or the same) delete; conditional writes."""
        body = json.dumps({"item_id": item_id, "sequencer": sequencer, "deleted_at": deleted_at}).encode()
        for attempt in range(WRITE_ATTEMPTS):
            known, etag = self.tombstone(item_id)
            if known is not None and sequencer_key(known) >= sequencer_key(sequencer):
                return False
            try:
                if etag is None:
                    self.blob.put(self.tombstone_key(item_id), body, if_none_match=True)
                else:
                    self.blob.put(self.tombstone_key(item_id), body, if_match=etag)
                return True
            except (PreconditionFailedError, ConflictError):
                self._pause(attempt)
        raise VectorIndexError(f"tombstone of {item_id!r} kept changing under {WRITE_ATTEMPTS} attempts")

    def _update_stats(self, **change: Any) -> None:
        """Apply one item's change to ``stats.json`` with If-Match, redone from a fresh read on a lost race."""
        for attempt in range(WRITE_ATTEMPTS):
            stats, etag = self.read_stats()
            data = stats.changed(**change).encode()
            try:
                if etag is None:
                    self.blob.put(self.stats_key, data, if_none_match=True)
                else:
                    self.blob.put(self.stats_key, data, if_match=etag)
                return
            except (PreconditionFailedError, ConflictError):
                self._pause(attempt)
        # The vector is written; failing now would make SQS redeliver an event that then changes nothing.
        log.error("index stats not updated after %d attempts; run a recount", WRITE_ATTEMPTS)

    def _pause(self, attempt: int) -> None:
        self._sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))

    def recount(self) -> VectorStats:
        """Rebuild the stats exactly from every stored vector (``ListVectors``: a full read of the index)."""
        stats = VectorStats()
        paginator = self.client.get_paginator("list_vectors")
        for page in paginator.paginate(**self._where(), returnData=True, returnMetadata=True):
            for vector in page.get("vectors", []):
                item = stored_item(vector["key"], vector.get("metadata"), vector.get("data"))
                stats = stats.changed(
                    added=normalise(item.vector), fields=item.fields.keys(), model_fingerprint=item.model_fingerprint
                )
        for attempt in range(WRITE_ATTEMPTS):
            current, etag = self.read_stats()
            fixed = VectorStats(stats.count, stats.total, stats.fields, stats.model_fingerprint, current.version + 1)
            try:
                if etag is None:
                    self.blob.put(self.stats_key, fixed.encode(), if_none_match=True)
                else:
                    self.blob.put(self.stats_key, fixed.encode(), if_match=etag)
                return fixed
            except (PreconditionFailedError, ConflictError):
                self._pause(attempt)
        raise VectorIndexError(f"stats kept changing under {WRITE_ATTEMPTS} attempts; recount again")

    # ------------------------------------------------------------------------------------------------ readers

    def view(self) -> S3VectorsView:
        """The current view: the stats re-read (conditionally) at most every ``ttl_seconds``."""
        with self._lock:
            now = self._clock()
            if self._view is not None and now - self._checked_at < self.ttl_seconds:
                return self._view
            self._checked_at = now
            try:
                blob = self.blob.get(self.stats_key, if_none_match_etag=self._stats_etag)
                stats, etag = VectorStats.decode(blob.data), blob.etag
            except NotModifiedError:
                assert self._view is not None
                stats, etag = self._view.stats, self._stats_etag
            except BlobNotFoundError:
                stats, etag = VectorStats(), None
            if self._view is None or etag != self._stats_etag or self._query_domain is not None:
                domain = None
                if self._query_domain is not None and stats.model_fingerprint:
                    domain = self._query_domain(stats.model_fingerprint)
                self._view = S3VectorsView(self, stats, etag, domain)
                self._stats_etag = etag
            return self._view


class S3VectorsView:
    """The :class:`~catalens.ports.IndexReader` over S3 Vectors: cheap, one per stats version.

    Item vectors are the model's unit vectors (no projection): the index space is the model's.
    """

    version: str  # the stats' write count: changes with every write, so per-version caches stay right
    max_candidates: int | None = MAX_TOP_K
    """QueryVectors returns at most 100 neighbours: search pages at most this deep (the API says so in a 400)."""

    def __init__(self, index: S3VectorsIndex, stats: VectorStats, etag: str | None, domain: QueryDomain | None):
        self._index = index
        self.stats = stats
        self.version = f"s3vectors-{stats.version}" if etag is not None else "s3vectors-empty"
        self._domain = domain
        dim = None if stats.total is None else int(stats.total.shape[0])
        self._dim = dim
        self._mean = stats.mean()

    def __len__(self) -> int:
        return self.stats.count

    @property
    def stage(self) -> str:
        return "full"  # S3 Vectors answers from the whole index from the first request on

    @property
    def model_fingerprint(self) -> str | None:
        return self.stats.model_fingerprint or None

    @property
    def index_space(self) -> str:
        return f"{self.stats.model_fingerprint}/identity" if self.stats.model_fingerprint else ""

    @property
    def query_domain(self) -> QueryDomain | None:
        domain = self._domain
        if domain is not None and self._dim is not None and domain.dim != self._dim:
            log.warning("query domain has %d dims, the index %d: searching uncalibrated", domain.dim, self._dim)
            return None
        return domain

    @property
    def catalog_mean(self) -> np.ndarray | None:
        return self._mean

    def field_names(self) -> frozenset[str]:
        return self.stats.fields

    def get(self, item_id: str) -> IndexedItem | None:
        item = self._index.stored(item_id)
        return None if item is None else item.indexed()

    def vector_of(self, item_id: str) -> np.ndarray | None:
        item = self._index.stored(item_id)
        return None if item is None else item.vector

    def project(self, query: np.ndarray) -> np.ndarray:
        vector = np.asarray(query, dtype=np.float32)
        if self._dim is not None and vector.shape[-1] != self._dim:
            raise ModelError(
                f"query vector has {vector.shape[-1]} dims, the index expects {self._dim}", code="model_mismatch"
            )
        return normalise(vector)

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        filters: Filter | None = None,
        exclude: Collection[str] = frozenset(),
        vectors: bool = True,
    ) -> list[Hit]:
        """The ``k`` (≤ 100, less the excluded) live items most like ``query``, best first, by exact cosine.

        S3 Vectors chooses the candidates (approximately, filters applied during the search); their stored
        vectors are fetched in the same request's second call and scored here exactly, so the order is the
        in-Lambda index's for the same candidates. The hits keep those vectors whatever ``vectors`` says: they
        are already here.
        """
        if k <= 0:
            return []
        q = self.project(query)
        top_k = min(MAX_TOP_K, k + len(exclude))
        request: dict[str, Any] = {"topK": top_k, "queryVector": {"float32": q.tolist()}}
        document = vector_filter(filters)
        if document is not None:
            request["filter"] = document
        answer = self._index._call("query_vectors", **request)
        keys = [entry["key"] for entry in answer.get("vectors", []) if entry["key"] not in exclude]
        items = self._index.fetch(keys)
        return _ranked(q, (items[key] for key in keys if key in items))[:k]

    def calibration_terms(self, item_ids: Sequence[str], domain: QueryDomain) -> tuple[np.ndarray, np.ndarray] | None:
        """None: this backend's hits carry their vectors, which calibration reads instead."""
        return None

    def search_text(
        self,
        text: str,
        k: int,
        *,
        filters: Filter | None = None,
        exclude: Collection[str] = frozenset(),
        vectors: bool = True,
    ) -> list[Hit]:
        """Not on this backend: S3 Vectors has no word index (docs/design.md, "Words")."""
        raise TextSearchUnavailableError(
            "searching by words needs the in-Lambda index (IndexBackend=s3); this stack's index is S3 Vectors"
        )

    def text_scores(self, text: str, item_ids: Sequence[str]) -> np.ndarray:
        """Not on this backend (see :meth:`search_text`)."""
        raise TextSearchUnavailableError(
            "searching by words needs the in-Lambda index (IndexBackend=s3); this stack's index is S3 Vectors"
        )


def _ranked(query: np.ndarray, items: Iterable[StoredItem]) -> list[Hit]:
    chosen = [item for item in items if item.vector is not None]
    if not chosen:
        return []
    vectors = np.stack([item.vector for item in chosen])
    scores = (vectors @ query).tolist()
    hits = [
        Hit(item.item_id, score, item.fields, item.image_key, vector=item.vector)
        for item, score in zip(chosen, scores, strict=True)
    ]
    hits.sort(key=lambda hit: (-hit.score, hit.item_id))
    return hits
