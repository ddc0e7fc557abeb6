"""Personalised re-ranking of visual search results.

The first stage (the index) returns a wider pool than the page (:func:`first_stage_k`); this
module reorders it. Visual similarity stays dominant: the personal part is a bounded additive
boost, so an item can only overtake items whose cosine is less than ``max_boost`` above its own::

    boost = clip(confidence · (w_personal · centred cos(preference, item)
                               + centred (w_category · category affinity + w_brand · brand affinity)
                               + w_price · centred price fit + w_cooc · co-occurrence score),
                 -max_boost, +max_boost)
    final = visual + boost                      (then, optionally, a near-duplicate penalty)

"Centred" means minus its mean over the candidate pool, so a taste every candidate shares moves
nothing and does not eat into the cap. Affinities are the profile's decayed weights divided by
the strongest one (so in [-1, 1]); the price fit is the smoothed price histogram at the item's
price relative to its peak (in [0, 1]; ½ for an item without a price); the co-occurrence score
(a sparse bonus, not centred) is divided by the profile's strongest one. ``confidence`` (in [0, 1])
grows with the shopper's decayed evidence, so a new shopper moves results little and a cold
one (no profile, erased, or below ``min_confidence``) gets the plain visual order exactly.

Diversity (off by default): walking down the list, an item whose cosine to an item already
placed exceeds ``near_duplicate`` loses up to ``diversity_weight`` — the top results stop being
near-copies of one photo. Every part is reported in ``hit.explain``.

numpy only: this runs on the query path.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from catalens.profiles.profile import (
    DEFAULT_PARAMS,
    PRICE_BIN_WIDTH,
    PRICE_BINS,
    PRICE_LOG2_MIN,
    Profile,
    ProfileParams,
)

FIRST_STAGE_MIN = 50
FIRST_STAGE_MAX = 400
_PRICE_SMOOTHING = np.array([0.25, 0.5, 0.25])
_EXPLAIN_KEYS = ("visual", "personal", "affinity", "price", "cooc", "boost", "diversity")


@dataclass(frozen=True)
class RerankParams:
    """Strength of each personal part, in cosine units at full confidence.

    Defaults are what ``catalens eval personalization --data ../shared/data/grocery`` chose on
    train-derived data (best NDCG@10 with visual top-1 down by at most 0.5 point there); price
    and co-occurrence did not earn a weight on that data (co-occurrence added < 0.005 NDCG).

    Parameters
    ----------
    personal_weight
        Weight of the centred cosine between the item and the preference vector.
    category_weight, brand_weight
        Weights of the category and brand affinities (each in [-1, 1]).
    price_weight
        Weight of the price-band fit (in [-½, ½]; items without a price get 0).
    cooc_weight
        Weight of the collaborative (co-occurrence) score (in [0, 1]); 0 turns it off.
    max_boost
        Cap on the absolute value of the whole personal boost.
    min_confidence
        Below this profile confidence the shopper is treated as cold (plain visual order).
    diversity_weight, near_duplicate, diversity_depth
        Near-duplicate penalty (0 turns it off), the cosine above which it starts, and how many of
        the top results it reorders.
    profile_params
        Half-life and evidence scale used to compute the profile's confidence at query time.
    """

    personal_weight: float = 0.01
    category_weight: float = 0.02
    brand_weight: float = 0.02
    price_weight: float = 0.0
    cooc_weight: float = 0.0
    max_boost: float = 0.05
    min_confidence: float = 0.05
    diversity_weight: float = 0.0
    near_duplicate: float = 0.95
    diversity_depth: int = 30
    profile_params: ProfileParams = field(default=DEFAULT_PARAMS)


DEFAULT_RERANK = RerankParams()


def first_stage_k(k: int, offset: int = 0) -> int:
    """How many candidates to ask the index for, so re-ranking has room to reorder a page."""
    return min(max(4 * (k + offset), FIRST_STAGE_MIN), max(FIRST_STAGE_MAX, k + offset))


def _with_score(hit: Any, score: float, explain: dict[str, float]) -> Any:
    """A new hit with another score and explain (the constructor is ~4x cheaper than ``dataclasses.replace``)."""
    return type(hit)(hit.item_id, score, hit.fields, hit.image_key, hit.vector, explain)


def _plain(hits: Sequence[Any]) -> list[Any]:
    return [_with_score(hit, hit.score, {**hit.explain, "visual": hit.score, "final": hit.score}) for hit in hits]


def _relative(table: dict[str, float], keys: Sequence[Any]) -> np.ndarray:
    """Each key's weight divided by the table's strongest |weight| (0 for missing keys)."""
    if not table:
        return np.zeros(len(keys))
    strongest = max(abs(value) for value in table.values())
    if strongest <= 0:
        return np.zeros(len(keys))
    return np.array([table.get(key, 0.0) if isinstance(key, str) else 0.0 for key in keys]) / strongest


def _prices(values: Sequence[Any]) -> np.ndarray:
    """Prices as floats; NaN where missing or not a positive finite number."""
    out = np.full(len(values), np.nan)
    for index, value in enumerate(values):
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[index] = value
        elif value is not None:
            with contextlib.suppress(TypeError, ValueError):
                out[index] = float(value)
    out[~np.isfinite(out) | (out <= 0)] = np.nan
    return out


def _price_fit(profile: Profile, prices: Sequence[Any]) -> np.ndarray:
    """Smoothed price-histogram density at each item's price, relative to the peak, minus ½ (0 if unknown)."""
    out = np.zeros(len(prices))
    if profile.price_hist is None or profile.price_hist.shape != (PRICE_BINS,) or profile.price_hist.max() <= 0:
        return out
    density = np.convolve(profile.price_hist, _PRICE_SMOOTHING, mode="same")
    density /= density.max()
    values = _prices(prices)
    known = ~np.isnan(values)
    if known.any():  # same bins as catalens.profiles.profile.price_bin
        bins = np.clip(
            ((np.log2(values[known]) - PRICE_LOG2_MIN) / PRICE_BIN_WIDTH).astype(np.int64), 0, PRICE_BINS - 1
        )
        out[known] = density[bins] - 0.5  # unknown prices stay at 0, i.e. a fit of ½
    return out


