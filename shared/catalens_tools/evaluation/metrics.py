"""Retrieval metrics over score matrices: pure numpy, no I/O, no model.

Every function takes ``scores[n_queries, n_catalog]`` (higher = more similar), the label of each catalog entry and
the label of each query. Working on scores rather than embeddings lets callers plug in any similarity or
re-ranking (whitening, query expansion, k-reciprocal) and still use the same metrics.

Ties are counted against the query: a catalog entry scoring exactly as high as the right answer ranks before it.
A degenerate embedding (every image the same vector) therefore scores zero instead of a perfect one.

Example
-------
>>> scores = np.array([[0.9, 0.1], [0.2, 0.8]])
>>> topk_accuracy(scores, catalog_labels=[0, 1], query_labels=[0, 0], k=1)
0.5
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "average_precision",
    "cosine_scores",
    "label_scores",
    "mean_average_precision",
    "recall_at_k",
    "topk_accuracy",
]


def _check(scores: np.ndarray, catalog_labels: Sequence | np.ndarray, query_labels: Sequence | np.ndarray):
    scores = np.asarray(scores, dtype=np.float64)
    catalog = np.asarray(catalog_labels)
    queries = np.asarray(query_labels)
    if scores.ndim != 2 or scores.shape != (len(queries), len(catalog)):
        raise ValueError(
            f"scores must be [n_queries, n_catalog] = [{len(queries)}, {len(catalog)}], got {list(scores.shape)}"
        )
    return scores, catalog, queries


def cosine_scores(queries: np.ndarray, catalog: np.ndarray) -> np.ndarray:
    """Cosine similarity of every query to every catalog vector (vectors need not be normalised)."""

    def unit(vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    return unit(queries) @ unit(catalog).T


def label_scores(scores: np.ndarray, catalog_labels: Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score of each distinct label = its best-scoring catalog entry (several views per item: the best view counts).

    Returns ``(labels, per_label_scores[n_queries, n_labels])`` with ``labels`` sorted.
    """
    scores = np.asarray(scores, dtype=np.float64)
    catalog = np.asarray(catalog_labels)
    labels, owner = np.unique(catalog, return_inverse=True)
    per_label = np.full((scores.shape[0], len(labels)), -np.inf)
    for column, label_index in enumerate(owner):
        np.maximum(per_label[:, label_index], scores[:, column], out=per_label[:, label_index])
    return labels, per_label


def topk_accuracy(
    scores: np.ndarray, catalog_labels: Sequence | np.ndarray, query_labels: Sequence | np.ndarray, k: int
) -> float:
    """Fraction of queries whose label is among the ``k`` best-scoring distinct catalog labels.

    This is classification-by-retrieval (photo → catalog): catalog entries sharing a label are one candidate,
    scored by their best entry. A query whose label is absent from the catalog counts as a miss.
    """
    scores, catalog, queries = _check(scores, catalog_labels, query_labels)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(queries) == 0:
        return float("nan")
    labels, per_label = label_scores(scores, catalog)
    position = np.searchsorted(labels, queries)
    present = (position < len(labels)) & (labels[np.minimum(position, len(labels) - 1)] == queries)
    position = np.minimum(position, len(labels) - 1)
    own = per_label[np.arange(len(queries)), position]
    # Other labels scoring at least as high rank before the right one (ties against the query).
    rivals = (per_label >= own[:, None]).sum(axis=1) - 1
    return float(np.mean(present & (rivals < k)))


def recall_at_k(
    scores: np.ndarray, catalog_labels: Sequence | np.ndarray, query_labels: Sequence | np.ndarray, k: int
) -> float:
    """Fraction of queries with at least one relevant (same-label) catalog entry among the top ``k`` entries.

    The usual R@k of image retrieval papers; queries with no relevant entry in the catalog count as misses.
    """
    scores, catalog, queries = _check(scores, catalog_labels, query_labels)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(queries) == 0:
        return float("nan")
    relevant = queries[:, None] == catalog[None, :]
    best_relevant = np.where(relevant, scores, -np.inf).max(axis=1, initial=-np.inf)
    irrelevant_ahead = ((scores >= best_relevant[:, None]) & ~relevant).sum(axis=1)
    return float(np.mean(relevant.any(axis=1) & (irrelevant_ahead < k)))


def average_precision(scores: Sequence[float] | np.ndarray, relevant: Sequence[bool] | np.ndarray) -> float:
    """AP of one ranked list: the mean, over relevant entries, of the precision at each one's rank.

    Returns NaN when nothing is relevant (AP is undefined there).
    """
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape or scores.ndim != 1:
        raise ValueError(f"scores and relevant must be 1-d and of equal length, got {scores.shape}, {relevant.shape}")
    n_relevant = int(relevant.sum())
    if n_relevant == 0:
        return float("nan")
    # Sort by descending score; among equal scores the irrelevant come first (ties against the query).
    order = np.lexsort((relevant, -scores))
    hits = relevant[order]
    ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the relevant entries
    precision_at_hits = np.arange(1, n_relevant + 1) / ranks
    return float(precision_at_hits.mean())


def mean_average_precision(
    scores: np.ndarray, catalog_labels: Sequence | np.ndarray, query_labels: Sequence | np.ndarray
) -> float:
    """mAP over queries, relevant = same label; queries with no relevant catalog entry are left out."""
    scores, catalog, queries = _check(scores, catalog_labels, query_labels)
    values = [average_precision(row, catalog == label) for row, label in zip(scores, queries, strict=True)]
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")
