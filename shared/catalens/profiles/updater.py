"""Apply one stream event to the stored profile: the domain function behind the profile Lambda.

Concurrency: read the profile with its ``version``, apply the event, write back on the condition
that ``version`` is unchanged (a :class:`~catalens.ports.ProfileStore` raises
:class:`~catalens.ports.ProfileConflictError` otherwise) and start
again from a fresh read. Two updaters of one user therefore never lose an event; a duplicate
delivery finds the event already applied and writes nothing.

The co-occurrence pairs of the event are written in the same conditional write (one DynamoDB
transaction), so they are counted exactly once too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from catalens.cooccurrence import pair_updates
from catalens.ports import CooccurrenceSource, IndexReader, ProfileConflictError, ProfileStore
from catalens.profiles.events import ENGAGED_TYPES, ShopperEvent
from catalens.profiles.profile import DEFAULT_PARAMS, ProfileParams, apply_event

ItemLookup = Callable[[str], tuple[np.ndarray | None, Mapping[str, Any]] | None]
"""``lookup(item_id) -> (index-space vector or None, product fields)``, or None for an unknown item."""


def index_lookup(current_view: Callable[[], IndexReader]) -> ItemLookup:
    """The production :data:`ItemLookup`: the item's index-space vector and fields from the current index view.

    ``current_view`` is e.g. ``IndexCache.view`` (revalidated every few seconds, so new items are found).
    """

    def lookup(item_id: str) -> tuple[np.ndarray | None, Mapping[str, Any]] | None:
        item = current_view().get(item_id)
        return None if item is None else (item.vector, item.fields)

    return lookup


@dataclass
class ProfileUpdater:
    """Reads, applies and conditionally writes; retries with jittered backoff on a lost race."""

    store: ProfileStore
    lookup: ItemLookup
    cooccurrence: CooccurrenceSource | None = None
    params: ProfileParams = DEFAULT_PARAMS
    max_attempts: int = 10
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    space: Callable[[], str] | None = None  # names the index space of looked-up vectors (IndexReader.index_space)

    def handle(self, event: ShopperEvent) -> str:
        """Apply ``event`` to its user's stored profile; returns the outcome ("applied", "duplicate", ...)."""
        found = self.lookup(event.item_id)
        vector, fields = found if found is not None else (None, None)
        space = self.space() if self.space is not None and vector is not None else ""
        neighbours = None
        if self.cooccurrence is not None and event.type in ENGAGED_TYPES:
            neighbours = self.cooccurrence.neighbours(event.item_id)
        for attempt in range(self.max_attempts):
            current = self.store.load(event.user_id)
            result = apply_event(current, event, vector, fields, params=self.params, neighbours=neighbours, space=space)
            if result.outcome != "applied":
                return result.outcome
            pairs: list[tuple[str, str]] = []
            if self.cooccurrence is not None and current is not None:
                pairs = pair_updates(event.item_id, current.engaged_partners(event, self.params))
            try:
                self.store.save(result.profile, expected_version=current.version if current else 0, pairs=pairs)
            except ProfileConflictError:
                self.sleep(min(0.2, 0.005 * 2**attempt) * self.rng.random())
                continue
            return "applied"
        raise ProfileConflictError(
            f"profile of {event.user_id!r} kept changing; gave up after {self.max_attempts} attempts"
        )
