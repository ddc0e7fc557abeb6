"""Query-domain storage: the query samples search writes, and the reference the builder folds them into.

Search writes a share of its photo query embeddings under fresh keys (float16, nothing else: no photo, no user
id); until there are enough of them, ingest's seed samples (synthetic shoppers' photos of a sample of the catalog,
``queries/seeds/``) stand in. The builder folds the newest samples of the current model into an immutable,
content-addressed reference object, then makes the manifest name it with the manifest's usual guarded swap.
Readers load the reference the manifest names, verified against its size and sha256; compaction and rollback carry
the manifest's entry over untouched. Calibration is an optimisation: a missing or corrupt reference leaves searches
uncalibrated, never failing (:mod:`catalens.query_domain` holds the arithmetic).
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import numpy as np

from catalens.index.errors import CorruptIndexError, InvalidRecordError, ManifestConflictError
from catalens.index.layout import QUERY_REFERENCE_DIR, QUERY_SAMPLES_DIR, fetch_all, iso_time
from catalens.index.manifest import DEFAULT_RETRY, Manifest, ManifestStore, QueryDomainEntry, RetryPolicy
from catalens.ports import BlobNotFoundError, BlobStore, NotModifiedError, PreconditionFailedError
from catalens.query_domain import DEFAULT_BETA, MAX_REFERENCE, MIN_REFERENCE, SEED_ITEMS, QueryDomain, SeedSample

log = logging.getLogger(__name__)

QUERY_SAMPLE_MAX_AGE_DAYS = 30
QUERY_SAMPLE_READ_FACTOR = 4  # refresh reads up to this × max_reference newest samples
QUERY_SEEDS_DIR = "queries/seeds/"  # synthetic shoppers' photos per model: <fingerprint>/<item hash>-<view>.npy


class QueryDomainStore:
    """Query samples and the query-domain reference of one index, beside its manifest.

    Parameters
    ----------
    blob:
        Any :class:`~catalens.ports.BlobStore` (S3 or in-memory).
    prefix:
        Key prefix of the index (``"index/"``, ending in "/"); "" for the bucket root.
    manifests:
        The index's manifest, read and swapped to name a new reference.
    retry:
        Bounded, jittered retries of a manifest swap lost to another writer.
    fetch_workers:
        Threads fetching samples in parallel.
    wall_clock, sleep:
        Injected by tests.
    """

    def __init__(
        self,
        blob: BlobStore,
        prefix: str,
        manifests: ManifestStore,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        fetch_workers: int = 16,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.blob = blob
        self.prefix = prefix
        self.manifests = manifests
        self.retry = retry
        self.fetch_workers = max(1, fetch_workers)
        self._wall_clock = wall_clock
        self._sleep = sleep

    def write_query_sample(self, vector: np.ndarray, *, model_fingerprint: str, now: float | None = None) -> str:
        """Store one raw query embedding (float16, nothing else) for the next reference; returns the blob key.

        A fresh key per sample (time + uuid), written with If-None-Match: samples never overwrite each other.
        Raises :class:`InvalidRecordError` for a vector that is not 1-D, finite and non-zero.
        """
        sample = _query_sample(vector)
        if not model_fingerprint:
            raise InvalidRecordError("a query sample needs the fingerprint of the model that embedded it")
        now = self._wall_clock() if now is None else now
        day = datetime.fromtimestamp(now, UTC).date().isoformat()
        key = (
            f"{self.prefix}{QUERY_SAMPLES_DIR}{_fingerprint_dir(model_fingerprint)}/{day}/"
            f"{int(now * 1000):013d}-{uuid.uuid4().hex}.npy"
        )
        buffer = io.BytesIO()
        np.save(buffer, sample, allow_pickle=False)
        self.blob.put(key, buffer.getvalue(), if_none_match=True)
        return key

    def recent_query_samples(
        self,
        *,
        model_fingerprint: str,
        limit: int,
        max_age_days: int = QUERY_SAMPLE_MAX_AGE_DAYS,
        now: float | None = None,
    ) -> list[np.ndarray]:
        """Up to ``limit`` samples of ``model_fingerprint``, at most ``max_age_days`` old, newest first (float32).

        Lists one day's folder at a time from today backwards and stops once ``limit`` are found, so a busy
        month costs the LISTs of the last day or two. Samples deleted meanwhile or undecodable are skipped.
        """
        if limit <= 0:
            return []
        now = self._wall_clock() if now is None else now
        oldest_ms = int((now - max_age_days * 86400) * 1000)
        base = f"{self.prefix}{QUERY_SAMPLES_DIR}{_fingerprint_dir(model_fingerprint)}/"
        day = datetime.fromtimestamp(now, UTC).date() + timedelta(days=1)  # a writer's clock may run a bit ahead
        last_day = datetime.fromtimestamp(oldest_ms / 1000, UTC).date()
        chosen: list[tuple[int, str]] = []
        while day >= last_day and len(chosen) < limit:
            found = [(_sample_millis(info.key), info.key) for info in self.blob.list(f"{base}{day.isoformat()}/")]
            chosen.extend(sorted(((ms, key) for ms, key in found if ms is not None and ms >= oldest_ms), reverse=True))
            day -= timedelta(days=1)
        return self._fetch_vectors([key for _, key in chosen[:limit]], "query sample")

    def _fetch_vectors(self, keys: list[str], what: str) -> list[np.ndarray]:
        """float32 vectors stored at ``keys`` (.npy, fetched in parallel); gone, undecodable or not 1-D: skipped."""
        fetched = fetch_all(self.blob, {key: key for key in keys}, workers=self.fetch_workers)
        samples: list[np.ndarray] = []
        for key in keys:
            data = fetched[key]
            if data is None:
                continue
            try:
                sample = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
            except (ValueError, TypeError, OSError, EOFError):
                log.warning("skipping undecodable %s %s", what, key, exc_info=True)
                continue
            if sample.ndim != 1:
                log.warning("skipping %s %s of shape %s", what, key, sample.shape)
                continue
            samples.append(sample)
        return samples

    def _seed_base(self, model_fingerprint: str) -> str:
        return f"{self.prefix}{QUERY_SEEDS_DIR}{_fingerprint_dir(model_fingerprint)}/"

    def write_seed_sample(self, sample: SeedSample, *, model_fingerprint: str) -> str | None:
        """Store one synthetic shopper's photo embedding (float16) of an item; returns the key, or None when that
        item's view is already stored (a re-delivery: the key is a pure function of model, item hash and view)."""
        vector = _query_sample(sample.vector)
        if not model_fingerprint:
            raise InvalidRecordError("a seed sample needs the fingerprint of the model that embedded it")
        key = f"{self._seed_base(model_fingerprint)}{sample.item_hash}-{sample.view:02d}.npy"
        buffer = io.BytesIO()
        np.save(buffer, vector, allow_pickle=False)
        try:
            self.blob.put(key, buffer.getvalue(), if_none_match=True)
        except PreconditionFailedError:
            return None
        return key

    def _seed_keys(self, model_fingerprint: str, items: int) -> list[tuple[str, str]]:
        """``(item hash, key)`` of every seed sample of the ``items`` smallest item hashes, ascending. Keys are
        ``<hash>-<view>.npy``, so LIST returns an item's views together and can stop at the first hash past them."""
        found: list[tuple[str, str]] = []
        distinct = 0
        for info in self.blob.list(self._seed_base(model_fingerprint)):
            item_hash = info.key.rsplit("/", 1)[-1].split("-", 1)[0]
            if not found or found[-1][0] != item_hash:
                if distinct == items:
                    break
                distinct += 1
            found.append((item_hash, info.key))
        return found

    def seed_item_hashes(self, *, model_fingerprint: str, items: int = SEED_ITEMS) -> list[str]:
        """The ``items`` smallest item hashes that have seed samples, ascending (LIST stops once it has them)."""
        return list(dict.fromkeys(item_hash for item_hash, _ in self._seed_keys(model_fingerprint, items)))

    def seed_samples(self, *, model_fingerprint: str, items: int = SEED_ITEMS) -> list[np.ndarray]:
        """The seed samples of the ``items`` smallest item hashes (a uniform sample of the catalog's items), float32."""
        keys = [key for _, key in self._seed_keys(model_fingerprint, items)]
        return self._fetch_vectors(keys, "seed sample")

    def load_query_domain(self, entry: QueryDomainEntry) -> QueryDomain:
        """The reference the manifest names, verified against its size and sha256 (CorruptIndexError if not)."""
        try:
            data = self.blob.get(self.prefix + entry.key).data
        except BlobNotFoundError as exc:
            raise CorruptIndexError(f"query-domain reference {entry.key!r} named by the manifest is missing") from exc
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise CorruptIndexError(f"query-domain reference {entry.key!r} does not match the manifest's checksum")
        try:
            domain = QueryDomain(decode_query_reference(data), beta=entry.beta, seeded=is_seeded_reference(data))
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise CorruptIndexError(f"query-domain reference {entry.key!r} cannot be decoded: {exc}") from exc
        if len(domain) != entry.count:
            raise CorruptIndexError(
                f"query-domain reference {entry.key!r}: {len(domain)} rows, manifest says {entry.count}"
            )
        return domain

    def refresh_query_domain(
        self,
        *,
        max_reference: int = MAX_REFERENCE,
        beta: float = DEFAULT_BETA,
        now: float | None = None,
        model_fingerprint: str | None = None,
    ) -> QueryDomainEntry | None:
        """Build the reference from the newest samples of the current model and make the manifest name it.

        Returns None when there is no current version or fewer than ``MIN_REFERENCE`` usable samples (the manifest
        is left as it is); otherwise the entry the manifest now names. ``model_fingerprint`` names the model when
        the index is not the manifest's (S3 Vectors: the manifest then names no version, only the domain). An
        unchanged reference is not swapped again. The object is written before the manifest names it; the swap is
        the manifest's usual If-Match write, redone from a fresh read on a lost race (bounded, jittered).
        """
        now = self._wall_clock() if now is None else now
        built: tuple[str, QueryDomain] | None = None  # (model fingerprint, domain) of the samples read
        written: str | None = None  # sha256 of the reference object written by this call
        for attempt in range(self.retry.attempts):
            manifest, etag = self.manifests.read()
            if model_fingerprint is not None:
                fingerprint = model_fingerprint
            elif manifest.current is None:
                return None
            else:
                fingerprint = manifest.current.model_fingerprint
            if built is None or built[0] != fingerprint:
                samples = self.recent_query_samples(
                    model_fingerprint=fingerprint, limit=QUERY_SAMPLE_READ_FACTOR * max_reference, now=now
                )
                # the seed stands in only until real samples suffice: read it only then
                seeds = self.seed_samples(model_fingerprint=fingerprint) if len(samples) < MIN_REFERENCE else []
                domain = QueryDomain.from_samples(samples, seeds=seeds, beta=beta, max_reference=max_reference)
                if domain is None:
                    log.info(
                        "query domain not refreshed: %d samples and %d seed samples of model %s are too few",
                        len(samples),
                        len(seeds),
                        fingerprint,
                    )
                    return None
                built = (fingerprint, domain)
            domain = built[1]
            data = encode_query_reference(domain.reference, seeded=domain.seeded)
            digest = hashlib.sha256(data).hexdigest()
            entry = QueryDomainEntry(
                key=f"{QUERY_REFERENCE_DIR}{digest[:24]}.npz",
                sha256=digest,
                size=len(data),
                count=len(domain),
                beta=float(domain.beta),
                model_fingerprint=fingerprint,
                created_at=iso_time(now),
            )
            if entry.same_reference(manifest.query_domain):
                return manifest.query_domain
            if written != digest:
                # Content-addressed: rewriting identical bytes changes nothing but LastModified, which GC's
                # grace period counts from, so an old unreferenced copy is not collected under the new manifest.
                self.blob.put(self.prefix + entry.key, data)
                written = digest
            generation = manifest.generation + 1
            published = replace(manifest, generation=generation, updated_at=iso_time(now), query_domain=entry)
            if self.manifests.swap(published, etag):
                return entry
            log.info("manifest changed while refreshing the query domain (attempt %d); retrying", attempt + 1)
            self.retry.pause(attempt, self._sleep)
        raise ManifestConflictError(f"query-domain refresh lost the manifest race {self.retry.attempts} times")

    def query_domain_of(self, manifest: Manifest, *, model_fingerprint: str | None = None) -> QueryDomain | None:
        """The query domain ``manifest`` names for its current version (or for ``model_fingerprint``, the model of
        an index the manifest does not hold), or None (none, another model's, or bad).

        Never raises for a missing or corrupt reference: it is logged and searches go uncalibrated.
        """
        entry = manifest.query_domain
        if model_fingerprint is None and manifest.current is not None:
            model_fingerprint = manifest.current.model_fingerprint
        if entry is None or model_fingerprint is None:
            return None
        if entry.model_fingerprint != model_fingerprint:
            current = model_fingerprint
            log.info("query domain of model %s, the index's is %s: not applied", entry.model_fingerprint, current)
            return None
        try:
            return self.load_query_domain(entry)
        except Exception:  # a reference is an optimisation: searching uncalibrated beats failing
            log.warning("query domain %s cannot be loaded; searching uncalibrated", entry.key, exc_info=True)
            return None

    def collectable(self, manifest: Manifest, *, cutoff: float, sample_cutoff: float) -> tuple[list[str], list[str]]:
        """What GC may delete here: (references the manifest does not name, older than ``cutoff`` by LastModified;
        samples stamped before ``sample_cutoff``, which refresh would not read any more)."""
        named = self.prefix + manifest.query_domain.key if manifest.query_domain else None
        references = [
            info.key
            for info in self.blob.list(self.prefix + QUERY_REFERENCE_DIR)
            if info.key != named and info.last_modified.timestamp() < cutoff
        ]
        samples = []
        for info in self.blob.list(self.prefix + QUERY_SAMPLES_DIR):
            millis = _sample_millis(info.key)
            stamped = millis / 1000 if millis is not None else info.last_modified.timestamp()
            if stamped < sample_cutoff:
                samples.append(info.key)
        return references, samples


