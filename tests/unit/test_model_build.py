"""The torch-free model build: architecture read from the weights, graph vs torch golden vectors, real photos
classified right, deterministic bytes, model cards, int8 variant."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import skimage.data
from PIL import Image

from catalens.embedder import Embedder
from catalens.errors import ModelError
from catalens.imaging import PreprocessConfig, preprocess
from catalens.model.card import ModelCard, model_paths, sha256_hex
from catalens_tools.cli import main as cli_main
from catalens_tools.model.build import WEIGHTS, build_fp32, build_int8, build_models
from catalens_tools.model.efficientnet import Pooling, build_onnx, infer_architecture, same_padding
from catalens_tools.model.torch_pickle import load_legacy_state_dict
from tests.unit.golden.torch_reference import pattern_input

GOLDEN = Path(__file__).parent / "golden"
SKIMAGE_DATA = Path(skimage.data.__file__).parent
ESPRESSO = 967
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return load_legacy_state_dict(WEIGHTS["efficientnet-lite0"].path())


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "lite0_torch_reference.npz") as data:
        return {"names": list(data["names"]), "embedding": data["embedding"], "logits": data["logits"]}


@pytest.fixture(scope="module")
def fp32(model_dir: Path) -> Embedder:
    return Embedder.from_dir(model_dir, "fp32")


def bundled_image(name: str) -> Image.Image:
    """scikit-image's bundled photo, decoded to RGB."""
    return Image.open(SKIMAGE_DATA / name).convert("RGB")


def bundled_photo(name: str) -> bytes:
    """scikit-image's bundled photo file (``coffee`` → coffee.png), as a merchant would upload it."""
    return (SKIMAGE_DATA / (name if "." in name else f"{name}.png")).read_bytes()


# ---------------------------------------------------------------------------------------------------------------------
# Architecture and graph


def test_architecture_is_read_from_the_weights(state_dict) -> None:
    arch = infer_architecture(state_dict)
    assert (arch.stem_channels, arch.head_channels, arch.num_classes) == (32, 1280, 1000)
    assert len(arch.blocks) == 16
    assert [b.stride for b in arch.blocks if b.stride == 2] == [2, 2, 2, 2]
    assert [b.index for b in arch.blocks if b.stride == 2] == [1, 3, 5, 11]
    assert [b.kernel for b in arch.blocks] == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    assert not arch.blocks[0].has_expand
    assert all(b.has_expand for b in arch.blocks[1:])
    assert [b.out_channels for b in arch.blocks] == [
        16,
        24,
        24,
        40,
        40,
        80,
        80,
        80,
        112,
        112,
        112,
        192,
        192,
        192,
        192,
        320,
    ]
    assert sum(b.has_skip for b in arch.blocks) == 9


def test_architecture_follows_a_wider_deeper_state_dict(state_dict) -> None:
    """lite1/lite2 differ in block count and widths: the builder reads them, nothing is hard-coded for lite0."""
    deeper = dict(state_dict)
    for key in [k for k in state_dict if k.startswith("_blocks.15.")]:  # duplicate the last stage-6 block
        deeper[key.replace("_blocks.15.", "_blocks.16.")] = state_dict[key]
    for key in [k for k in state_dict if k.startswith("_blocks.15.")]:
        deeper[key.replace("_blocks.15.", "_blocks.15.")] = state_dict[key.replace("_blocks.15.", "_blocks.14.")]
    arch = infer_architecture(deeper)
    assert len(arch.blocks) == 17
    assert arch.blocks[15].has_skip
    assert arch.blocks[15].stride == 1
    assert arch.blocks[16].out_channels == 320


