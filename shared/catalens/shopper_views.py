"""Shopper-photo augmentations of a catalog image: what a product looks like when someone photographs it in a shop.

Ingest makes the query-domain seed with them (:class:`RecentShelf`, :func:`seed_views`: synthetic shoppers' photos
stand in for real ones until search has sampled enough); the merchant self-check (augmented catalog photos are the
queries) and the lever study use them too. Pure Pillow + numpy, deterministic for a given
``numpy.random.Generator``.

One augmentation, in order:

1. **cut-out** — a catalog shot on a plain light background (the usual shop image) gives a foreground mask by
   flood-filling the near-white border; a photo without such a border keeps its pixels and gets no new background;
2. **background** — the cut-out product is pasted, large and roughly centred, in front of a "shelf": a grid of other
   catalog products (or, without others, smooth coloured clutter);
3. **geometry** — rotation (±``max_rotation``°) and an off-centre crop that may cut the product's edges;
4. **light** — brightness, contrast, saturation and a colour cast (warm or cool store light);
5. **blur** and sensor noise, then a **JPEG** round trip at a phone-like quality.

Every step can be switched off with :class:`AugmentConfig`, so tests and the study can look at one at a time.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

__all__ = ["AugmentConfig", "Product", "RecentShelf", "augment", "foreground_mask", "seed_views", "shelf_background"]


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each step; a zero (or ``False``) switches that step off.

    Parameters
    ----------
    size
        Side of the square output photo.
    background
        Replace a plain light background with a shelf of other products (or generated clutter).
    product_scale
        Range of the product's longest side as a fraction of the frame.
    max_rotation
        Largest rotation in degrees (either way).
    crop
        Range of the crop side as a fraction of the frame (1 = no crop); the crop is placed at random.
    brightness, contrast, saturation
        Largest relative change (0.3 → factor in [0.7, 1.3]).
    color_cast
        Largest per-channel gain change for a warm/cool light.
    blur
        Largest Gaussian blur radius in pixels (at ``size``).
    noise
        Standard deviation of added Gaussian noise (0–255 scale).
    jpeg_quality
        Range of JPEG qualities; ``(100, 100)`` still round-trips, ``None`` skips it.
    """

    size: int = 320
    background: bool = True
    product_scale: tuple[float, float] = (0.55, 0.95)
    max_rotation: float = 15.0
    crop: tuple[float, float] = (0.7, 1.0)
    brightness: float = 0.3
    contrast: float = 0.25
    saturation: float = 0.25
    color_cast: float = 0.12
    blur: float = 1.5
    noise: float = 4.0
    jpeg_quality: tuple[int, int] | None = (45, 90)

    def only(self, *steps: str) -> AugmentConfig:
        """This config with every step not named switched off (``"background"``, ``"rotation"``, ``"crop"``,
        ``"light"``, ``"blur"``, ``"noise"``, ``"jpeg"``)."""
        off = {
            "background": {"background": False},
            "rotation": {"max_rotation": 0.0},
            "crop": {"crop": (1.0, 1.0)},
            "light": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "color_cast": 0.0},
            "blur": {"blur": 0.0},
            "noise": {"noise": 0.0},
            "jpeg": {"jpeg_quality": None},
        }
        unknown = set(steps) - set(off)
        if unknown:
            raise ValueError(f"unknown augmentation step(s): {sorted(unknown)}")
        changes: dict = {}
        for step, values in off.items():
            if step not in steps:
                changes |= values
        return replace(self, **changes)


def foreground_mask(image: Image.Image, *, threshold: int = 245, min_border: float = 0.6) -> np.ndarray | None:
    """Boolean ``[h, w]`` mask of the product, or ``None`` when the photo has no plain light background.

    Background = near-white pixels (every channel ≥ ``threshold``) connected to the border, found by a flood fill,
    so white parts inside the product (a milk carton) stay foreground. ``None`` when less than ``min_border`` of
    the border is near-white (a photo, not a cut-out shot) or when nothing would be left.
    """
    pixels = np.asarray(image.convert("RGB"))
    light = pixels.min(axis=2) >= threshold
    border = np.concatenate([light[0], light[-1], light[:, 0], light[:, -1]])
    if border.mean() < min_border:
        return None
    background = np.zeros_like(light)
    background[0], background[-1], background[:, 0], background[:, -1] = light[0], light[-1], light[:, 0], light[:, -1]
    while True:  # grow the border region through light pixels (4-connected) until it stops changing
        grown = background.copy()
        grown[1:] |= background[:-1]
        grown[:-1] |= background[1:]
        grown[:, 1:] |= background[:, :-1]
        grown[:, :-1] |= background[:, 1:]
        grown &= light
        if np.array_equal(grown, background):
            break
        background = grown
    foreground = ~background
    if foreground.mean() < 0.02:
        return None
    return foreground


