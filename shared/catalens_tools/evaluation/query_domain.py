"""Query-domain calibration under the evaluation protocol, through the production code (:mod:`catalens.query_domain`).

Serving fits a :class:`~catalens.query_domain.QueryDomain` on a sample of recent query embeddings (unlabelled) and,
for a photo query, re-scores the raw top ``CALIBRATION_POOL`` candidates with it. The evaluation does the same: the
reference "query log" of a query split is the *other* split's photos, embedded the same way, their labels never
read, sampled with a fixed seed down to the reference size. Only the choice of reference and the pool handling live
here; the math is :meth:`QueryDomain.calibrate` and :func:`catalens.query_domain.catalog_mean`, as in search.
"""

from __future__ import annotations

import numpy as np

from catalens.query_domain import (
    CALIBRATION_POOL,
    DEFAULT_BETA,
    MAX_REFERENCE,
    QueryDomain,
    catalog_mean,
    unit_rows,
)

__all__ = ["REFERENCE_SEED", "SCORINGS", "calibrated_scores", "reference_domain"]

REFERENCE_SEED = 0  # the fixed sample of the other split that stands in for the query log


def reference_domain(
    reference_vectors: np.ndarray, size: int = MAX_REFERENCE, *, beta: float = DEFAULT_BETA, seed: int = REFERENCE_SEED
) -> QueryDomain | None:
    """The domain serving would fit on these (unlabelled) query embeddings, at most ``size`` of them.

    None when there are fewer than ``MIN_REFERENCE`` rows: serving then does not calibrate (cold start).
    """
    return QueryDomain.from_samples(np.asarray(reference_vectors), beta=beta, max_reference=size, seed=seed)


SCORINGS = ("inverted softmax", "csls", "coral")
"""How a calibrated score is made: the serving one (domain centring + inverted-softmax hubness), CSLS (the mean of an
item's ``CSLS_K`` best cosines to the reference instead of the soft maximum), or CORAL (the query's centred vector
whitened by the reference's covariance and re-coloured by the catalog's, both shrunk towards the identity, before
the serving score). The last two are levers measured by ``catalens eval grocery``, not served."""

CSLS_K = 10
CORAL_SHRINK = 100.0  # identity weight in units of the mean eigenvalue: 1 and 10 lost 0.04-0.13 top-1 in the study


def _covariance_power(rows: np.ndarray, shrink: float):
    """``x -> x (S + λI)^p`` for the covariance S of centred ``rows``, λ = ``shrink`` × its mean eigenvalue."""
    _, singular, basis = np.linalg.svd(rows, full_matrices=False)
    eigen = singular**2 / len(rows)
    lam = shrink * eigen.sum() / rows.shape[1]

    def apply(x: np.ndarray, power: float) -> np.ndarray:
        coef = x @ basis.T
        return x * lam**power + (coef * ((eigen + lam) ** power - lam**power)) @ basis

    return apply


def calibrated_scores(
    domain: QueryDomain,
    queries: np.ndarray,
    catalog: np.ndarray,
    *,
    copy_cosine: float,
    pool: int = CALIBRATION_POOL,
    scoring: str = "inverted softmax",
) -> np.ndarray:
    """``[n_queries, n_catalog]`` scores as search returns them with calibration on.

    Per query: the ``pool`` best catalog entries by plain cosine get their calibrated score (their plain cosine when
    the query is a copy of a catalog photo: best plain cosine at least ``copy_cosine``, the model card's), every other
    entry ``-inf`` (search never returns it). The catalog mean is of the whole catalog, as ``IndexView.catalog_mean``
    is. An item's calibrated score does not depend on which other items are in the pool, so all queries are scored
    in one product (what :meth:`QueryDomain.calibrate` gives per pool, to float precision).
    """
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    queries = np.asarray(queries, dtype=np.float32)
    catalog = np.asarray(catalog, dtype=np.float32)
    mean = catalog_mean(catalog)
    pool = min(pool, len(catalog))
    raw = unit_rows(queries) @ unit_rows(catalog).T  # cosines (the copy check compares one with copy_cosine)
    items = unit_rows(catalog - mean)
    if scoring == "coral":
        reference = domain.reference - domain.query_mean
        whiten = _covariance_power(reference, CORAL_SHRINK)
        colour = _covariance_power(unit_rows(catalog) - mean, CORAL_SHRINK)

        def align(x: np.ndarray) -> np.ndarray:
            return unit_rows(colour(whiten(x - domain.query_mean, -0.5), 0.5))

        centred = align(queries) @ items.T
        against = align(domain.reference) @ items.T  # [R, n]
        logits = domain.beta * against
        top = logits.max(axis=0)
        hubness = (top + np.log(np.exp(logits - top).mean(axis=0))) / domain.beta
    else:
        centred = unit_rows(queries - domain.query_mean) @ items.T
        if scoring == "csls":
            against = unit_rows(domain.reference - domain.query_mean) @ items.T
            hubness = np.sort(against, axis=0)[-min(CSLS_K, len(against)) :].mean(axis=0)
        else:
            hubness = domain.hubness(items)
    calibrated = centred - hubness[None, :]
    candidates = np.argpartition(-raw, pool - 1, axis=1)[:, :pool]
    in_pool = np.zeros(raw.shape, dtype=bool)
    np.put_along_axis(in_pool, candidates, True, axis=1)
    copies = np.where(in_pool, raw, -np.inf).max(axis=1) >= copy_cosine  # search serves a copy plain cosine
    served = np.where(copies[:, None], raw, calibrated)
    return np.where(in_pool, served, -np.inf)
