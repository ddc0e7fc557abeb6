"""Ports: every interface the product's services need from the outside world, declared here and nowhere else.

A service names what it uses by one of these protocols, so it never probes an object for what it might offer: the
port says it. Adapters implement them with boto3 (:mod:`catalens.adapters`); the index implements the index ports
(:class:`~catalens.index.view.IndexView`, :class:`~catalens.index.store.IndexStore`); :mod:`catalens_tools.in_memory`
implements the stores in memory, each fake its whole port (``tests/unit/test_ports.py`` checks every implementation
against its port's signatures).

Conditional writes are the whole point of :class:`BlobStore`: every shared object the index mutates is written
either under a fresh key with ``if_none_match=True`` or over a known version with ``if_match=etag``, never blindly.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from catalens.errors import CatalensError

if TYPE_CHECKING:  # annotations only: the index, model and profile modules import this one
    import numpy as np
    from PIL import Image

    from catalens.index.filters import Filter
    from catalens.index.records import Hit, IndexedItem, ItemRecord
    from catalens.model.card import ModelCard
    from catalens.profiles.profile import Profile
    from catalens.query_domain import QueryDomain

# name -> (value, unit): points recorded together, e.g. one request's outcome
MetricGroup = Mapping[str, tuple[float, str]]

# ------------------------------------------------------------------------------------------------ blob storage


class BlobStoreError(CatalensError):
    """Blob storage failed in a way the caller cannot fix by retrying the same call."""

    code = "blob_store_error"


class BlobNotFoundError(BlobStoreError):
    """The key does not exist (S3 ``NoSuchKey`` / 404)."""

    code = "blob_not_found"


class PreconditionFailedError(BlobStoreError):
    """A conditional write lost: the key exists (``if_none_match``) or changed/vanished (``if_match``); S3 412."""

    code = "precondition_failed"


class NotModifiedError(BlobStoreError):
    """A conditional read found the object unchanged (``if_none_match_etag`` matched); S3 304. Not a failure."""

    code = "not_modified"


class ConflictError(BlobStoreError):
    """Another conditional write to the same key was in flight (S3 409 ``ConditionalRequestConflict``).

    Unlike :class:`PreconditionFailedError` nothing is decided yet: the caller should retry the same
    call after a short, jittered pause.
    """

    code = "conditional_conflict"
    retryable = True


class BlobSizeError(BlobStoreError):
    """An object's size is not the size the caller made room for (:meth:`BlobStore.get_into`); nothing was read."""

    code = "blob_size_mismatch"


@dataclass(frozen=True)
class BlobInfo:
    """What a listing or a HEAD tells about an object (no body)."""

    key: str
    etag: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class Blob:
    """An object's body with the ETag it was read at (used for the next conditional write)."""

    key: str
    data: bytes
    etag: str
    last_modified: datetime


