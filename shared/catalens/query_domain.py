"""Query-domain calibration: score shoppers' photos against shop photos as the two domains they are.

Shoppers photograph products on shelves, in bins, in their hands; merchants upload clean shop photos. In a
CNN's embedding space the two sit apart, and a few catalog items ("hubs": here a satsuma, a lime, a yoghurt pot)
end up close to *every* shopper photo and win far more queries than they should. Two training-free corrections,
both fitted on a small reference sample of recent query embeddings (no photos, no labels, no user ids):

1. **Centring by domain.** Each side is centred on its own mean before the cosine: the query on the mean of the
   reference queries, the item on the mean of the catalog. What every shopper photo shares (shelf clutter,
   lighting) and what every shop photo shares (white background) stop counting as similarity.
2. **Hubness correction** (the inverted softmax of Smith et al., ICLR 2017; CSLS of Conneau et al., ICLR 2018 is
   its hard-neighbour cousin). An item's score is lowered by how similar it is to shoppers' photos *in general*:
   ``(1/β)·log mean_r exp(β·s(r, item))`` over the reference queries r. A hub pays a lot, a specific item little.

    calibrated(q, c) = cos(q − μ_q, c − μ_c) − (1/β) · log mean_r exp(β · cos(r − μ_q, c − μ_c))

Calibration is for shoppers' photos. A query that is a copy of a shop photo (a screenshot of a product page, a
merchant checking their own photo) lives in the catalog's domain: centring it on the shoppers' mean would push it
away from its own item. Such a query (plain cosine to its best candidate at least the model card's ``copy_cosine``,
the cosine at which ingest flags near-duplicates) is served plain cosine and is not kept as a query sample. On the
grocery data no shopper photo comes near it (the best raw cosine of any of the 2,936 photos to any catalog image is
0.78).

On the grocery data (``catalens eval grocery --levers``) this lifts photo→catalog top-1 by about 0.08 with the
serving model, with a reference of 30 to 2,640 shopper photos. Item vectors are not changed (design invariant 5:
the same photo gives the same vector in ingest and query); calibration re-scores a first-stage pool of candidates
at query time. numpy only: this runs on the query path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_BETA = 5.0
MAX_REFERENCE = 256
MIN_REFERENCE = 30
SEED_ITEMS = 128  # items whose synthetic shoppers' photos seed the query domain (a bottom-k sample by hash)
SEED_VIEWS = 2  # synthetic photos per seeded item: 256 in all, MAX_REFERENCE
CALIBRATION_POOL = 50  # candidates re-scored (at least): the raw top-50 holds the calibrated top-k in practice


@dataclass(frozen=True)
class SeedSample:
    """One synthetic shopper's photo embedding of a catalog item, for the query domain before real samples exist.

    ``item_hash`` (hex, :func:`seed_item_hash`) orders the seeded items: the builder keeps the smallest ones, a
    uniform sample of the catalog whatever order it was uploaded in.
    """

    item_hash: str
    view: int
    vector: np.ndarray


def seed_item_hash(item_id: str, model_fingerprint: str) -> str:
    """A 16-hex-digit hash of an item for one model: where the item falls in the seed's bottom-k sample."""
    return hashlib.sha256(f"{model_fingerprint}\n{item_id}".encode()).hexdigest()[:16]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row (the last axis) scaled to unit length; an all-zero row stays zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class QueryDomain:
    """Reference query embeddings (raw, as the embedder made them) and the calibration's temperature ``beta``.

    Build with :meth:`from_samples`; ``reference`` is float32 ``[R, d]``, unit rows, ``MIN_REFERENCE <= R``.
    ``seeded``: the reference is (mostly) the synthetic seed, not real shoppers' photos. Such a reference is trusted
    for the domain's mean but not for its hubs, so calibration only centres (hubness 0): synthetic photos of the
    catalog's own items make every item look like a hub of itself. From the seed, centring alone gave train-as-queries
    top-1 0.465 and top-5 0.798 against 0.441 / 0.782 with the seed's hubness too (val 0.498 / 0.825 against
    0.508 / 0.809; int8, means over ten seeds, docs/evaluation.md).
    """

    reference: np.ndarray
    beta: float = DEFAULT_BETA
    seeded: bool = False
    query_mean: np.ndarray = field(init=False, repr=False)
    term_rows: np.ndarray = field(init=False, repr=False)
    """float32 ``[1 + R, d]``: the query mean, then the centred unit reference rows. With the catalog mean, the
    vectors whose dot products with a candidate :meth:`calibrate_terms` needs (an index can compute them from its
    codes without rebuilding the candidate's vector)."""

    def __post_init__(self) -> None:
        reference = np.asarray(self.reference, dtype=np.float32)
        if reference.ndim != 2 or len(reference) < MIN_REFERENCE:
            raise ValueError(f"a query domain needs at least {MIN_REFERENCE} reference vectors, got {reference.shape}")
        if not np.isfinite(reference).all():
            raise ValueError("reference vectors must be finite")
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        reference = unit_rows(reference)
        mean = reference.mean(axis=0)
        object.__setattr__(self, "reference", reference)
        object.__setattr__(self, "query_mean", mean)
        object.__setattr__(self, "term_rows", np.vstack([mean[None, :], unit_rows(reference - mean)]))

    @property
    def _centred_reference(self) -> np.ndarray:
        return self.term_rows[1:]

    @classmethod
    def from_samples(
        cls,
        samples: Sequence[np.ndarray] | np.ndarray,
        *,
        seeds: Sequence[np.ndarray] | np.ndarray = (),
        beta: float = DEFAULT_BETA,
        max_reference: int = MAX_REFERENCE,
        seed: int = 0,
    ) -> QueryDomain | None:
        """A domain from query samples (newest first), or None when there are fewer than ``MIN_REFERENCE``.

        ``seeds`` are synthetic shoppers' photos of the catalog (ingest makes them, :mod:`catalens.shopper_views`):
        they stand in only while fewer than ``MIN_REFERENCE`` real samples exist, and then wholly give way. Mixed
        in, they would cost: 30 real photos alone give train-as-queries top-1 0.504, the same 30 topped up with
        seeds to 256 only 0.462 (docs/evaluation.md). Rows that are not finite or have the wrong width are dropped;
        more than ``max_reference`` rows are subsampled at random (seeded, so a rebuild from the same samples gives
        the same domain).
        """
        rows = [np.asarray(s, dtype=np.float32).reshape(-1) for s in samples]
        extra = [np.asarray(s, dtype=np.float32).reshape(-1) for s in seeds]
        if not rows and not extra:
            return None
        dim = (rows or extra)[0].shape[0]

        def usable(vectors: list[np.ndarray]) -> list[np.ndarray]:
            return [r for r in vectors if r.shape[0] == dim and np.isfinite(r).all() and np.linalg.norm(r) > 0]

        kept = usable(rows)
        seeded = len(kept) < MIN_REFERENCE
        if seeded:
            kept += usable(extra)
        if len(kept) < MIN_REFERENCE:
            return None
        matrix = np.stack(kept)
        if len(matrix) > max_reference:
            pick = np.random.default_rng(seed).choice(len(matrix), max_reference, replace=False)
            matrix = matrix[np.sort(pick)]
        return cls(matrix, beta=beta, seeded=seeded)

    @property
    def dim(self) -> int:
        return int(self.reference.shape[1])

    def __len__(self) -> int:
        return int(self.reference.shape[0])

    def calibrate(
        self, query: np.ndarray, candidates: np.ndarray, catalog_mean: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated scores of ``candidates`` ``[P, d]`` for one ``query`` ``[d]``.

        Returns ``(calibrated, centred, hubness)``, each ``[P]``: ``calibrated = centred − hubness``, where
        ``centred`` is the domain-centred cosine and ``hubness`` the item's typical similarity to shoppers' photos.
        """
        query, catalog_mean = self._checked(query, catalog_mean)
        candidates = np.asarray(candidates, dtype=np.float32)
        # checked before reshaping: [P, d'] with P·d' divisible by d would otherwise reshape silently into nonsense
        if candidates.shape[-1] != self.dim:
            raise ValueError(f"candidates have {candidates.shape[-1]} dimensions, the query domain {self.dim}")
        candidates = candidates.reshape(-1, self.dim)
        return self.calibrate_terms(query, candidates @ query, *self.terms(candidates, catalog_mean), catalog_mean)

    def terms(self, vectors: np.ndarray, catalog_mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(norms, terms)`` of float32 ``vectors`` ``[P, d]`` as :meth:`calibrate_terms` takes them: squared norms
        and dot products with the catalog mean, then with each of :attr:`term_rows`."""
        norms = np.einsum("ij,ij->i", vectors, vectors)
        return norms, np.hstack([(vectors @ catalog_mean)[:, None], vectors @ self.term_rows.T])

    def calibrate_terms(
        self,
        query: np.ndarray,
        scores: np.ndarray,
        norms: np.ndarray,
        terms: np.ndarray,
        catalog_mean: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`calibrate` from dot products alone: a candidate ``c``'s ``scores`` ``c·query``, squared ``norms``
        ``‖c‖²`` and ``terms`` ``[P, 2 + R]``: ``c·catalog_mean``, then ``c`` · each of :attr:`term_rows`.

        Centring and the cosine are linear in ``c`` but for the norm of ``c − catalog_mean``, which these give too,
        so a compact index scores a pool from its codes instead of decoding 50 vectors of 3,984 dimensions.
        """
        query, catalog_mean = self._checked(query, catalog_mean)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        norms = np.asarray(norms, dtype=np.float32).reshape(-1)
        terms = np.asarray(terms, dtype=np.float32)
        if terms.shape != (scores.size, 2 + len(self)) or norms.shape != scores.shape:
            raise ValueError(
                f"terms of shape {terms.shape} and {norms.size} norms for {scores.size} candidates; "
                f"expected [{scores.size}, {2 + len(self)}]"
            )
        offset = query - self.query_mean
        offset_norm = max(float(np.linalg.norm(offset)), 1e-12)
        squared = norms - 2 * terms[:, 0] + float(catalog_mean @ catalog_mean)
        # an item at the catalog mean has no direction: unit_rows makes it zero, and so does this
        inverse = np.where(squared > _DEGENERATE, 1 / np.sqrt(np.maximum(squared, _DEGENERATE)), 0).astype(np.float32)
        mean_offset = float(catalog_mean @ offset)
        centred = (scores - terms[:, 1] - mean_offset) * inverse / np.float32(offset_norm)
        if self.seeded:
            hubness = np.zeros(scores.size, dtype=np.float32)
        else:
            cosines = (terms[:, 2:] - self._centred_reference @ catalog_mean) * inverse[:, None]  # [P, R]
            hubness = _soft_maximum(self.beta * cosines.T) / self.beta
        return (centred - hubness).astype(np.float32), centred.astype(np.float32), hubness.astype(np.float32)

    def _checked(self, query: np.ndarray, catalog_mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        catalog_mean = np.asarray(catalog_mean, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise ValueError(f"query has {query.shape[0]} dimensions, the query domain {self.dim}")
        if catalog_mean.shape[0] != self.dim:
            raise ValueError(f"the catalog mean has {catalog_mean.shape[0]} dimensions, the query domain {self.dim}")
        return query, catalog_mean

    def hubness(self, centred_items: np.ndarray) -> np.ndarray:
        """``(1/β)·log mean_r exp(β·cos)`` per centred, unit item row (a stable log-sum-exp); 0 for a seeded domain."""
        if self.seeded:
            return np.zeros(len(centred_items), dtype=np.float32)
        return _soft_maximum(self.beta * (self._centred_reference @ centred_items.T)) / self.beta


# ‖c − catalog mean‖² below this: the item is the mean (a catalog of one), and what is left of c − mean is float32
# rounding of the expansion, no direction
_DEGENERATE = 1e-6


def _soft_maximum(logits: np.ndarray) -> np.ndarray:
    """``log mean exp`` over the first axis of ``logits`` ``[R, P]``, stable: ``[P]``."""
    top = logits.max(axis=0)
    return top + np.log(np.exp(logits - top).mean(axis=0))


def is_catalog_copy(best_raw_cosine: float, copy_cosine: float) -> bool:
    """Whether a photo query whose best plain cosine to the catalog is ``best_raw_cosine`` is a copy of a shop photo
    (then it is searched plain and not sampled: it is not a shopper's photo).

    ``copy_cosine`` is the model card's: where a copy begins depends on the model that made the vectors.
    """
    return bool(best_raw_cosine >= copy_cosine)


def catalog_mean(vectors: np.ndarray) -> np.ndarray:
    """The mean of a catalog's unit item vectors (what centring subtracts from every item)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError("catalog_mean needs a non-empty [n, d] matrix")
    return unit_rows(vectors).mean(axis=0)
