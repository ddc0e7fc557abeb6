"""The vector index: snapshot format, numpy search, delta merge, and the builder.

Everything importable from here needs numpy alone, so the query path never loads a graph library:
faiss and scipy (or pynndescent, on request) are imported inside :mod:`catalens.index.build` only
while a graph is being built.
"""

from catalens.index.build import BuildParams, build_snapshot
from catalens.index.filters import Filter, FilterError
from catalens.index.records import Hit, IndexedItem, ItemRecord, sequencer_key
from catalens.index.snapshot import Snapshot, SnapshotError
from catalens.index.view import IndexView, SearchParams

__all__ = [
    "BuildParams",
    "Filter",
    "FilterError",
    "Hit",
    "IndexView",
    "IndexedItem",
    "ItemRecord",
    "SearchParams",
    "Snapshot",
    "SnapshotError",
    "build_snapshot",
    "sequencer_key",
]
