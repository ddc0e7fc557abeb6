"""The Grocery Store Dataset protocol (``../shared/data/grocery/README.md``), over any embedding function.

Two tasks, both on the fine class (81 products and produce varieties):

- **photo → catalog** (the shopper's case): catalog = the 81 iconic shop images; every natural photo of the chosen
  split is a query; top-1 / top-5 accuracy, overall, for the 31 ``Packages`` classes and per group.
- **photo → photo**: catalog = the photos of the other split, queries = the chosen split's photos (the protocol's
  case is ``split="val"``: catalog = train, queries = val); relevant = same fine class; recall@1, recall@5, mAP.

Photo → catalog is reported twice: plain cosine, and ``calibrated`` as search serves it once it has a query log
(query-domain calibration, :mod:`catalens.query_domain`; the other split's photos, unlabelled, stand in for the log).

:func:`evaluate_grocery` takes ``embed_fn(paths) -> float32[n, d]``, so a different pooling, crop, flip averaging or
model is evaluated by passing a different function; the metrics live in :mod:`catalens_tools.evaluation.metrics`.
Nothing is cached or written anywhere.
"""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalens.category import CALIBRATED_TEMPERATURE, PLAIN_TEMPERATURE
from catalens.errors import CatalensError
from catalens.query_domain import CALIBRATION_POOL, MAX_REFERENCE, QueryDomain, unit_rows
from catalens_tools.evaluation.category import category_report, fit_temperature
from catalens_tools.evaluation.metrics import cosine_scores, mean_average_precision, recall_at_k, topk_accuracy
from catalens_tools.evaluation.query_domain import calibrated_scores, reference_domain
from catalens_tools.model.measured import serving_copy_cosine

__all__ = [
    "EmbedFn",
    "GroceryData",
    "GroceryDataError",
    "GroceryImage",
    "evaluate_grocery",
    "load_grocery",
]

EmbedFn = Callable[[list[Path]], np.ndarray]
"""Embeds image files: ``paths -> float32[len(paths), d]``, one row per path, in order."""

SPLITS = ("train", "val")
DEFAULT_ROW = "whole crop (default)"
SUBJECT_ROW = "main subject"
SUBJECT_CATALOG_ROW = "main subject, catalog cropped too"
SEEDED_ROW = "seeded query domain (synthetic shoppers' photos, cold start)"
CATALOG_VIEWS_ROW = "catalog: mean of photo and {} shopper views"
CSLS_ROW = "CSLS hubness (k=10) instead of inverted softmax"
CORAL_ROW = "CORAL alignment (shrunk) before calibration"
PACKAGES = "Packages"


class GroceryDataError(CatalensError):
    """The grocery folder is missing or its labels.csv does not look like the documented one."""

    code = "dataset_error"


@dataclass(frozen=True)
class GroceryImage:
    """One row of labels.csv, with the path made absolute."""

    path: Path
    role: str  # "iconic" (catalog shop image) or "natural" (phone photo)
    split: str  # "catalog", "train" or "val"
    fine_id: int
    fine_name: str
    coarse_id: int
    coarse_name: str
    group: str  # "Fruit", "Vegetables" or "Packages"


