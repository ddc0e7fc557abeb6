"""The ONNX embedder: photo bytes or preprocessed arrays → L2-normalised vectors.

One onnxruntime session per :class:`Embedder`, created in ``__init__`` with explicit options; a process (a Lambda
container, the local stack) creates one Embedder at start and reuses it for every request. Sessions are
thread-safe, so one Embedder may serve concurrent callers.

Example
-------
>>> embedder = Embedder.from_dir(settings.model_dir, settings.model_variant, threads=1)  # doctest: +SKIP
>>> embedder.embed_images([photo_bytes]).shape                                           # doctest: +SKIP
(1, 1280)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from catalens.errors import ModelError
from catalens.imaging import ImageLimits, load_and_preprocess
from catalens.model.card import ModelCard, model_paths, sha256_hex

# The serving model, catalens_tools.model.build.default_model_name(SERVING_WEIGHTS, SERVING_POOLING) (a literal:
# the query path has no onnx package to import the builder with; tests/unit/test_eval_levers.py keeps the two equal).
DEFAULT_MODEL_NAME = "efficientnet-lite0-lite1-lite2-rmac-colour"
MAX_BATCH = 16  # larger batches gain nothing on 1–2 vCPUs and only grow peak memory


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def find_card(model_dir: Path, variant: str, name: str | None = None) -> Path:
    """The card to load: ``name`` if given, else the default model, else the only model of that variant."""
    if name is not None:
        return model_paths(model_dir, name, variant)[1]
    default = model_paths(model_dir, DEFAULT_MODEL_NAME, variant)[1]
    if default.is_file():
        return default
    candidates = sorted(model_dir.glob(f"*.{variant}.card.json"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ModelError(f"no {variant} model in {model_dir}; run `catalens model build --out {model_dir}`")
    names = ", ".join(c.name.removesuffix(f".{variant}.card.json") for c in candidates)
    raise ModelError(f"several {variant} models in {model_dir} ({names}); name one")


class Embedder:
    """Embeds images with one ONNX model.

    Parameters
    ----------
    model
        The ``.onnx`` bytes; their sha256 must equal ``card.sha256``.
    card
        The model card (preprocessing, dimension, fingerprint).
    threads
        onnxruntime intra-op threads (1 on a 1-vCPU Lambda; 2 gives ~1.8× on two cores).
    """

    def __init__(self, model: bytes, card: ModelCard, *, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        actual = sha256_hex(model)
        if actual != card.sha256:
            raise ModelError(
                f"model {card.name}.{card.variant} has sha256 {actual[:12]}…, its card says {card.sha256[:12]}…; "
                "the file was changed or the card belongs to another build — rebuild with `catalens model build`",
                code="model_checksum",
            )
        self.card = card
        self.dim = card.dim
        self.threads = threads
        self._session = ort.InferenceSession(model, _session_options(threads), providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"model has {len(inputs)} inputs, expected 1")
        self._input = inputs[0].name
        # output name -> width (dimension 1); the batch dimension is symbolic
        self._outputs = {o.name: o.shape[1] for o in self._session.get_outputs()}
        if "embedding" not in self._outputs:
            raise ModelError("model has no 'embedding' output")
        size = card.preprocess.size
        self._input_shape = (3, size, size)

    @classmethod
    def from_dir(cls, model_dir: Path, variant: str = "fp32", *, threads: int = 1, name: str | None = None) -> Embedder:
        """Load ``<model_dir>/<name>.<variant>.onnx`` after checking its sha256 against the card beside it."""
        card_path = find_card(Path(model_dir), variant, name)
        card = ModelCard.load(card_path)
        if card.variant != variant:
            raise ModelError(f"{card_path} describes variant {card.variant!r}, not {variant!r}")
        onnx_path = model_paths(Path(model_dir), card.name, card.variant)[0]
        try:
            model = onnx_path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"model file {onnx_path} not found (its card exists); rebuild the model") from None
        return cls(model, card, threads=threads)

    @property
    def fingerprint(self) -> str:
        return self.card.fingerprint()

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1:] != self._input_shape:
            raise ValueError(
                f"expected a batch of shape [n, {', '.join(map(str, self._input_shape))}], got {batch.shape}"
            )
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _run(self, output: str, batch: np.ndarray, width: int) -> np.ndarray:
        batch = self._check_batch(batch)
        if len(batch) == 0:
            return np.zeros((0, width), dtype=np.float32)
        parts = [
            self._session.run([output], {self._input: batch[i : i + MAX_BATCH]})[0]
            for i in range(0, len(batch), MAX_BATCH)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """``float32[n, 3, S, S]`` preprocessed images → ``float32[n, dim]`` unit vectors (batches of ≤ 16)."""
        return self._run("embedding", batch, self.dim)

    def embed_images(self, images: Sequence[bytes], limits: ImageLimits | None = None) -> np.ndarray:
        """Photo bytes → unit vectors, through :func:`catalens.imaging.load_and_preprocess` with the card's settings.

        Raises the first :class:`~catalens.errors.ImageError` met; callers that must not let one bad photo spoil a
        batch (ingest) embed photo by photo.
        """
        limits = limits or ImageLimits()
        vectors = []
        for start in range(0, len(images), MAX_BATCH):
            chunk = [
                load_and_preprocess(data, self.card.preprocess, limits) for data in images[start : start + MAX_BATCH]
            ]
            vectors.append(self.embed(np.stack(chunk)))
        return np.concatenate(vectors) if vectors else np.zeros((0, self.dim), dtype=np.float32)

    def classify(self, batch: np.ndarray) -> np.ndarray:
        """ImageNet logits ``float32[n, classes]`` (only for models built with the classifier)."""
        if "logits" not in self._outputs:
            raise ModelError(f"model {self.card.name}.{self.card.variant} was built without the classifier")
        return self._run("logits", batch, int(self._outputs["logits"]))
