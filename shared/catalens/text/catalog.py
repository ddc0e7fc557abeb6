"""Text search over an index version: the snapshot's lexical index beside its vectors, fresh items scored exactly.

A snapshot is immutable, so its :class:`~catalens.text.lexical.LexicalIndex` is made once per snapshot object and
shared by every view over it (views change with each new delta; the snapshot does not). Items the deltas added or
changed are few (the builder folds them in within minutes), so they are scored one by one against the snapshot's
statistics, like the vector side searches them exactly (docs/design.md, invariant 3).

The lexical index is built from the snapshot's own records the first time a text query needs it, on the thread
that asks (about 1 s per 100k items; ``catalens bench search --text`` reports it); docs/design.md, "Words", says
why it is not yet stored beside the vectors.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from catalens.text.lexical import LexicalIndex, item_terms

_built: weakref.WeakKeyDictionary[Any, LexicalIndex] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def snapshot_text_index(snapshot: Any, documents: Callable[[], Iterable[Mapping[str, Any]]]) -> LexicalIndex:
    """The lexical index of ``snapshot`` (built from ``documents()``, its rows' fields in row order, once)."""
    with _lock:
        index = _built.get(snapshot)
        if index is None:
            index = LexicalIndex.build(documents())
            _built[snapshot] = index
        return index


def fresh_scores(index: LexicalIndex | None, terms: list[str], fields: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """BM25 scores of fresh items (not in the snapshot) as if they were, from their fields."""
    counts = [item_terms(f) for f in fields]
    if index is None or not len(index):
        index = LexicalIndex.from_term_counts(counts)  # no snapshot: the fresh items are the collection
    return np.asarray([index.score_counts(terms, c) for c in counts], dtype=np.float32)