def test_state_dict_without_stages_is_refused(state_dict) -> None:
    broken = {k: v for k, v in state_dict.items() if not k.startswith("_blocks.15.")}
    with pytest.raises(ModelError, match="stages"):
        infer_architecture(broken)
    with pytest.raises(ModelError, match=r"_conv_head\.weight"):
        infer_architecture({k: v for k, v in state_dict.items() if not k.startswith("_conv_head")})


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (224, 3, 2, (0, 1, 112)),
        (56, 5, 2, (1, 2, 28)),
        (14, 5, 1, (2, 2, 14)),
        (7, 1, 1, (0, 0, 7)),
        (15, 3, 2, (1, 1, 8)),
    ],
)
def test_tensorflow_same_padding(size, kernel, stride, expected) -> None:
    assert same_padding(size, kernel, stride) == expected


def test_graph_shape_ops_and_opset(state_dict) -> None:
    model = build_onnx(state_dict)
    graph = model.graph
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = [n.op_type for n in graph.node]
    assert "BatchNormalization" not in ops  # folded
    depthwise = [
        n for n in graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]
    assert len(depthwise) == 16
    assert ops.count("Clip") == 1 + 16 + 15 + 1  # stem, each depthwise, each expand, head: ReLU6
    stride2_pads = [
        list(next(a.ints for a in n.attribute if a.name == "pads"))
        for n in graph.node
        if n.op_type == "Conv" and list(next(a.ints for a in n.attribute if a.name == "strides")) == [2, 2]
    ]
    assert stride2_pads == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 2, 2], [0, 0, 1, 1], [1, 1, 2, 2]]
    (image,) = graph.input
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", 3, 224, 224]
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    assert outputs == {"embedding": ["batch", 1280], "logits": ["batch", 1000]}


def test_pooling_is_a_build_option(state_dict) -> None:
    import onnxruntime as ort

    x = pattern_input()[None]
    results = {}
    for pooling in ("avg", "max", "gem:3"):
        session = ort.InferenceSession(build_onnx(state_dict, pooling=pooling).SerializeToString())
        embedding, logits = session.run(None, {"image": x})
        results[pooling] = (embedding, logits)
        assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    assert np.abs(results["avg"][0] - results["max"][0]).max() > 1e-2
    assert np.abs(results["avg"][0] - results["gem:3"][0]).max() > 1e-3
    np.testing.assert_allclose(results["gem:3"][1], results["avg"][1], atol=1e-5)  # classifier always on avg
    assert str(Pooling.parse("GEM")) == "gem:3"
    with pytest.raises(ModelError, match="unknown pooling"):
        Pooling.parse("median")


# ---------------------------------------------------------------------------------------------------------------------
# Against torch (golden vectors) and on real photos


def test_graph_matches_torch_on_a_synthetic_input(fp32, golden) -> None:
    """Graph only, no decoder involved: the deterministic pattern input."""
    row = golden["names"].index("pattern")
    x = pattern_input()[None]
    np.testing.assert_allclose(fp32.embed(x)[0], golden["embedding"][row], atol=1e-4)
    np.testing.assert_allclose(fp32.classify(x)[0], golden["logits"][row], atol=1e-3)


def test_bundled_photos_embed_like_the_torch_reference(fp32, golden) -> None:
    """Bytes → project preprocessing → ONNX gives the vectors torch gave for the same photos."""
    names = [n for n in golden["names"] if n != "pattern"]
    rows = [golden["names"].index(n) for n in names]
    embeddings = fp32.embed_images([bundled_photo(n) for n in names])
    np.testing.assert_allclose(embeddings, golden["embedding"][rows], atol=1e-4)
    np.testing.assert_allclose(embeddings[:, :5], golden["embedding"][rows, :5], atol=1e-5)


def test_real_photos_are_classified_right(fp32) -> None:
    from catalens.imaging import load_and_preprocess

    batch = np.stack([load_and_preprocess(bundled_photo(n), fp32.card.preprocess) for n in ("coffee", "chelsea")])
    coffee, chelsea = fp32.classify(batch)
    assert int(np.argmax(coffee)) == ESPRESSO
    assert int(np.argmax(chelsea)) in CATS


# ---------------------------------------------------------------------------------------------------------------------
# Build outputs: determinism, cards, CLI


def test_build_is_deterministic() -> None:
    first, card = build_fp32()
    second, _ = build_fp32()
    assert first == second
    assert card.sha256 == sha256_hex(first)


