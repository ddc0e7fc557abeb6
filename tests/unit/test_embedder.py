"""The Embedder: one checked ONNX session, batching, the bytes path through catalens.imaging."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from catalens import ports
from catalens.embedder import MAX_BATCH, Embedder
from catalens.errors import ImageError, ModelError
from catalens.imaging import ImageLimits, PreprocessConfig, load_and_preprocess
from catalens.model.card import ModelCard, model_paths
from tests.unit.imagefactory import encode, jpeg_with_orientation, photo
from tests.unit.test_ports import assert_implements


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> Embedder:
    return Embedder.from_dir(model_dir, "fp32")


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    config = PreprocessConfig()
    return np.stack([load_and_preprocess(encode(photo(seed=s)), config) for s in range(MAX_BATCH + 4)])


def test_embed_returns_unit_vectors_of_the_card_dimension(embedder, inputs) -> None:
    vectors = embedder.embed(inputs[:3])
    assert vectors.shape == (3, embedder.dim) == (3, 1280)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.all(vectors >= 0)  # ReLU6 features, average-pooled
    assert vectors[0] @ vectors[1] < 0.99  # different photos, different vectors


def test_batches_larger_than_the_limit_equal_one_by_one(embedder, inputs) -> None:
    together = embedder.embed(inputs)
    one_by_one = np.concatenate([embedder.embed(x[None]) for x in inputs])
    assert together.shape == (len(inputs), 1280)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_empty_and_malformed_batches(embedder) -> None:
    assert embedder.embed(np.zeros((0, 3, 224, 224), np.float32)).shape == (0, 1280)
    assert embedder.embed_images([]).shape == (0, 1280)
    with pytest.raises(ValueError, match=r"\[n, 3, 224, 224\]"):
        embedder.embed(np.zeros((1, 3, 200, 200), np.float32))
    with pytest.raises(ValueError, match="shape"):
        embedder.embed(np.zeros((3, 224, 224), np.float32))
    float64 = embedder.embed(np.zeros((1, 3, 224, 224)))  # cast, not refused
    assert float64.dtype == np.float32


def test_embed_images_goes_through_the_project_preprocessing(embedder, inputs) -> None:
    photos = [encode(photo(seed=s)) for s in range(3)]
    np.testing.assert_allclose(embedder.embed_images(photos), embedder.embed(inputs[:3]), atol=1e-6)


def test_exif_rotated_copy_embeds_like_the_upright_photo(embedder) -> None:
    upright = photo(800, 600, seed=7)
    vectors = embedder.embed_images([encode(upright, quality=95), jpeg_with_orientation(upright, 6, quality=95)])
    assert float(vectors[0] @ vectors[1]) > 0.99
    sideways = embedder.embed_images([encode(upright.rotate(90, expand=True), quality=95)])[0]
    assert float(vectors[0] @ sideways) < float(vectors[0] @ vectors[1])  # the orientation did matter


def test_bad_image_raises_its_typed_error(embedder) -> None:
    with pytest.raises(ImageError) as caught:
        embedder.embed_images([encode(photo(seed=1)), b""])
    assert caught.value.code == "empty_image"
    with pytest.raises(ImageError) as caught:
        embedder.embed_images([b"definitely not a photo"])
    assert caught.value.code == "not_an_image"
    with pytest.raises(ImageError) as caught:
        embedder.embed_images([encode(photo(seed=1))], ImageLimits(max_bytes=100))
    assert caught.value.code == "image_too_large"


def test_session_has_explicit_options(model_dir: Path) -> None:
    two = Embedder.from_dir(model_dir, "fp32", threads=2)
    options = two._session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    with pytest.raises(ValueError, match="threads"):
        Embedder.from_dir(model_dir, "fp32", threads=0)


def test_the_embedder_implements_its_port(embedder) -> None:
    assert_implements(ports.Embedder, embedder)


def test_fingerprint_comes_from_the_card(embedder) -> None:
    assert embedder.fingerprint == embedder.card.fingerprint()
    embedder.card.check_matches(embedder.fingerprint)
    with pytest.raises(ModelError) as caught:
        embedder.card.check_matches("0123456789abcdef")
    assert caught.value.code == "model_mismatch"


def test_tampered_model_file_is_refused(model_dir: Path, tmp_path: Path) -> None:
    onnx_path, card_path = model_paths(model_dir, "efficientnet-lite0", "fp32")
    shutil.copy(card_path, tmp_path / card_path.name)
    data = bytearray(onnx_path.read_bytes())
    data[-100] ^= 0x01  # one bit of one weight
    (tmp_path / onnx_path.name).write_bytes(bytes(data))
    with pytest.raises(ModelError) as caught:
        Embedder.from_dir(tmp_path, "fp32")
    assert caught.value.code == "model_checksum"


def test_missing_or_ambiguous_models_are_named(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="catalens model build"):
        Embedder.from_dir(tmp_path, "fp32")
    card = ModelCard.load(model_paths(model_dir, "efficientnet-lite0", "fp32")[1])
    for name in ("model-a", "model-b"):
        (tmp_path / f"{name}.fp32.card.json").write_text(card.to_json())
    with pytest.raises(ModelError, match="several fp32 models"):
        Embedder.from_dir(tmp_path, "fp32")
    with pytest.raises(ModelError, match="not found"):
        Embedder.from_dir(tmp_path, "fp32", name="model-a")


def test_classify_needs_the_classifier(tmp_path: Path) -> None:
    from catalens_tools.model.build import build_models

    build_models(tmp_path, variants=("fp32",), with_classifier=False)
    embedder = Embedder.from_dir(tmp_path, "fp32")
    assert embedder.card.outputs == ("embedding",)
    with pytest.raises(ModelError, match="without the classifier"):
        embedder.classify(np.zeros((1, 3, 224, 224), np.float32))


def test_bench_embed_reports_every_configuration(model_dir: Path, capsys) -> None:
    """Smoke test of `catalens bench embed` with tiny counts (the numbers themselves are never asserted)."""
    import json

    from catalens_tools.cli import main

    argv = ["bench", "embed", "--model-dir", str(model_dir), "--variants", "fp32", "--threads", "1"]
    argv += ["--batches", "1", "2", "--megapixels", "1", "--model-images", "2", "--e2e-images", "2"]
    argv += ["--naive-images", "1", "--photos", "1"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["model_only"]["fp32"]["threads_1"]) == {"batch_1", "batch_2"}
    assert set(report["end_to_end"]["fp32"]["threads_1"]["batch_2"]) == {"1MP"}
    naive = report["naive_pipeline"]["1MP"]
    assert naive["naive_images_per_s"] > 0
    assert naive["ratio_same_settings"] > 0
    assert report["model_dir"] == str(model_dir)
