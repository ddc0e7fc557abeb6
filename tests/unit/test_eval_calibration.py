"""Query-domain calibration in the evaluation: the lever study and ``evaluate_grocery`` score photo→catalog as search
does with calibration on, through :mod:`catalens.query_domain`, and the reference "query log" is the other split's
photos — their vectors only, never their labels, never the queries' own split. Synthetic vectors, no images."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from catalens.query_domain import MIN_REFERENCE, catalog_mean
from catalens_tools.evaluation.features import FeatureStore
from catalens_tools.evaluation.grocery import GroceryImage, evaluate_grocery
from catalens_tools.evaluation.levers import BASELINE, CONFIGS, ENSEMBLE, LeverConfig, LeverStudy, _Data, format_table
from catalens_tools.evaluation.query_domain import calibrated_scores, reference_domain

ITEMS, DIM = 8, 24
COPY_COSINE = 0.94  # as a model card gives it


class World:
    """Catalog items and shoppers' photos in two domains, with one hub: a shop photo that looks like every
    shopper photo (as the satsuma of the grocery catalog does), so it wins queries that are not its own."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        basis = np.linalg.qr(self.rng.normal(size=(DIM, DIM)))[0]
        self.basis, self.shop, self.photo = basis[:ITEMS], basis[ITEMS], basis[ITEMS + 1]
        catalog = self.basis + 0.8 * self.shop
        catalog[0] += 1.2 * self.photo  # the hub
        self.catalog = catalog.astype(np.float32)

    def photos(self, per_item: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(ITEMS), per_item)
        vectors = self.basis[labels] + self.photo + 0.35 * self.rng.normal(size=(len(labels), DIM))
        return vectors.astype(np.float32), labels


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(axis=1) == labels).mean())


# ---------------------------------------------------------------------------------------------------------------
# the scoring: production calibration on a first-stage pool


def test_calibration_takes_queries_back_from_the_hub():
    world = World()
    queries, labels = world.photos(6)
    log, _ = world.photos(6)  # other photos of shoppers, labels thrown away
    plain = queries @ (world.catalog / np.linalg.norm(world.catalog, axis=1, keepdims=True)).T
    calibrated = calibrated_scores(reference_domain(log), queries, world.catalog, copy_cosine=COPY_COSINE)
    assert (calibrated.argmax(axis=1) == 0).sum() < (plain.argmax(axis=1) == 0).sum()
    assert top1(calibrated, labels) > top1(plain, labels)


def test_only_the_plain_top_pool_is_rescored_with_the_production_calibration():
    world = World(1)
    queries, _ = world.photos(5)
    domain = reference_domain(world.photos(5)[0])
    scores = calibrated_scores(domain, queries, world.catalog, pool=3, copy_cosine=COPY_COSINE)
    mean = catalog_mean(world.catalog)
    units = world.catalog / np.linalg.norm(world.catalog, axis=1, keepdims=True)
    for query, row in zip(queries, scores, strict=True):
        pool = np.sort(np.argsort(-(units @ query))[:3])
        assert list(np.flatnonzero(np.isfinite(row))) == list(pool)
        # one product for every query instead of one per pool: equal to float32 precision
        np.testing.assert_allclose(row[pool], domain.calibrate(query, world.catalog[pool], mean)[0], atol=1e-6)
    # a pool larger than the catalog re-scores every item
    assert np.isfinite(calibrated_scores(domain, queries, world.catalog, pool=500, copy_cosine=COPY_COSINE)).all()


