"""The collaborative signal: item-to-item co-engagement counts from shoppers' histories.

When a shopper engages (click, add to cart, purchase) with item B, B is paired with the
shopper's other engaged items of the last days (see ``Profile.engaged_partners``) and each
pair's count grows by one in both directions. ``neighbours(B)`` turns B's row into a smoothed
conditional probability ``P(C | B) = count(B, C) / (Σ_C' count(B, C') + prior)``: shoppers who
engaged with B also engaged with C. The profile folds those neighbours into its ``cooc`` scores,
so the search side needs no extra read.

Privacy: the counts are anonymous aggregates — no row names a user, so erasing a profile leaves
nothing in this table from which that user's contributions could be recovered.

This module is AWS-free; :class:`CooccurrenceCounts` is the in-memory store (tests, simulation),
``catalens.adapters.dynamodb.DynamoCooccurrenceStore`` the DynamoDB one.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping

DEFAULT_PRIOR = 5.0  # pseudo-count: an item seen in 2 pairs should not claim P = 1 for its partners
DEFAULT_NEIGHBOURS = 50


def pair_updates(item_id: str, partners: Iterable[str]) -> list[tuple[str, str]]:
    """Both directions of every (item, partner) pair, without self-pairs or repeats."""
    updates: list[tuple[str, str]] = []
    seen: set[str] = set()
    for partner in partners:
        if partner == item_id or partner in seen:
            continue
        seen.add(partner)
        updates += [(item_id, partner), (partner, item_id)]
    return updates


def conditional_probabilities(
    row: Mapping[str, float], *, prior: float = DEFAULT_PRIOR, limit: int = DEFAULT_NEIGHBOURS
) -> dict[str, float]:
    """``P(C | B)`` for the ``limit`` strongest partners C of one item's count row, smoothed by ``prior``."""
    total = sum(row.values()) + prior
    if total <= 0:
        return {}
    strongest = sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return {other: count / total for other, count in strongest if count > 0}


class CooccurrenceCounts:
    """In-memory, thread-safe co-occurrence counts with the same semantics as the DynamoDB store."""

    def __init__(self, *, prior: float = DEFAULT_PRIOR, limit: int = DEFAULT_NEIGHBOURS) -> None:
        self._rows: dict[str, dict[str, float]] = defaultdict(dict)
        self._lock = threading.Lock()
        self.prior = prior
        self.limit = limit

    def add(self, updates: Iterable[tuple[str, str]], amount: float = 1.0) -> None:
        with self._lock:
            for item_id, other in updates:
                row = self._rows[item_id]
                row[other] = row.get(other, 0.0) + amount

    def count(self, item_id: str, other: str) -> float:
        with self._lock:
            return self._rows.get(item_id, {}).get(other, 0.0)

    def neighbours(self, item_id: str) -> dict[str, float]:
        with self._lock:
            row = dict(self._rows.get(item_id, {}))
        return conditional_probabilities(row, prior=self.prior, limit=self.limit)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(row) for row in self._rows.values())
