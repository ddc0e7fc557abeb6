"""Pooled descriptors of many views of many photos, computed once per backbone and cached outside the repo.

The lever study (:mod:`catalens_tools.evaluation.levers`) compares poolings, crops, flips, scales and models.
Running the network once per (model, input size, view) and pooling its last feature map in numpy several ways at
once keeps that affordable on two shared cores: every pooling of one view costs one forward pass, and a rerun costs
none.

A *backbone* is a built EfficientNet-Lite graph at one input size whose outputs are the feature maps (head, and a
mid-level stage); a *view* says how a decoded photo becomes that input (centre crop or the whole frame, horizontal
flip). Poolings: ``avg``, ``max``, ``gem`` (p = 3), ``rmac`` (regional max, Tolias et al. 2016) and ``mid``
(GeM of the stride-16 stage, for concatenation).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from catalens.imaging import PreprocessConfig, decode_image, preprocess

CACHE_VERSION = 1
HEAD_OUTPUT = "head.relu6"
POOLINGS = ("avg", "max", "gem", "rmac", "mid")
GEM_P = 3.0


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/catalens/levers`` (``~/.cache/catalens/levers``): never inside the repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "catalens" / "levers"


@dataclass(frozen=True)
class View:
    """How one decoded photo becomes one model input.

    Parameters
    ----------
    fit
        ``crop``: resize the short side to ``size / crop_fraction`` and take the centre ``size``×``size``;
        ``full``: resize the whole photo to ``size``×``size`` (nothing cut off, aspect ratio not kept).
    crop_fraction
        For ``crop``: the share of the short side kept (0.875 is the ImageNet recipe).
    flip
        Mirror left-right after resizing.
    """

    fit: str = "crop"
    crop_fraction: float = 0.875
    flip: bool = False

    def preprocess_config(self, size: int) -> PreprocessConfig:
        if self.fit == "full":
            return PreprocessConfig(size=size, resize_short=size, center_crop=False)
        return PreprocessConfig(size=size, resize_short=round(size / self.crop_fraction), center_crop=True)

    def key(self) -> str:
        if self.fit == "full":
            return "full" + ("-flip" if self.flip else "")
        return f"crop{self.crop_fraction:g}" + ("-flip" if self.flip else "")


@dataclass(frozen=True)
class Backbone:
    """An EfficientNet-Lite at one input size (``weights`` is a key of :data:`catalens_tools.model.build.WEIGHTS`)."""

    weights: str = "efficientnet-lite0"
    size: int = 224

    def key(self) -> str:
        return f"{self.weights}@{self.size}"


def mid_level_tensor(state_dict: dict[str, np.ndarray]) -> str:
    """Name of the last block output at stride 16 (stage 5 of 7): the mid-level map we may concatenate."""
    from catalens_tools.model.efficientnet import infer_architecture

    blocks = infer_architecture(state_dict).blocks
    strides = np.cumprod([b.stride for b in blocks])
    last = max(i for i, stride in enumerate(strides) if stride * 2 == 16)  # the stem halves once more
    block = blocks[last]
    return f"b{block.index}.add" if block.has_skip else f"b{block.index}.project"


class FeatureExtractor:
    """One onnxruntime session over a backbone that outputs its head and mid-level feature maps."""

    def __init__(self, backbone: Backbone, *, threads: int = 1) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        from catalens_tools.model.build import WEIGHTS
        from catalens_tools.model.efficientnet import build_onnx
        from catalens_tools.model.torch_pickle import load_legacy_state_dict

        source = WEIGHTS[backbone.weights]
        state_dict = load_legacy_state_dict(source.path())
        model = build_onnx(state_dict, with_classifier=False, image_size=backbone.size)
        self.mid_name = mid_level_tensor(state_dict)
        for name in (HEAD_OUTPUT, self.mid_name):
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.backbone = backbone
        self.weights_sha256 = hashlib.sha256(source.path().read_bytes()).hexdigest()
        self._session = ort.InferenceSession(
            onnx.ModelProto.SerializeToString(model), options, providers=["CPUExecutionProvider"]
        )

    def maps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[n, 3, S, S]`` → (head map ``[n, C, h, w]``, mid-level map ``[n, C', 2h, 2w]``)."""
        head, mid = self._session.run([HEAD_OUTPUT, self.mid_name], {"image": batch})
        return head, mid


def gem(maps: np.ndarray, p: float = GEM_P) -> np.ndarray:
    """Generalised mean over the spatial axes (p = 1: average, p → ∞: max); ReLU6 maps are ≥ 0."""
    x = np.clip(maps.astype(np.float64), 1e-6, None)
    return (x**p).mean(axis=(2, 3)) ** (1.0 / p)


def rmac(maps: np.ndarray, levels: int = 3) -> np.ndarray:
    """Sum of the L2-normalised max-pooled regions (the PCA-whitening step of R-MAC is a separate lever)."""
    from catalens_tools.model.efficientnet import rmac_regions  # the graph's regions: study and model pool alike

    n, c, h, w = maps.shape
    if h != w:
        raise ValueError(f"R-MAC expects square maps, got {h}×{w}")
    total = np.zeros((n, c))
    for y, x, side in rmac_regions(h, levels):
        region = maps[:, :, y : y + side, x : x + side].max(axis=(2, 3)).astype(np.float64)
        total += region / np.maximum(np.linalg.norm(region, axis=1, keepdims=True), 1e-12)
    return total


