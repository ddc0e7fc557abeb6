"""The query side's index cache: one per process, kept across Lambda invocations.

Every call to :meth:`IndexCache.view` answers from memory. At most every ``ttl_seconds`` one caller
also triggers a revalidation (the others do not wait): a conditional GET of the manifest (304 when
unchanged, the cheap path), one LIST of the deltas prefix, and GETs of only the deltas not seen
before — that is how a new photo becomes searchable within seconds (DESIGN invariant 3). On the
query path it runs on a daemon thread and the triggering caller waits for it only briefly, so a slow
storage round trip never holds an answer up.

A new version is loaded by a background thread while answers keep coming from the old version plus
the live deltas (which still hold everything the new version folded in: deltas are deleted only by
GC, after a grace period, once every retained version covers them). The swap is one reference
assignment of a whole, verified state, so a reader sees a whole version or the previous one
(invariant 2).

A compact version loads in two stages (docs/design.md, "The index at catalog scale"): the first stage (ids, records,
columns, graph, int8 first-stage codes: well under 1 KB per item) is fetched, checked and answering before the full
vectors; those (int8 chunks, ~4 KB per item) and the stored lexical index (``text.*.npy``, ~0.3 KB per item) follow
on a background thread, and until they are in, answers come from vectors rebuilt from the first stage and say so
(``stage`` of the view, ``index.stage`` in the API), and text queries answer 503 ``index_unavailable``. A new
version shares every chunk whose sha256 the version in memory already holds; when what it would add beside the
old one passes ``swap_headroom`` of the old one's bytes, the old version is let go first and the new one answers
from its first stage until its chunks are in: a swap never holds two versions' worth of vectors.

The query-domain reference the manifest names is loaded the same way (by the loader thread, verified against its
sha256) when the manifest's entry changes, and handed to every view. A missing or corrupt reference is logged and
the views go without it: calibration is an optimisation, never a reason for a search to fail.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from catalens.index.deltas import Delta, DeltaKey, SnapshotCoverage
from catalens.index.layout import SNAPSHOT_DIR
from catalens.index.manifest import Manifest, QueryDomainEntry, VersionEntry
from catalens.index.snapshot import is_second_stage_file
from catalens.index.store import IndexStore, LoadedVersion
from catalens.index.vectors import is_chunk_file
from catalens.ports import NotModifiedError

if TYPE_CHECKING:
    from catalens.index.view import IndexView
    from catalens.query_domain import QueryDomain

log = logging.getLogger(__name__)

# A swap may hold the new version's changed files beside the old version up to this share of its bytes; past it the
# old version goes first (the template's memory sizes count on it: catalens_tools.sizing).
DEFAULT_SWAP_HEADROOM = 0.3
# Below this many bytes of full vectors (~64k items at 3,984-d) a version loads whole before it answers: a first
# stage saves little time there, and small catalogs never see approximate scores.
DEFAULT_STAGE_ABOVE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class _State:
    """Everything one answer needs, swapped as a unit."""

    generation: int  # manifest generation this state follows (rollbacks raise it too)
    manifest_etag: str | None
    loaded: LoadedVersion | None
    deltas: dict[str, Delta]
    view: IndexView
    domain_entry: QueryDomainEntry | None = None  # the manifest's entry this state followed (loaded or not)
    query_domain: QueryDomain | None = None  # its reference, None when absent, another model's or unloadable

    @property
    def version(self) -> str | None:
        return self.loaded.entry.version if self.loaded else None


@dataclass
class CacheStats:
    """Counters for metrics and tests (how often each path ran)."""

    revalidations: int = 0
    not_modified: int = 0
    versions_loaded: int = 0
    deltas_fetched: int = 0
    refresh_errors: int = 0
    query_domains_loaded: int = 0
    full_vectors_loaded: int = 0  # second stages completed
    swaps_through_first_stage: int = 0  # swaps that let the old version go before the new one's chunks were in


class IndexCache:
    """A process-wide cache of the current index view.

    Parameters
    ----------
    store:
        Where the index lives.
    ttl_seconds:
        Revalidate the manifest and the deltas at most this often.
    clock:
        Monotonic seconds; injected by tests to step time.
    background:
        True (the query path): revalidate on a daemon thread and load new versions on another, so an
        answer waits at most ``refresh_wait_seconds`` for storage. False (tools, tests): inline.
    refresh_wait_seconds:
        How long the caller that triggers a background revalidation waits for it before answering
        from the cached view. The common refresh (a 304 and one LIST page) fits, so a photo uploaded
        a moment ago is found by the next search; a slow one (many delta pages, S3 hiccup) does not
        hold the answer up.
    swap_headroom:
        How much a new version may add beside the one in memory, as a share of its bytes, before the swap goes
        through the first stage instead (the old version released first): memory stays under 1 + this.
    staged:
        False for readers that must never see first-stage vectors (the profile stream stores item vectors):
        every version then loads whole before it answers.
    stage_above_bytes:
        Versions whose full vectors take at most this many bytes load whole before they answer.
    """

    def __init__(
        self,
        store: IndexStore,
        *,
        ttl_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
        refresh_wait_seconds: float = 0.25,
        swap_headroom: float = DEFAULT_SWAP_HEADROOM,
        staged: bool = True,
        stage_above_bytes: int = DEFAULT_STAGE_ABOVE_BYTES,
    ) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.background = background
        self.refresh_wait_seconds = refresh_wait_seconds
        self.swap_headroom = swap_headroom
        self.staged = staged
        self.stage_above_bytes = stage_above_bytes
        self.stats = CacheStats()
        self._clock = clock
        self._state: _State | None = None
        self._checked_at = float("-inf")
        self._refresh_lock = threading.Lock()  # one revalidation at a time; others answer from memory
        self._swap_lock = threading.Lock()  # guards compare-and-swap of _state
        self._loader: threading.Thread | None = None
        self._refresher: threading.Thread | None = None
        self._completer: threading.Thread | None = None
        self._shared_chunks: dict[str, memoryview] = {}  # old chunks a first-stage swap still shares

    # ---- public

    def view(self) -> IndexView:
        """The current view; revalidates first when the TTL has passed (unless someone else already is)."""
        if self._state is None:  # no local reference to a state: a swap during the wait below must free the old one
            with self._refresh_lock:
                if self._state is None:
                    self._checked_at = self._clock()
                    manifest, etag = self.store.read_manifest()
                    self._install(self._load(manifest, etag), only_if_newer=False)
            assert self._state is not None
            return self._state.view
        if self._clock() - self._checked_at >= self.ttl_seconds and self._refresh_lock.acquire(blocking=False):
            self._checked_at = self._clock()
            if self.background:
                refresher = threading.Thread(target=self._revalidate_and_release, name="index-refresh", daemon=True)
                self._refresher = refresher
                refresher.start()
                refresher.join(self.refresh_wait_seconds)
            else:
                self._revalidate_and_release()
        return self._state.view

    @property
    def version(self) -> str | None:
        """The version currently answering (None before the first compaction or the first view())."""
        return self._state.version if self._state else None

    @property
    def query_domain_entry(self) -> QueryDomainEntry | None:
        """The manifest's query-domain entry the current views follow (health, tests)."""
        return self._state.domain_entry if self._state else None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for a background revalidation and version load to finish (tests, shutdown). True when idle."""
        for attribute in ("_refresher", "_loader", "_loader", "_completer"):  # a refresh may start a load, and a
            thread = getattr(self, attribute)  # load the second stage
            if thread is not None:
                thread.join(timeout)
        return not any(t is not None and t.is_alive() for t in (self._refresher, self._loader, self._completer))

    # ---- internals

    def _revalidate_and_release(self) -> None:
        try:
            self._revalidate()
        except Exception:  # serving a slightly stale index beats failing the search
            self.stats.refresh_errors += 1
            log.warning("index revalidation failed; answering from the cached version", exc_info=True)
        finally:
            self._refresh_lock.release()

    def _revalidate(self) -> None:
        self.stats.revalidations += 1
        state = self._state
        assert state is not None
        try:
            manifest, etag = self.store.read_manifest(if_none_match_etag=state.manifest_etag)
        except NotModifiedError:
            self.stats.not_modified += 1
            manifest, etag = None, state.manifest_etag
        if manifest is not None:
            new_version = manifest.current.version if manifest.current else None
            if new_version != state.version or manifest.query_domain != state.domain_entry:
                self._start_load(manifest, etag)
            elif manifest.generation > state.generation:
                self._install(replace(state, generation=manifest.generation, manifest_etag=etag), only_if_newer=True)
        del state  # a load just started may install a first stage: the old version must not outlive it here
        self._refresh_deltas()

    def _refresh_deltas(self) -> None:
        """LIST the deltas; GET only unseen ones; rebuild the view only when the live set changed.

        The state is read after the LIST, not held across it: while a slow LIST waits, a swap through the first
        stage must be able to let the old version go before the new chunks arrive.
        """
        listing = self.store.list_deltas()
        state = self._state
        assert state is not None
        coverage = state.loaded.coverage if state.loaded else SnapshotCoverage(None)
        deltas = self.store.fetch_deltas(listing, coverage, known=state.deltas)
        self.stats.deltas_fetched += sum(1 for key in deltas if key not in state.deltas)
        if deltas.keys() == state.deltas.keys():
            return
        view = self.store.view_of(state.loaded, deltas.values(), query_domain=state.query_domain)
        with self._swap_lock:
            if self._state is state:  # a newer version swapped in meanwhile brings its own deltas
                self._state = replace(state, deltas=deltas, view=view)

    def _start_load(self, manifest: Manifest, etag: str | None) -> None:
        version = manifest.current.version if manifest.current else None
        if not self.background:
            self._install(self._load(manifest, etag), only_if_newer=True)
            return
        if self._loader is not None and self._loader.is_alive():
            return  # one load at a time; the next revalidation starts the next one if still needed

        def run() -> None:
            try:
                self._install(self._load(manifest, etag), only_if_newer=True)
            except Exception:
                self.stats.refresh_errors += 1
                log.warning("loading index version %s failed; keeping the current one", version, exc_info=True)

        self._loader = threading.Thread(target=run, name=f"index-load-{version}", daemon=True)
        self._loader.start()

    def _load(self, manifest: Manifest, etag: str | None) -> _State:
        """A whole state for ``manifest``: verified version files, its query domain, then the deltas its snapshot
        does not cover. What the current state already holds for the same version or entry is reused. A compact
        version may come back at its first stage; :meth:`_complete` brings its full vectors."""
        current = self._state
        if current is not None and current.version == (manifest.current.version if manifest.current else None):
            loaded = current.loaded
        else:
            loaded = self._load_version(manifest.current, current) if manifest.current else None
            self.stats.versions_loaded += 1 if loaded else 0
        if current is not None and current.domain_entry == manifest.query_domain:
            domain = current.query_domain
        else:
            domain = self.store.queries.query_domain_of(manifest)
            self.stats.query_domains_loaded += 1 if domain is not None else 0
        known = current.deltas if current else {}
        coverage = loaded.coverage if loaded else SnapshotCoverage(None)
        deltas = self.store.fetch_deltas(self.store.list_deltas(), coverage, known=known)
        self.stats.deltas_fetched += sum(1 for key in deltas if key not in known)
        view = self.store.view_of(loaded, deltas.values(), query_domain=domain)
        return _State(manifest.generation, etag, loaded, deltas, view, manifest.query_domain, domain)

    def _load_version(self, entry: VersionEntry, current: _State | None) -> LoadedVersion:
        """The version's first stage, plus its full vectors when they fit beside the version in memory.

        A cold start (nothing in memory) returns the first stage alone and answers from it at once. A swap shares
        every file the old version already holds (by sha256) and loads the rest too when that adds at most
        ``swap_headroom`` of the old version's bytes; otherwise it returns the first stage, and installing it lets
        the old version go before the chunks come. Either way :meth:`_complete` runs for a first stage.
        """
        from catalens.index.errors import CorruptIndexError
        from catalens.index.snapshot import Snapshot, SnapshotError

        held = current.loaded.reusable if current is not None and current.loaded is not None else {}
        files = self.store.fetch_version_files(entry, lambda name: not is_second_stage_file(name), reuse=held)
        try:
            snapshot = Snapshot.from_files(files, verify=False, first_stage=True)
        except SnapshotError as exc:
            raise CorruptIndexError(f"version {entry.version}: {exc}") from exc
        if len(snapshot) != entry.items:
            raise CorruptIndexError(f"version {entry.version}: {len(snapshot)} items, manifest says {entry.items}")
        loaded = LoadedVersion(entry=entry, snapshot=snapshot, files=files)
        if snapshot.complete:
            return loaded
        held_bytes = sum(len(view) for view in held.values())
        later = {name.rsplit("/", 1)[-1]: meta for name, meta in entry.files.items()}
        later = {name: meta for name, meta in later.items() if is_second_stage_file(name)}
        added = sum(len(view) for name, view in files.items() if _sha256(entry, name) not in held)
        added += sum(int(meta["size"]) for meta in later.values() if meta["sha256"] not in held)
        small = sum(int(meta["size"]) for name, meta in later.items() if is_chunk_file(name)) <= self.stage_above_bytes
        if not self.staged or small or (held_bytes and added <= self.swap_headroom * held_bytes):
            return self._with_full_vectors(loaded, held)
        if held_bytes:
            self.stats.swaps_through_first_stage += 1
        return loaded

    def _with_full_vectors(self, loaded: LoadedVersion, reuse: Mapping[str, memoryview]) -> LoadedVersion:
        chunks = self.store.fetch_version_files(loaded.entry, set(loaded.snapshot.second_stage_files()), reuse=reuse)
        snapshot = loaded.snapshot.with_full_vectors(chunks)
        self.stats.full_vectors_loaded += 1
        return LoadedVersion(entry=loaded.entry, snapshot=snapshot, files={**loaded.files, **chunks})

    def _complete(self, state: _State) -> None:
        """Bring the full vectors of a first-stage state (on a thread when ``background``), then swap them in."""
        loaded = state.loaded
        if loaded is None or loaded.snapshot.complete:
            return
        # Chunks the previous version held are shared when the sha256 matches; only those are kept alive here.
        reuse, self._shared_chunks = self._shared_chunks, {}

        def run() -> None:
            try:
                full = self._with_full_vectors(loaded, reuse)
            except Exception:
                self.stats.refresh_errors += 1
                log.warning(
                    "loading the full vectors of %s failed; answering from its first stage",
                    loaded.entry.version,
                    exc_info=True,
                )
                return
            with self._swap_lock:
                now = self._state
                if now is None or now.loaded is not loaded:
                    return  # another version came meanwhile
                view = self.store.view_of(full, now.deltas.values(), query_domain=now.query_domain)
                self._state = replace(now, loaded=full, view=view)

        if not self.background:
            run()
            return
        self._completer = threading.Thread(target=run, name=f"index-full-{loaded.entry.version}", daemon=True)
        self._completer.start()

    def _install(self, new: _State, *, only_if_newer: bool) -> _State:
        with self._swap_lock:
            current = self._state
            if only_if_newer and current is not None and new.generation < current.generation:
                return current
            if current is not None:
                new = _carry_newer_deltas(current, new, self.store)
                if new.loaded is not None and not new.loaded.snapshot.complete and current.loaded is not None:
                    # keep only the old chunks the new version shares; the rest goes with the old state
                    wanted = {meta["sha256"] for meta in new.loaded.entry.files.values()}
                    self._shared_chunks = {sha: view for sha, view in current.loaded.reusable.items() if sha in wanted}
            self._state = new
        complete = (
            new.loaded is not None
            and not new.loaded.snapshot.complete
            and (current is None or current.loaded is not new.loaded)
        )
        del current  # not held while the second stage starts: its chunks may arrive before this frame returns
        if complete:
            self._complete(new)
        return new


def _carry_newer_deltas(current: _State, new: _State, store: IndexStore) -> _State:
    """A version load LISTed the deltas before it installs; a revalidation meanwhile may have found newer
    ones. Keep those the new version does not cover, so a photo once found does not vanish for a TTL."""
    extra = {key: delta for key, delta in current.deltas.items() if key not in new.deltas}
    if not extra:
        return new
    coverage = new.loaded.coverage if new.loaded else SnapshotCoverage(None)
    keys = list(extra)
    covered = coverage.covers([DeltaKey.of(extra[key].record) for key in keys])
    kept = {key: extra[key] for key, done in zip(keys, covered, strict=True) if not done}
    if not kept:
        return new
    deltas = {**new.deltas, **kept}
    return replace(new, deltas=deltas, view=store.view_of(new.loaded, deltas.values(), query_domain=new.query_domain))


def _sha256(entry: VersionEntry, name: str) -> str | None:
    meta = entry.files.get(SNAPSHOT_DIR + name)
    return meta["sha256"] if meta else None
