"""A shopper's profile: what their events say about their taste, and how sure we are.

Pure functions over plain data (no AWS): :func:`apply_event` folds one :class:`ShopperEvent` into a
:class:`Profile` and returns a new one.

Decay
    Every decayed quantity (preference vector, evidence, affinities, price histogram, collaborative
    scores) is stored *as of* ``last_ms``, the time of the newest applied event. An event at time
    ``t`` contributes ``w · 2^-(last_ms - t)/half_life``; a newer event first decays the whole
    profile to its own time. The result is ``Σ w_i · 2^-(T - t_i)/h`` whatever the delivery order,
    so a replay gives the same profile. Decay follows event time, never the wall clock; the
    wall clock enters only when a reader asks for the confidence "now".

Idempotency
    ``applied`` holds the keys (event time, 64-bit hash of the event id) of the newest
    ``max_applied`` applied events; ``horizon`` is the largest key ever evicted from it. An event
    whose key is in ``applied`` is a duplicate; an event at or below ``horizon`` is *stale* and
    ignored (it may or may not have been applied, and we cannot tell); any other event — even one
    older than everything applied so far — is applied. So delivery is exactly-once for events that
    arrive within ``max_applied`` of that user's newer events, and at-most-once beyond that
    (DynamoDB Streams retries within 24 hours, far inside that window for a human shopper).

Erasure
    ``erased_at_ms`` survives erasure (it is the tombstone); events at or before it are ignored,
    so a late stream record cannot resurrect what the shopper asked to forget.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from catalens.profiles.events import ENGAGED_TYPES, ShopperEvent

DAY_MS = 86_400_000
VISIT_WINDOW_MS = 30 * 60 * 1000  # a "visit" is a 30-minute window with activity
PRICE_BINS = 32
PRICE_LOG2_MIN = -4.0  # bin 0 starts at 2^-4 = 0.0625 currency units
PRICE_BIN_WIDTH = 0.5  # in log2 units: each bin spans a factor of √2

DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"view": 0.2, "click": 1.0, "add_to_cart": 2.0, "purchase": 3.0, "dismiss": -1.5}
)

# Attributes the ranking side needs; the search Lambda reads only these (a DynamoDB projection).
RANKING_ATTRIBUTES: tuple[str, ...] = (
    "user_id",
    "version",
    "last_ms",
    "vec",
    "evidence",
    "cat",
    "brand",
    "price",
    "cooc",
    "erased_at",
    "space",
)


@dataclass(frozen=True)
class ProfileParams:
    """How events shape a profile.

    Parameters
    ----------
    half_life_days
        An event's weight halves every this many days of later activity.
    weights
        Signed weight per event type; dismiss is negative (pushes the preference away).
    dwell_reference_ms
        A view's weight is scaled by ``clip(dwell_ms / dwell_reference_ms, 0.5, 2)``.
    confidence_evidence
        Decayed |weight| at which confidence reaches 1 - 1/e (≈ 0.63).
    max_recent, max_applied, max_affinities, max_cooc, max_visit_windows
        Bounds that keep the item small (a few KB) whatever the history.
    cooc_partners, cooc_window_ms
        An engaged event pairs with up to this many of the shopper's other engaged items
        within this time window (the co-occurrence signal).
    """

    half_life_days: float = 30.0
    weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_WEIGHTS)
    dwell_reference_ms: int = 5_000
    confidence_evidence: float = 4.0
    max_recent: int = 50
    max_applied: int = 128
    max_affinities: int = 64
    max_cooc: int = 100
    max_visit_windows: int = 64
    cooc_partners: int = 10
    cooc_window_ms: int = 7 * DAY_MS

    def weight_of(self, event: ShopperEvent) -> float:
        weight = float(self.weights.get(event.type, 0.0))
        if event.type == "view" and event.dwell_ms is not None:
            weight *= min(max(event.dwell_ms / self.dwell_reference_ms, 0.5), 2.0)
        return weight

    def decay(self, elapsed_ms: float) -> float:
        """Weight multiplier after ``elapsed_ms`` of event time."""
        return 2.0 ** (-max(elapsed_ms, 0.0) / (self.half_life_days * DAY_MS))


DEFAULT_PARAMS = ProfileParams()


class RecentItem(NamedTuple):
    ts_ms: int
    type: str
    item_id: str


class Applied(NamedTuple):
    """What :func:`apply_event` did: the resulting profile and one of ``OUTCOMES``."""

    profile: Profile
    outcome: str


OUTCOMES = ("applied", "duplicate", "stale", "erased")


def event_hash(event_id: str) -> int:
    """64-bit hash of an event id: the applied set stores (time, hash), 16 bytes per event."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big")