@runtime_checkable
class BlobStore(Protocol):
    """A flat key → bytes store with S3's conditional-request semantics.

    ETags are opaque strings compared verbatim (adapters keep S3's surrounding quotes).
    """

    def get(self, key: str, if_none_match_etag: str | None = None) -> Blob:
        """Read an object. Raises :class:`BlobNotFoundError`; :class:`NotModifiedError` when its ETag
        equals ``if_none_match_etag``."""
        ...

    def put(
        self, key: str, data: bytes | memoryview, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Write an object and return its new ETag (``data`` may be a memoryview: a slice of a larger file).

        ``if_none_match=True`` writes only when the key does not exist; ``if_match=etag`` only when
        the current object has that ETag (a missing key fails too). A lost condition raises
        :class:`PreconditionFailedError`; a concurrent conditional write may raise :class:`ConflictError`.
        """
        ...

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; deleting a missing key is not an error (S3 semantics)."""
        ...

    def head(self, key: str) -> BlobInfo:
        """Metadata of an object without its body. Raises :class:`BlobNotFoundError`."""
        ...

    def copy(self, source_key: str, dest_key: str) -> str:
        """Copy an object inside the store (S3 CopyObject: no body travels through the caller); the new ETag.

        Unchanged index files of a new version are copied instead of uploaded again. Sources are at most 5 GiB
        (one CopyObject; the index writes larger files in parts). Raises :class:`BlobNotFoundError` when the
        source is missing.
        """
        ...

    def get_into(self, key: str, out: memoryview) -> int:
        """Read an object's body straight into ``out`` (writable, exactly the object's size); the size read.

        Large files are assembled part by part in one preallocated buffer, so no part exists twice in memory.
        Raises :class:`BlobNotFoundError`, and :class:`BlobSizeError` when the object is not ``len(out)`` bytes.
        """
        ...


@runtime_checkable
class BatchDeleter(Protocol):
    """Optional extension of a BlobStore: delete many keys per request (S3 DeleteObjects, 1000 per call).

    GC uses it when the adapter has it; deleting a missing key is not an error.
    """

    def delete_many(self, keys: Sequence[str]) -> None: ...


def delete_all(blob: BlobStore, keys: Sequence[str]) -> None:
    """Delete ``keys`` with the adapter's batch delete when it has one, else one by one."""
    if isinstance(blob, BatchDeleter):
        blob.delete_many(keys)
    else:
        for key in keys:
            blob.delete(key)


# ------------------------------------------------------------------------------------------------ the catalog bucket


@dataclass(frozen=True)
class CatalogObject:
    """An object of the catalog bucket: metadata always, body only when read (and small enough)."""

    bucket: str
    key: str
    etag: str
    size: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str = ""
    version_id: str | None = None
    data: bytes | None = None


@runtime_checkable
class CatalogReader(Protocol):
    """Read access to the merchant's catalog bucket (:class:`catalens.adapters.s3_catalog.S3CatalogReader`).

    Ingest reads an object's *current* state instead of trusting the event (docs/design.md, invariant 1), and
    learns a photo's size before it downloads the body (invariant 7).
    """

    def head(self, bucket: str, key: str) -> CatalogObject | None:
        """The object's metadata, or None when it does not exist."""
        ...

    def read(self, bucket: str, key: str, *, max_bytes: int) -> CatalogObject | None:
        """The object with its body, or None when it does not exist; ``data`` stays None above ``max_bytes``."""
        ...


# ------------------------------------------------------------------------------------------------ the index


@runtime_checkable
class IndexReader(Protocol):
    """One index version as the services read it: a snapshot plus the deltas not yet compacted into it.

    :class:`~catalens.index.view.IndexView` implements it; an empty index (no snapshot, no deltas) is a valid
    reader with no items. Vectors are in *index space* (after the snapshot's projection, if any), so a model-space
    query goes through :meth:`project` (or :meth:`search`, which projects it) before it meets an item vector.
    """

    version: str
    """Names the snapshot and the delta set; a cache key for whatever a service derives from the view."""

    max_candidates: int | None
    """How many hits one :meth:`search` can return at most (None: no limit). S3 Vectors answers at most 100
    neighbours a query, so search pages no deeper there and asks for no larger first-stage pool."""

    def __len__(self) -> int:
        """Live items (snapshot rows the deltas leave visible, plus live deltas)."""
        ...

    @property
    def stage(self) -> str:
        """``full``; or ``first`` while the index answers from its first stage alone (a cold start's first seconds:
        scores approximate, the full vectors still loading)."""
        ...

    @property
    def model_fingerprint(self) -> str | None:
        """Fingerprint of the model the snapshot was built with (None without a snapshot): search refuses to
        compare its model's vectors with another model's."""
        ...

    @property
    def index_space(self) -> str:
        """Names the space item vectors live in (model + projection; "" without a snapshot): stored preference
        vectors of another space mean nothing."""
        ...

    @property
    def query_domain(self) -> QueryDomain | None:
        """The query domain photo queries are calibrated with, in index space (None: search uncalibrated)."""
        ...

    @property
    def catalog_mean(self) -> np.ndarray | None:
        """Mean of the live item vectors in index space, what calibration centres on (None when empty)."""
        ...

    def field_names(self) -> frozenset[str]:
        """Every product field name the index holds, fresh deltas included: what a filter may name."""
        ...

    def get(self, item_id: str) -> IndexedItem | None:
        """The item's current state, or None when absent or deleted."""
        ...

    def vector_of(self, item_id: str) -> np.ndarray | None:
        """The item's unit vector in index space, or None when absent or deleted."""
        ...

    def project(self, query: np.ndarray) -> np.ndarray:
        """A model-space vector in this index's space (unit norm)."""
        ...

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        filters: Filter | None = None,
        exclude: Collection[str] = frozenset(),
        vectors: bool = True,
    ) -> list[Hit]:
        """The ``k`` live items most similar to a model-space ``query``, best first; ``filters`` apply before the
        cut, ``exclude`` names items never to return; ``vectors=False`` may leave hits without their vector."""
        ...

    def calibration_terms(self, item_ids: Sequence[str], domain: QueryDomain) -> tuple[np.ndarray, np.ndarray] | None:
        """What :meth:`QueryDomain.calibrate_terms` needs of the named items besides their scores: squared norms
        ``[n]`` and dot products ``[n, 2 + R]`` with the catalog mean and the domain's term rows; None when an
        item is not live or the domain does not fit (the caller then calibrates from the items' vectors)."""
        ...

    def search_text(
        self,
        text: str,
        k: int,
        *,
        filters: Filter | None = None,
        exclude: Collection[str] = frozenset(),
        vectors: bool = True,
    ) -> list[Hit]:
        """The ``k`` live items whose words best match ``text`` (BM25 ``score``), best first; items without a query
        word are left out; ``vectors=False`` may leave hits without their vector. A backend without a word index
        raises ``TextSearchUnavailableError``."""
        ...

    def text_scores(self, text: str, item_ids: Sequence[str]) -> np.ndarray:
        """float32 BM25 score of ``text`` per named item (0: no query word, or no such item)."""
        ...