def pool_all(head: np.ndarray, mid: np.ndarray) -> dict[str, np.ndarray]:
    """Every pooling of one batch of maps, float32."""
    pooled = {
        "avg": head.mean(axis=(2, 3)),
        "max": head.max(axis=(2, 3)),
        "gem": gem(head),
        "rmac": rmac(head),
        "mid": gem(mid),
    }
    return {name: value.astype(np.float32) for name, value in pooled.items()}


def load_photo(path: Path, short_side: int) -> object:
    """Decode with the production decoder (draft for JPEGs, EXIF orientation, RGB)."""
    return decode_image(path.read_bytes(), target_short_side=short_side)


def view_tensor(image: object, view: View, size: int) -> np.ndarray:
    """The production preprocessing for ``view``, flipped when asked."""
    tensor = preprocess(image, view.preprocess_config(size))  # type: ignore[arg-type]
    return np.ascontiguousarray(tensor[:, :, ::-1]) if view.flip else tensor


@functools.lru_cache(maxsize=4096)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes (memoised while its size and mtime stay: one read per file per process)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _paths_digest(paths: Sequence[Path]) -> str:
    """Names and *contents* of the photos, not their mtimes: a data folder that is copied or re-synced (new mtimes,
    same bytes) keeps its cached forward passes; a changed photo does not."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}|{_file_digest(Path(path), stat.st_size, stat.st_mtime_ns)}\n".encode())
    return digest.hexdigest()[:16]


@dataclass
class FeatureStore:
    """Cached pooled descriptors: ``(backbone, views, photo list) → {view key: {pooling: float32[n, C]}}``.

    Parameters
    ----------
    cache_dir
        Where ``.npz`` files go (default :func:`default_cache_dir`); ``None`` disables the cache.
    threads
        onnxruntime intra-op threads.
    batch
        Images per forward pass.
    log
        Called with progress lines (the CLI passes a function writing to stderr).
    """

    cache_dir: Path | None = None
    threads: int = 1
    batch: int = 32
    log: Callable[[str], None] | None = None

    @cached_property
    def _extractors(self) -> dict[str, FeatureExtractor]:
        return {}

    def extractor(self, backbone: Backbone) -> FeatureExtractor:
        if backbone.key() not in self._extractors:
            self._extractors[backbone.key()] = FeatureExtractor(backbone, threads=self.threads)
        return self._extractors[backbone.key()]

    def _cache_path(self, backbone: Backbone, view: View, digest: str, tag: str) -> Path | None:
        if self.cache_dir is None:
            return None
        identity = json.dumps(
            {"v": CACHE_VERSION, "backbone": asdict(backbone), "view": asdict(view), "paths": digest, "tag": tag},
            sort_keys=True,
        )
        name = hashlib.sha256(identity.encode()).hexdigest()[:20]
        return self.cache_dir / f"{backbone.key()}-{view.key()}-{tag}-{name}.npz"

    def descriptors(
        self,
        backbone: Backbone,
        views: Sequence[View],
        paths: Sequence[Path],
        *,
        images: Callable[[int], object] | None = None,
        tag: str = "files",
    ) -> dict[str, dict[str, np.ndarray]]:
        """Pooled descriptors of every view of every photo; photos are decoded once for all missing views.

        ``images(i)`` may supply the i-th decoded photo instead of reading ``paths[i]`` (augmented catalog views);
        ``tag`` then names that source in the cache key.
        """
        digest = _paths_digest(paths)
        result: dict[str, dict[str, np.ndarray]] = {}
        missing: list[View] = []
        for view in views:
            cache = self._cache_path(backbone, view, digest, tag)
            if cache is not None and cache.is_file():
                with np.load(cache) as stored:
                    result[view.key()] = {name: stored[name] for name in stored.files}
            else:
                missing.append(view)
        if not missing:
            return result
        extractor = self.extractor(backbone)
        short_side = max(v.preprocess_config(backbone.size).decode_short_side for v in missing)
        pending: dict[str, list[np.ndarray]] = {view.key(): [] for view in missing}
        pooled: dict[str, dict[str, list[np.ndarray]]] = {view.key(): {p: [] for p in POOLINGS} for view in missing}
        started = time.perf_counter()

        def flush() -> None:
            for key, tensors in pending.items():
                if tensors:
                    head, mid = extractor.maps(np.stack(tensors))
                    for name, value in pool_all(head, mid).items():
                        pooled[key][name].append(value)
                    tensors.clear()

        for i, path in enumerate(paths):
            image = images(i) if images is not None else load_photo(path, short_side)
            for view in missing:
                pending[view.key()].append(view_tensor(image, view, backbone.size))
            if len(pending[missing[0].key()]) >= self.batch:
                flush()
            if self.log and (i + 1) % 500 == 0:
                self.log(f"{backbone.key()} {len(missing)} view(s): {i + 1}/{len(paths)} photos")
        flush()
        if self.log:
            seconds = time.perf_counter() - started
            self.log(f"{backbone.key()} {[v.key() for v in missing]}: {len(paths)} photos in {seconds:.0f} s")
        for view in missing:
            arrays = {name: np.concatenate(parts) for name, parts in pooled[view.key()].items()}
            result[view.key()] = arrays
            cache = self._cache_path(backbone, view, digest, tag)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".tmp.npz")
                np.savez(tmp, **arrays)
                os.replace(tmp, cache)
        return result
