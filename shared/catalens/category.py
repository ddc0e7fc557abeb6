"""Which category a shopper's photo shows, guessed from the categories of its nearest products.

A shop's catalog has a ``category`` field per product; a photo's nearest products usually share the category even
when the exact product is not first (three apples of five varieties vote "Apple"). Each of the best
``NEIGHBOURS`` hits votes for its category with weight ``exp(score / T)``; the guess is the category with the largest
share and its confidence that share. ``T`` makes the confidence mean what it says: it is fitted once per scoring
(plain cosine or calibrated) by minimising the negative log-likelihood of the right category on the grocery
train-as-queries photos (``catalens eval grocery --split train``; docs/evaluation.md), never on val. Hits without
a category do not vote; with no votes there is no guess.

>>> guess = predict_category([0.9, 0.8, 0.2], ["Apple", "Apple", "Pear"], temperature=0.1)
>>> guess.name, round(guess.confidence, 3)
('Apple', 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CALIBRATED_TEMPERATURE",
    "NEIGHBOURS",
    "PLAIN_TEMPERATURE",
    "CategoryGuess",
    "category_of",
    "predict_category",
]

NEIGHBOURS = 10
# Fitted on grocery train-as-queries with the serving model (catalens eval grocery --split train reports the fit).
PLAIN_TEMPERATURE = 0.032
CALIBRATED_TEMPERATURE = 0.04
CATEGORY_FIELD = "category"


@dataclass(frozen=True)
class CategoryGuess:
    """The predicted category and the share of the neighbours' vote it got (0..1)."""

    name: str
    confidence: float

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "confidence": round(self.confidence, 4)}


def category_of(fields: object) -> str | None:
    """A product's category as text, None when it has none (a list of categories votes with its first)."""
    if not isinstance(fields, dict):
        return None
    value = fields.get(CATEGORY_FIELD)
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None or isinstance(value, dict):
        return None
    text = str(value).strip()
    return text or None


def category_shares(
    scores: Sequence[float], categories: Sequence[str | None], *, temperature: float, neighbours: int = NEIGHBOURS
) -> dict[str, float]:
    """Each category's share of the score-weighted vote of the first ``neighbours`` hits (in rank order)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    votes = [
        (float(score), name)
        for score, name in list(zip(scores, categories, strict=True))[:neighbours]
        if name is not None and math.isfinite(float(score))
    ]
    if not votes:
        return {}
    top = max(score for score, _ in votes)
    shares: dict[str, float] = {}
    for score, name in votes:
        shares[name] = shares.get(name, 0.0) + math.exp((score - top) / temperature)
    total = sum(shares.values())
    return {name: weight / total for name, weight in shares.items()}


def predict_category(
    scores: Sequence[float], categories: Sequence[str | None], *, temperature: float, neighbours: int = NEIGHBOURS
) -> CategoryGuess | None:
    """The category with the largest share of the vote (ties: the better-ranked one), or None without votes."""
    shares = category_shares(scores, categories, temperature=temperature, neighbours=neighbours)
    if not shares:
        return None
    name = max(shares, key=lambda key: shares[key])  # dict order is rank order, so a tie keeps the first
    return CategoryGuess(name, shares[name])