def price_bin(price: Any) -> int | None:
    """Histogram bin of a price (log2 scale), or None when the field is not a positive number."""
    try:
        value = float(price)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return min(max(int((math.log2(value) - PRICE_LOG2_MIN) / PRICE_BIN_WIDTH), 0), PRICE_BINS - 1)


def _bump(table: dict[str, float], key: Any, amount: float, limit: int) -> None:
    """Add to a bounded signed table; past ``limit`` keys, forget the weakest."""
    if not isinstance(key, str) or not key:
        return
    table[key] = table.get(key, 0.0) + amount
    if len(table) > limit:
        weakest = min(table, key=lambda name: abs(table[name]))
        del table[weakest]


@dataclass
class Profile:
    """A shopper's decayed preferences and statistics (see the module docstring for the rules).

    ``version`` is the optimistic-concurrency token of the stored item; stores bump it on write.
    """

    user_id: str
    version: int = 0
    first_ms: int = 0
    last_ms: int = 0  # time of the newest applied event; decayed values are as of this time
    vector: np.ndarray | None = None  # Σ w·v over item vectors (index space), unnormalised
    space: str = ""  # which index space ``vector`` lives in ("" = unknown); see catalens.profiles.index_space
    evidence: float = 0.0  # Σ |w| over all applied events
    category: dict[str, float] = field(default_factory=dict)
    brand: dict[str, float] = field(default_factory=dict)
    price_hist: np.ndarray | None = None  # float64[PRICE_BINS], positive events only
    cooc: dict[str, float] = field(default_factory=dict)  # collaborative scores of items not yet touched
    recent: list[RecentItem] = field(default_factory=list)  # oldest first
    counts: dict[str, int] = field(default_factory=dict)
    dwell_sum_ms: int = 0
    dwell_events: int = 0
    visits: int = 0
    visit_windows: list[int] = field(default_factory=list)  # sorted, newest max_visit_windows
    applied: list[tuple[int, int]] = field(default_factory=list)  # sorted (ts_ms, event_hash)
    horizon: tuple[int, int] = (0, 0)
    erased_at_ms: int = 0

    # ------------------------------------------------------------------ reading
    @property
    def is_empty(self) -> bool:
        return self.evidence <= 0.0 and not self.counts

    def evidence_at(self, now_ms: int | None, params: ProfileParams = DEFAULT_PARAMS) -> float:
        if now_ms is None or now_ms <= self.last_ms:
            return self.evidence
        return self.evidence * params.decay(now_ms - self.last_ms)

    def confidence(self, now_ms: int | None = None, params: ProfileParams = DEFAULT_PARAMS) -> float:
        """How much to trust this profile, in [0, 1]: grows with decayed evidence, fades with idleness."""
        return 1.0 - math.exp(-self.evidence_at(now_ms, params) / params.confidence_evidence)

    def preference(self) -> np.ndarray | None:
        """Unit preference direction in index space, or None when the events point nowhere."""
        if self.vector is None:
            return None
        norm = float(np.linalg.norm(self.vector))
        if not math.isfinite(norm) or norm < 1e-12:
            return None
        return (self.vector / norm).astype(np.float32)

    def price_band(self) -> tuple[float, float, float] | None:
        """(25th, 50th, 75th) percentile of the prices the shopper engaged with, from the decayed histogram."""
        if self.price_hist is None or float(self.price_hist.sum()) <= 0:
            return None
        cumulative = np.cumsum(self.price_hist) / float(self.price_hist.sum())
        band = []
        for q in (0.25, 0.5, 0.75):
            index = int(np.searchsorted(cumulative, q))
            band.append(2.0 ** (PRICE_LOG2_MIN + (index + 0.5) * PRICE_BIN_WIDTH))
        return band[0], band[1], band[2]

    def stats(self) -> dict[str, float]:
        """The seed's statistical features: visit frequency, dwell, click and purchase rates, counts.

        ``click_rate`` = clicks / views and ``purchase_rate`` = purchases / clicks (each capped at 1);
        ``visits_per_day`` counts 30-minute activity windows over the span of the history (≥ 1 day).
        """
        views, clicks, purchases = (self.counts.get(name, 0) for name in ("view", "click", "purchase"))
        span_days = max((self.last_ms - self.first_ms) / DAY_MS, 1.0)
        return {
            "events": float(sum(self.counts.values())),
            **{f"{name}_count": float(count) for name, count in sorted(self.counts.items())},
            "visits": float(self.visits),
            "visits_per_day": self.visits / span_days if self.visits else 0.0,
            "mean_dwell_ms": self.dwell_sum_ms / self.dwell_events if self.dwell_events else 0.0,
            "click_rate": min(clicks / views, 1.0) if views else 0.0,
            "purchase_rate": min(purchases / clicks, 1.0) if clicks else 0.0,
            "confidence": self.confidence(),
        }

    def engaged_partners(self, event: ShopperEvent, params: ProfileParams = DEFAULT_PARAMS) -> list[str]:
        """Items this event co-occurs with: the shopper's other engaged items near it in time, newest first."""
        if event.type not in ENGAGED_TYPES:
            return []
        partners: list[str] = []
        for recent in reversed(self.recent):
            if (
                recent.type in ENGAGED_TYPES
                and recent.item_id != event.item_id
                and abs(recent.ts_ms - event.ts_ms) <= params.cooc_window_ms
                and recent.item_id not in partners
            ):
                partners.append(recent.item_id)
                if len(partners) >= params.cooc_partners:
                    break
        return partners

    # ------------------------------------------------------------------ writing
    def copy(self) -> Profile:
        return replace(
            self,
            vector=None if self.vector is None else self.vector.copy(),
            category=dict(self.category),
            brand=dict(self.brand),
            price_hist=None if self.price_hist is None else self.price_hist.copy(),
            cooc=dict(self.cooc),
            recent=list(self.recent),
            counts=dict(self.counts),
            visit_windows=list(self.visit_windows),
            applied=list(self.applied),
        )

    def _scale(self, factor: float) -> None:
        if factor == 1.0:
            return
        if self.vector is not None:
            self.vector *= factor
        if self.price_hist is not None:
            self.price_hist *= factor
        self.evidence *= factor
        for table in (self.category, self.brand, self.cooc):
            for key in table:
                table[key] *= factor

    @classmethod
    def erased(cls, user_id: str, *, erased_at_ms: int, version: int = 0) -> Profile:
        """The tombstone left by an erasure: no history, only the time before which events are ignored."""
        return cls(user_id=user_id, version=version, erased_at_ms=erased_at_ms)

    # ------------------------------------------------------------------ storage
    def to_item(self) -> dict[str, Any]:
        """DynamoDB item (resource-style types: Decimal numbers, bytes, maps, lists). Floats round-trip exactly."""
        item: dict[str, Any] = {
            "user_id": self.user_id,
            "version": self.version,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "evidence": _decimal(self.evidence),
            "cat": {k: _decimal(v) for k, v in self.category.items()},
            "brand": {k: _decimal(v) for k, v in self.brand.items()},
            "cooc": {k: _decimal(v) for k, v in self.cooc.items()},
            "recent": [f"{r.ts_ms}|{r.type}|{r.item_id}" for r in self.recent],
            "counts": dict(self.counts),
            "dwell_sum": self.dwell_sum_ms,
            "dwell_n": self.dwell_events,
            "visits": self.visits,
            "visit_win": np.asarray(self.visit_windows, dtype="<i8").tobytes(),
            "applied": np.asarray(self.applied, dtype="<u8").reshape(-1, 2).tobytes(),
            "horizon": np.asarray(self.horizon, dtype="<u8").tobytes(),
            "erased_at": self.erased_at_ms,
            "space": self.space,
        }
        if self.vector is not None:
            item["vec"] = np.asarray(self.vector, dtype="<f4").tobytes()
        if self.price_hist is not None:
            item["price"] = np.asarray(self.price_hist, dtype="<f8").tobytes()
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Profile:
        """Inverse of :meth:`to_item`; tolerates missing attributes (projections read a subset)."""
        vec = _bytes(item.get("vec"))
        price = _bytes(item.get("price"))
        applied = np.frombuffer(_bytes(item.get("applied")) or b"", dtype="<u8").reshape(-1, 2)
        horizon = np.frombuffer(_bytes(item.get("horizon")) or bytes(16), dtype="<u8")
        return cls(
            user_id=str(item["user_id"]),
            version=int(item.get("version", 0)),
            first_ms=int(item.get("first_ms", 0)),
            last_ms=int(item.get("last_ms", 0)),
            vector=None if vec is None else np.frombuffer(vec, dtype="<f4").astype(np.float64),
            evidence=float(item.get("evidence", 0)),
            category={k: float(v) for k, v in item.get("cat", {}).items()},
            brand={k: float(v) for k, v in item.get("brand", {}).items()},
            price_hist=None if price is None else np.frombuffer(price, dtype="<f8").copy(),
            cooc={k: float(v) for k, v in item.get("cooc", {}).items()},
            recent=[_recent(entry) for entry in item.get("recent", [])],
            counts={k: int(v) for k, v in item.get("counts", {}).items()},
            dwell_sum_ms=int(item.get("dwell_sum", 0)),
            dwell_events=int(item.get("dwell_n", 0)),
            visits=int(item.get("visits", 0)),
            visit_windows=np.frombuffer(_bytes(item.get("visit_win")) or b"", dtype="<i8").tolist(),
            applied=[(int(ts), int(h)) for ts, h in applied],
            horizon=(int(horizon[0]), int(horizon[1])),
            erased_at_ms=int(item.get("erased_at", 0)),
            space=str(item.get("space", "")),
        )