@runtime_checkable
class IndexWriter(Protocol):
    """Where ingest records S3 events (:class:`~catalens.index.store.IndexStore`): one delta per event, written
    conditionally under a key that is a pure function of the event, so a duplicate delivery writes nothing."""

    def write_item(self, record: ItemRecord, *, model_fingerprint: str = "") -> bool:
        """Record an item's new state; False when this event was recorded already."""
        ...

    def delete_item(self, item_id: str, *, sequencer: str, image_key: str = "", updated_at: float = 0.0) -> bool:
        """Record a deletion ordered by ``sequencer``; False when this event was recorded already."""
        ...


@runtime_checkable
class QuerySampleSink(Protocol):
    """Where sampled photo-query embeddings go for the builder to fit the query domain on
    (:class:`~catalens.index.query_domain_store.QueryDomainStore`); the raw vector alone, no user id, no photo."""

    def write_query_sample(self, vector: np.ndarray, *, model_fingerprint: str) -> Any:
        """Store one sample."""
        ...


@runtime_checkable
class SeedSampleStore(Protocol):
    """Where ingest puts synthetic shoppers' photo embeddings that seed the query domain before real samples exist
    (:class:`~catalens.index.query_domain_store.QueryDomainStore`), and how it learns which items are seeded."""

    def write_seed_sample(self, sample: Any, *, model_fingerprint: str) -> Any:
        """Store one :class:`~catalens.query_domain.SeedSample`; a repeated one writes nothing."""
        ...

    def seed_item_hashes(self, *, model_fingerprint: str, items: int = ...) -> list[str]:
        """The smallest item hashes (at most ``items``) that have seed samples, ascending."""
        ...


# ------------------------------------------------------------------------------------------------ the model


@runtime_checkable
class TextReader(Protocol):
    """Reads the text printed on a photo (:class:`catalens.ocr.TextReader`: two onnxruntime sessions, made at init)."""

    def read_text(self, image: Image.Image) -> str:
        """The photo's lines of text, top to bottom, joined by spaces ("" when it shows none)."""
        ...


@runtime_checkable
class Embedder(Protocol):
    """The process's model (:class:`catalens.embedder.Embedder`: one onnxruntime session, created at init).

    Ingest and search both preprocess with ``card.preprocess`` and embed with :meth:`embed`, so one photo gives
    one vector (docs/design.md, invariant 5); ``card.fingerprint()`` is what the index records and checks.
    """

    card: ModelCard

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """``float32[n, 3, S, S]`` preprocessed images → ``float32[n, dim]`` unit vectors."""
        ...


# ------------------------------------------------------------------------------------------------ shoppers


class ProfileConflictError(CatalensError):
    """The profile changed between read and conditional write (another updater won); re-read and retry."""

    code = "profile_conflict"


@runtime_checkable
class ProfileStore(Protocol):
    """Where shopper profiles live (:class:`catalens.adapters.dynamodb.DynamoProfileStore`).

    ``save`` is conditional on ``expected_version`` (0: must not exist yet) and raises
    :class:`ProfileConflictError` when another writer got there first, so two updaters of one user never lose an
    event; the co-occurrence ``pairs`` of the event are written in the same conditional write.
    """

    def load(self, user_id: str) -> Profile | None:
        """The whole profile with its version (the updater's read-modify-conditional-write)."""
        ...

    def get_async(self, user_id: str) -> Future[Profile | None]:
        """Start reading what ranking needs of a profile; search collects it after decode and embed."""
        ...

    def save(self, profile: Profile, *, expected_version: int, pairs: Sequence[tuple[str, str]] = ()) -> None:
        """Write ``profile`` if the stored one still has ``expected_version``."""
        ...

    def delete(self, user_id: str) -> bool:
        """Erase a shopper's profile (a tombstone, so late events cannot rebuild it); True when there was one."""
        ...


@runtime_checkable
class CooccurrenceSource(Protocol):
    """What the profile updater needs of the co-engagement counts: an item's strongest co-engaged items with
    their conditional probabilities (:mod:`catalens.cooccurrence`)."""

    def neighbours(self, item_id: str) -> dict[str, float]:
        """``{other item: P(other | item)}`` for the items shoppers engaged with along with ``item_id``."""
        ...


# ------------------------------------------------------------------------------------------------ telemetry


@runtime_checkable
class MetricsSink(Protocol):
    """Metrics as the services emit them, so no service depends on a metrics backend
    (:class:`~catalens.service.telemetry.PowertoolsMetrics` on Lambda, ``RecordingMetrics`` in tests)."""

    def emit(self, name: str, value: float, unit: str = "Count", dimensions: Mapping[str, str] | None = None) -> None:
        """Record one data point; ``dimensions`` split it (e.g. failures by reason)."""
        ...

    def emit_group(self, points: MetricGroup, dimensions: Mapping[str, str] | None = None) -> None:
        """Record points that share their dimensions (one request's outcome) in one go."""
        ...
