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
    decay: float = 0.0,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit-norm float32[dim] vectors from a mixture of ``n_clusters`` (default n/200) clusters.

    Returns (vectors, cluster labels). Cluster weights are log-normal (``size_sigma``), centres
    uniform on the sphere, within-cluster noise isotropic with a per-cluster scale in
    [0.5, 1.5]·``spread``. Queries drawn from the same call (more rows, split off) share clusters.

    ``decay`` shapes the distribution like an image embedding's: along axis i (in a random order) cluster centres
    and within-cluster noise get variance ∝ (i + 1)^-decay, at the same total. 0 is isotropic: a worst case for
    any reduced first stage (no axis carries more of a neighbour's difference than another); ``catalens bench
    index`` says which value makes a 256-axis PCA alone no better than on real embeddings.
    """
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(8, n // 200)
    weights = rng.lognormal(0.0, size_sigma, n_clusters)
    labels = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    axis_scale = np.ones(dim, dtype=np.float32)
    if decay:
        variance = (np.arange(dim) + 1.0) ** -decay
        axis_scale = np.sqrt(variance * dim / variance.sum()).astype(np.float32)[rng.permutation(dim)]
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32) * axis_scale
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scales = (rng.uniform(0.5, 1.5, n_clusters) * spread / np.sqrt(dim)).astype(np.float32)
    vectors = np.empty((n, dim), dtype=np.float32) if out is None else out  # ``out``: e.g. a memory-mapped file
    for start in range(0, n, 65_536):  # in blocks: the noise of a whole 1M catalog would be a second copy
        rows = labels[start : start + 65_536]
        noise = rng.standard_normal((rows.size, dim), dtype=np.float32)
        noise *= axis_scale
        noise *= scales[rows, None]
        noise += centres[rows]
        vectors[start : start + rows.size] = noise
    for start in range(0, n, 65_536):
        block = vectors[start : start + 65_536]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return vectors, labels


def recall_at_k(found: list[list[str]] | np.ndarray, truth: list[list[str]] | np.ndarray) -> float:
    """Mean fraction of the true top-k found (k = length of each truth row)."""
    total = 0.0
    for got, want in zip(found, truth, strict=True):
        want = list(want)
        total += len(set(list(got)[: len(want)]) & set(want)) / max(1, len(want))
    return total / max(1, len(truth))
