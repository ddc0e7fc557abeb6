"""The unit of change of the index: one item's latest state, and one search result.

Ingest writes an :class:`ItemRecord` per S3 event (a delta); the builder folds deltas into a
snapshot; the query side answers with :class:`Hit`. Both sides order the states of one item by
the S3 event ``sequencer``, compared with :func:`sequencer_key`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_HEX_DIGITS = frozenset(string.hexdigits)


@dataclass(frozen=True)
class ItemRecord:
    """One item's latest state, as written by ingest (a delta entry).

    ``vector`` is in MODEL space (unreduced, float32[d]); it is None for a tombstone
    (``deleted=True``). ``sequencer`` orders a create and a delete of the same key.
    """

    item_id: str
    vector: np.ndarray | None
    fields: dict[str, Any]
    image_key: str
    source_etag: str
    sequencer: str
    deleted: bool = False
    updated_at: float = 0.0


@dataclass
class Hit:
    """One search result; ``score`` is cosine similarity (higher is better)."""

    item_id: str
    score: float
    fields: dict[str, Any]
    image_key: str
    vector: np.ndarray | None = None  # index-space vector of the hit, for re-ranking (MMR, profile term)
    explain: dict[str, float] = field(default_factory=dict)


def sequencer_key(seq: str) -> tuple[int, str]:
    """Sort key for S3 event sequencers.

    AWS: sequencers of the same key compare as hex strings after padding the shorter one with
    leading zeros. Stripping leading zeros and ordering by (length, digits) is the same order for
    any length, without choosing a pad width.

    >>> sequencer_key("0A") < sequencer_key("00FF") < sequencer_key("100")
    True
    """
    digits = seq.strip().lower().lstrip("0")
    if not all(ch in _HEX_DIGITS for ch in digits):
        raise ValueError(f"S3 sequencer must be hexadecimal, got {seq!r}")
    return (len(digits), digits)


def is_newer(candidate: ItemRecord, current: ItemRecord | None) -> bool:
    """True when ``candidate`` supersedes ``current`` (a later sequencer; on a tie, a tombstone wins).

    A tie on the sequencer means the same event delivered twice, or a snapshot row and the delta
    it came from; letting the delete win on a tie keeps a deleted item deleted.
    """
    if current is None:
        return True
    new_key, old_key = sequencer_key(candidate.sequencer), sequencer_key(current.sequencer)
    if new_key != old_key:
        return new_key > old_key
    return candidate.deleted and not current.deleted


@dataclass(frozen=True)
class IndexedItem:
    """An item as the index holds it: like :class:`ItemRecord`, but ``vector`` is in INDEX space.

    Returned by ``IndexView.get``; ``deleted`` is always False (deleted items are not returned).
    """

    item_id: str
    vector: np.ndarray
    fields: dict[str, Any]
    image_key: str
    source_etag: str
    sequencer: str
    updated_at: float = 0.0
    deleted: bool = False
