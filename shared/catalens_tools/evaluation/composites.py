"""The grouped-results benchmark: catalog products placed into shoppers' shelf photos, found one region each.

A composite is a natural photo of the chosen split (a shelf, a bin, a hand with a pack: the background) with two
or three different catalog products pasted in: each product is cut out of its white shop background
(:func:`~catalens_tools.evaluation.augment.foreground_mask`), scaled so its longer side is 25–45% of the photo's
short side (a product a shopper photographs among others), brightened or darkened by up to 10%, and placed where it
overlaps no other placed product; the composite is saved as a JPEG (quality 85), as a phone would. Composites are
made deterministically from a seed, in memory only (no image is written anywhere).

Scoring follows search with ``groups=N``: the windows of :func:`catalens.groups.candidate_windows` are embedded,
each window's best plain cosine to the catalog is its objectness, :func:`catalens.groups.select_groups` keeps up to
N, and each kept window's catalog ranking is calibrated as search calibrates (the other split's whole photos as the
query log). A placed product is **found** when a kept region covers at least half of it (or it at least half of the
region: :func:`catalens.groups.overlap` ≥ 0.5) and the product is in that region's top 5. A kept region that covers
no placed product is a **false region** (the background photo's own product counts as false: it was not placed).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from catalens.groups import MIN_SCORE, WINDOW_SIDES, candidate_windows, overlap, select_groups
from catalens.imaging import ImageLimits, PreprocessConfig, load_windows_and_preprocess
from catalens_tools.evaluation.augment import foreground_mask
from catalens_tools.evaluation.grocery import GroceryImage

__all__ = ["Composite", "evaluate_composites", "make_composites"]

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Composite:
    """A composite photo's JPEG bytes and, per placed product, its catalog index and box."""

    key: str
    data: bytes
    placed: tuple[tuple[int, Box], ...]


def _cutout(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    """The product and its mask (the whole image when it has no plain background)."""
    rgb = image.convert("RGB")
    mask = foreground_mask(rgb)
    alpha = Image.fromarray((mask * 255).astype(np.uint8), "L") if mask is not None else Image.new("L", rgb.size, 255)
    box = alpha.getbbox() or (0, 0, *rgb.size)
    return rgb.crop(box), alpha.crop(box)


def make_composites(
    backgrounds: Sequence[GroceryImage], catalog: Sequence[GroceryImage], count: int, *, seed: int = 0
) -> list[Composite]:
    """``count`` composites: each a random background with 2 or 3 distinct random catalog products placed in it."""
    rng = np.random.default_rng(seed)
    cutouts: dict[int, tuple[Image.Image, Image.Image]] = {}
    composites = []
    for number in range(count):
        background = backgrounds[int(rng.integers(len(backgrounds)))]
        photo = Image.open(background.path).convert("RGB")
        width, height = photo.size
        short = min(width, height)
        chosen = rng.choice(len(catalog), size=int(rng.integers(2, 4)), replace=False)
        placed: list[tuple[int, Box]] = []
        for index in chosen.tolist():
            if index not in cutouts:
                cutouts[index] = _cutout(Image.open(catalog[index].path))
            product, mask = cutouts[index]
            longest = rng.uniform(0.25, 0.45) * short
            scale = longest / max(product.size)
            size = (max(8, round(product.width * scale)), max(8, round(product.height * scale)))
            for _ in range(50):  # a free spot, else the product is left out
                left = int(rng.integers(0, max(1, width - size[0])))
                top = int(rng.integers(0, max(1, height - size[1])))
                box = (left, top, left + size[0], top + size[1])
                if all(overlap(box, other) < 0.1 for _, other in placed):
                    break
            else:
                continue
            shown = ImageEnhance.Brightness(product.resize(size, Image.Resampling.LANCZOS)).enhance(
                rng.uniform(0.9, 1.1)
            )
            photo.paste(shown, box[:2], mask.resize(size, Image.Resampling.LANCZOS))
            placed.append((index, box))
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=85)
        composites.append(Composite(f"{background.split}-{seed}-{number}", buffer.getvalue(), tuple(placed)))
    return composites


def window_vectors(
    composites: Sequence[Composite],
    embed: Callable[[np.ndarray], np.ndarray],
    config: PreprocessConfig,
) -> list[tuple[list[Box], np.ndarray]]:
    """Per composite, its candidate windows and their embeddings, prepared exactly as search prepares them."""
    out = []
    for composite in composites:
        windows, _ = load_windows_and_preprocess(
            composite.data, config, ImageLimits(), candidate_windows, min(WINDOW_SIDES)
        )
        out.append(([w.box for w in windows], embed(np.stack([w.tensor for w in windows]))))
    return out


def evaluate_composites(
    composites: Sequence[Composite],
    windows: Sequence[tuple[list[Box], np.ndarray]],
    catalog_vectors: np.ndarray,
    rank: Callable[[np.ndarray], np.ndarray],
    *,
    groups: int = 3,
    thresholds: Sequence[float] = (0.5, 0.55, 0.6, 0.65, 0.7),
) -> dict:
    """Found share and false regions per photo at each objectness threshold (the serving one is ``MIN_SCORE``).

    ``rank(vectors)`` gives ``[n, n_catalog]`` scores as search ranks a region's hits (calibrated or plain).
    """
    catalog = catalog_vectors / np.linalg.norm(catalog_vectors, axis=1, keepdims=True)
    per_window = []
    for boxes, vectors in windows:
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        cosines = unit @ catalog.T
        best = cosines.argmax(axis=1)
        per_window.append((boxes, vectors, cosines[np.arange(len(best)), best], best))
    report: dict = {"composites": len(composites), "placed": sum(len(c.placed) for c in composites), "groups": groups}
    rows = []
    for threshold in sorted({*thresholds, MIN_SCORE}):
        found = false_regions = regions = 0
        for composite, (boxes, vectors, scores, best) in zip(composites, per_window, strict=True):
            kept = select_groups(boxes, scores.tolist(), [str(b) for b in best], groups, min_score=threshold)
            regions += len(kept)
            ranked = rank(vectors[kept]) if kept else np.zeros((0, len(catalog)))
            top5 = [set(np.argsort(-row, kind="stable")[:5].tolist()) for row in ranked]
            hit_products = set()
            for position, index in enumerate(kept):
                covers = [p for p, (_, box) in enumerate(composite.placed) if overlap(boxes[index], box) >= 0.5]
                if not covers:
                    false_regions += 1
                for p in covers:
                    if composite.placed[p][0] in top5[position]:
                        hit_products.add(p)
            found += len(hit_products)
        rows.append(
            {
                "min_score": threshold,
                "serving": threshold == MIN_SCORE,
                "found_in_top5": round(found / max(1, report["placed"]), 4),
                "false_regions_per_photo": round(false_regions / max(1, len(composites)), 3),
                "regions_per_photo": round(regions / max(1, len(composites)), 3),
            }
        )
    report["by_threshold"] = rows
    return report
