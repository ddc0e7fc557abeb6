"""Text search over an index version: the snapshot's lexical index beside its vectors, fresh items scored exactly.

A snapshot is immutable, so its :class:`~catalens.text.lexical.LexicalIndex` is made once per snapshot and shared by
every view over it (views change with each new delta; the snapshot does not). It is keyed by the snapshot's record
table rather than the snapshot object: a staged load swaps in a second snapshot object with the same records once
the full vectors arrive, and that must not build the index again. Items the deltas added or changed are few (the builder
folds them in within minutes), so they are scored one by one against the snapshot's statistics, like the vector
side searches them exactly (docs/design.md, invariant 3).

The lexical index is built from the snapshot's own records the first time a text query needs it, on the thread
that asks (about 5 s per 100k items); a build of one snapshot never holds up queries on another whose index is
built. docs/design.md, "Words", says why it is not yet stored beside the vectors.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from catalens.text.lexical import LexicalIndex, item_terms

# Keyed by the snapshot's record table (compared by identity): a staged load's second snapshot object shares it.
_built: weakref.WeakKeyDictionary[Any, LexicalIndex] = weakref.WeakKeyDictionary()
_building: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def built_index(snapshot: Any) -> LexicalIndex | None:
    """The snapshot's lexical index if it has been built (tests, health)."""
    return _built.get(snapshot.records)


def snapshot_text_index(snapshot: Any, documents: Callable[[], Iterable[Mapping[str, Any]]]) -> LexicalIndex:
    """The lexical index of ``snapshot`` (built from ``documents()``, its rows' fields in row order, once)."""
    key = snapshot.records
    index = _built.get(key)
    if index is not None:
        return index
    with _lock:
        building = _building.setdefault(key, threading.Lock())
    with building:  # one build per snapshot; queries on other snapshots go on
        index = _built.get(key)
        if index is None:
            index = LexicalIndex.build(documents())
            with _lock:
                _built[key] = index
    return index


def fresh_scores(index: LexicalIndex | None, terms: list[str], fields: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """BM25 scores of fresh items (not in the snapshot) as if they were, from their fields."""
    counts = [item_terms(f) for f in fields]
    if index is None or not len(index):
        index = LexicalIndex.from_term_counts(counts)  # no snapshot: the fresh items are the collection
    return np.asarray([index.score_counts(terms, c) for c in counts], dtype=np.float32)
