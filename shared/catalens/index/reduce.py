"""Optional dimensionality reduction from model space to index space (PCA or PCA-whitening).

Fitted once at build time on the catalog's vectors and then kept: compactions reuse the
projection of the previous snapshot, because user profiles store vectors in index space and a
new projection would silently make them meaningless. Only a full rebuild (no previous
snapshot) fits a new one. Applying it needs numpy alone (query path); so does fitting.

Index space vectors are L2-normalised after projection, so scores stay cosine similarities.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

ProjectionKind = Literal["pca", "pca_whiten"]


@dataclass(frozen=True, eq=False)
class Projection:
    """``x -> normalise(((x - mean) @ components) * scale)``.

    ``components`` is float32[d_model, d_index] with orthonormal columns (principal axes, by
    decreasing variance); ``scale`` is 1 for PCA and 1/sqrt(variance + eps) per axis for whitening.
    """

    kind: ProjectionKind
    mean: np.ndarray  # float32[d_model]
    components: np.ndarray  # float32[d_model, d_index]
    scale: np.ndarray  # float32[d_index]
    explained_variance_ratio: float = 1.0

    def __post_init__(self) -> None:
        # One memory layout for built and loaded projections: BLAS rounds differently for a
        # Fortran-ordered matrix, and a round trip must give bit-identical scores.
        for name in ("mean", "components", "scale"):
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.components.shape[1])

    @cached_property
    def fingerprint(self) -> str:
        """Short hash of the arrays: two snapshots with equal fingerprints share an index space (computed once)."""
        digest = hashlib.sha256(self.kind.encode())
        for array in (self.mean, self.components, self.scale):
            digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return digest.hexdigest()[:16]

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Project float32[n, d_model] (or [d_model]) to unit-norm float32 in index space."""
        x = np.asarray(vectors, dtype=np.float32)
        projected = ((x - self.mean) @ self.components) * self.scale
        return normalise(projected)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components, "scale": self.scale}

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "explained_variance_ratio": round(float(self.explained_variance_ratio), 6),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_parts(cls, description: dict, arrays: dict[str, np.ndarray]) -> Projection:
        projection = cls(
            kind=description["kind"],
            mean=np.asarray(arrays["mean"], dtype=np.float32),
            components=np.asarray(arrays["components"], dtype=np.float32),
            scale=np.asarray(arrays["scale"], dtype=np.float32),
            explained_variance_ratio=float(description.get("explained_variance_ratio", 1.0)),
        )
        if description.get("fingerprint") not in (None, projection.fingerprint):
            raise ValueError("projection arrays do not match the fingerprint recorded in the snapshot")
        return projection


def normalise(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows (a zero vector stays zero rather than becoming NaN)."""
    x = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)


def fit_projection(
    vectors: np.ndarray,
    dim: int,
    *,
    whiten: bool = False,
    max_samples: int = 100_000,
    seed: int = 0,
    eps: float = 1e-6,
) -> Projection:
    """Fit PCA (or PCA-whitening) to ``dim`` axes on up to ``max_samples`` rows of ``vectors``.

    Uses the eigen-decomposition of the covariance (d_model² memory, no scikit-learn); for few axes of a wide
    model (≥ 1,024 dims, ≤ a quarter of them kept) a seeded randomized SVD instead (Halko et al. 2011, two power
    iterations): at 3,984 → 256 dims on 20k rows it takes seconds where the covariance and its eigh take a
    minute, and the axes it finds carry the same variance to three digits. Axis signs are fixed
    (largest-magnitude loading positive) so the same data gives the same projection.
    """
    x = np.asarray(vectors, dtype=np.float32)
    n, d = x.shape
    if not 0 < dim <= d:
        raise ValueError(f"projection dim must be in 1..{d}, got {dim}")
    if n < 2:
        raise ValueError("fitting a projection needs at least two vectors")
    if n > max_samples:
        x = x[np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))]
    mean = x.mean(axis=0, dtype=np.float64)
    if d >= 1024 and 4 * dim <= d and x.shape[0] > 2 * dim:
        variances, components, total = _randomized_axes(x - mean.astype(np.float32), dim, seed)
    elif x.shape[0] < d and dim <= x.shape[0]:  # few wide rows: the thin SVD of the rows, not a d×d covariance
        centred = x.astype(np.float64) - mean
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        denominator = max(1, centred.shape[0] - 1)
        variances, components = singular[:dim] ** 2 / denominator, vt[:dim].T.copy()
        total = float((singular**2).sum() / denominator)
    else:
        centred = x.astype(np.float64) - mean
        covariance = centred.T @ centred / max(1, centred.shape[0] - 1)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1][:dim]
        variances = np.clip(eigenvalues[order], 0.0, None)
        components = eigenvectors[:, order]
        total = float(np.clip(eigenvalues, 0.0, None).sum())
    signs = np.sign(components[np.argmax(np.abs(components), axis=0), np.arange(dim)])
    components *= np.where(signs == 0, 1.0, signs)
    scale = 1.0 / np.sqrt(variances + eps) if whiten else np.ones(dim)
    return Projection(
        kind="pca_whiten" if whiten else "pca",
        mean=mean.astype(np.float32),
        components=components.astype(np.float32),
        scale=scale.astype(np.float32),
        explained_variance_ratio=float(variances.sum() / total) if total > 0 else 1.0,
    )


def _randomized_axes(centred: np.ndarray, dim: int, seed: int, power: int = 2) -> tuple[np.ndarray, np.ndarray, float]:
    """(variances[dim], components float64[d, dim], total variance) of centred rows by randomized SVD."""
    n, d = centred.shape
    rng = np.random.default_rng(seed)
    basis = _orthonormal(centred @ rng.standard_normal((d, dim + 16)).astype(np.float32))
    for _ in range(power):
        basis = _orthonormal(centred @ _orthonormal(centred.T @ basis))
    _, singular, vt = np.linalg.svd((basis.T @ centred).astype(np.float64), full_matrices=False)
    denominator = max(1, n - 1)
    total = float(np.einsum("ij,ij->", centred, centred, dtype=np.float64)) / denominator
    return singular[:dim] ** 2 / denominator, vt[:dim].T.copy(), total


def _orthonormal(columns: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns' span via the eigen-decomposition of their small Gram matrix.

    Equivalent to a thin QR here and several times faster on a busy machine (one BLAS product and a k×k eigh).
    """
    gram = columns.T.astype(np.float64) @ columns.astype(np.float64)
    values, vectors = np.linalg.eigh(gram)
    keep = values > values.max() * 1e-10
    return (columns @ (vectors[:, keep] / np.sqrt(values[keep])).astype(columns.dtype)).astype(np.float32)