def _clutter(size: int, rng: np.random.Generator) -> Image.Image:
    """Smooth coloured blobs of shop-interior tones: the base of a shelf, and the whole of it without products."""
    grey = rng.uniform(30, 200, size=(4, 4, 1))
    coarse = np.clip(grey + rng.uniform(-25, 25, size=(4, 4, 3)), 0, 255).astype(np.uint8)
    base = Image.fromarray(coarse, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(base, dtype=np.float32) + rng.normal(0, 12, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@dataclass(frozen=True, eq=False)
class Product:
    """A catalog image with its cut-out computed once (the flood fill is the slow part of an augmentation).

    ``cut``/``alpha`` are the product cropped to its mask, or the whole image with full alpha when the image has
    no plain light background; ``has_background`` tells which.
    """

    image: Image.Image
    cut: Image.Image
    alpha: Image.Image
    has_background: bool

    @classmethod
    def of(cls, image: Image.Image | Product) -> Product:
        if isinstance(image, Product):
            return image
        rgb = image.convert("RGB")
        mask = foreground_mask(rgb)
        if mask is None:
            return cls(rgb, rgb, Image.new("L", rgb.size, 255), False)
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        alpha = Image.fromarray((mask[box[1] : box[3], box[0] : box[2]] * 255).astype(np.uint8), "L")
        # shrink the mask a little so the white fringe of the shop background does not show
        return cls(rgb, rgb.crop(box), alpha.filter(ImageFilter.MinFilter(5)), True)


def shelf_background(
    size: int,
    others: Sequence[Image.Image | Product],
    rng: np.random.Generator,
    *,
    facings: Image.Image | Product | None = None,
) -> Image.Image:
    """A ``size``×``size`` shop shelf: 6–16 products cut out and scattered over clutter, slightly out of focus.

    ``others`` supply the products; with probability ½ some are ``facings`` (more of the photographed product, as
    on a real shelf). Without products it is just clutter.
    """
    shelf = _clutter(size, rng)
    pool = list(others)
    if not pool:
        return shelf.filter(ImageFilter.GaussianBlur(radius=2.0))
    use_facings = facings is not None and rng.random() < 0.5
    for _ in range(int(rng.integers(6, 17))):
        source = facings if use_facings and rng.random() < 0.5 else pool[int(rng.integers(len(pool)))]
        product = Product.of(source)
        cut, alpha = product.cut, product.alpha
        longest = size * rng.uniform(0.25, 0.55)
        scale = longest / max(cut.size)
        new_size = (max(1, round(cut.width * scale)), max(1, round(cut.height * scale)))
        x = int(rng.integers(-new_size[0] // 3, size - new_size[0] * 2 // 3 + 1))
        y = int(rng.integers(-new_size[1] // 3, size - new_size[1] * 2 // 3 + 1))
        shelf.paste(cut.resize(new_size, Image.Resampling.BILINEAR), (x, y), alpha.resize(new_size))
    return shelf.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.8, 2.5))))  # shallow depth of field


def _place_on(
    product: Product, background: Image.Image, config: AugmentConfig, rng: np.random.Generator
) -> Image.Image:
    longest = config.size * rng.uniform(*config.product_scale)
    scale = longest / max(product.cut.size)
    new_size = (max(1, round(product.cut.width * scale)), max(1, round(product.cut.height * scale)))
    cut = product.cut.resize(new_size, Image.Resampling.BICUBIC)
    alpha = product.alpha.resize(new_size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(0.7))
    jitter = config.size * 0.1
    x = round((config.size - new_size[0]) / 2 + rng.uniform(-jitter, jitter))
    y = round((config.size - new_size[1]) / 2 + rng.uniform(-jitter, jitter))
    scene = background.copy()
    scene.paste(cut, (x, y), alpha)
    return scene


def _square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize: the framing of a phone photo of one product."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


def augment(
    image: Image.Image | Product,
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
    *,
    others: Sequence[Image.Image | Product] = (),
) -> Image.Image:
    """One shopper-like photo of the product in ``image`` (RGB, ``config.size`` square); see the module doc.

    ``others`` are other catalog products used to build the shelf behind it; pass :class:`Product` objects when
    augmenting many times, so each cut-out is computed once.
    """
    product = Product.of(image) if config.background else None
    size = config.size
    if product is not None and product.has_background:
        scene = _place_on(product, shelf_background(size, others, rng, facings=product), config, rng)
    else:
        scene = _square(image.image if isinstance(image, Product) else image.convert("RGB"), size)
    if config.max_rotation > 0:
        angle = float(rng.uniform(-config.max_rotation, config.max_rotation))
        # rotate about the centre, then zoom just enough that no empty corner shows
        rotated = scene.rotate(angle, resample=Image.Resampling.BICUBIC)
        radians = np.deg2rad(abs(angle))
        zoom = np.cos(radians) + np.sin(radians)
        inner = round(size / zoom)
        offset = (size - inner) // 2
        scene = rotated.crop((offset, offset, offset + inner, offset + inner)).resize(
            (size, size), Image.Resampling.BICUBIC
        )
    low, high = config.crop
    if high < 1.0 or low < 1.0:
        side = round(size * rng.uniform(low, high))
        if side < size:
            left = int(rng.integers(0, size - side + 1))
            top = int(rng.integers(0, size - side + 1))
            scene = scene.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    for amount, enhancer in (
        (config.brightness, ImageEnhance.Brightness),
        (config.contrast, ImageEnhance.Contrast),
        (config.saturation, ImageEnhance.Color),
    ):
        if amount > 0:
            scene = enhancer(scene).enhance(float(rng.uniform(1 - amount, 1 + amount)))
    pixels = np.asarray(scene, dtype=np.float32)
    if config.color_cast > 0:
        pixels = pixels * (1 + rng.uniform(-config.color_cast, config.color_cast, size=3)).astype(np.float32)
    if config.noise > 0:
        pixels = pixels + rng.normal(0, config.noise, size=pixels.shape).astype(np.float32)
    scene = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")
    if config.blur > 0:
        scene = scene.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, config.blur))))
    if config.jpeg_quality is not None:
        buffer = io.BytesIO()
        scene.save(buffer, "JPEG", quality=int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1)))
        scene = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return scene


