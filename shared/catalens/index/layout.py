"""Where the index's objects live under the store prefix, and the conventions every writer of them shares.

Layout under ``prefix``::

    manifest.json                                   the one mutable object: names the current version
    versions/<version>/snapshot/<file>              Snapshot.to_files(), immutable, written before the manifest
    versions/<version>/ledger.json                  per item: the (sequencer, deleted) the version holds (for GC)
    deltas/<item-id>/<sequencer>-<put|del>-<event-hash>.json   one per S3 event, written by ingest
    queries/samples/<fingerprint[:16]>/<YYYY-MM-DD>/<unix-ms>-<uuid4hex>.npy   raw query embeddings (float16), search
    queries/reference/<sha256[:24]>.npz             a query-domain reference (immutable), named by the manifest

Readers of one release load what another wrote (a rollback loads an older builder's version), so these names and
the JSON written beside them are a format: ``tests/unit/test_index_format.py`` pins them byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from catalens.ports import BlobNotFoundError, BlobStore

FORMAT = 1  # of the manifest, the ledgers and the deltas
MANIFEST_NAME = "manifest.json"
VERSIONS_DIR = "versions/"
DELTAS_DIR = "deltas/"
SNAPSHOT_DIR = "snapshot/"
LEDGER_NAME = "ledger.json"
QUERIES_DIR = "queries/"
QUERY_SAMPLES_DIR = QUERIES_DIR + "samples/"
QUERY_REFERENCE_DIR = QUERIES_DIR + "reference/"


def iso_time(ts: float) -> str:
    """A unix time as the manifest writes it (UTC, milliseconds)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def fetch_all(blob: BlobStore, keys: Mapping[str, str], *, workers: int) -> dict[str, bytes | None]:
    """GET many keys in parallel (S3 latency, not CPU, is the limit); a missing key maps to None."""

    def fetch(key: str) -> bytes | None:
        try:
            return blob.get(key).data
        except BlobNotFoundError:
            return None

    names = list(keys)
    if len(names) <= 2 or workers == 1:
        return {name: fetch(keys[name]) for name in names}
    with ThreadPoolExecutor(max_workers=min(workers, len(names))) as pool:
        return dict(zip(names, pool.map(fetch, [keys[n] for n in names]), strict=True))