@dataclass(frozen=True)
class GroceryData:
    root: Path
    images: tuple[GroceryImage, ...]

    @property
    def catalog(self) -> list[GroceryImage]:
        """The iconic shop images, one per fine class."""
        return [image for image in self.images if image.role == "iconic"]

    def photos(self, split: str) -> list[GroceryImage]:
        """Natural photos of ``split`` ("train" or "val")."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return [image for image in self.images if image.role == "natural" and image.split == split]


def load_grocery(data_dir: Path | str) -> GroceryData:
    """Read ``labels.csv`` of the grocery folder (images are not opened here)."""
    root = Path(data_dir)
    labels = root / "labels.csv"
    if not labels.is_file():
        raise GroceryDataError(f"{labels} not found: is --data the grocery folder (../shared/data/grocery)?")
    images = []
    with labels.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        expected = {"path", "role", "split", "fine_id", "fine_name", "coarse_id", "coarse_name", "group"}
        missing = expected - set(reader.fieldnames or ())
        if missing:
            raise GroceryDataError(f"{labels} lacks column(s): {', '.join(sorted(missing))}")
        for row in reader:
            images.append(
                GroceryImage(
                    path=root / row["path"],
                    role=row["role"],
                    split=row["split"],
                    fine_id=int(row["fine_id"]),
                    fine_name=row["fine_name"],
                    coarse_id=int(row["coarse_id"]),
                    coarse_name=row["coarse_name"],
                    group=row["group"],
                )
            )
    data = GroceryData(root=root, images=tuple(images))
    if not data.catalog:
        raise GroceryDataError(f"{labels} has no iconic (catalog) images")
    return data


def first_per_class(images: Iterable[GroceryImage], limit: int | None) -> list[GroceryImage]:
    """At most ``limit`` images per fine class, the first by path: a deterministic subset for quick runs."""
    images = sorted(images, key=lambda image: str(image.path))
    if limit is None:
        return images
    kept: dict[int, int] = defaultdict(int)
    subset = []
    for image in images:
        if kept[image.fine_id] < limit:
            kept[image.fine_id] += 1
            subset.append(image)
    return subset


def _accuracy(scores: np.ndarray, catalog_labels: np.ndarray, query_labels: np.ndarray) -> dict:
    if len(query_labels) == 0:
        return {"queries": 0, "top1": None, "top5": None}
    return {
        "queries": len(query_labels),
        "top1": topk_accuracy(scores, catalog_labels, query_labels, k=1),
        "top5": topk_accuracy(scores, catalog_labels, query_labels, k=5),
    }


def photo_to_catalog(
    query_vectors: np.ndarray | None,
    queries: list[GroceryImage],
    catalog_vectors: np.ndarray | None,
    catalog: list[GroceryImage],
    *,
    scores: np.ndarray | None = None,
) -> dict:
    """Top-1/top-5 accuracy of the fine class, overall, for packaged products, and per group.

    ``scores`` ``[n_queries, n_catalog]`` replaces the plain cosine of the vectors (calibrated or re-ranked scores).
    """
    if scores is None:
        scores = cosine_scores(query_vectors, catalog_vectors)
    catalog_labels = np.array([image.fine_id for image in catalog])
    query_labels = np.array([image.fine_id for image in queries])
    groups = np.array([image.group for image in queries])
    result = _accuracy(scores, catalog_labels, query_labels)
    result["catalog"] = len(catalog)
    result["packages"] = _accuracy(scores[groups == PACKAGES], catalog_labels, query_labels[groups == PACKAGES])
    result["by_group"] = {
        group: _accuracy(scores[groups == group], catalog_labels, query_labels[groups == group])
        for group in sorted(set(groups))
    }
    return result


def photo_to_photo(
    query_vectors: np.ndarray, queries: list[GroceryImage], gallery_vectors: np.ndarray, gallery: list[GroceryImage]
) -> dict:
    """Recall@1, recall@5 and mAP; relevant = same fine class."""
    scores = cosine_scores(query_vectors, gallery_vectors)
    gallery_labels = np.array([image.fine_id for image in gallery])
    query_labels = np.array([image.fine_id for image in queries])
    return {
        "queries": len(queries),
        "catalog": len(gallery),
        "recall@1": recall_at_k(scores, gallery_labels, query_labels, k=1),
        "recall@5": recall_at_k(scores, gallery_labels, query_labels, k=5),
        "mAP": mean_average_precision(scores, gallery_labels, query_labels),
    }


def _calibrated_scores(
    query_vectors: np.ndarray,
    catalog_vectors: np.ndarray,
    other_split_vectors: np.ndarray,
    reference: int,
    copy_cosine: float,
) -> tuple[np.ndarray, int, float] | None:
    """Scores with query-domain calibration (the other split's photos, no labels, are the query log), the reference
    size and beta; None when there is too little reference (serving would not calibrate)."""
    if not reference:
        return None
    domain = reference_domain(other_split_vectors, reference)
    if domain is None:
        return None
    return calibrated_scores(domain, query_vectors, catalog_vectors, copy_cosine=copy_cosine), len(domain), domain.beta


def _calibrated(
    queries: list[GroceryImage], catalog: list[GroceryImage], calibrated: tuple[np.ndarray, int, float] | None
) -> dict | None:
    """Photo → catalog with query-domain calibration, as search serves it once it has a query log."""
    if calibrated is None:
        return None
    scores, size, beta = calibrated
    return {
        "reference": size,
        "reference_from": "the other split's photos, unlabelled",
        "beta": beta,
        "pool": min(CALIBRATION_POOL, len(catalog)),
        "photo_to_catalog": photo_to_catalog(None, queries, None, catalog, scores=scores),
    }


def _brief(result: dict) -> dict:
    """Top-1/top-5 overall and top-1 per group, for one row of the comparison table."""
    out = {"top1": result["top1"], "top5": result["top5"], "packages_top1": result["packages"]["top1"]}
    for group, numbers in result["by_group"].items():
        out[f"{group.lower()}_top1"] = numbers["top1"]
    return out


def _category(
    scores: np.ndarray, queries: list[GroceryImage], catalog: list[GroceryImage], temperature: float, fit: bool
) -> dict:
    """Category prediction from ``scores``: accuracy, ECE at the serving temperature (and this split's own fit)."""
    catalog_categories = [image.coarse_name for image in catalog]
    truths = [image.coarse_name for image in queries]
    report = category_report(scores, catalog_categories, truths, temperature)
    if fit:
        report["fitted_temperature"] = fit_temperature(scores, catalog_categories, truths)
    return report


REFERENCE_SAMPLES = 10  # a calibrated row is reported for this many reference samples (seeds 0..9): the spread


@dataclass(frozen=True)
class RowSpec:
    """One row of the comparison: how queries, catalog and query log are embedded, and how search scores them.

    ``seeds`` (``[S, m, d]``: S samples of m synthetic shoppers' photos of the catalog) replace the query log as the
    calibration's reference: the cold start as served once ingest has seeded the query domain. ``scoring`` is one of
    :data:`catalens_tools.evaluation.query_domain.SCORINGS`.
    """

    queries: np.ndarray
    catalog: np.ndarray
    other: np.ndarray
    seeds: np.ndarray | None = None
    scoring: str = "inverted softmax"
    note: str = ""


def _spread(briefs: list[dict]) -> dict:
    """``metric -> [min, max, mean]`` over the reference samples."""
    out = {}
    for key in briefs[0]:
        values = [b[key] for b in briefs if b[key] is not None]
        if values:
            out[key] = [min(values), max(values), float(np.mean(values))]
    return out


def compare_rows(
    variants: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray] | RowSpec],
    queries: list[GroceryImage],
    catalog: list[GroceryImage],
    *,
    reference: int,
    copy_cosine: float,
    fit: bool = False,
    samples: int = REFERENCE_SAMPLES,
) -> list[dict]:
    """One row per variant of the query path: ``name -> (query, catalog, other split)`` vectors or a
    :class:`RowSpec`; plain and calibrated photo → catalog and category prediction, as search would serve each.

    The calibrated numbers are those of reference sample 0 (the other split's photos drawn with seed 0, or the
    first seed sample); ``calibrated_spread`` has ``[min, max, mean]`` over ``samples`` reference samples."""
    rows = []
    for name, spec in variants.items():
        if not isinstance(spec, RowSpec):
            spec = RowSpec(*spec)
        plain_scores = cosine_scores(spec.queries, spec.catalog)
        row: dict = {
            "name": name,
            "note": spec.note,
            "plain": _brief(photo_to_catalog(None, queries, None, catalog, scores=plain_scores)),
            "plain_category": _category(plain_scores, queries, catalog, PLAIN_TEMPERATURE, fit),
            "calibrated": None,
            "calibrated_category": None,
            "calibrated_spread": None,
        }
        briefs, first = [], None
        count = len(spec.seeds) if spec.seeds is not None else (samples if reference else 0)
        for sample in range(min(count, samples)):
            if spec.seeds is not None:
                domain = QueryDomain.from_samples([], seeds=spec.seeds[sample], max_reference=len(spec.seeds[sample]))
            else:
                domain = reference_domain(spec.other, reference, seed=sample)
            if domain is None:
                break
            scores = calibrated_scores(
                domain, spec.queries, spec.catalog, copy_cosine=copy_cosine, scoring=spec.scoring
            )
            briefs.append(_brief(photo_to_catalog(None, queries, None, catalog, scores=scores)))
            if first is None:
                first = scores
                row["reference"] = len(domain)
        if first is not None:
            row["calibrated"] = briefs[0]
            row["calibrated_category"] = _category(first, queries, catalog, CALIBRATED_TEMPERATURE, fit)
            row["calibrated_spread"] = {"samples": len(briefs), **_spread(briefs)}
        rows.append(row)
    return rows


