"""Synthetic clustered embeddings for tests and ``catalens bench index``.

Real catalogs are clumpy: many product groups of very different sizes and spreads. A Gaussian
mixture with log-normal cluster weights and per-cluster spread, normalised to the unit sphere,
reproduces what matters for the graph search (hundreds of weakly connected graph pieces).
"""

from __future__ import annotations

import numpy as np


def clustered_vectors(
    n: int,
    dim: int,
    *,
    seed: int = 0,
    n_clusters: int | None = None,
    spread: float = 0.35,
    size_sigma: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit-norm float32[dim] vectors from a mixture of ``n_clusters`` (default n/200) clusters.

    Returns (vectors, cluster labels). Cluster weights are log-normal (``size_sigma``), centres
    uniform on the sphere, within-cluster noise isotropic with a per-cluster scale in
    [0.5, 1.5]·``spread``. Queries drawn from the same call (more rows, split off) share clusters.
    """
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(8, n // 200)
    weights = rng.lognormal(0.0, size_sigma, n_clusters)
    labels = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scales = (rng.uniform(0.5, 1.5, n_clusters) * spread / np.sqrt(dim)).astype(np.float32)
    vectors = centres[labels] + scales[labels, None] * rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32, copy=False), labels


def recall_at_k(found: list[list[str]] | np.ndarray, truth: list[list[str]] | np.ndarray) -> float:
    """Mean fraction of the true top-k found (k = length of each truth row)."""
    total = 0.0
    for got, want in zip(found, truth, strict=True):
        want = list(want)
        total += len(set(list(got)[: len(want)]) & set(want)) / max(1, len(want))
    return total / max(1, len(truth))