def _vectors(hits: Sequence[Any], dim: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(matrix with one row per hit, the rows' norms, mask of hits with a vector of dimension ``dim``).

    ``dim`` None takes the dimension of the first hit with a vector; rows without one are zero (norm 0).
    The rows are not normalised here: the cosine divides by the norms, and only diversity needs unit rows.
    """
    vectors = [hit.vector for hit in hits]
    if dim is None:
        dim = next((int(np.size(v)) for v in vectors if v is not None), 0)
    matrix = None
    with contextlib.suppress(TypeError, ValueError):  # fast path: every hit has a vector of the right size
        matrix = np.array(vectors, dtype=np.float32)
    if matrix is not None and matrix.shape == (len(hits), dim) and dim:
        present = np.ones(len(hits), dtype=bool)
    else:
        present = np.array([v is not None and np.shape(v) == (dim,) for v in vectors], dtype=bool)
        matrix = np.zeros((len(hits), max(dim, 1)), dtype=np.float32)
        if present.any():
            matrix[present] = np.stack([v for v, ok in zip(vectors, present, strict=True) if ok])
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    return matrix, norms, present & (norms > 0)


@dataclass(frozen=True)
class Signals:
    """The personal signals of each candidate, before weighting (see the module docstring).

    ``personal``, ``category``, ``brand`` and ``price`` are centred on the pool; ``cooc`` is in [0, 1].
    """

    confidence: float
    personal: np.ndarray
    category: np.ndarray
    brand: np.ndarray
    price: np.ndarray
    cooc: np.ndarray


def _centred(values: np.ndarray) -> np.ndarray:
    return values - values.mean() if values.size else values


def personal_signals(
    hits: Sequence[Any],
    profile: Profile | None,
    *,
    params: RerankParams = DEFAULT_RERANK,
    now_ms: int | None = None,
    space: str = "",
) -> tuple[Signals, np.ndarray, np.ndarray] | None:
    """The unweighted signals of ``hits`` for ``profile`` (None for a cold shopper), the hits' vectors (unit
    rows when diversity is on: only it needs them) and the mask of hits that have one.

    :func:`rerank` weighs them with :func:`boost`; the personalisation evaluation calls both to tune weights.
    """
    if profile is None or not hits:
        return None
    confidence = profile.confidence(now_ms, params.profile_params)
    if not math.isfinite(confidence) or confidence < params.min_confidence:
        return None
    preference = None if space and profile.space and space != profile.space else profile.preference()
    vectors, norms, has_vector = _vectors(hits, None if preference is None else preference.shape[0])
    personal = np.zeros(len(hits))
    if preference is not None and has_vector.any():
        cosine = (vectors @ preference) / np.maximum(norms, 1e-12)
        personal[has_vector] = _centred(cosine[has_vector])
    fields = [hit.fields or {} for hit in hits]
    signals = Signals(
        confidence=confidence,
        personal=personal,
        category=_centred(_relative(profile.category, [f.get("category") for f in fields])),
        brand=_centred(_relative(profile.brand, [f.get("brand") for f in fields])),
        price=_centred(_price_fit(profile, [f.get("price") for f in fields])),
        cooc=np.clip(_relative(profile.cooc, [hit.item_id for hit in hits]), 0.0, 1.0),
    )
    return signals, vectors / np.maximum(norms, 1e-12)[:, None] if params.diversity_weight > 0 else vectors, has_vector


def boost(signals: Signals, params: RerankParams) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Weighted parts (as shown in ``explain``) and the capped total boost."""
    confidence = signals.confidence
    parts = {
        "personal": confidence * params.personal_weight * signals.personal,
        "affinity": confidence * (params.category_weight * signals.category + params.brand_weight * signals.brand),
        "price": confidence * params.price_weight * signals.price,
        "cooc": confidence * params.cooc_weight * signals.cooc,
    }
    total = parts["personal"] + parts["affinity"] + parts["price"] + parts["cooc"]
    return parts, np.clip(total, -params.max_boost, params.max_boost)


def rerank(
    hits: Sequence[Any],
    profile: Profile | None,
    *,
    params: RerankParams = DEFAULT_RERANK,
    personalize: bool = True,
    now_ms: int | None = None,
    space: str = "",
    limit: int | None = None,
) -> list[Any]:
    """Reorder first-stage ``hits`` (best visual first) for ``profile``; fills each hit's ``explain``.

    Returns new :class:`~catalens.index.records.Hit` objects whose ``score`` is the final score;
    ``explain["visual"]`` keeps the cosine. With no profile, ``personalize=False`` or a confidence
    below ``params.min_confidence``, the order is exactly the input order. Pass ``now_ms`` (the
    wall clock) so that an idle shopper's confidence fades; without it, decay stops at their last event.
    Pass ``space`` (the view's ``index_space``) so that a preference vector from another index
    space (a rebuilt index) is ignored rather than compared across bases. ``limit`` returns only the best
    ``limit`` hits (e.g. ``offset + k``), sparing the hits nobody will see their explain dicts.

    Examples
    --------
    >>> ranked = rerank(index.search(query, first_stage_k(12)), profile, now_ms=now)[:12]  # doctest: +SKIP
    """
    found = personal_signals(hits, profile, params=params, now_ms=now_ms, space=space) if personalize else None
    if found is None:
        return _plain(hits[:limit])
    signals, vectors, has_vector = found
    visual = np.array([float(hit.score) for hit in hits])
    parts, total = boost(signals, params)
    final = visual + total
    order = np.argsort(-final, kind="stable").tolist()
    penalty = np.zeros(len(hits))
    if params.diversity_weight > 0 and has_vector.any():
        order, penalty = _diversify(order, final, vectors, params)

    scores = (final - penalty).tolist()
    columns = [visual.tolist(), *(values.tolist() for values in parts.values()), total.tolist(), (-penalty).tolist()]
    confidence = signals.confidence
    ranked = []
    for index in order[:limit]:
        hit = hits[index]
        score = scores[index]
        explain = dict(zip(_EXPLAIN_KEYS, [column[index] for column in columns], strict=True))
        explain["confidence"] = confidence
        explain["final"] = score
        ranked.append(_with_score(hit, score, {**hit.explain, **explain} if hit.explain else explain))
    return ranked


def _diversify(
    order: list[int], final: np.ndarray, vectors: np.ndarray, params: RerankParams
) -> tuple[list[int], np.ndarray]:
    """Greedy MMR-style pass over the top ``diversity_depth``: penalise near-copies of items already placed."""
    head, tail = order[: params.diversity_depth], order[params.diversity_depth :]
    head_vectors = vectors[head]
    similarity = head_vectors @ head_vectors.T
    span = max(1.0 - params.near_duplicate, 1e-6)
    remaining = list(range(len(head)))
    closest = np.full(len(head), -1.0)  # max similarity to any placed item
    penalty = np.zeros(len(final))
    placed: list[int] = []
    while remaining:
        candidates = np.array(remaining)
        cost = params.diversity_weight * np.clip((closest[candidates] - params.near_duplicate) / span, 0.0, 1.0)
        adjusted = final[[head[i] for i in candidates]] - cost
        best = int(np.argmax(adjusted))  # first maximum: ties keep the current order
        chosen = int(candidates[best])
        penalty[head[chosen]] = cost[best]
        placed.append(head[chosen])
        remaining.pop(best)
        np.maximum(closest, similarity[:, chosen], out=closest)
    return placed + tail, penalty