COMPACT_INDEX_ROW = "catalog through the compact index"


def as_served_by_compact_index(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as the builder's compact index stores and re-scores them (unit rows, int8 codes decoded)."""
    from catalens.index import ItemRecord, build_snapshot

    records = [ItemRecord(f"row-{i:06d}", v, {}, "", "", "01") for i, v in enumerate(np.asarray(vectors))]
    snapshot = build_snapshot(records, model_fingerprint="evaluation")
    return snapshot.table.rows(snapshot.rows_of([r.item_id for r in records]))


def evaluate_grocery(
    embed_fn: EmbedFn,
    data_dir: Path | str,
    *,
    split: str = "val",
    max_photos_per_class: int | None = None,
    reference: int = MAX_REFERENCE,
    copy_cosine: float | None = None,
    photo_variants: dict[str, tuple[EmbedFn, EmbedFn | None]] | None = None,
    seed_fn: Callable[[list[GroceryImage]], np.ndarray] | None = None,
    catalog_views_fn: Callable[[list[GroceryImage]], np.ndarray] | None = None,
    samples: int = REFERENCE_SAMPLES,
) -> dict:
    """Run both tasks of the protocol with ``embed_fn`` and return the metrics as a JSON-ready dict.

    Parameters
    ----------
    embed_fn
        ``paths -> float32[n, d]``; called once with every image needed (catalog, queries, other split).
        Similarity is cosine, so the vectors need not be normalised.
    data_dir
        The grocery folder (holding ``labels.csv``).
    split
        Queries: ``"val"`` (the protocol) or ``"train"`` (train-as-queries, to check a choice is not tuned to val).
        The photo → photo catalog is the other split.
    max_photos_per_class
        Use only the first N photos per class of each split (a quick, deterministic subset); ``None``: all.
    reference
        Photo → catalog is also reported as search serves it once a query log exists (``"calibrated"``):
        query-domain calibration fitted on at most ``reference`` photos of the other split, unlabelled, as the
        query log (:mod:`catalens_tools.evaluation.query_domain`). ``0`` leaves it out; ``"calibrated"`` is ``None``
        when the other split has fewer than ``MIN_REFERENCE`` photos (serving would not calibrate either).
    copy_cosine
        The model card's copy cosine (calibration serves a copy of a catalog photo plain cosine); ``None``: the
        serving model's recorded one, for vectors that come from no built model.
    photo_variants
        Other ways to embed a photo, compared in ``rows`` beside the default (``DEFAULT_ROW``): ``name -> (photo_fn,
        catalog_fn)``; ``photo_fn`` embeds the natural photos (queries and the other split, which stands in for the
        query log, so calibration sees the variant's vectors as serving would), ``catalog_fn`` the shop images
        (None: as the default). Each row has plain and calibrated top-1/top-5 (per group too) and the category
        prediction's accuracy and ECE; on the train split also the temperature that split itself would fit.
    seed_fn
        ``catalog -> [S, m, d]``: S samples of synthetic shoppers' photos of the catalog as ingest seeds the query
        domain; adds the cold-start row ``SEEDED_ROW`` (calibrated from the seed, no query log).
    catalog_views_fn
        ``catalog -> [V, n, d]``: V synthetic shoppers' photos per catalog image; adds ``CATALOG_VIEWS_ROW``, the
        catalog searched by the mean of each image's vector and its views.
    samples
        Calibrated rows are scored for this many reference samples (``calibrated_spread``: min, max, mean).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    copy_cosine = serving_copy_cosine() if copy_cosine is None else copy_cosine
    data = load_grocery(data_dir)
    catalog = sorted(data.catalog, key=lambda image: str(image.path))
    queries = first_per_class(data.photos(split), max_photos_per_class)
    gallery = first_per_class(data.photos("train" if split == "val" else "val"), max_photos_per_class)

    paths = [image.path for image in catalog + queries + gallery]
    started = time.perf_counter()
    vectors = np.asarray(embed_fn(paths))
    seconds = time.perf_counter() - started
    if vectors.ndim != 2 or len(vectors) != len(paths):
        raise ValueError(f"embed_fn returned shape {vectors.shape} for {len(paths)} paths; expected [n, d]")
    if not np.all(np.isfinite(vectors)):
        raise ValueError("embed_fn returned non-finite values")

    catalog_vectors = vectors[: len(catalog)]
    query_vectors = vectors[len(catalog) : len(catalog) + len(queries)]
    gallery_vectors = vectors[len(catalog) + len(queries) :]
    calibrated = _calibrated_scores(query_vectors, catalog_vectors, gallery_vectors, reference, copy_cosine)
    variants = {DEFAULT_ROW: (query_vectors, catalog_vectors, gallery_vectors)}
    # the catalog as the compact index serves it (int8 codes, decoded): must read like the float vectors
    variants[COMPACT_INDEX_ROW] = (query_vectors, as_served_by_compact_index(catalog_vectors), gallery_vectors)
    if seed_fn is not None:
        variants[SEEDED_ROW] = RowSpec(
            query_vectors, catalog_vectors, gallery_vectors, seeds=np.asarray(seed_fn(catalog)), note="no query log"
        )
    if catalog_views_fn is not None:
        views = np.asarray(catalog_views_fn(catalog))
        searched = unit_rows(unit_rows(catalog_vectors) + unit_rows(views).sum(axis=0))
        variants[CATALOG_VIEWS_ROW.format(len(views))] = (query_vectors, searched, gallery_vectors)
    variants[CSLS_ROW] = RowSpec(query_vectors, catalog_vectors, gallery_vectors, scoring="csls")
    variants[CORAL_ROW] = RowSpec(query_vectors, catalog_vectors, gallery_vectors, scoring="coral")
    for name, (photo_fn, catalog_fn) in (photo_variants or {}).items():
        photos = np.asarray(photo_fn([image.path for image in queries + gallery]))
        shop = np.asarray(catalog_fn([image.path for image in catalog])) if catalog_fn else catalog_vectors
        variants[name] = (photos[: len(queries)], shop, photos[len(queries) :])
    return {
        "split": split,
        "max_photos_per_class": max_photos_per_class,
        "photo_to_catalog": photo_to_catalog(query_vectors, queries, catalog_vectors, catalog),
        "calibrated": _calibrated(queries, catalog, calibrated),
        "rows": compare_rows(
            variants,
            queries,
            catalog,
            reference=reference,
            copy_cosine=copy_cosine,
            fit=split == "train",
            samples=samples,
        ),
        "photo_to_photo": photo_to_photo(query_vectors, queries, gallery_vectors, gallery),
        "embedding": {
            "images": len(paths),
            "dim": int(vectors.shape[1]),
            "seconds": round(seconds, 3),
            "ms_per_image": round(1000 * seconds / max(1, len(paths)), 3),
        },
    }
