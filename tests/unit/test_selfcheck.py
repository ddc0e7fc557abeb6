"""The merchant self-check: augmentations, query making, recall and rank agreement on tiny synthetic cases."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image, ImageDraw

from catalens_tools.evaluation.augment import AugmentConfig, Product, augment, foreground_mask, shelf_background
from catalens_tools.evaluation.selfcheck import (
    SelfCheckConfig,
    kendall_tau,
    make_queries,
    retrieval_recall,
    run_self_check,
    spearman_rho,
)

STEPS = ("background", "rotation", "crop", "light", "blur", "noise", "jpeg")


def product_shot(colour: tuple[int, int, int], *, size: int = 120, seed: int = 0) -> Image.Image:
    """A shop-style image: a coloured carton on white, with a white label inside it (must stay foreground)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, top = int(size * 0.3), int(size * 0.15)
    draw.rectangle((left, top, size - left, size - top), fill=colour)
    draw.rectangle((left + 8, size // 2 - 6, size - left - 8, size // 2 + 6), fill=(255, 255, 255))  # label
    draw.ellipse((left + 4, top + 4, left + 16, top + 16), fill=tuple(int(c) for c in rng.integers(0, 200, 3)))
    return image


def photo_shot(size: int = 120, seed: int = 0) -> Image.Image:
    """A photo without a plain background (noise everywhere)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 200, (size, size, 3), dtype=np.uint8), "RGB")


# ---------------------------------------------------------------------------------------------------------------
# augmentations


def test_foreground_mask_keeps_white_parts_inside_the_product():
    image = product_shot((200, 30, 30))
    mask = foreground_mask(image)
    assert mask is not None
    size = image.width
    assert not mask[0, 0]
    assert not mask[size - 1, size // 2]
    assert mask[size // 2, size // 2]  # the white label in the carton's middle is not background
    assert 0.2 < mask.mean() < 0.6


def test_foreground_mask_is_none_for_a_photo():
    assert foreground_mask(photo_shot()) is None


def test_augment_is_deterministic_and_sized():
    image = product_shot((30, 30, 200))
    config = AugmentConfig(size=96)
    one = augment(image, np.random.default_rng(5), config)
    two = augment(image, np.random.default_rng(5), config)
    three = augment(image, np.random.default_rng(6), config)
    assert one.size == (96, 96)
    assert one.mode == "RGB"
    assert np.array_equal(np.asarray(one), np.asarray(two))
    assert not np.array_equal(np.asarray(one), np.asarray(three))


def test_augment_with_every_step_off_only_frames_the_image():
    image = product_shot((30, 200, 30))
    plain = augment(image, np.random.default_rng(0), AugmentConfig(size=120).only())
    assert np.array_equal(np.asarray(plain), np.asarray(image))


@pytest.mark.parametrize("step", STEPS)
def test_each_augmentation_step_changes_the_image(step):
    image = product_shot((200, 120, 30))
    config = AugmentConfig(size=120).only(step)
    plain = np.asarray(augment(image, np.random.default_rng(0), AugmentConfig(size=120).only()), dtype=np.float32)
    changed = [np.asarray(augment(image, np.random.default_rng(s), config), dtype=np.float32) for s in range(4)]
    assert max(np.abs(c - plain).mean() for c in changed) > 0.5, step


def test_background_step_replaces_the_white_background_and_keeps_the_product():
    image = product_shot((20, 20, 220))
    others = [Product.of(product_shot((220, 200, 20), seed=1)), Product.of(product_shot((20, 200, 20), seed=2))]
    scene = np.asarray(
        augment(image, np.random.default_rng(3), AugmentConfig(size=120).only("background"), others=others)
    )
    assert (scene.min(axis=2) >= 245).mean() < 0.05  # the plain white is gone
    blue = (scene[..., 2] > 150) & (scene[..., 0] < 90) & (scene[..., 1] < 90)
    assert blue.mean() > 0.1  # the product is still there, large


def test_only_rejects_unknown_steps():
    with pytest.raises(ValueError, match="sharpen"):
        AugmentConfig().only("sharpen")


def test_shelf_background_without_products_is_clutter():
    shelf = shelf_background(64, [], np.random.default_rng(0))
    assert shelf.size == (64, 64)
    assert np.asarray(shelf).std() > 1.0


# ---------------------------------------------------------------------------------------------------------------
# queries and metrics


def catalog(n: int = 5) -> list[bytes]:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]
    photos = []
    for i in range(n):
        buffer = io.BytesIO()
        product_shot(colours[i % len(colours)], seed=i).save(buffer, "PNG")
        photos.append(buffer.getvalue())
    return photos


def test_make_queries_counts_sources_and_is_deterministic():
    photos = catalog(5)
    config = SelfCheckConfig(queries_per_item=2, max_items=3, seed=1, augment=AugmentConfig(size=64))
    queries, sources = make_queries(photos, config)
    again, sources_again = make_queries(photos, config)
    assert len(queries) == len(sources) == 6
    assert queries == again
    assert np.array_equal(sources, sources_again)
    assert len(set(sources.tolist())) == 3
    assert all(0 <= s < 5 for s in sources)
    assert all(q[:3] == b"\xff\xd8\xff" for q in queries)  # JPEG, as a phone sends them


def test_retrieval_recall_on_hand_made_vectors():
    catalog_vectors = np.eye(3)
    queries = np.array([[1.0, 0.1, 0.0], [0.9, 1.0, 0.0], [0.0, 0.2, 0.1]])
    recall = retrieval_recall(queries, [0, 0, 2], catalog_vectors, ks=(1, 2))
    # query 0: rank 1; query 1: item 0 is second; query 2: item 2 is second (item 1 scores 0.2)
    assert recall == {"recall@1": pytest.approx(1 / 3), "recall@2": 1.0}


def test_retrieval_recall_scores_an_item_by_its_best_vector():
    catalog_vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    recall = retrieval_recall(np.array([[0.6, 0.8]]), [0], catalog_vectors, catalog_items=[0, 1, 0], ks=(1,))
    assert recall["recall@1"] == 1.0


def mean_colour(photos: list[bytes]) -> np.ndarray:
    """A small real embedding: the mean colour of the non-white pixels, centred."""
    vectors = []
    for data in photos:
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32).reshape(-1, 3)
        coloured = pixels[pixels.min(axis=1) < 235]
        vectors.append((coloured if len(coloured) else pixels).mean(axis=0) - 127.5)
    return np.stack(vectors)


def test_self_check_finds_distinct_products_and_fails_a_useless_embedding():
    photos = catalog(6)
    config = SelfCheckConfig(queries_per_item=2, seed=0, augment=AugmentConfig(size=64, brightness=0.1))
    good = run_self_check(photos, mean_colour, config, names=[f"item{i}" for i in range(6)])
    assert (good["items"], good["queries"]) == (6, 12)
    assert good["recall@1"] >= 0.8
    assert good["recall@5"] == 1.0
    useless = run_self_check(photos, lambda p: np.ones((len(p), 4)), config)
    assert useless["recall@1"] == 0.0  # ties count against the query
    assert len(useless["most_missed"]) == 6


def test_self_check_needs_two_photos():
    with pytest.raises(ValueError, match="two"):
        run_self_check(catalog(1), mean_colour)


# ---------------------------------------------------------------------------------------------------------------
# rank agreement


def test_rank_correlations_on_known_orderings():
    a = [0.1, 0.4, 0.3, 0.9]
    assert spearman_rho(a, a) == pytest.approx(1.0)
    assert kendall_tau(a, [-x for x in a]) == pytest.approx(-1.0)
    # one swapped adjacent pair of four: 5 concordant, 1 discordant
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_rank_correlations_handle_ties_like_tau_b():
    a, b = [1, 1, 2, 3], [1, 2, 3, 4]
    dx = [np.sign(a[i] - a[j]) for i, j in itertools.combinations(range(4), 2)]
    dy = [np.sign(b[i] - b[j]) for i, j in itertools.combinations(range(4), 2)]
    expected = sum(x * y for x, y in zip(dx, dy, strict=True)) / np.sqrt(
        sum(x != 0 for x in dx) * sum(y != 0 for y in dy)
    )
    assert kendall_tau(a, b) == pytest.approx(expected)
    assert spearman_rho(a, b) == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1])


# ---------------------------------------------------------------------------------------------------------------
# the command


def test_eval_self_command_on_a_folder(model_dir, tmp_path, capsys):
    import json

    from catalens_tools.cli import main as cli_main

    folder = tmp_path / "catalog"
    (folder / "drinks").mkdir(parents=True)
    for i, data in enumerate(catalog(3)):
        (folder / "drinks" / f"item{i}.png").write_bytes(data)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (folder / "notes.txt").write_text("not a photo")
    assert cli_main(["eval", "self", "--catalog", str(folder), "--model-dir", str(model_dir), "--per-item", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["items"], report["queries"]) == (3, 3)
    assert report["skipped_photos"] == [{"photo": "broken.jpg", "error": "truncated_image"}]
    assert 0.0 <= report["recall@1"] <= report["recall@5"] <= 1.0
    assert report["model"]["fingerprint"]


def test_local_photos_reads_the_saved_catalog_bucket(tmp_path):
    import json

    from catalens_tools.commands.eval_self import LOCAL_CATALOG_STATE, local_photos

    folder = tmp_path / LOCAL_CATALOG_STATE
    (folder / "objects").mkdir(parents=True)
    (folder / "objects" / "a").write_bytes(b"photo-a")
    (folder / "objects" / "b").write_bytes(b"{}")
    index = {
        "shoes/a.jpg": {"file": "a", "content_type": "image/jpeg", "etag": "1"},
        "shoes/a.json": {"file": "b", "content_type": "application/json", "etag": "2"},
        "shoes/gone.jpg": {"file": "missing", "content_type": "image/jpeg", "etag": "3"},
    }
    (folder / "index.json").write_text(json.dumps(index))
    assert local_photos(tmp_path) == [("shoes/a.jpg", b"photo-a")]