def _fingerprint_dir(model_fingerprint: str) -> str:
    return quote(model_fingerprint[:16], safe="")


def _sample_millis(key: str) -> int | None:
    """The unix-ms a sample's key was stamped with (``.../<unix-ms>-<uuid>.npy``); None for anything else."""
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(".npy"):
        return None
    stamp = name.split("-", 1)[0]
    return int(stamp) if stamp.isdigit() else None


def _query_sample(vector: np.ndarray) -> np.ndarray:
    """``vector`` as the float16 row a sample stores; InvalidRecordError when it could not serve as a reference."""
    try:
        sample = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidRecordError(f"query sample is not a numeric vector: {exc}") from exc
    if sample.ndim != 1 or sample.size == 0:
        raise InvalidRecordError(f"query sample must be a non-empty 1-D vector, got shape {sample.shape}")
    if not np.isfinite(sample).all():
        raise InvalidRecordError("query sample has non-finite values")
    with np.errstate(over="ignore"):
        half = sample.astype("<f2")
    if not np.isfinite(half).all():
        raise InvalidRecordError("query sample has values beyond float16's range (is it an unnormalised embedding?)")
    if not np.any(half):
        raise InvalidRecordError("query sample is the zero vector")
    return half


def encode_query_reference(reference: np.ndarray, *, seeded: bool = False) -> bytes:
    """A reference as an ``.npz`` holding one array ``reference`` (float16 [R, d]) that ``np.load`` reads, and for a
    seeded reference (:attr:`QueryDomain.seeded`) a second, ``seeded`` (one bool), which older readers ignore.

    Written like ``np.savez`` (stored, not compressed) but with a fixed zip timestamp, so the same reference always
    gives the same bytes: the object is content-addressed, and an unchanged reference is not swapped in again.
    """
    arrays = {"reference": np.ascontiguousarray(reference, dtype="<f2")}
    if seeded:
        arrays["seeded"] = np.array([True])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def is_seeded_reference(data: bytes) -> bool:
    """Whether an object written by :func:`encode_query_reference` holds the synthetic seed (centring only)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return "seeded" in archive.files and bool(archive["seeded"].reshape(-1)[0])


def decode_query_reference(data: bytes) -> np.ndarray:
    """The float32 ``[R, d]`` reference of an object written by :func:`encode_query_reference` (no pickle)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        reference = archive["reference"]
    if reference.ndim != 2:
        raise ValueError(f"reference has shape {reference.shape}, expected [R, d]")
    return reference.astype(np.float32)