def test_a_copy_of_a_catalog_photo_is_scored_plain_cosine_as_search_serves_it():
    world = World(2)
    units = world.catalog / np.linalg.norm(world.catalog, axis=1, keepdims=True)
    shopper, _ = world.photos(1)
    queries = np.vstack([units[3], shopper[3] / np.linalg.norm(shopper[3])]).astype(np.float32)
    domain = reference_domain(world.photos(5)[0])
    scores = calibrated_scores(domain, queries, world.catalog, copy_cosine=COPY_COSINE)
    np.testing.assert_allclose(scores[0], units @ queries[0], rtol=1e-6)  # the copy: plain cosine, its item first
    assert scores[0].argmax() == 3
    pool = np.isfinite(scores[1])  # the shopper's photo: calibrated
    np.testing.assert_allclose(
        scores[1, pool], domain.calibrate(queries[1], world.catalog[pool], catalog_mean(world.catalog))[0], rtol=1e-6
    )


def test_a_reference_smaller_than_the_minimum_means_no_calibration_as_in_serving():
    log, _ = World().photos(1)
    assert len(log) < MIN_REFERENCE
    assert reference_domain(log) is None
    world_log, _ = World().photos(10)
    assert len(reference_domain(world_log, 30)) == 30
    assert len(reference_domain(world_log, 256)) == len(world_log)
    np.testing.assert_array_equal(reference_domain(world_log, 30).reference, reference_domain(world_log, 30).reference)


# ---------------------------------------------------------------------------------------------------------------
# the lever study: reference = the other split, unlabelled


def _images(split: str, labels: np.ndarray, start: int) -> list[GroceryImage]:
    return [
        GroceryImage(Path(f"/{split}/{start + i:04d}.jpg"), "natural", split, int(label), "", 0, "", "Fruit")
        for i, label in enumerate(labels)
    ]


def synthetic_study(
    val_per_item: int = 6, train_per_item: int = 6, *, shuffle_train_labels: bool = False, seed: int = 0
):
    """A LeverStudy over made-up vectors (no photos): returns the study, the vector matrix and the val labels."""
    world = World(seed)
    catalog = [
        GroceryImage(Path(f"/catalog/{i:04d}.jpg"), "iconic", "catalog", i, "", 0, "", "Fruit") for i in range(ITEMS)
    ]
    val_vectors, val_labels = world.photos(val_per_item)
    train_vectors, train_labels = world.photos(train_per_item)
    if shuffle_train_labels:
        train_labels = np.random.default_rng(99).permutation(train_labels)  # photos get other photos' labels
    val, train = _images("val", val_labels, 0), _images("train", train_labels, 1000)
    images = catalog + val + train
    data = _Data(
        paths=[image.path for image in images],
        catalog=catalog,
        splits={"val": val, "train": train},
        row={image.path: i for i, image in enumerate(images)},
    )
    vectors = np.concatenate([world.catalog, val_vectors, train_vectors])
    return LeverStudy(None, FeatureStore(None), data=data), vectors, val_labels


def replace_domain(config: LeverConfig, size: int | None) -> LeverConfig:
    return replace(config, query_domain=size)


def _identity(rows: np.ndarray) -> np.ndarray:
    return rows


def _as_set(rows: np.ndarray) -> set[tuple]:
    units = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return {tuple(np.round(row, 5)) for row in units}


@pytest.mark.parametrize(("split", "other"), [("val", "train"), ("train", "val")])
def test_the_reference_is_a_sample_of_the_other_split_never_the_queries_own(split, other):
    study, vectors, _ = synthetic_study(val_per_item=5, train_per_item=7)
    config = replace_domain(ENSEMBLE, 30)
    domain = study.query_domain(config, split, vectors, _identity)
    reference = _as_set(domain.reference)
    assert len(domain) == 30
    assert reference <= _as_set(study.data.rows(vectors, study.data.splits[other]))
    assert not reference & _as_set(study.data.rows(vectors, study.data.splits[split]))
    # the sample is fixed: the same rows every run
    assert _as_set(study.query_domain(config, split, vectors, _identity).reference) == reference


