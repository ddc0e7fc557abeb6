"""Where the main subject of a photo is: a box around the product a shopper points the camera at.

No trained detector: the box comes from the image alone, in a few milliseconds of numpy on a 48-pixel thumbnail.
A shopper centres what they photograph, and what surrounds it (shelf, floor, a crowd of other packs) reaches the
photo's border; so a pixel is *salient* by how far its colour is from every colour on the border, weighted by how
close it is to the centre. The box spanning most of the salient pixels' mass, grown to a square with a margin (the model
sees a centre crop of what it is given), is the subject. When what the box holds is not clearly more unlike the
border than what lies outside it (a bin of apples fills the frame), or the square would cover most of the photo
anyway, there is no box and the whole photo is searched.

The same function crops a catalog photo on a plain background to its product, if ingest is ever asked to.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["SubjectParams", "main_subject_box"]

THUMBNAIL = 48


class SubjectParams:
    """The detector's knobs (module defaults: chosen on grocery train-as-queries, docs/evaluation.md)."""

    def __init__(
        self,
        *,
        border: int = 2,
        centre_sigma: float = 0.35,
        threshold: float = 0.35,
        margin: float = 1.5,
        max_area: float = 0.8,
        min_side: float = 0.3,
        mass: float = 0.9,
        contrast: float = 2.0,
    ) -> None:
        self.border = border  # thumbnail pixels of the ring that models the background
        self.centre_sigma = centre_sigma  # width of the centre prior, in fractions of the short side
        self.threshold = threshold  # share of the peak saliency a pixel needs to belong to the subject
        self.margin = margin  # the square's side over the blob's long side (the model sees 0.875 of it)
        self.max_area = max_area  # a square covering more of the photo than this: search the whole photo
        self.min_side = min_side  # the square's side is at least this share of the photo's short side
        self.mass = mass  # the box spans this central share of the salient mass along each axis
        self.contrast = contrast  # inside the box colours must differ from the border this many times more than outside

    def key(self) -> str:
        """A short text naming these settings (caches of evaluated vectors are keyed by it)."""
        values = (
            self.border,
            self.centre_sigma,
            self.threshold,
            self.margin,
            self.max_area,
            self.min_side,
            self.mass,
            self.contrast,
        )
        return "subject-v1-" + "-".join(f"{value:g}" for value in values)


DEFAULT_PARAMS = SubjectParams()


def _opponent(pixels: np.ndarray) -> np.ndarray:
    """RGB 0..255 → an opponent colour space where distances roughly follow what looks different."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return np.stack([(r + g + b) / 3.0, (r - g) * 0.8, (r + g - 2 * b) * 0.4], axis=-1)


def _mass_span(weights: np.ndarray, share: float) -> tuple[int, int]:
    """The index range holding the central ``share`` of a 1-D weight profile (its tails cut equally)."""
    cumulative = np.cumsum(weights)
    total = float(cumulative[-1])
    low = int(np.searchsorted(cumulative, total * (1 - share) / 2))
    high = int(np.searchsorted(cumulative, total * (1 + share) / 2))
    return low, min(len(weights) - 1, high)


def saliency(image: Image.Image, params: SubjectParams = DEFAULT_PARAMS) -> tuple[np.ndarray, np.ndarray]:
    """Per thumbnail pixel (long side 48), how far its colour is from the border's, times the centre prior (0..1);
    and the colour distances themselves."""
    scale = THUMBNAIL / max(image.size)
    size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
    pixels = _opponent(np.asarray(image.convert("RGB").resize(size, Image.Resampling.BOX), dtype=np.float32))
    height, width = pixels.shape[:2]
    ring = np.ones((height, width), dtype=bool)
    ring[params.border : height - params.border, params.border : width - params.border] = False
    background = pixels[ring][:: max(1, int(ring.sum()) // 64)]  # at most ~64 border colours
    flat = pixels.reshape(-1, 3)
    squared = (flat**2).sum(1)[:, None] + (background**2).sum(1)[None, :] - 2.0 * (flat @ background.T)
    distance = np.sqrt(np.maximum(squared.min(axis=1), 0.0)).reshape(height, width)
    peak = float(np.percentile(distance, 99))
    if peak <= 1e-6:
        return np.zeros((height, width), dtype=np.float32), distance
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    short = min(height, width)
    radius2 = ((x + 0.5 - width / 2) ** 2 + (y + 0.5 - height / 2) ** 2) / (short**2)
    prior = np.exp(-radius2 / (2 * params.centre_sigma**2))
    return (np.clip(distance / peak, 0.0, 1.0) * prior).astype(np.float32), distance


def main_subject_box(image: Image.Image, params: SubjectParams = DEFAULT_PARAMS) -> tuple[int, int, int, int] | None:
    """The main subject's square box in ``image``'s pixels, or None when the whole photo is the better query."""
    weights, distance = saliency(image, params)
    peak = float(weights.max())
    if peak <= 0.0:
        return None
    mass = np.where(weights >= params.threshold * peak, weights, 0.0)
    height, width = weights.shape
    x_low, x_high = _mass_span(mass.sum(axis=0), params.mass)
    y_low, y_high = _mass_span(mass.sum(axis=1), params.mass)
    scale_x, scale_y = image.width / width, image.height / height
    left, right = x_low * scale_x, (x_high + 1) * scale_x
    top, bottom = y_low * scale_y, (y_high + 1) * scale_y
    inside = np.zeros(distance.shape, dtype=bool)
    inside[y_low : y_high + 1, x_low : x_high + 1] = True
    if inside.all() or distance[inside].mean() < params.contrast * distance[~inside].mean():
        return None  # what the box holds is no more unlike the border than the rest: a pile, a shelf, a texture
    short = min(image.width, image.height)
    side = min(short, max(params.min_side * short, params.margin * max(right - left, bottom - top)))
    if side * side >= params.max_area * image.width * image.height:
        return None
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    x0 = round(min(max(centre_x - side / 2, 0), image.width - side))
    y0 = round(min(max(centre_y - side / 2, 0), image.height - side))
    side_px = round(side)
    return x0, y0, min(image.width, x0 + side_px), min(image.height, y0 + side_px)