class ManifestQueryDomains:
    """The query domain of an index the manifest does not hold (S3 Vectors), for a given model fingerprint.

    Called when a reader refreshes (every few seconds): a conditional GET of the manifest, so the reference is
    loaded again only when the manifest names another one.
    """

    def __init__(self, queries: QueryDomainStore) -> None:
        self.queries = queries
        self._etag: str | None = None
        self._manifest: Manifest | None = None
        self._loaded: tuple[QueryDomainEntry | None, str, QueryDomain | None] | None = None
        self._lock = threading.Lock()

    def __call__(self, model_fingerprint: str) -> QueryDomain | None:
        with self._lock:
            try:
                manifest, etag = self.queries.manifests.read(if_none_match_etag=self._etag)
                self._manifest, self._etag = manifest, etag
            except NotModifiedError:
                manifest = self._manifest
            except Exception:  # calibration is an optimisation: keep what we had
                log.warning("manifest unreadable; keeping the query domain already loaded", exc_info=True)
                manifest = self._manifest
            if manifest is None:
                return None
            entry = manifest.query_domain
            if self._loaded is not None and self._loaded[:2] == (entry, model_fingerprint):
                return self._loaded[2]
            domain = self.queries.query_domain_of(manifest, model_fingerprint=model_fingerprint)
            self._loaded = (entry, model_fingerprint, domain)
            return domain
