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
    is_catalog_copy,
    unit_rows,
)

__all__ = ["REFERENCE_SEED", "calibrated_scores", "reference_domain"]

REFERENCE_SEED = 0  # the fixed sample of the other split that stands in for the query log


def reference_domain(
    reference_vectors: np.ndarray, size: int = MAX_REFERENCE, *, beta: float = DEFAULT_BETA, seed: int = REFERENCE_SEED
) -> QueryDomain | None:
    """The domain serving would fit on these (unlabelled) query embeddings, at most ``size`` of them.

    None when there are fewer than ``MIN_REFERENCE`` rows: serving then does not calibrate (cold start).
    """
    return QueryDomain.from_samples(np.asarray(reference_vectors), beta=beta, max_reference=size, seed=seed)


def calibrated_scores(
    domain: QueryDomain,
    queries: np.ndarray,
    catalog: np.ndarray,
    *,
    copy_cosine: float,
    pool: int = CALIBRATION_POOL,
) -> np.ndarray:
    """``[n_queries, n_catalog]`` scores as search returns them with calibration on.

    Per query: the ``pool`` best catalog entries by plain cosine get their calibrated score (their plain cosine when
    the query is a copy of a catalog photo: best plain cosine at least ``copy_cosine``, the model card's), every other
    entry ``-inf`` (search never returns it). The catalog mean is of the whole catalog, as ``IndexView.catalog_mean``
    is.
    """
    queries = np.asarray(queries, dtype=np.float32)
    catalog = np.asarray(catalog, dtype=np.float32)
    mean = catalog_mean(catalog)
    pool = min(pool, len(catalog))
    raw = unit_rows(queries) @ unit_rows(catalog).T  # cosines (the copy check compares one with copy_cosine)
    scores = np.full(raw.shape, -np.inf)
    for row, query in enumerate(queries):
        candidates = np.argpartition(-raw[row], pool - 1)[:pool]
        if is_catalog_copy(raw[row, candidates].max(), copy_cosine):  # search serves a shop photo's copy plain cosine
            scores[row, candidates] = raw[row, candidates]
        else:
            scores[row, candidates] = domain.calibrate(query, catalog[candidates], mean)[0]
    return scores