def test_calibrated_photo_to_catalog_does_not_read_the_reference_labels():
    config = replace_domain(BASELINE, 256)
    results = []
    for shuffle in (False, True):
        study, vectors, _ = synthetic_study(shuffle_train_labels=shuffle)
        catalog = study.data.rows(vectors, study.data.catalog)
        results.append(study.photo_to_catalog(config, "val", vectors, catalog, list(study.data.catalog), None))
    assert results[0] == results[1]
    assert results[0][1] == ITEMS * 6  # every train photo is in the reference


def test_calibrated_photo_to_catalog_follows_the_reference_vectors_and_beats_plain_on_the_hub():
    study, vectors, _ = synthetic_study()
    catalog = study.data.rows(vectors, study.data.catalog)
    labels = list(study.data.catalog)
    plain, plain_size = study.photo_to_catalog(BASELINE, "val", vectors, catalog, labels, None)
    calibrated, size = study.photo_to_catalog(replace_domain(BASELINE, 256), "val", vectors, catalog, labels, None)
    assert (plain_size, size) == (0, len(study.data.splits["train"]))
    assert calibrated["top1"] > plain["top1"]
    # the reference matters: a log of unrelated vectors gives other scores
    other = vectors.copy()
    train_rows = [study.data.row[image.path] for image in study.data.splits["train"]]
    other[train_rows] = np.random.default_rng(5).normal(size=(len(train_rows), DIM))
    moved, _ = study.photo_to_catalog(replace_domain(BASELINE, 256), "val", other, catalog, labels, None)
    assert moved != calibrated


def test_the_spread_over_reference_samples_brackets_the_fixed_sample():
    study, vectors, _ = synthetic_study(train_per_item=6)  # 48 train photos, references of 30
    catalog = study.data.rows(vectors, study.data.catalog)
    labels = list(study.data.catalog)
    config = replace_domain(BASELINE, 30)
    spread = study.calibration_spread(config, "val", vectors, catalog, labels, None, samples=4)
    fixed, _ = study.photo_to_catalog(config, "val", vectors, catalog, labels, None)
    assert spread["samples"] == 4
    for metric in ("top1", "top5"):
        assert spread[metric]["min"] <= fixed[metric] <= spread[metric]["max"]
        assert spread[metric]["min"] <= spread[metric]["mean"] <= spread[metric]["max"]
    samples = {
        study.photo_to_catalog(config, "val", vectors, catalog, labels, None, seed)[0]["top1"] for seed in range(4)
    }
    assert (min(samples), max(samples)) == (spread["top1"]["min"], spread["top1"]["max"])
    # one sample is all there is when the reference takes every photo of the other split
    assert study.calibration_spread(replace_domain(BASELINE, 256), "val", vectors, catalog, labels, None) is None
    assert study.calibration_spread(BASELINE, "val", vectors, catalog, labels, None) is None


def test_too_few_reference_photos_leave_the_row_uncalibrated():
    study, vectors, _ = synthetic_study(train_per_item=3)  # 24 train photos < MIN_REFERENCE
    catalog = study.data.rows(vectors, study.data.catalog)
    labels = list(study.data.catalog)
    plain = study.photo_to_catalog(BASELINE, "val", vectors, catalog, labels, None)
    assert study.photo_to_catalog(replace_domain(BASELINE, 256), "val", vectors, catalog, labels, None) == plain


def test_search_ms_times_the_calibration_of_the_pool():
    study, vectors, _ = synthetic_study(val_per_item=4, train_per_item=10)
    assert study.search_ms(replace_domain(BASELINE, 30), vectors, repeats=3) > 0
    assert study.search_ms(BASELINE, vectors, repeats=3) > 0


