"""Category prediction under the grocery protocol: accuracy, expected calibration error, and the temperature fit.

Search predicts a photo's category from its best hits (:mod:`catalens.category`); here the hits are the catalog
entries in score order (plain cosine or calibrated, as search serves them) and the category of a catalog entry is
its product's ``category`` field — for the grocery catalog the coarse class (``Apple``, ``Milk``, ``Pepper``, as
:func:`catalens_tools.simulation.grocery_fields` writes it). A query's true category is its own coarse class.

The temperature is fitted by minimising the negative log-likelihood of the true category (a share of 0 counts as
1e-6), over a log-spaced grid: temperature scaling, the standard post-hoc calibration. It is fitted on
train-as-queries only; val is reported with the train fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from catalens.category import NEIGHBOURS, category_shares

__all__ = ["TEMPERATURE_GRID", "category_report", "expected_calibration_error", "fit_temperature", "predictions"]

TEMPERATURE_GRID = tuple(float(t) for t in np.geomspace(0.002, 0.5, 49))
ECE_BINS = 10
_FLOOR = 1e-6


def _ranked(scores: np.ndarray, catalog_categories: Sequence[str], neighbours: int) -> list[tuple[list, list]]:
    rows = []
    for row in np.asarray(scores, dtype=np.float64):
        order = [i for i in np.argsort(-row, kind="stable")[:neighbours] if np.isfinite(row[i])]
        rows.append(([float(row[i]) for i in order], [catalog_categories[i] for i in order]))
    return rows


def predictions(
    scores: np.ndarray, catalog_categories: Sequence[str], temperature: float, neighbours: int = NEIGHBOURS
) -> list[dict[str, float]]:
    """Per query, every category's share of the vote of its best ``neighbours`` catalog entries."""
    return [
        category_shares(values, names, temperature=temperature, neighbours=neighbours)
        for values, names in _ranked(scores, catalog_categories, neighbours)
    ]


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width confidence bins: the sample-weighted mean |accuracy - confidence|."""
    confidences, correct = np.asarray(confidences, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if len(confidences) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidences, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidences[members].mean())
    return float(error)


def _nll(shares: list[dict[str, float]], truths: Sequence[str]) -> float:
    return float(
        np.mean([-np.log(max(share.get(truth, 0.0), _FLOOR)) for share, truth in zip(shares, truths, strict=True)])
    )


def fit_temperature(
    scores: np.ndarray,
    catalog_categories: Sequence[str],
    truths: Sequence[str],
    grid: Sequence[float] = TEMPERATURE_GRID,
) -> float:
    """The grid temperature with the least negative log-likelihood of the true categories."""
    ranked = _ranked(scores, catalog_categories, NEIGHBOURS)
    losses = [_nll([category_shares(v, n, temperature=t) for v, n in ranked], truths) for t in grid]
    return float(grid[int(np.argmin(losses))])


def category_report(
    scores: np.ndarray, catalog_categories: Sequence[str], truths: Sequence[str], temperature: float
) -> dict:
    """Accuracy of the predicted category, its mean confidence, ECE and NLL, at ``temperature``."""
    shares = predictions(scores, catalog_categories, temperature)
    guessed = [max(share, key=lambda k: share[k]) if share else None for share in shares]
    confidences = np.array([share[g] if g is not None else 0.0 for share, g in zip(shares, guessed, strict=True)])
    correct = np.array([g == truth for g, truth in zip(guessed, truths, strict=True)], dtype=np.float64)
    return {
        "queries": len(truths),
        "accuracy": round(float(correct.mean()), 4) if len(correct) else None,
        "mean_confidence": round(float(confidences.mean()), 4) if len(correct) else None,
        "ece": round(expected_calibration_error(confidences, correct), 4),
        "nll": round(_nll(shares, truths), 4),
        "temperature": temperature,
        "neighbours": NEIGHBOURS,
    }