def test_built_files_match_their_card(model_dir: Path) -> None:
    onnx_path, card_path = model_paths(model_dir, "efficientnet-lite0", "fp32")
    card = ModelCard.load(card_path)
    assert sha256_hex(onnx_path.read_bytes()) == card.sha256
    assert (card.dim, card.pooling, card.opset, card.outputs) == (1280, "avg", 17, ("embedding", "logits"))
    assert card.preprocess == PreprocessConfig()
    assert card.weights_sha256 == sha256_hex(WEIGHTS["efficientnet-lite0"].path().read_bytes())
    onnx.checker.check_model(onnx.load(onnx_path))
    assert onnx_path.stat().st_mode & 0o044 == 0o044  # readable by the Lambda runtime user once in a layer


def test_card_round_trip_and_fingerprint(model_dir: Path) -> None:
    card = ModelCard.load(model_paths(model_dir, "efficientnet-lite0", "fp32")[1])
    assert ModelCard.from_json(card.to_json()) == card
    assert len(card.fingerprint()) == 16
    variants = [
        replace(card, sha256="0" * 64),
        replace(card, pooling="gem:3"),
        replace(card, dim=640),
        replace(card, preprocess=PreprocessConfig(resize_short=240)),
    ]
    assert len({card.fingerprint(), *(v.fingerprint() for v in variants)}) == 5
    assert replace(card, weights_source="elsewhere").fingerprint() == card.fingerprint()  # provenance only
    # a re-measured copy cosine does not change the vectors: indexes built before it stay searchable
    assert replace(card, copy_cosine=0.5, measured={}).fingerprint() == card.fingerprint()
    changed = replace(card, copy_cosine=0.93, measured={"copy_cosine": {"model": card.name, "date": "2026-12-05"}})
    assert ModelCard.from_json(changed.to_json()) == changed
    assert json.loads(changed.to_json())["copy_cosine"] == 0.93


def test_a_card_without_a_copy_cosine_is_refused(model_dir: Path) -> None:
    """Every card comes from the build: one without the field is from an older build, not a model to guess for."""
    data = json.loads(model_paths(model_dir, "efficientnet-lite0", "fp32")[1].read_text())
    del data["copy_cosine"]
    with pytest.raises(ModelError, match="rebuild the model") as caught:
        ModelCard.from_dict(data)
    assert caught.value.code == "model_card_outdated"
    for wrong in (0.0, 1.5, "0.9", True):
        with pytest.raises(ModelError, match="copy_cosine"):
            ModelCard.from_dict({**data, "copy_cosine": wrong})


def _facts(path: Path, **values: float) -> Path:
    """A facts file with a copy cosine for each model (``_`` in the keyword for ``-``)."""
    facts = {
        name.replace("_", "-"): {"copy_cosine": {"value": v, "variant": "fp32", "command": "cmd", "date": "2026-12-01"}}
        for name, v in values.items()
    }
    path.write_text(json.dumps(facts))
    return path


def test_the_build_writes_the_recorded_copy_cosine_into_the_card(tmp_path: Path) -> None:
    facts = _facts(tmp_path / "measured.json", efficientnet_lite0=0.91, efficientnet_lite0_lite1_lite2_rmac_colour=0.94)
    (card,) = build_models(tmp_path / "models", variants=("fp32",), facts=facts)
    assert card.copy_cosine == 0.91
    assert card.measured == {
        "copy_cosine": {"model": "efficientnet-lite0", "variant": "fp32", "command": "cmd", "date": "2026-12-01"}
    }
    assert ModelCard.load(model_paths(tmp_path / "models", card.name, "fp32")[1]) == card
    # only the card changes with the facts, never the model bytes
    other_facts = _facts(tmp_path / "other.json", efficientnet_lite0=0.97)
    assert build_fp32(facts=other_facts)[0] == build_fp32(facts=facts)[0]


