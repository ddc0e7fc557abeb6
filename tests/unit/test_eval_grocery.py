"""Retrieval metrics on hand-made cases, and the grocery protocol on a made-up dataset where the answer is known."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalens_tools.evaluation.grocery import GroceryDataError, evaluate_grocery, first_per_class, load_grocery
from catalens_tools.evaluation.metrics import (
    average_precision,
    cosine_scores,
    label_scores,
    mean_average_precision,
    recall_at_k,
    topk_accuracy,
)

# ---------------------------------------------------------------------------------------------------------------
# topk_accuracy (photo → catalog)


def test_topk_accuracy_counts_the_rank_of_the_right_label():
    # catalog labels 10, 20, 30; query 0 → right at rank 1, query 1 → rank 2, query 2 → rank 3
    scores = np.array(
        [
            [0.9, 0.5, 0.1],
            [0.8, 0.7, 0.1],
            [0.3, 0.4, 0.2],
        ]
    )
    catalog, queries = [10, 20, 30], [10, 20, 30]
    assert topk_accuracy(scores, catalog, queries, k=1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, catalog, queries, k=2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, catalog, queries, k=3) == 1.0
    assert topk_accuracy(scores, catalog, queries, k=50) == 1.0


def test_topk_accuracy_scores_a_label_by_its_best_view():
    # Label 1 has two catalog views; its second view wins for the query although its first is the worst.
    scores = np.array([[0.1, 0.6, 0.95]])
    assert topk_accuracy(scores, catalog_labels=[1, 2, 1], query_labels=[1], k=1) == 1.0
    # Several views of one wrong label take up only one place in the top-k.
    scores = np.array([[0.9, 0.8, 0.7, 0.5]])
    assert topk_accuracy(scores, catalog_labels=[2, 2, 2, 1], query_labels=[1], k=2) == 1.0
    labels, per_label = label_scores(scores, [2, 2, 2, 1])
    assert list(labels) == [1, 2]
    np.testing.assert_allclose(per_label, [[0.5, 0.9]])


def test_ties_count_against_the_query():
    constant = np.ones((4, 3))
    assert topk_accuracy(constant, [0, 1, 2], [0, 1, 2, 0], k=1) == 0.0
    assert topk_accuracy(constant, [0, 1, 2], [0, 1, 2, 0], k=3) == 1.0
    assert recall_at_k(constant, [0, 1, 2], [0, 1, 2, 0], k=2) == 0.0
    assert average_precision([0.5, 0.5], [True, False]) == pytest.approx(0.5)


def test_a_query_whose_label_is_not_in_the_catalog_is_a_miss():
    scores = np.array([[0.9, 0.1], [0.9, 0.1]])
    assert topk_accuracy(scores, [1, 2], [1, 7], k=2) == 0.5
    assert recall_at_k(scores, [1, 2], [1, 7], k=2) == 0.5


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        topk_accuracy(np.zeros((3, 2)), [0, 1, 2], [0, 1], k=1)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(np.zeros((1, 1)), [0], [0], k=0)


# ---------------------------------------------------------------------------------------------------------------
# recall@k, AP, mAP (photo → photo)


def test_recall_at_k_needs_one_relevant_item_in_the_top_k():
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6],  # first relevant (label 1) at rank 3
            [0.1, 0.2, 0.3, 0.9],  # first relevant (label 2) at rank 1
        ]
    )
    catalog = [0, 0, 1, 2]
    assert recall_at_k(scores, catalog, [1, 2], k=1) == 0.5
    assert recall_at_k(scores, catalog, [1, 2], k=2) == 0.5
    assert recall_at_k(scores, catalog, [1, 2], k=3) == 1.0


def test_average_precision_by_hand():
    # ranking: R N R N → (1/1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.6], [True, False, True, False]) == pytest.approx((1 + 2 / 3) / 2)
    # the order of the input does not matter, only the scores
    assert average_precision([0.7, 0.6, 0.9, 0.8], [True, False, True, False]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.3, 0.2, 0.1], [True, True, False]) == 1.0
    # relevant only at the bottom: 1/3
    assert average_precision([0.3, 0.2, 0.1], [False, False, True]) == pytest.approx(1 / 3)
    assert math.isnan(average_precision([0.3, 0.2], [False, False]))


def test_mean_average_precision_averages_queries_that_have_relevant_items():
    scores = np.array(
        [
            [0.9, 0.8, 0.7],  # label 0 at ranks 1, 3 → (1 + 2/3)/2
            [0.1, 0.9, 0.2],  # label 1 at rank 1 → 1
            [0.5, 0.5, 0.5],  # label 9: nothing relevant → left out
        ]
    )
    expected = ((1 + 2 / 3) / 2 + 1) / 2
    assert mean_average_precision(scores, [0, 1, 0], [0, 1, 9]) == pytest.approx(expected)


def test_cosine_scores_ignore_vector_length():
    queries = np.array([[3.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    catalog = np.array([[2.0, 0.0], [0.0, 5.0]])
    np.testing.assert_allclose(cosine_scores(queries, catalog), [[1, 0], [2**-0.5, 2**-0.5], [0, 0]], atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# The protocol on a tiny made-up grocery folder

COLUMNS = ["path", "role", "split", "fine_id", "fine_name", "coarse_id", "coarse_name", "group"]
CLASSES = [  # fine_id, name, group, colour
    (0, "Apple", "Fruit", (200, 30, 30)),
    (1, "Lime", "Fruit", (40, 200, 40)),
    (2, "Milk", "Packages", (240, 240, 240)),
    (3, "Juice", "Packages", (250, 160, 20)),
    (4, "Carrot", "Vegetables", (40, 40, 210)),
]


@pytest.fixture(scope="module")
def tiny_grocery(tmp_path_factory) -> Path:
    """Five classes, each a colour: 1 iconic image, 4 train and 3 val photos of it (with noise and lighting)."""
    root = tmp_path_factory.mktemp("grocery")
    rng = np.random.default_rng(0)
    rows = []
    for fine_id, name, group, colour in CLASSES:
        for role, split, count in (("iconic", "catalog", 1), ("natural", "train", 4), ("natural", "val", 3)):
            for i in range(count):
                folder = "iconic-images-and-descriptions" if role == "iconic" else split
                relative = f"{folder}/{group}/{name}/{name}_{i:03d}.jpg"
                light = rng.uniform(0.8, 1.1)
                pixels = np.clip(np.array(colour) * light + rng.normal(0, 10, (40, 50, 3)), 0, 255)
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(root / relative)
                rows.append([relative, role, split, fine_id, name, fine_id, name, group])
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return root


def mean_colour(paths: list[Path]) -> np.ndarray:
    """A tiny real embedding: the centred mean colour of each image."""
    return np.stack([np.asarray(Image.open(p), dtype=np.float32).mean(axis=(0, 1)) - 127.5 for p in paths])


def test_a_good_embedding_scores_perfectly(tiny_grocery):
    calls = []

    def embed(paths):
        calls.append(list(paths))
        return mean_colour(paths)

    result = evaluate_grocery(embed, tiny_grocery)
    assert len(calls) == 1  # one call with every image, each once
    assert len(calls[0]) == len(set(calls[0])) == 5 * (1 + 4 + 3)
    catalog = result["photo_to_catalog"]
    assert result["calibrated"] is None  # 20 train photos are fewer than a query domain needs (30)
    assert (catalog["queries"], catalog["catalog"]) == (15, 5)
    assert (catalog["top1"], catalog["top5"]) == (1.0, 1.0)
    assert catalog["packages"] == {"queries": 6, "top1": 1.0, "top5": 1.0}
    assert set(catalog["by_group"]) == {"Fruit", "Packages", "Vegetables"}
    photos = result["photo_to_photo"]
    assert (photos["queries"], photos["catalog"]) == (15, 20)
    assert photos["recall@1"] == photos["recall@5"] == photos["mAP"] == 1.0
    assert result["embedding"]["images"] == 40
    assert result["embedding"]["dim"] == 3


def test_a_useless_embedding_scores_zero(tiny_grocery):
    result = evaluate_grocery(lambda paths: np.ones((len(paths), 8), dtype=np.float32), tiny_grocery)
    assert result["photo_to_catalog"]["top1"] == 0.0
    assert result["photo_to_catalog"]["top5"] == 1.0  # only 5 classes: every label is in the top 5
    assert result["photo_to_photo"]["recall@1"] == 0.0


def test_a_wrong_embedding_scores_below_a_right_one(tiny_grocery):
    # Swap the colours of two classes in the embedding of val photos only: those queries must now fail.
    def confused(paths):
        vectors = mean_colour(paths)
        for i, path in enumerate(paths):
            if "/val/" in path.as_posix() and ("Apple" in path.name or "Lime" in path.name):
                vectors[i] = vectors[i][[1, 0, 2]]
        return vectors

    result = evaluate_grocery(confused, tiny_grocery)
    assert result["photo_to_catalog"]["top1"] == pytest.approx(9 / 15)
    assert result["photo_to_catalog"]["by_group"]["Fruit"]["top1"] == 0.0
    assert result["photo_to_catalog"]["packages"]["top1"] == 1.0
    assert result["photo_to_photo"]["recall@1"] == pytest.approx(9 / 15)


def test_train_split_swaps_queries_and_photo_catalog(tiny_grocery):
    result = evaluate_grocery(mean_colour, tiny_grocery, split="train")
    assert result["photo_to_catalog"]["queries"] == 20
    assert (result["photo_to_photo"]["queries"], result["photo_to_photo"]["catalog"]) == (20, 15)


def test_subset_takes_the_first_photos_of_each_class(tiny_grocery):
    result = evaluate_grocery(mean_colour, tiny_grocery, max_photos_per_class=2)
    assert result["photo_to_catalog"]["queries"] == 10
    assert result["photo_to_photo"]["catalog"] == 10
    subset = first_per_class(load_grocery(tiny_grocery).photos("train"), 1)
    assert [image.path.name for image in subset] == [  # sorted by path: group, then class folder
        f"{name}_000.jpg" for name in ("Apple", "Lime", "Juice", "Milk", "Carrot")
    ]


def test_embed_fn_must_return_one_row_per_path(tiny_grocery):
    with pytest.raises(ValueError, match="shape"):
        evaluate_grocery(lambda paths: np.zeros((len(paths) - 1, 4)), tiny_grocery)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_grocery(lambda paths: np.full((len(paths), 4), np.nan), tiny_grocery)


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(GroceryDataError, match=r"labels\.csv"):
        load_grocery(tmp_path)
    with pytest.raises(ValueError, match="split"):
        evaluate_grocery(mean_colour, tmp_path, split="test")


# ---------------------------------------------------------------------------------------------------------------
# The real model: the command end to end, and plausible numbers on a subset of the real photos


def test_eval_grocery_command_prints_the_metrics_as_json(tiny_grocery, model_dir, capsys, tmp_path):
    from catalens_tools.cli import main

    command = ["eval", "grocery", "--data", str(tiny_grocery), "--model-dir", str(model_dir), "--variant", "fp32"]
    status = main([*command, "--cache-dir", str(tmp_path), "--samples", "2", "--catalog-views", "2"])
    assert status == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    names = [row["name"] for row in report["rows"]]
    assert names == [
        "whole crop (default)",
        "catalog through the compact index",
        "seeded query domain (synthetic shoppers' photos, cold start)",
        "catalog: mean of photo and 2 shopper views",
        "CSLS hubness (k=10) instead of inverted softmax",
        "CORAL alignment (shrunk) before calibration",
        "main subject",
        "main subject, catalog cropped too",
    ]
    assert report["rows"][0]["plain"]["top1"] == report["photo_to_catalog"]["top1"]
    # int8 codes of the catalog rank the photos as the float vectors do, to within a photo of the 40
    assert abs(report["rows"][1]["plain"]["top1"] - report["rows"][0]["plain"]["top1"]) <= 1 / 40
    assert report["rows"][2]["calibrated"] is None  # 5 items x 2 synthetic photos are fewer than a domain needs
    assert 0 <= report["rows"][6]["plain_category"]["ece"] <= 1
    assert "| main subject | plain |" in captured.err  # the rows as a table
    assert len(list(tmp_path.glob("*.whole.npz"))) == 1  # vectors kept for the next run, per model and mode
    assert len(list(tmp_path.glob("*.subject-*.npz"))) == 1
    assert report["model"]["variant"] == "fp32"
    assert report["model"]["dim"] == 1280
    assert report["embedding"]["images"] == 40
    # Solid colour patches are easy: the real model must get most of them.
    assert report["photo_to_catalog"]["top1"] >= 0.6
    assert report["photo_to_photo"]["mAP"] >= 0.6
    assert report["calibrated"] is None  # 20 train photos are fewer than a query domain needs


def test_eval_grocery_command_names_a_missing_folder(tmp_path, model_dir, capsys):
    from catalens_tools.cli import main

    status = main(["eval", "grocery", "--data", str(tmp_path), "--model-dir", str(model_dir), "--no-cache"])
    assert status == 2
    assert "labels.csv" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.grocery
def test_real_photos_retrieve_far_above_chance(grocery_dir, model_dir):
    """First 2 photos per class (≈120 val queries, 162 train photos, 81 shop images; ~10 s).

    Chance is 1/81 top-1 and 5/81 top-5. The full val split gives top-1 0.389 / top-5 0.709, R@1 0.554,
    mAP 0.384 with this model; the bounds leave room for the subset's sampling noise but not for a broken
    pipeline (wrong colour order or normalisation, labels misaligned with vectors) nor for a leak of the
    queries into the catalog (R@1 → 1).
    """
    from catalens.embedder import Embedder

    embedder = Embedder.from_dir(model_dir, "fp32", threads=2)
    result = evaluate_grocery(
        lambda paths: embedder.embed_images([p.read_bytes() for p in paths]), grocery_dir, max_photos_per_class=2
    )
    to_catalog, to_photo = result["photo_to_catalog"], result["photo_to_photo"]
    assert to_catalog["catalog"] == 81
    assert to_catalog["queries"] >= 100
    assert 0.2 <= to_catalog["top1"] <= 0.6
    assert 0.5 <= to_catalog["top5"] <= 0.9
    assert 0.2 <= to_catalog["packages"]["top1"] <= 0.7
    assert 0.3 <= to_photo["recall@1"] <= 0.75
    assert 0.3 <= to_photo["mAP"] <= 0.75


def test_the_vector_cache_embeds_each_photo_once_and_survives_a_restart(tmp_path):
    from catalens_tools.evaluation.cache import VectorCache

    calls = []

    def embed(paths):
        calls.append(list(paths))
        return np.array([[float(len(str(p)))] * 2 for p in paths], dtype=np.float32)

    first = VectorCache.for_model(tmp_path, "model.fp32.abc", "whole").wrap(embed)
    first([Path("a"), Path("bb")])
    again = VectorCache.for_model(tmp_path, "model.fp32.abc", "whole").wrap(embed)
    vectors = again([Path("bb"), Path("ccc"), Path("a")])
    assert calls == [[Path("a"), Path("bb")], [Path("ccc")]]
    assert vectors[:, 0].tolist() == [2.0, 3.0, 1.0]
    other_mode = VectorCache.for_model(tmp_path, "model.fp32.abc", "subject-v1").wrap(embed)
    other_mode([Path("a")])
    assert calls[-1] == [Path("a")]  # another mode is another file
