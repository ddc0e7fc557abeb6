"""Merchant self-check: how well would shoppers' photos find *this* catalog's products? No labels needed.

Every catalog photo is its own ground truth: :func:`make_queries` turns some of them into shopper-like photos
(:mod:`catalens_tools.evaluation.augment`: the product cut out and put on a shelf, rotated, cropped, relit, blurred,
JPEG-compressed), each query is searched against the whole catalog, and a hit is the item the query was made from.
Recall@1/@5 over these queries is a quality figure for the merchant's own products — it says, for instance, that
near-identical packaging of two flavours confuses the search, and names those pairs.

What it is not: the real shopper photo distribution. It ranks configurations the way the labelled grocery
evaluation does (``catalens eval grocery --levers`` reports the rank agreement), which is what makes it useful for
choosing a configuration for a catalog nobody has labelled; absolute numbers differ.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from catalens_tools.evaluation.augment import AugmentConfig, Product, augment
from catalens_tools.evaluation.metrics import cosine_scores

__all__ = [
    "SelfCheckConfig",
    "kendall_tau",
    "make_queries",
    "retrieval_recall",
    "run_self_check",
    "spearman_rho",
]

EmbedBytes = Callable[[list[bytes]], np.ndarray]
"""Embeds photo bytes the production way (decode, preprocess, model): ``photos -> float32[n, d]``."""


@dataclass(frozen=True)
class SelfCheckConfig:
    """How many queries, from which items, augmented how.

    Parameters
    ----------
    queries_per_item
        Augmented photos made from each sampled item.
    max_items
        Items that get queries (a random sample when the catalog is larger); every item stays a search candidate.
    seed
        Seeds the item sample and every augmentation: the same catalog and seed give the same queries.
    shelf_items
        How many other products may appear on the shelf behind a query (kept in memory as cut-outs).
    augment
        The augmentation strengths.
    """

    queries_per_item: int = 3
    max_items: int = 500
    seed: int = 0
    shelf_items: int = 64
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def _decode(photo: bytes | Image.Image) -> Image.Image:
    if isinstance(photo, Image.Image):
        return photo.convert("RGB")
    from catalens.imaging import decode_image

    return decode_image(photo, target_short_side=512)


def make_queries(
    photos: Sequence[bytes | Image.Image], config: SelfCheckConfig = SelfCheckConfig()
) -> tuple[list[bytes], np.ndarray]:
    """Shopper-like JPEG queries made from a sample of ``photos``; returns ``(jpeg bytes, source item index)``.

    Deterministic in ``config.seed``: item sample, shelf companions and every augmentation come from it.
    """
    rng = np.random.default_rng([config.seed, 0])
    n = len(photos)
    items = np.sort(rng.choice(n, size=min(n, config.max_items), replace=False))
    shelf_ids = np.sort(rng.choice(n, size=min(n, config.shelf_items), replace=False))
    shelf = {int(i): Product.of(_decode(photos[int(i)])) for i in shelf_ids}
    queries: list[bytes] = []
    sources: list[int] = []
    quiet = AugmentConfig(**{**config.augment.__dict__, "jpeg_quality": None})
    for item in map(int, items):
        product = shelf.get(item) or Product.of(_decode(photos[item]))
        others = [p for i, p in shelf.items() if i != item]
        for q in range(config.queries_per_item):
            query_rng = np.random.default_rng([config.seed, 1, item, q])
            image = augment(product, query_rng, quiet, others=others)
            buffer = io.BytesIO()
            low, high = config.augment.jpeg_quality or (95, 95)
            image.save(buffer, "JPEG", quality=int(query_rng.integers(low, high + 1)))
            queries.append(buffer.getvalue())
            sources.append(item)
    return queries, np.asarray(sources, dtype=np.int64)


def retrieval_recall(
    query_vectors: np.ndarray,
    query_items: Sequence[int] | np.ndarray,
    catalog_vectors: np.ndarray,
    catalog_items: Sequence[int] | np.ndarray | None = None,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Recall@k of the source item: is the item a query was made from among the ``k`` best distinct items?

    ``catalog_items`` labels each catalog row (several rows may belong to one item: the best row counts); default
    row i is item i. Ties count against the query.
    """
    from catalens_tools.evaluation.metrics import topk_accuracy

    scores = cosine_scores(query_vectors, catalog_vectors)
    labels = np.arange(len(catalog_vectors)) if catalog_items is None else np.asarray(catalog_items)
    return {f"recall@{k}": topk_accuracy(scores, labels, np.asarray(query_items), k=k) for k in ks}


def _best_rival(scores: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query: the best-scoring *other* item and whether it ties or beats the source (a miss at rank 1)."""
    rows = np.arange(len(sources))
    own = scores[rows, sources]
    others = scores.copy()
    others[rows, sources] = -np.inf
    rival = others.argmax(axis=1)
    return rival, others[rows, rival] >= own


def confusions(
    query_vectors: np.ndarray, query_items: np.ndarray, catalog_vectors: np.ndarray, top: int = 10
) -> list[tuple[int, int, int]]:
    """The most frequent (source item, item ranked at or above it, count) pairs among rank-1 misses."""
    sources = np.asarray(query_items)
    rival, missed = _best_rival(cosine_scores(query_vectors, catalog_vectors), sources)
    wrong = Counter((int(s), int(r)) for s, r, m in zip(sources, rival, missed, strict=True) if m)
    return [(s, b, c) for (s, b), c in wrong.most_common(top)]


def run_self_check(
    photos: Sequence[bytes],
    embed: EmbedBytes,
    config: SelfCheckConfig = SelfCheckConfig(),
    *,
    catalog_vectors: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> dict:
    """Embed the catalog (unless ``catalog_vectors`` are given), make and embed the queries, report recall.

    Returns a JSON-ready dict: ``items``, ``queries``, ``recall@1``, ``recall@5``, the items most often missed and
    the most frequent confusions (by ``names`` when given, else by index).
    """
    if len(photos) < 2:
        raise ValueError("a self-check needs at least two catalog photos")
    if catalog_vectors is None:
        catalog_vectors = embed(list(photos))
    queries, sources = make_queries(photos, config)
    query_vectors = embed(queries)
    recall = retrieval_recall(query_vectors, sources, catalog_vectors)
    _, miss = _best_rival(cosine_scores(query_vectors, catalog_vectors), sources)
    label = (lambda i: names[i]) if names is not None else (lambda i: i)
    missed = Counter(int(s) for s, m in zip(sources, miss, strict=True) if m)
    return {
        "items": len(photos),
        "items_queried": len(set(sources.tolist())),
        "queries": len(queries),
        **recall,
        "most_missed": [{"item": label(i), "missed": c} for i, c in missed.most_common(10)],
        "confusions": [
            {"item": label(s), "found_instead": label(b), "queries": c}
            for s, b, c in confusions(query_vectors, sources, catalog_vectors)
        ],
    }


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Average ranks (ties share the mean rank), 1-based."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_rho(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("spearman_rho needs two sequences of equal length >= 2")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b: concordant minus discordant pairs, corrected for ties."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("kendall_tau needs two sequences of equal length >= 2")
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant_minus_discordant = float((dx * dy).sum())
    pairs_x, pairs_y = float((dx != 0).sum()), float((dy != 0).sum())
    denominator = np.sqrt(pairs_x * pairs_y)
    return concordant_minus_discordant / denominator if denominator > 0 else float("nan")