def test_a_model_nobody_measured_borrows_the_serving_models_copy_cosine_and_says_so(tmp_path: Path) -> None:
    facts = _facts(tmp_path / "measured.json", efficientnet_lite0=0.91, efficientnet_lite0_lite1_lite2_rmac_colour=0.94)
    _, card = build_fp32(pooling="gem", facts=facts)
    assert (card.name, card.copy_cosine) == ("efficientnet-lite0-gem3", 0.94)
    assert card.measured["copy_cosine"]["model"] == "efficientnet-lite0-lite1-lite2-rmac-colour"
    with pytest.raises(ModelError, match="no copy cosine"):
        build_fp32(pooling="gem", facts=_facts(tmp_path / "none.json", efficientnet_lite0=0.91))


def test_the_committed_facts_hold_the_serving_models_copy_cosine(model_dir: Path) -> None:
    """The serving model keeps the threshold it was measured at; the test model gets its own from the facts."""
    from catalens.embedder import DEFAULT_MODEL_NAME
    from catalens_tools.model.measured import copy_cosine_of, load_facts

    value, provenance = copy_cosine_of(DEFAULT_MODEL_NAME, load_facts())
    assert (value, provenance["model"], provenance["variant"]) == (0.94, DEFAULT_MODEL_NAME, "fp32")
    card = ModelCard.load(model_paths(model_dir, "efficientnet-lite0", "fp32")[1])
    assert card.copy_cosine == load_facts()["efficientnet-lite0"]["copy_cosine"]["value"]
    assert card.measured["copy_cosine"]["model"] == "efficientnet-lite0"


def test_check_matches_refuses_another_model(model_dir: Path) -> None:
    card = ModelCard.load(model_paths(model_dir, "efficientnet-lite0", "fp32")[1])
    card.check_matches(card.fingerprint())
    with pytest.raises(ModelError, match="rebuild the index") as caught:
        card.check_matches(replace(card, pooling="max").fingerprint())
    assert caught.value.code == "model_mismatch"


def test_hand_edited_card_is_refused(model_dir: Path) -> None:
    data = json.loads(model_paths(model_dir, "efficientnet-lite0", "fp32")[1].read_text())
    data["pooling"] = "max"
    with pytest.raises(ModelError, match="does not match its contents"):
        ModelCard.from_dict(data)
    with pytest.raises(ModelError, match="variant"):
        ModelCard.from_dict({**data, "variant": "fp16", "fingerprint": None})


def test_cli_builds_into_out_dir(tmp_path: Path, capsys) -> None:
    args = ["model", "build", "--out", str(tmp_path), "--variant", "fp32", "--weights", "efficientnet-lite0"]
    assert cli_main([*args, "--pooling", "gem"]) == 0
    report = json.loads(capsys.readouterr().out)
    (model,) = report["models"]
    assert model["file"] == "efficientnet-lite0-gem3.fp32.onnx"
    card = ModelCard.load(tmp_path / "efficientnet-lite0-gem3.fp32.card.json")
    assert (card.pooling, card.sha256, card.fingerprint()) == ("gem:3", model["sha256"], model["fingerprint"])
    assert sha256_hex((tmp_path / model["file"]).read_bytes()) == card.sha256


def test_unknown_weights_and_variants_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown weights"):
        build_models(tmp_path, weights="resnet50")
    with pytest.raises(ModelError, match="variants"):
        build_models(tmp_path, variants=("fp16",))


# ---------------------------------------------------------------------------------------------------------------------
# Ensembles: several networks in one graph


def _run(model: onnx.ModelProto, batch: np.ndarray, output: str = "embedding") -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([output], {"image": batch})[0]


