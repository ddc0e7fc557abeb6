"""Concurrency of the index protocol against moto S3 (DESIGN invariants 1 and 2).

16 threads ingest 1,000 items — creates, overwrites, deletes and re-uploads, each event delivered
once or more, all deliveries shuffled — while a builder compacts twice and two readers watch: one
loads every published version whole and cross-checks it, one serves from an IndexCache. At the end
the live view, and the index after a last compaction and a GC, must hold exactly what S3 holds.
"""

from __future__ import annotations

import hashlib
import json
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from catalens.adapters.s3 import S3BlobStore
from catalens.index.cache import IndexCache
from catalens.index.deltas import SnapshotCoverage
from catalens.index.manifest import RetryPolicy
from catalens.index.records import ItemRecord, sequencer_key
from catalens.index.store import IndexStore

N_ITEMS = 1000
THREADS = 16
DIM = 32
FINGERPRINT = "concurrency-test-model"


def vector_for(item_id: str, etag: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(f"{item_id}|{etag}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


@dataclass(frozen=True)
class Event:
    """One S3 notification: ObjectCreated (etag set) or ObjectRemoved (etag None)."""

    item_id: str
    sequencer: str
    etag: str | None

    def record(self) -> ItemRecord:
        if self.etag is None:
            return ItemRecord(self.item_id, None, {}, f"catalog/{self.item_id}.jpg", "", self.sequencer, deleted=True)
        return ItemRecord(
            item_id=self.item_id,
            vector=vector_for(self.item_id, self.etag),
            fields={"title": f"product {self.item_id}", "etag": self.etag},
            image_key=f"catalog/{self.item_id}.jpg",
            source_etag=self.etag,
            sequencer=self.sequencer,
        )


def make_events(rng: random.Random) -> list[Event]:
    """Per item a short history (create / overwrite / delete / re-upload), with S3-like sequencers.

    Sequencers grow with a global clock (histories of different items interleave in time) and are
    written with varying zero padding, as S3's are only comparable after padding.
    """
    scripts = []
    for n in range(N_ITEMS):
        roll = rng.random()
        if roll < 0.45:
            script = ["e1"]
        elif roll < 0.65:
            script = ["e1", "e2"]
        elif roll < 0.80:
            script = ["e1", None]
        elif roll < 0.92:
            script = ["e1", None, "e1"]  # the same bytes uploaded again after a delete
        else:
            script = ["e1", "e2", None]
        scripts.append((f"sku-{n:04d}/front", script))
    events = []
    clock = 0x0062E99A88DC407000
    for step in range(3):
        for item_id, script in scripts:
            if step < len(script):
                clock += rng.randint(1, 4096)
                digits = f"{clock:X}".lstrip("0")
                padded = "0" * rng.randint(0, 3) + digits
                events.append(Event(item_id, padded, script[step]))
    return events


def final_s3_state(events: list[Event]) -> dict[str, str]:
    latest: dict[str, Event] = {}
    for event in events:
        current = latest.get(event.item_id)
        if current is None or sequencer_key(event.sequencer) > sequencer_key(current.sequencer):
            latest[event.item_id] = event
    return {item_id: e.etag for item_id, e in latest.items() if e.etag is not None}


def view_state(view: Any, etags_of: dict[str, set[str]]) -> dict[str, str]:
    """item → source ETag as the view answers; asserts no duplicates and no phantom ETags on the way."""
    if len(view) == 0:
        return {}
    hits = view.search(np.ones(DIM, dtype=np.float32), k=len(view) + 50, strategy="exact")
    ids = [hit.item_id for hit in hits]
    assert len(ids) == len(set(ids)), "an item was returned twice"
    assert len(ids) == len(view), "search and len disagree"
    state = {}
    for hit in hits:
        etag = hit.fields["etag"]
        assert etag in etags_of.get(hit.item_id, set()), f"phantom: {hit.item_id} never had a photo {etag}"
        state[hit.item_id] = etag
    return state


@pytest.mark.slow
def test_concurrent_ingest_compaction_and_readers_lose_nothing(s3_client: Any, s3_bucket: str) -> None:
    rng = random.Random(20240531)
    events = make_events(rng)
    deliveries = [e for e in events for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1))]
    rng.shuffle(deliveries)
    expected = final_s3_state(events)
    etags_of: dict[str, set[str]] = {}
    for event in events:
        if event.etag is not None:
            etags_of.setdefault(event.item_id, set()).add(event.etag)

    blob = S3BlobStore(s3_client, s3_bucket)
    store = IndexStore(blob, "index/", retry=RetryPolicy(attempts=20, base_delay=0.01))
    work: queue.Queue[Event | None] = queue.Queue()
    for delivery in deliveries:
        work.put(delivery)
    for _ in range(THREADS):
        work.put(None)

    done = threading.Event()
    delivered = 0
    progress = threading.Condition()
    errors: list[str] = []
    written = [0]
    compactions: list[dict[str, Any]] = []
    versions_seen: set[str] = set()
    cache_views = [0]

    def ingest() -> None:
        nonlocal delivered
        try:
            while (event := work.get()) is not None:
                if event.etag is None:
                    new = store.delete_item(event.item_id, sequencer=event.sequencer)
                else:
                    new = store.write_item(event.record(), model_fingerprint=FINGERPRINT)
                with progress:
                    delivered += 1
                    written[0] += int(new)
                    progress.notify_all()
        except Exception as exc:
            errors.append(f"ingest: {exc!r}")

    def builder() -> None:
        try:
            for fraction in (1 / 3, 2 / 3):
                with progress:
                    progress.wait_for(lambda f=fraction: delivered >= f * len(deliveries) or bool(errors))
                started = time.perf_counter()
                result = store.compact(model_fingerprint=FINGERPRINT)
                compactions.append(
                    {"version": result.version, "items": result.items, "seconds": time.perf_counter() - started}
                )
        except Exception as exc:
            errors.append(f"builder: {exc!r}")

    def version_reader() -> None:
        """Loads whatever the manifest names, whole, and cross-checks it against its own ledger."""
        try:
            while not done.is_set():
                manifest, _ = store.read_manifest()
                if manifest.current is None:
                    time.sleep(0.02)
                    continue
                loaded = store.load_version(manifest.current)  # verifies every file's sha256 and the count
                ids = loaded.snapshot.item_ids.astype(str).tolist()
                if len(ids) != manifest.current.items or len(set(ids)) != len(ids):
                    errors.append(f"version {manifest.current.version} has {len(ids)} rows, some repeated")
                ledger_live = store.load_ledger(manifest.current).live_item_ids()
                if ledger_live != set(ids):
                    errors.append(f"version {manifest.current.version}: snapshot and ledger disagree")
                versions_seen.add(manifest.current.version)
        except Exception as exc:
            errors.append(f"version reader: {exc!r}")

    cache = IndexCache(store, ttl_seconds=0.05, background=True)

    def cache_reader() -> None:
        """What the search Lambda sees: every view consistent, never a mix of versions."""
        try:
            while not done.is_set():
                view = cache.view()
                view_state(view, etags_of)  # no duplicates, no phantom photos
                if view.snapshot is not None:
                    entry = store.read_manifest()[0].find(view.snapshot.version)
                    if entry is None or entry.items != len(view.snapshot):
                        errors.append(f"cache serves {view.snapshot.version}, not a whole published version")
                cache_views[0] += 1
                time.sleep(0.01)  # a request rate, not a busy loop starving the ingest threads of the GIL
        except Exception as exc:
            errors.append(f"cache reader: {exc!r}")

    started = time.perf_counter()
    workers = [threading.Thread(target=ingest, name=f"ingest-{i}") for i in range(THREADS)]
    watchers = [threading.Thread(target=f, name=f.__name__) for f in (builder, version_reader, cache_reader)]
    for thread in workers + watchers:
        thread.start()
    for thread in [*workers, watchers[0]]:
        thread.join(timeout=300)
    ingest_seconds = time.perf_counter() - started
    done.set()
    for thread in watchers[1:]:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in workers + watchers), "a thread hung"
    assert errors == []
    assert len(compactions) == 2
    # One delta object per distinct event, whatever the number of deliveries. (moto checks If-None-Match
    # and then writes without a lock, so two racing twins can both "win" there, writing identical bytes
    # to the same key; real S3 answers the loser 412 or 409. Sequential duplicates: see the S3 tests.)
    assert len(store.list_deltas()) == len(events)
    assert len(events) <= written[0] < len(deliveries)

    # The live view (snapshot of the second compaction + the deltas after it) is the S3 state.
    live = store.load_view()
    assert view_state(live, etags_of) == expected
    assert store.fetch_deltas(store.list_deltas(), SnapshotCoverage(live.snapshot)), "some deltas were live"
    time.sleep(0.1)
    cache.view()
    assert cache.wait_idle(30)
    time.sleep(0.1)
    assert view_state(cache.view(), etags_of) == expected

    # A last compaction folds everything in; the snapshot alone now is the S3 state.
    t0 = time.perf_counter()
    final = store.compact(model_fingerprint=FINGERPRINT)
    final_seconds = time.perf_counter() - t0
    manifest, _ = store.read_manifest()
    assert manifest.generation == 3
    snapshot = store.load_version(manifest.current).snapshot
    assert {snapshot.item(row).item_id: snapshot.item(row).source_etag for row in range(len(snapshot))} == expected
    assert len(snapshot) == final.items == len(expected)
    assert store.compact(model_fingerprint=FINGERPRINT).noop
    assert view_state(store.load_view(), etags_of) == expected

    gc = store.gc(grace_seconds=-5)
    assert view_state(store.load_view(), etags_of) == expected
    assert gc.deltas_deleted > 0

    print(
        "\nconcurrency:",
        json.dumps(
            {
                "items": N_ITEMS,
                "events": len(events),
                "deliveries": len(deliveries),
                "threads": THREADS,
                "ingest_and_two_compactions_s": round(ingest_seconds, 2),
                "compactions_s": [round(c["seconds"], 2) for c in compactions],
                "final_compaction_s": round(final_seconds, 2),
                "versions_seen_by_reader": len(versions_seen),
                "cache_views": cache_views[0],
                "gc": {"deltas_deleted": gc.deltas_deleted, "deltas_kept": gc.deltas_kept},
            }
        ),
    )
