"""In-memory :class:`~catalens.ports.ProfileStore` with the DynamoDB store's semantics (tests, simulation, local runs).

Profiles are kept as serialised items, so every read and write goes through the same codec as
the DynamoDB adapter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from catalens.cooccurrence import CooccurrenceCounts
from catalens.ports import ProfileConflictError
from catalens.profiles.profile import RANKING_ATTRIBUTES, Profile


class InMemoryProfileStore:
    """Thread-safe; ``save`` is conditional on the version like a DynamoDB conditional write."""

    def __init__(
        self,
        cooccurrence: CooccurrenceCounts | None = None,
        *,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._items: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.cooccurrence = cooccurrence
        self.clock_ms = clock_ms

    def load(self, user_id: str) -> Profile | None:
        with self._lock:
            item = self._items.get(user_id)
        return None if item is None else Profile.from_item(item)

    def load_for_ranking(self, user_id: str) -> Profile | None:
        with self._lock:
            item = self._items.get(user_id)
        if item is None:
            return None
        return Profile.from_item({k: v for k, v in item.items() if k in RANKING_ATTRIBUTES})

    get = load_for_ranking

    def get_async(self, user_id: str) -> Future[Profile | None]:
        """The ranking read as an already-completed future (what the search service calls; nothing to overlap)."""
        future: Future[Profile | None] = Future()
        try:
            future.set_result(self.load_for_ranking(user_id))
        except Exception as exc:  # delivered by .result(), like the DynamoDB store's background read
            future.set_exception(exc)
        return future

    def save(self, profile: Profile, *, expected_version: int, pairs: Sequence[tuple[str, str]] = ()) -> None:
        with self._lock:
            current = self._items.get(profile.user_id)
            current_version = 0 if current is None else int(current["version"])
            if current_version != expected_version:
                raise ProfileConflictError(
                    f"profile of {profile.user_id!r} is at version {current_version}, not {expected_version}"
                )
            item = profile.to_item()
            item["version"] = expected_version + 1
            self._items[profile.user_id] = item
            if pairs and self.cooccurrence is not None:
                self.cooccurrence.add(pairs)
        profile.version = expected_version + 1

    def delete(self, user_id: str) -> bool:
        """Erase the profile, leaving a tombstone so older (late) events cannot rebuild it; True if it had content."""
        with self._lock:
            current = self._items.get(user_id)
            version = 0 if current is None else int(current["version"])
            last_ms = 0 if current is None else int(current.get("last_ms", 0))
            erased_at = max(self.clock_ms(), last_ms, 0 if current is None else int(current.get("erased_at", 0)))
            item = Profile.erased(user_id, erased_at_ms=erased_at).to_item()
            item["version"] = version + 1
            self._items[user_id] = item
        return current is not None and not Profile.from_item(current).is_empty

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