def test_ensemble_is_its_members_unit_vectors_side_by_side(state_dict) -> None:
    from PIL import Image

    from catalens_tools.model.efficientnet import build_ensemble_onnx

    photo = Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB")
    at96 = np.stack([preprocess(photo, PreprocessConfig(size=96, resize_short=110))])
    ensemble = build_ensemble_onnx([(state_dict, 96), (state_dict, 64)], pooling="rmac", image_size=96)
    joined = _run(ensemble, at96)
    assert joined.shape == (1, 2 * 1280)
    assert np.linalg.norm(joined, axis=1) == pytest.approx(1.0, abs=1e-5)
    first, second = joined[:, :1280] * np.sqrt(2), joined[:, 1280:] * np.sqrt(2)
    # the member at the input's side sees the input itself
    assert np.abs(first - _run(build_onnx(state_dict, pooling="rmac", image_size=96), at96)).max() < 1e-5
    # the smaller member sees the same crop resized in the graph: close to resizing it beforehand with Pillow
    alone = build_onnx(state_dict, pooling="rmac", image_size=64)
    same_crop = _run(alone, np.stack([preprocess(photo, PreprocessConfig(size=64, resize_short=73))]))
    other_photo = _run(
        alone,
        np.stack([preprocess(Image.open(SKIMAGE_DATA / "coffee.png"), PreprocessConfig(size=64, resize_short=73))]),
    )
    resized_in_graph, other = float((second @ same_crop.T)[0, 0]), float((second @ other_photo.T)[0, 0])
    assert resized_in_graph > 0.97
    assert resized_in_graph > other + 0.1
    # the classifier is the last member's, on its own input
    logits = _run(ensemble, at96, "logits")
    assert int(logits.argmax()) in CATS


def test_ensemble_weights_are_named_and_checked(tmp_path: Path) -> None:
    from catalens_tools.model.build import default_model_name
    from catalens_tools.model.efficientnet import build_ensemble_onnx

    assert default_model_name("efficientnet-lite0+efficientnet-lite1", "rmac") == "efficientnet-lite0-lite1-rmac"
    assert default_model_name("efficientnet-lite0+efficientnet-lite2", "avg") == "efficientnet-lite0-lite2"
    with pytest.raises(ModelError, match="repeated weights"):
        build_models(tmp_path, weights="efficientnet-lite0+efficientnet-lite0")
    with pytest.raises(ModelError, match="unknown weights"):
        build_models(tmp_path, weights="efficientnet-lite0+resnet50")
    with pytest.raises(ModelError, match="at least two"):
        build_ensemble_onnx([(load_legacy_state_dict(WEIGHTS["efficientnet-lite0"].path()), 224)])
    assert not list(tmp_path.iterdir())  # nothing half-written


# ---------------------------------------------------------------------------------------------------------------------
# colour histogram (+colour)


def colour_histogram_reference(batch: np.ndarray) -> np.ndarray:
    """The colour histogram written out in numpy from its definition (the graph must compute the same)."""
    from catalens_tools.model.efficientnet import COLOUR_BINS, COLOUR_POOL, COLOUR_RANGE, colour_bin_centres

    rgb = (batch.astype(np.float64) * 128 + 127) / 255
    n, _, side, _ = rgb.shape
    cells = side // COLOUR_POOL
    rgb = rgb[:, :, : cells * COLOUR_POOL, : cells * COLOUR_POOL]
    rgb = rgb.reshape(n, 3, cells, COLOUR_POOL, cells, COLOUR_POOL).mean(axis=(3, 5)).reshape(n, 3, -1)
    o1, o2 = (rgb[:, 0] - rgb[:, 1]) / np.sqrt(2), (rgb[:, 0] + rgb[:, 1] - 2 * rgb[:, 2]) / np.sqrt(6)
    sigma = 2 * COLOUR_RANGE / (COLOUR_BINS - 1)
    weight = np.hypot(o1, o2)
    counts = np.stack(
        [
            (weight * np.exp(-((o1 - a) ** 2 + (o2 - b) ** 2) / (2 * sigma**2))).mean(axis=1)
            for a, b in colour_bin_centres()
        ],
        axis=1,
    )
    return np.sqrt(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12))


