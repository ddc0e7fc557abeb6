"""Shopper profiles: events in, decayed preferences and statistics out (AWS-free).

- :mod:`catalens.profiles.events` — the events-table item shape and its validation.
- :mod:`catalens.profiles.profile` — :class:`Profile` and :func:`apply_event` (decay, idempotency, erasure).
- :mod:`catalens.profiles.updater` — read / apply / conditional write, retried on a lost race.
- :class:`catalens.ports.ProfileStore` — where profiles live (the port; ``ProfileConflictError`` is re-exported here).
- :mod:`catalens_tools.in_memory.profiles` — the in-memory store; the DynamoDB one is in ``catalens.adapters.dynamodb``.
"""

from catalens.ports import ProfileConflictError
from catalens.profiles.events import (
    EVENT_TYPES,
    ShopperEvent,
    ShopperEventError,
    event_from_item,
    event_from_stream_image,
    event_key,
)
from catalens.profiles.profile import (
    DEFAULT_PARAMS,
    RANKING_ATTRIBUTES,
    Applied,
    Profile,
    ProfileParams,
    apply_event,
    replay,
)
from catalens.profiles.updater import ItemLookup, ProfileUpdater, index_lookup

__all__ = [
    "DEFAULT_PARAMS",
    "EVENT_TYPES",
    "RANKING_ATTRIBUTES",
    "Applied",
    "ItemLookup",
    "Profile",
    "ProfileConflictError",
    "ProfileParams",
    "ProfileUpdater",
    "ShopperEvent",
    "ShopperEventError",
    "apply_event",
    "event_from_item",
    "event_from_stream_image",
    "event_key",
    "index_lookup",
    "replay",
]