SEED_PHOTO_SIDE = 512  # a seed view is made from the photo decoded to this short side (the views are 320 px)


class RecentShelf:
    """The last few products one process has seen, as cut-outs: the shelf behind its seed views.

    The study's seed views stand a product in front of other products of the same catalog (train top-1 0.45 as the
    reference, against 0.40 in front of plain clutter); ingest sees one photo per event, so it keeps the cut-outs
    of the photos it indexed last. Bounded: at most ``size`` cut-outs, each from a photo of ``SEED_PHOTO_SIDE``.
    """

    def __init__(self, size: int = 16) -> None:
        self.size = max(0, size)
        self._products: list[Product] = []

    def others(self, product: Product | None = None) -> list[Product]:
        """Products to stand behind ``product`` (never itself)."""
        return [p for p in self._products if p is not product]

    def add(self, product: Product) -> None:
        if self.size and product.has_background:  # a photo with no plain background has no cut-out to lend
            self._products = [*self._products[-(self.size - 1) :], product] if self.size > 1 else [product]


def seed_views(
    image: Image.Image,
    count: int,
    *,
    seed: int | Sequence[int] = 0,
    shelf: RecentShelf | None = None,
    config: AugmentConfig = AugmentConfig(),
) -> list[Image.Image]:
    """``count`` synthetic shoppers' photos of the product in ``image`` (a shop photo), in front of ``shelf``.

    Deterministic in ``seed`` and the shelf's content. The product joins the shelf afterwards, so the next photo's
    views stand in front of this one.
    """
    product = Product.of(image)
    others = shelf.others(product) if shelf is not None else []
    rng = np.random.default_rng(seed)
    views = [augment(product, rng, config, others=others) for _ in range(count)]
    if shelf is not None:
        shelf.add(product)
    return views