def recoloured(batch: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """The same photo with its RGB channels scaled (a red pepper made green), still a valid model input."""
    rgb = batch * 128 + 127
    return ((np.clip(rgb * np.array(gains, np.float32)[None, :, None, None], 0, 255) - 127) / 128).astype(np.float32)


def test_colour_pooling_appends_the_weighted_colour_histogram(state_dict) -> None:
    from PIL import Image

    from catalens_tools.model.efficientnet import COLOUR_BINS, COLOUR_WEIGHT

    photos = [Image.open(SKIMAGE_DATA / name).convert("RGB") for name in ("coffee.png", "chelsea.png", "camera.png")]
    batch = np.stack([preprocess(photo, PreprocessConfig(size=96, resize_short=110)) for photo in photos])
    plain = _run(build_onnx(state_dict, pooling="rmac", image_size=96), batch)
    joined = _run(build_onnx(state_dict, pooling="rmac+colour", image_size=96), batch)
    assert joined.shape == (3, 1280 + COLOUR_BINS**2)
    assert np.linalg.norm(joined, axis=1) == pytest.approx(1.0, abs=1e-5)
    scale = np.sqrt(1 + COLOUR_WEIGHT**2)
    colourful, grey = slice(0, 2), 2  # camera.png is a greyscale photo
    assert np.abs(joined[colourful, :1280] * scale - plain[colourful]).max() < 1e-5  # the network's part is untouched
    colour = joined[colourful, 1280:] * scale / COLOUR_WEIGHT
    assert np.abs(colour - colour_histogram_reference(batch[colourful])).max() < 1e-4
    assert np.linalg.norm(colour, axis=1) == pytest.approx(1.0, abs=1e-4)
    # a photo without colour has no histogram: its embedding is the network's alone
    assert not joined[grey, 1280:].any()
    assert np.abs(joined[grey, :1280] - plain[grey]).max() < 1e-6


def test_colour_tells_apart_what_the_network_sees_as_the_same(state_dict) -> None:
    from PIL import Image

    photo = Image.open(SKIMAGE_DATA / "coffee.png").convert("RGB")
    batch = np.stack([preprocess(photo, PreprocessConfig(size=96, resize_short=110))])
    variants = np.concatenate([batch, recoloured(batch, (0.6, 1.0, 1.3)), recoloured(batch, (1.0, 1.0, 1.0))])
    plain = _run(build_onnx(state_dict, pooling="rmac", image_size=96), variants)
    joined = _run(build_onnx(state_dict, pooling="rmac+colour", image_size=96), variants)
    network_cosine, joint_cosine = float(plain[0] @ plain[1]), float(joined[0] @ joined[1])
    assert joint_cosine < network_cosine - 0.02  # the recoloured cup moves away once colour counts
    assert float(joined[0] @ joined[2]) == pytest.approx(1.0, abs=1e-5)  # the same colours: the same vector


def test_an_ensemble_with_colour_adds_one_histogram_after_its_members(state_dict) -> None:
    from PIL import Image

    from catalens_tools.model.efficientnet import COLOUR_BINS, COLOUR_WEIGHT, build_ensemble_onnx

    photo = Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB")
    at96 = np.stack([preprocess(photo, PreprocessConfig(size=96, resize_short=110))])
    members = [(state_dict, 96), (state_dict, 64)]
    plain = _run(build_ensemble_onnx(members, pooling="rmac", image_size=96), at96)
    joined = _run(build_ensemble_onnx(members, pooling="rmac+colour", image_size=96), at96)
    assert joined.shape == (1, 2 * 1280 + COLOUR_BINS**2)
    scale = np.sqrt(1 + COLOUR_WEIGHT**2)
    assert np.abs(joined[:, : 2 * 1280] * scale - plain).max() < 1e-5
    assert np.abs(joined[:, 2 * 1280 :] * scale / COLOUR_WEIGHT - colour_histogram_reference(at96)).max() < 1e-4


def test_colour_is_named_and_recorded_in_the_card() -> None:
    from catalens_tools.model.build import default_model_name

    assert str(Pooling.parse("rmac+colour")) == "rmac+colour"
    assert Pooling.parse("RMAC+colour+flip") == Pooling("rmac", flip=True, colour=True)
    assert Pooling.parse("rmac+colour").network_only() == Pooling("rmac")
    assert default_model_name("efficientnet-lite0", "rmac+colour") == "efficientnet-lite0-rmac-colour"
    for bad in ("rmac+colour+colour", "rmac+color", "avg+"):
        with pytest.raises(ModelError, match="modifiers"):
            Pooling.parse(bad)
    _, card = build_fp32("efficientnet-lite0", pooling="rmac+colour")
    assert (card.pooling, card.dim) == ("rmac+colour", 1280 + 144)


# ---------------------------------------------------------------------------------------------------------------------
# int8


@pytest.mark.slow
def test_int8_stays_close_to_fp32(int8_model_dir: Path, fp32) -> None:
    from tests.unit.imagefactory import encode, photo

    int8 = Embedder.from_dir(int8_model_dir, "int8")
    card = int8.card
    assert card.quantization["format"] == "QDQ"
    assert card.quantization["per_channel"] is True
    assert card.quantization["from_fp32_sha256"] == fp32.card.sha256
    assert card.fingerprint() != fp32.card.fingerprint()  # an index of fp32 vectors refuses int8 queries
    photos = [bundled_photo(n) for n in ("coffee", "chelsea", "astronaut", "rocket.jpg")]
    photos += [encode(photo(seed=s)) for s in range(4)]
    cosine = np.sum(fp32.embed_images(photos) * int8.embed_images(photos), axis=1)
    assert cosine.mean() > 0.97, cosine
    assert cosine.min() > 0.93, cosine
    from catalens.imaging import load_and_preprocess

    coffee = load_and_preprocess(bundled_photo("coffee"), card.preprocess)[None]
    assert ESPRESSO in np.argsort(-int8.classify(coffee)[0])[:5]


@pytest.mark.slow
def test_int8_carries_its_fp32_models_copy_cosine(int8_model_dir: Path) -> None:
    fp32_card, int8_card = (
        ModelCard.load(model_paths(int8_model_dir, "efficientnet-lite0", v)[1]) for v in ("fp32", "int8")
    )
    assert (int8_card.copy_cosine, int8_card.measured) == (fp32_card.copy_cosine, fp32_card.measured)


def test_int8_build_is_deterministic(model_dir: Path) -> None:
    onnx_path, card_path = model_paths(model_dir, "efficientnet-lite0", "fp32")
    fp32_bytes, fp32_card = onnx_path.read_bytes(), ModelCard.load(card_path)
    first, card = build_int8(fp32_bytes, fp32_card, calibration_images=8)
    second, _ = build_int8(fp32_bytes, fp32_card, calibration_images=8)
    assert first == second
    assert card.sha256 == sha256_hex(first)
    assert card.quantization["calibration_images"] == 8


@pytest.mark.slow
def test_int8_keeps_the_colour_histogram_in_fp32() -> None:
    from catalens_tools.model.efficientnet import COLOUR_BINS

    fp32_bytes, fp32_card = build_fp32("efficientnet-lite0", pooling="rmac+colour")
    int8_bytes, _ = build_int8(fp32_bytes, fp32_card, calibration_images=8)
    quantised = onnx.load_from_string(int8_bytes)
    colour_nodes = [node for node in quantised.graph.node if node.name.startswith("colour.")]
    assert {node.op_type for node in colour_nodes} >= {"Conv", "Exp", "AveragePool"}
    weights = {init.name: init for init in quantised.graph.initializer}
    for node in colour_nodes:
        if node.op_type == "Conv":  # its weights stay float initializers, not a dequantised int8 tensor
            assert weights[node.input[1]].data_type == onnx.TensorProto.FLOAT, node.name
    batch = np.stack([preprocess(bundled_image("coffee.png"), fp32_card.preprocess)])
    colour = slice(-(COLOUR_BINS**2), None)
    fp32_colour = _run(onnx.load_from_string(fp32_bytes), batch)[:, colour]
    int8_colour = _run(quantised, batch)[:, colour]
    assert np.abs(int8_colour - fp32_colour).max() < 0.01  # only the renormalisation by the network part differs