def test_the_study_has_the_calibration_rows_and_the_table_says_what_they_change():
    calibrated = {config.name: config for config in CONFIGS if config.query_domain}
    assert {config.query_domain for config in calibrated.values()} == {30, 256}
    assert {config.built for config in calibrated.values()} == {None, "fp32", "int8"}
    row = {
        "name": "x",
        "lever": "query-domain calibration",
        "val": dict.fromkeys(["top1", "top5", "packages_top1", "p2p_recall@1", "p2p_mAP"], 0.5),
        "self_check": {"recall@1": 0.5, "recall@5": 0.9},
        "embed_ms": 1.0,
        "search_ms": 0.5,
        "config": {"query_domain": 256},
    }
    row["train"] = row["val"]
    assert "p→p columns" in format_table({"rows": [row]})
    spread = {
        "samples": 10,
        "top1": {"min": 0.4, "mean": 0.45, "max": 0.5},
        "top5": {"min": 0.8, "mean": 0.8, "max": 0.8},
    }
    row["calibration"] = {"spread": {"val": spread, "train": None}}
    assert "- x: val top-1 0.400–0.500 (0.450), top-5 0.800–0.800 (0.800) — 10 samples" in format_table({"rows": [row]})
    assert "p→p columns" not in format_table({"rows": [{**row, "config": {"query_domain": None}}]})


# ---------------------------------------------------------------------------------------------------------------
# evaluate_grocery: the "calibrated" block


@pytest.fixture(scope="module")
def vector_grocery(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A labels.csv (no image files: the embed function below looks vectors up by path) over the hub world."""
    root = tmp_path_factory.mktemp("vector-grocery")
    world = World(3)
    vectors: dict[str, np.ndarray] = {}
    rows = []
    for i in range(ITEMS):
        rows.append([f"iconic/{i}.jpg", "iconic", "catalog", i, f"item{i}", i, f"item{i}", "Fruit"])
        vectors[str(root / f"iconic/{i}.jpg")] = world.catalog[i]
    for split in ("train", "val"):
        photos, labels = world.photos(5)
        for j, (vector, label) in enumerate(zip(photos, labels, strict=True)):
            path = f"{split}/{label}/{j}.jpg"
            rows.append([path, "natural", split, int(label), f"item{label}", int(label), f"item{label}", "Fruit"])
            vectors[str(root / path)] = vector
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "role", "split", "fine_id", "fine_name", "coarse_id", "coarse_name", "group"])
        writer.writerows(rows)
    return root, vectors


def test_evaluate_grocery_reports_calibrated_photo_to_catalog_from_the_other_split(vector_grocery):
    root, vectors = vector_grocery

    def embed(paths):
        return np.stack([vectors[str(path)] for path in paths])

    result = evaluate_grocery(embed, root)
    calibrated = result["calibrated"]
    assert calibrated["reference"] == ITEMS * 5  # the train photos (all: fewer than 256)
    assert calibrated["pool"] == ITEMS
    assert calibrated["photo_to_catalog"]["queries"] == result["photo_to_catalog"]["queries"]
    assert calibrated["photo_to_catalog"]["top1"] > result["photo_to_catalog"]["top1"]
    assert result["photo_to_photo"] == evaluate_grocery(embed, root, reference=0)["photo_to_photo"]
    assert evaluate_grocery(embed, root, reference=0)["calibrated"] is None
    assert evaluate_grocery(embed, root, reference=30)["calibrated"]["reference"] == 30
    # fewer photos in the other split than a domain needs: no calibration, as serving without a query log
    assert evaluate_grocery(embed, root, max_photos_per_class=2)["calibrated"] is None


def test_the_measured_scorings_keep_the_pool():
    world = World(1)
    queries, _ = world.photos(5)
    domain = reference_domain(world.photos(5)[0])
    plain = calibrated_scores(domain, queries, world.catalog, copy_cosine=COPY_COSINE)
    for scoring in ("csls", "coral"):
        scores = calibrated_scores(domain, queries, world.catalog, pool=3, copy_cosine=COPY_COSINE, scoring=scoring)
        assert (np.isfinite(scores).sum(axis=1) == 3).all()
        assert scores.shape == plain.shape
    with pytest.raises(ValueError, match="scoring"):
        calibrated_scores(domain, queries, world.catalog, copy_cosine=COPY_COSINE, scoring="magic")