def _decimal(value: float) -> Decimal:
    """A float as a DynamoDB number: shortest exact repr; values DynamoDB cannot hold (< 1e-100) become 0."""
    if not math.isfinite(value):
        raise ValueError(f"profile value {value!r} is not finite")
    return Decimal(0) if abs(value) < 1e-100 else Decimal(repr(float(value)))


def _bytes(value: Any) -> bytes | None:
    """bytes from a DynamoDB binary (boto3 wraps them in ``Binary`` with ``.value``)."""
    if value is None:
        return None
    return bytes(getattr(value, "value", value))


def _recent(entry: str) -> RecentItem:
    ts, kind, item_id = entry.split("|", 2)
    return RecentItem(int(ts), kind, item_id)


def apply_event(
    profile: Profile | None,
    event: ShopperEvent,
    item_vector: np.ndarray | None,
    item_fields: Mapping[str, Any] | None,
    *,
    params: ProfileParams = DEFAULT_PARAMS,
    neighbours: Mapping[str, float] | None = None,
    space: str = "",
) -> Applied:
    """Fold one event into a profile; returns a new profile (the input is never modified) and the outcome.

    ``item_vector`` is the item's index-space vector (None when the item is unknown: statistics
    still update); ``item_fields`` its product fields (category, brand, price);
    ``neighbours`` the item's co-occurrence neighbours ``{item_id: P(item | this item)}``; ``space`` names
    the index space of ``item_vector`` (a rebuilt index with a new projection or model starts the
    preference vector afresh instead of mixing bases).
    """
    if profile is None:
        profile = Profile(user_id=event.user_id)
    if profile.user_id != event.user_id:
        raise ValueError(f"event of user {event.user_id!r} applied to profile of {profile.user_id!r}")
    if event.ts_ms <= profile.erased_at_ms:
        return Applied(profile, "erased")
    key = (event.ts_ms, event_hash(event.event_id))
    if key <= profile.horizon:
        return Applied(profile, "stale")
    position = bisect.bisect_left(profile.applied, key)
    if position < len(profile.applied) and profile.applied[position] == key:
        return Applied(profile, "duplicate")

    new = profile.copy()
    if new.last_ms == 0:  # first event (or first after an erasure): nothing to decay
        new.last_ms = event.ts_ms
    elif event.ts_ms > new.last_ms:
        new._scale(params.decay(event.ts_ms - new.last_ms))
        new.last_ms = event.ts_ms
    new.first_ms = event.ts_ms if new.first_ms == 0 else min(new.first_ms, event.ts_ms)
    weight = params.weight_of(event) * params.decay(new.last_ms - event.ts_ms)
    fields = item_fields or {}

    new.evidence += abs(weight)
    if item_vector is not None:
        vector = np.asarray(item_vector, dtype=np.float64).ravel()
        norm = float(np.linalg.norm(vector))
        if math.isfinite(norm) and norm > 0:
            moved = bool(space and new.space and space != new.space)
            if new.vector is None or new.vector.shape != vector.shape or moved:
                new.vector = np.zeros_like(vector)  # first vector, or the index space changed: start afresh
            new.space = space or new.space
            new.vector += weight * (vector / norm)
    _bump(new.category, fields.get("category"), weight, params.max_affinities)
    _bump(new.brand, fields.get("brand"), weight, params.max_affinities)
    if weight > 0:
        bin_index = price_bin(fields.get("price"))
        if bin_index is not None:
            if new.price_hist is None:
                new.price_hist = np.zeros(PRICE_BINS)
            new.price_hist[bin_index] += weight
        for other, strength in (neighbours or {}).items():
            if other != event.item_id:
                _bump(new.cooc, other, weight * float(strength), params.max_cooc)

    bisect.insort(new.recent, RecentItem(event.ts_ms, event.type, event.item_id))
    del new.recent[: max(len(new.recent) - params.max_recent, 0)]
    new.counts[event.type] = new.counts.get(event.type, 0) + 1
    if event.dwell_ms is not None:
        new.dwell_sum_ms += event.dwell_ms
        new.dwell_events += 1
    _count_visit(new, event.ts_ms // VISIT_WINDOW_MS, params.max_visit_windows)

    bisect.insort(new.applied, key)
    while len(new.applied) > params.max_applied:
        new.horizon = max(new.horizon, new.applied.pop(0))
    return Applied(new, "applied")


def _count_visit(profile: Profile, window: int, limit: int) -> None:
    """Count a new 30-minute activity window once (windows older than all remembered ones are not counted)."""
    windows = profile.visit_windows
    position = bisect.bisect_left(windows, window)
    if position < len(windows) and windows[position] == window:
        return
    if len(windows) >= limit and position == 0:
        return
    windows.insert(position, window)
    profile.visits += 1
    del windows[: max(len(windows) - limit, 0)]


def replay(
    events: Sequence[ShopperEvent],
    lookup: Any,
    *,
    params: ProfileParams = DEFAULT_PARAMS,
    profile: Profile | None = None,
) -> Profile | None:
    """Apply events in the given order (a convenience for tests and the simulation)."""
    for event in events:
        found = lookup(event.item_id)
        vector, fields = found if found is not None else (None, None)
        profile = apply_event(profile, event, vector, fields, params=params).profile
    return profile
