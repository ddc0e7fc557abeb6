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

The query-domain reference the manifest names is loaded the same way (by the loader thread, verified against its
sha256) when the manifest's entry changes, and handed to every view. A missing or corrupt reference is logged and
the views go without it: calibration is an optimisation, never a reason for a search to fail.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from catalens.index.deltas import Delta, DeltaKey, SnapshotCoverage
from catalens.index.manifest import Manifest, QueryDomainEntry
from catalens.index.store import IndexStore, LoadedVersion, make_view
from catalens.ports import NotModifiedError

if TYPE_CHECKING:
    from catalens.index.view import IndexView
    from catalens.query_domain import QueryDomain

log = logging.getLogger(__name__)


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
    """

    def __init__(
        self,
        store: IndexStore,
        *,
        ttl_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
        refresh_wait_seconds: float = 0.25,
    ) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.background = background
        self.refresh_wait_seconds = refresh_wait_seconds
        self.stats = CacheStats()
        self._clock = clock
        self._state: _State | None = None
        self._checked_at = float("-inf")
        self._refresh_lock = threading.Lock()  # one revalidation at a time; others answer from memory
        self._swap_lock = threading.Lock()  # guards compare-and-swap of _state
        self._loader: threading.Thread | None = None
        self._refresher: threading.Thread | None = None

    # ---- public

    def view(self) -> IndexView:
        """The current view; revalidates first when the TTL has passed (unless someone else already is)."""
        state = self._state
        if state is None:
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
        for thread in (self._refresher, self._loader, self._loader):  # a refresh may start a load
            if thread is not None:
                thread.join(timeout)
        return not any(t is not None and t.is_alive() for t in (self._refresher, self._loader))

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
                state = self._install(
                    replace(state, generation=manifest.generation, manifest_etag=etag), only_if_newer=True
                )
        self._refresh_deltas(state)

    def _refresh_deltas(self, state: _State) -> None:
        """LIST the deltas; GET only unseen ones; rebuild the view only when the live set changed."""
        coverage = state.loaded.coverage if state.loaded else SnapshotCoverage(None)
        deltas = self.store.fetch_deltas(self.store.list_deltas(), coverage, known=state.deltas)
        self.stats.deltas_fetched += sum(1 for key in deltas if key not in state.deltas)
        if deltas.keys() == state.deltas.keys():
            return
        view = make_view(state.loaded, deltas.values(), query_domain=state.query_domain)
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
        does not cover. What the current state already holds for the same version or entry is reused."""
        current = self._state
        if current is not None and current.version == (manifest.current.version if manifest.current else None):
            loaded = current.loaded
        else:
            loaded = self.store.load_version(manifest.current) if manifest.current else None
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
        view = make_view(loaded, deltas.values(), query_domain=domain)
        return _State(manifest.generation, etag, loaded, deltas, view, manifest.query_domain, domain)

    def _install(self, new: _State, *, only_if_newer: bool) -> _State:
        with self._swap_lock:
            current = self._state
            if only_if_newer and current is not None and new.generation < current.generation:
                return current
            if current is not None:
                new = _carry_newer_deltas(current, new)
            self._state = new
            return new


def _carry_newer_deltas(current: _State, new: _State) -> _State:
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
    return replace(new, deltas=deltas, view=make_view(new.loaded, deltas.values(), query_domain=new.query_domain))
