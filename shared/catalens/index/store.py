"""The index's storage protocol over a :class:`~catalens.ports.BlobStore` (S3 in production).

Ingest writes one delta per S3 event (:mod:`catalens.index.deltas`); the builder folds the live deltas into a new
immutable version and swaps the manifest to it (:mod:`catalens.index.manifest`); readers load the version the
manifest names plus the deltas it does not cover. Where each object lives is :mod:`catalens.index.layout`; query
samples and the query-domain reference are :class:`~catalens.index.query_domain_store.QueryDomainStore`, which
this store composes (``store.queries``).

Atomic visibility (docs/design.md, invariant 2): a version's files are immutable and written before the manifest
names them; readers verify every file's size and sha256 against the manifest entry and the item count. GC deletes
only what no retained manifest entry references, after a grace period, so a reader holding an older manifest can
still load it; it deletes a delta only once every retained version covers it, so a rollback loses no ingest.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from catalens.index.deltas import (
    Coverage,
    Delta,
    DeltaKey,
    Ledger,
    SnapshotCoverage,
    decode_delta,
    delta_key,
    encode_delta,
)
from catalens.index.errors import (
    CorruptIndexError,
    IndexStoreError,
    ManifestConflictError,
    UnknownVersionError,
)
from catalens.index.layout import (
    DELTAS_DIR,
    LEDGER_NAME,
    SNAPSHOT_DIR,
    VERSIONS_DIR,
    fetch_all,
    iso_time,
)
from catalens.index.manifest import DEFAULT_RETRY, Manifest, ManifestStore, RetryPolicy, VersionEntry
from catalens.index.query_domain_store import QUERY_SAMPLE_MAX_AGE_DAYS, QueryDomainStore
from catalens.index.records import ItemRecord
from catalens.index.transport import PART_SIZE, Buffer, TransferStats, fetch_files, objects_by_sha256, write_files
from catalens.ports import BlobStore, ConflictError, PreconditionFailedError, delete_all

if TYPE_CHECKING:
    from catalens.index.build import BuildParams
    from catalens.index.snapshot import Snapshot
    from catalens.index.view import IndexView, SearchParams
    from catalens.query_domain import QueryDomain

log = logging.getLogger(__name__)


FileSelection = Collection[str] | Callable[[str], bool]
"""Which snapshot files to fetch: their names (``"full.3.npy"``), or a predicate over the names."""


@dataclass(frozen=True)
class LoadedVersion:
    """A verified version in memory: its snapshot, and the buffers the snapshot's arrays view (by file name).

    ``files`` lets the next load share unchanged buffers instead of fetching them again (:attr:`reusable`).
    """

    entry: VersionEntry
    snapshot: Snapshot
    files: Mapping[str, memoryview] = field(default_factory=dict)

    @property
    def coverage(self) -> SnapshotCoverage:
        return SnapshotCoverage(self.snapshot)

    @property
    def reusable(self) -> dict[str, memoryview]:
        """sha256 → buffer of every snapshot file held: the ``reuse`` argument of the next load."""
        return {self.entry.files[SNAPSHOT_DIR + name]["sha256"]: view for name, view in self.files.items()}


@dataclass(frozen=True)
class CompactionResult:
    version: str | None  # None when there was nothing to compact and no version yet
    generation: int
    items: int
    deltas_included: int
    deltas_skipped: int  # deltas whose vectors came from another model
    attempts: int
    build_seconds: float
    noop: bool = False
    bytes_uploaded: int = 0  # what writing the version sent to the store
    bytes_copied: int = 0  # what it copied inside the store instead (files unchanged since the previous version)
    objects_uploaded: int = 0
    objects_copied: int = 0


@dataclass
class GcResult:
    versions_deleted: list[str] = field(default_factory=list)
    objects_deleted: int = 0
    deltas_deleted: int = 0
    deltas_kept: int = 0
    query_samples_deleted: int = 0
    query_references_deleted: int = 0


class IndexStore:
    """The index protocol over a blob store: ingest writes deltas, the builder compacts, readers load views.

    Parameters
    ----------
    blob:
        Any :class:`~catalens.ports.BlobStore` (S3 or in-memory).
    prefix:
        Key prefix of this index (``"index/"``); "" for the bucket root.
    keep_versions:
        How many versions the manifest retains (current + history) for rollback.
    retry:
        Bounded, jittered retries of manifest swaps (412/409) and of 409 on delta writes.
    fetch_workers:
        Threads fetching deltas and version files, and writing version files, in parallel (S3 latency, not CPU,
        is the limit).
    part_size:
        Version files larger than this are stored as several objects of this size (:mod:`catalens.index.transport`).
    search_params:
        How the views this store's readers get search a snapshot (None: :class:`~catalens.index.view.SearchParams`'
        defaults); the search function sets the walk's candidate pool from ``SEARCH_CANDIDATES``.
    wall_clock, sleep:
        Injected by tests.

    ``manifests`` is the guarded manifest swap every writer goes through; ``queries`` the query samples and the
    query-domain reference, sharing this store's blob, prefix, manifest, retries and clock.
    """

    def __init__(
        self,
        blob: BlobStore,
        prefix: str = "",
        *,
        keep_versions: int = 5,
        retry: RetryPolicy = DEFAULT_RETRY,
        fetch_workers: int = 16,
        part_size: int = PART_SIZE,
        search_params: SearchParams | None = None,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if keep_versions < 1:
            raise ValueError("keep_versions must be at least 1")
        self.blob = blob
        self.prefix = prefix
        self.keep_versions = keep_versions
        self.retry = retry
        self.fetch_workers = max(1, fetch_workers)
        if part_size < 1:
            raise ValueError("part_size must be at least 1 byte")
        self.part_size = part_size
        self.search_params = search_params
        self._wall_clock = wall_clock
        self._sleep = sleep
        self.manifests = ManifestStore(blob, prefix)
        self.queries = QueryDomainStore(
            blob, prefix, self.manifests, retry=retry, fetch_workers=fetch_workers, wall_clock=wall_clock, sleep=sleep
        )

    # ---- keys

    @property
    def manifest_key(self) -> str:
        return self.manifests.key

    def version_key(self, version: str, name: str) -> str:
        return f"{self.prefix}{VERSIONS_DIR}{version}/{name}"

    # ---- ingest side

    def write_item(self, record: ItemRecord, *, model_fingerprint: str = "") -> bool:
        """Record one S3 event for one item. Idempotent: returns False (and writes nothing) for a duplicate.

        One conditional PUT of a fresh, deterministic key; never a read-modify-write. Whether the event
        wins over others for the same item is decided by readers from the sequencer, not here.
        """
        key = self.prefix + delta_key(record)
        body = encode_delta(record, model_fingerprint=model_fingerprint)
        for attempt in range(self.retry.attempts):
            try:
                self.blob.put(key, body, if_none_match=True)
                return True
            except PreconditionFailedError:
                return False  # the same event was recorded before (duplicate delivery)
            except ConflictError:
                self.retry.pause(attempt, self._sleep)  # a twin delivery is writing the same key right now
        raise ManifestConflictError(f"delta {key!r}: conditional writes kept conflicting (409)")

    def delete_item(self, item_id: str, *, sequencer: str, image_key: str = "", updated_at: float = 0.0) -> bool:
        """Record an ObjectRemoved event: a tombstone ordered by ``sequencer`` (same idempotency as write_item)."""
        tombstone = ItemRecord(
            item_id=item_id,
            vector=None,
            fields={},
            image_key=image_key,
            source_etag="",
            sequencer=sequencer,
            deleted=True,
            updated_at=updated_at,
        )
        return self.write_item(tombstone)

    # ---- reading

    def read_manifest(self, if_none_match_etag: str | None = None) -> tuple[Manifest, str | None]:
        """The manifest and its ETag; an empty manifest (ETag None) before the first compaction.

        Raises :class:`~catalens.ports.NotModifiedError` when it still has ``if_none_match_etag``.
        """
        return self.manifests.read(if_none_match_etag)

    def load_version(
        self,
        entry: VersionEntry,
        *,
        names: FileSelection | None = None,
        reuse: Mapping[str, Buffer] | None = None,
    ) -> LoadedVersion:
        """Fetch a version's snapshot files (:meth:`fetch_version_files`), verified, and decode them.

        ``names`` selects the files handed to ``Snapshot.from_files`` (default: all), which must accept that
        subset; ``reuse`` (sha256 → bytes already in memory, e.g. ``current.reusable``) shares unchanged files'
        buffers instead of fetching them, so a swap holds each unchanged file once.
        """
        from catalens.index.snapshot import Snapshot, SnapshotError

        files = self.fetch_version_files(entry, names, reuse=reuse)
        try:
            # Every part was just checked against the manifest's sha256; the snapshot's own hashes would
            # only hash the same bytes again (sizes and presence it still checks).
            snapshot = Snapshot.from_files(files, verify=False)
        except SnapshotError as exc:
            raise CorruptIndexError(f"version {entry.version}: {exc}") from exc
        if len(snapshot) != entry.items:
            raise CorruptIndexError(f"version {entry.version}: {len(snapshot)} items, manifest says {entry.items}")
        return LoadedVersion(entry=entry, snapshot=snapshot, files=files)

    def fetch_version_files(
        self,
        entry: VersionEntry,
        names: FileSelection | None = None,
        *,
        reuse: Mapping[str, Buffer] | None = None,
        hash_in_fetch_threads: bool = True,
    ) -> dict[str, memoryview]:
        """A version's snapshot files as read-only memoryviews, by the names ``Snapshot.from_files`` takes.

        The building block of staged loading: fetch the first stage (e.g. ``names={"snapshot.json", "ids.npy",
        ...}``), answer from it, then fetch the rest (``names=lambda n: n.startswith("full.")``) in the background
        and merge the two dicts. Each call GETs its files' parts on ``fetch_workers`` threads into one
        preallocated buffer per file, checks every part's sha256 in the thread that fetched it, and returns
        nothing unless all are whole (:class:`CorruptIndexError` for a missing, short or altered part; an unknown
        name in a collection is a :class:`CorruptIndexError` too: the caller expected a file the version lacks).
        A file whose sha256 is a key of ``reuse`` is not fetched; its buffer is shared. ``hash_in_fetch_threads``
        is for benchmarks only.
        """
        snapshot_names = [name[len(SNAPSHOT_DIR) :] for name in entry.files if name.startswith(SNAPSHOT_DIR)]
        if names is None:
            selected = snapshot_names
        elif callable(names):
            selected = [name for name in snapshot_names if names(name)]
        else:
            unknown = sorted(set(names) - set(snapshot_names))
            if unknown:
                raise CorruptIndexError(f"version {entry.version}: no file(s) {unknown} in its manifest entry")
            selected = [name for name in snapshot_names if name in names]
        return fetch_files(
            self.blob,
            {name: entry.files[SNAPSHOT_DIR + name] for name in selected},
            lambda name: self.version_key(entry.version, SNAPSHOT_DIR + name),
            workers=self.fetch_workers,
            reuse=reuse,
            hash_in_fetch_threads=hash_in_fetch_threads,
            label=f"version {entry.version}: ",
        )

    def load_ledger(self, entry: VersionEntry) -> Ledger:
        """The small per-item ledger of a version (GC reads these instead of whole snapshots)."""
        if LEDGER_NAME not in entry.files:
            raise CorruptIndexError(f"version {entry.version}: its manifest entry names no ledger")
        data = fetch_files(
            self.blob,
            {LEDGER_NAME: entry.files[LEDGER_NAME]},
            lambda name: self.version_key(entry.version, name),
            workers=self.fetch_workers,
            label=f"version {entry.version}: ",
        )[LEDGER_NAME]
        return Ledger.from_bytes(bytes(data))

    def list_deltas(self) -> dict[str, DeltaKey]:
        """Every delta object (full key → what its name says), from one LIST of the deltas prefix."""
        found: dict[str, DeltaKey] = {}
        for info in self.blob.list(self.prefix + DELTAS_DIR):
            parsed = DeltaKey.parse(info.key[len(self.prefix) :])
            if parsed is not None:
                found[info.key] = parsed
        return found

    def fetch_deltas(
        self, listing: Mapping[str, DeltaKey], coverage: Coverage, known: Mapping[str, Delta] | None = None
    ) -> dict[str, Delta]:
        """The deltas of ``listing`` that ``coverage`` does not cover, reusing ``known`` ones (deltas are immutable).

        A delta deleted by GC between LIST and GET was covered by every retained version: it is skipped.
        """
        known = known or {}
        keys = list(listing)
        covered = coverage.covers([listing[k] for k in keys])
        wanted = [k for k, done in zip(keys, covered, strict=True) if not done]
        result = {k: known[k] for k in wanted if k in known}
        fetched = self._fetch({k: k for k in wanted if k not in known})
        for key, data in fetched.items():
            if data is None:
                continue
            try:
                result[key] = decode_delta(data, key=key)
            except CorruptIndexError:
                log.warning("skipping undecodable delta %s", key, exc_info=True)
        return result

    def load_view(self) -> IndexView:
        """The current index as one consistent view: verified snapshot + live deltas (uncached)."""
        manifest, _ = self.read_manifest()
        loaded = self.load_version(manifest.current) if manifest.current else None
        coverage = loaded.coverage if loaded else SnapshotCoverage(None)
        deltas = self.fetch_deltas(self.list_deltas(), coverage).values()
        return self.view_of(loaded, deltas, query_domain=self.queries.query_domain_of(manifest))

    def view_of(
        self, loaded: LoadedVersion | None, deltas: Iterable[Delta], *, query_domain: QueryDomain | None = None
    ) -> IndexView:
        """:func:`make_view` with this store's search params: every reader's view searches as the deployment says."""
        return make_view(loaded, deltas, query_domain=query_domain, params=self.search_params)

    # ---- builder side

    def compact(
        self,
        build_fn: Callable[..., Snapshot] | None = None,
        *,
        model_fingerprint: str | None = None,
        force: bool = False,
        params: BuildParams | None = None,
    ) -> CompactionResult:
        """Fold the live deltas into a new immutable version and swap the manifest to it.

        ``build_fn(records, model_fingerprint=..., previous=..., version=..., params=...)`` defaults to
        :func:`catalens.index.build.build_snapshot` (it imports pynndescent only for a graph), ``params`` to
        :class:`~catalens.index.build.BuildParams`'s defaults. Deltas written while it runs are newer than the
        new version and stay live. On a lost manifest race the whole compaction is redone from the new manifest
        (bounded, jittered); the abandoned version's files are left for GC. Without live deltas nothing is
        written unless ``force``.
        """
        from catalens.index.build import DEFAULT_PARAMS, build_snapshot

        build_fn = build_fn or build_snapshot
        params = params or DEFAULT_PARAMS
        loaded: LoadedVersion | None = None
        for attempt in range(self.retry.attempts):
            manifest, etag = self.read_manifest()
            if manifest.current is None:
                loaded = None
            elif loaded is None or loaded.entry.version != manifest.current.version:
                loaded = self.load_version(manifest.current)
            deltas = self.fetch_deltas(self.list_deltas(), loaded.coverage if loaded else SnapshotCoverage(None))
            fingerprint = model_fingerprint or (loaded.snapshot.model_fingerprint if loaded else None)
            if not fingerprint:
                raise IndexStoreError("the first compaction needs model_fingerprint (no snapshot to take it from)")
            usable = {k: d for k, d in deltas.items() if d.model_fingerprint in ("", fingerprint)}
            skipped = len(deltas) - len(usable)
            if skipped:
                log.warning("compaction skips %d deltas embedded by another model than %s", skipped, fingerprint)
            if not usable and not force:
                current = manifest.current
                return CompactionResult(
                    version=current.version if current else None,
                    generation=manifest.generation,
                    items=current.items if current else 0,
                    deltas_included=0,
                    deltas_skipped=skipped,
                    attempts=attempt + 1,
                    build_seconds=0.0,
                    noop=True,
                )
            generation = manifest.generation + 1
            version = f"{generation:08d}-{uuid.uuid4().hex[:12]}"  # unique even when two builders race
            started = time.perf_counter()
            snapshot = build_fn(
                [usable[k].record for k in sorted(usable)],
                model_fingerprint=fingerprint,
                previous=loaded.snapshot if loaded else None,
                version=version,
                params=params,
            )
            build_seconds = time.perf_counter() - started
            now = self._wall_clock()
            entry, transfer = self._write_version(
                version, snapshot, generation, sorted(usable), now, previous=manifest.current
            )
            log.info(
                "version %s written: %d bytes uploaded (%d objects), %d copied from %s (%d objects)",
                version,
                transfer.bytes_uploaded,
                transfer.objects_uploaded,
                transfer.bytes_copied,
                manifest.current.version if manifest.current else None,
                transfer.objects_copied,
            )
            published = Manifest(
                generation=generation,
                current=entry,
                history=manifest.retained[: self.keep_versions - 1],
                updated_at=iso_time(now),
                query_domain=manifest.query_domain,
            )
            if self.manifests.swap(published, etag):
                return CompactionResult(
                    version=entry.version,
                    generation=published.generation,
                    items=entry.items,
                    deltas_included=len(usable),
                    deltas_skipped=skipped,
                    attempts=attempt + 1,
                    build_seconds=build_seconds,
                    bytes_uploaded=transfer.bytes_uploaded,
                    bytes_copied=transfer.bytes_copied,
                    objects_uploaded=transfer.objects_uploaded,
                    objects_copied=transfer.objects_copied,
                )
            log.info("manifest changed while compacting (attempt %d); rebuilding from the new one", attempt + 1)
            self.retry.pause(attempt, self._sleep)
        raise ManifestConflictError(f"compaction lost the manifest race {self.retry.attempts} times")

    def rollback(self, version: str) -> Manifest:
        """Make a retained earlier version current again (conditional swap, retried on a lost race).

        Deltas newer than that version become live again, so ingests since then are kept.
        """
        for attempt in range(self.retry.attempts):
            manifest, etag = self.read_manifest()
            target = manifest.find(version)
            if target is None:
                retained = [e.version for e in manifest.retained]
                raise UnknownVersionError(f"version {version!r} is not retained by the manifest (have {retained})")
            if manifest.current is not None and manifest.current.version == version:
                return manifest
            history = tuple(e for e in manifest.retained if e.version != version)
            published = Manifest(
                generation=manifest.generation + 1,
                current=target,
                history=history[: self.keep_versions - 1],
                updated_at=iso_time(self._wall_clock()),
                query_domain=manifest.query_domain,
            )
            if self.manifests.swap(published, etag):
                return published
            self.retry.pause(attempt, self._sleep)
        raise ManifestConflictError(f"rollback to {version!r} lost the manifest race {self.retry.attempts} times")

    def gc(
        self,
        grace_seconds: float = 3600.0,
        *,
        dry_run: bool = False,
        max_sample_age_days: int = QUERY_SAMPLE_MAX_AGE_DAYS,
    ) -> GcResult:
        """Delete what no retained version needs, once older than ``grace_seconds`` (by LastModified).

        - the files of versions the manifest no longer retains (all of a version's files must be older
          than the grace: a compaction in progress writes young files, a slow reader may still load it);
        - deltas that every retained version covers (while one still needs a delta, a rollback to it
          must find it);
        - query-domain references the manifest does not name, and query samples older than
          ``max_sample_age_days`` (by the time in their key; refresh would not read them any more).
        Nothing is deleted before the first compaction.
        """
        manifest, _ = self.read_manifest()
        if manifest.current is None:
            return GcResult()
        now = self._wall_clock()
        cutoff = now - grace_seconds
        versions, version_files = self._unretained_versions(manifest, cutoff)
        covered_deltas, deltas_listed = self._covered_deltas(manifest, cutoff)
        references, samples = self.queries.collectable(
            manifest, cutoff=cutoff, sample_cutoff=now - max_sample_age_days * 86400
        )
        if not dry_run:
            delete_all(self.blob, version_files + covered_deltas + references + samples)
        return GcResult(
            versions_deleted=versions,
            objects_deleted=len(version_files),
            deltas_deleted=len(covered_deltas),
            deltas_kept=deltas_listed - len(covered_deltas),
            query_samples_deleted=len(samples),
            query_references_deleted=len(references),
        )

    # ---- internals

    def _unretained_versions(self, manifest: Manifest, cutoff: float) -> tuple[list[str], list[str]]:
        """(versions, their files) that the manifest no longer retains and whose every file is older than ``cutoff``:
        a compaction in progress writes young files, and a slow reader may still load a young version."""
        retained = {e.version for e in manifest.retained}
        by_version: dict[str, list[tuple[str, float]]] = {}
        for info in self.blob.list(self.prefix + VERSIONS_DIR):
            version = info.key[len(self.prefix + VERSIONS_DIR) :].split("/", 1)[0]
            by_version.setdefault(version, []).append((info.key, info.last_modified.timestamp()))
        versions: list[str] = []
        files: list[str] = []
        for version, objects in sorted(by_version.items()):
            if version in retained or max(ts for _, ts in objects) >= cutoff:
                continue
            versions.append(version)
            files.extend(key for key, _ in objects)
        return versions, files

    def _covered_deltas(self, manifest: Manifest, cutoff: float) -> tuple[list[str], int]:
        """(deltas older than ``cutoff`` that every retained version covers, how many deltas were listed).

        Judged from each retained version's small ledger, not its snapshot: while one version still needs a delta,
        a rollback to it must find it.
        """
        ledgers = [self.load_ledger(e) for e in manifest.retained]
        listing = list(self.blob.list(self.prefix + DELTAS_DIR))
        infos = [info for info in listing if info.last_modified.timestamp() < cutoff]
        parsed = [(info.key, DeltaKey.parse(info.key[len(self.prefix) :])) for info in infos]
        parsed_keys = [(key, p) for key, p in parsed if p is not None]
        covered = [True] * len(parsed_keys)
        for ledger in ledgers:
            covered = [a and b for a, b in zip(covered, ledger.covers([p for _, p in parsed_keys]), strict=True)]
        return [key for (key, _), done in zip(parsed_keys, covered, strict=True) if done], len(listing)

    def _write_version(
        self,
        version: str,
        snapshot: Snapshot,
        generation: int,
        included_keys: Sequence[str],
        now: float,
        *,
        previous: VersionEntry | None = None,
    ) -> tuple[VersionEntry, TransferStats]:
        """Write every file of a new version under a fresh name (If-None-Match, in parts, in parallel); the manifest
        comes after. What ``previous`` already stores with the same sha256 is copied server-side, not uploaded."""
        files = _VersionFiles(snapshot.to_files(), Ledger.from_snapshot(snapshot).to_bytes())
        sources = (
            objects_by_sha256(previous.files, lambda name: self.version_key(previous.version, name)) if previous else {}
        )
        written, transfer = write_files(
            self.blob,
            files,
            lambda name: self.version_key(version, name),
            part_size=self.part_size,
            previous=sources,
            workers=self.fetch_workers,
        )
        meta = {name: written[name] for name in sorted(written)}
        digest = hashlib.sha256("\n".join(included_keys).encode("utf-8")).hexdigest()
        return VersionEntry(
            version=version,
            generation=generation,
            created_at=iso_time(now),
            items=len(snapshot),
            model_fingerprint=snapshot.model_fingerprint,
            snapshot_version=str(snapshot.version),
            files=meta,
            deltas_included=len(included_keys),
            deltas_digest=digest,
        ), transfer

    def _fetch(self, keys: Mapping[str, str]) -> dict[str, bytes | None]:
        return fetch_all(self.blob, keys, workers=self.fetch_workers)


class _VersionFiles(Mapping[str, Buffer]):
    """A version's files by key under the version, read from the snapshot's own lazy mapping one at a time: writing
    a million-item version never holds a second copy of the whole snapshot."""

    def __init__(self, snapshot_files: Mapping[str, Buffer], ledger: bytes) -> None:
        self._snapshot_files = snapshot_files
        self._ledger = ledger

    def __getitem__(self, name: str) -> Buffer:
        if name == LEDGER_NAME:
            return self._ledger
        if not name.startswith(SNAPSHOT_DIR):
            raise KeyError(name)
        return self._snapshot_files[name[len(SNAPSHOT_DIR) :]]

    def __iter__(self) -> Iterator[str]:
        yield from (SNAPSHOT_DIR + name for name in self._snapshot_files)
        yield LEDGER_NAME

    def __len__(self) -> int:
        return len(self._snapshot_files) + 1


def make_view(
    loaded: LoadedVersion | None,
    deltas: Iterable[Delta],
    *,
    query_domain: QueryDomain | None = None,
    params: SearchParams | None = None,
) -> IndexView:
    """IndexView over a whole version plus deltas (IndexView resolves each item by sequencer).

    Deltas whose vectors come from another model than the snapshot's are left out (they would not
    be comparable); the builder skips them the same way. ``query_domain`` (as loaded, model space) is
    handed to the view for calibrated photo searches; ``params`` (None: the defaults) to its snapshot search.
    """
    from catalens.index.view import IndexView

    fingerprint = loaded.snapshot.model_fingerprint if loaded else None
    records = [d.record for d in deltas if not fingerprint or d.model_fingerprint in ("", fingerprint)]
    return IndexView(loaded.snapshot if loaded else None, records, query_domain=query_domain, params=params)
