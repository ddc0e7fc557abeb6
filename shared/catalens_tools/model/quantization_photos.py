"""Calibration photos for int8 quantisation, generated here from a seed (no downloaded or evaluation data).

Static quantisation needs the range of every activation on inputs that look like what the model will see in
production: product photos. These are procedural "product shots": boxes, bottles, cans, bags and fruit, with
labels, stripes, text-like marks, shading and highlights, alone on a studio background or several on a shelf,
then blurred, noised and JPEG-compressed like a phone photo. The same seed always gives the same images.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Color = tuple[int, int, int]


def _color(rng: np.random.Generator, *, light: bool = False) -> Color:
    if light:
        return tuple(int(v) for v in rng.integers(200, 256, 3))  # type: ignore[return-value]
    hue_like = rng.random(3) ** rng.uniform(0.5, 2.0)
    return tuple(int(v) for v in (hue_like * 255))  # type: ignore[return-value]


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Studio white/grey, a soft gradient, or a wooden/laminate-like texture."""
    kind = rng.integers(0, 3)
    if kind == 0:
        return Image.new("RGB", (width, height), _color(rng, light=True))
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    top, bottom = np.array(_color(rng, light=bool(rng.random() < 0.7))), np.array(_color(rng))
    if kind == 1:
        pixels = top * (1 - y) + bottom * y
        return Image.fromarray(np.broadcast_to(pixels, (height, width, 3)).astype(np.uint8))
    x = np.arange(width)[None, :, None]
    grain = np.sin(x / rng.uniform(3, 12) + np.sin(y * rng.uniform(5, 30)) * 3) * 0.5 + 0.5
    pixels = top * (0.75 + 0.25 * grain) * (0.8 + 0.2 * (1 - y))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8).repeat(1, axis=0)).resize((width, height))


def _text_lines(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[int, int, int, int]) -> None:
    """Rows of small glyph-like marks: what brand names and ingredient lists look like at 224 px."""
    left, top, right, bottom = box
    ink = _color(rng)
    y = top
    while y < bottom - 4:
        glyph_h = int(rng.integers(3, max(4, (bottom - top) // 4 + 1)))
        x = left
        while x < right - 3:
            glyph_w = int(rng.integers(2, glyph_h + 3))
            if rng.random() < 0.85:
                draw.rectangle((x, y, min(x + glyph_w, right), min(y + glyph_h, bottom)), fill=ink)
            x += glyph_w + int(rng.integers(1, 4)) + (int(rng.integers(4, 9)) if rng.random() < 0.15 else 0)
        y += glyph_h + int(rng.integers(2, 6))


def _shade(layer: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Horizontal cylinder-like shading and a specular highlight over a product layer (RGBA, alpha untouched)."""
    rgba = np.asarray(layer, dtype=np.float32)
    x = np.linspace(-1.0, 1.0, layer.width)[None, :, None]
    light = 0.55 + 0.45 * np.cos(x * rng.uniform(0.8, 1.5) - rng.uniform(-0.5, 0.5))
    highlight = np.exp(-(((x - rng.uniform(-0.6, 0.6)) / 0.08) ** 2)) * rng.uniform(0, 90)
    rgb = np.clip(rgba[..., :3] * light + highlight, 0, 255)
    return Image.fromarray(np.concatenate([rgb, rgba[..., 3:]], axis=2).astype(np.uint8), "RGBA")


def _draw_product(image: Image.Image, rng: np.random.Generator, box: tuple[int, int, int, int]) -> None:
    """Draw one product on its own transparent layer, shade it, and composite it into ``box``."""
    width, height = box[2] - box[0], box[3] - box[1]
    if width < 8 or height < 8:
        return
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    _draw_shape(ImageDraw.Draw(layer), rng, width - 1, height - 1)
    if rng.random() < 0.8:
        layer = _shade(layer, rng)
    image.paste(layer, box[:2], mask=layer)


def _draw_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, right: int, bottom: int) -> None:
    """One of five product silhouettes with print on it, filling (0, 0)..(right, bottom)."""
    left, top = 0, 0
    width, height = right, bottom
    body, accent = _color(rng), _color(rng)
    kind = rng.integers(0, 5)
    if kind == 0:  # carton / box, slight perspective via a darker side face
        side = int(width * rng.uniform(0.1, 0.25))
        draw.polygon(
            [(right - side, top), (right, top + side // 2), (right, bottom), (right - side, bottom)],
            fill=tuple(int(c * 0.6) for c in body),
        )
        draw.rectangle((left, top, right - side, bottom), fill=body)
        band = (left + 4, top + int(height * rng.uniform(0.2, 0.4)), right - side - 4, top + int(height * 0.65))
        draw.rectangle(band, fill=accent)
        _text_lines(draw, rng, (band[0] + 4, band[1] + 4, band[2] - 4, band[3] - 4))
    elif kind == 1:  # bottle: body, shoulder, neck, cap, label
        neck_w = max(4, int(width * rng.uniform(0.25, 0.4)))
        cx = (left + right) // 2
        shoulder = top + int(height * rng.uniform(0.25, 0.4))
        draw.rectangle((cx - neck_w // 2, top + int(height * 0.08), cx + neck_w // 2, shoulder), fill=body)
        draw.rectangle((cx - neck_w // 2 - 2, top, cx + neck_w // 2 + 2, top + int(height * 0.08)), fill=accent)
        draw.rounded_rectangle((left, shoulder, right, bottom), radius=max(2, width // 5), fill=body)
        label = (left, shoulder + int(height * 0.15), right, bottom - int(height * 0.12))
        draw.rectangle(label, fill=_color(rng, light=bool(rng.random() < 0.5)))
        _text_lines(draw, rng, (label[0] + 5, label[1] + 5, label[2] - 5, label[3] - 5))
    elif kind == 2:  # can: cylinder with rims and vertical stripes
        draw.rectangle((left, top, right, bottom), fill=body)
        for _ in range(int(rng.integers(1, 4))):
            x0 = int(rng.integers(left, max(left + 1, right - 8)))
            draw.rectangle((x0, top, min(right, x0 + int(rng.integers(4, max(5, width // 3)))), bottom), fill=accent)
        draw.rectangle((left, top, right, top + max(2, height // 20)), fill=(190, 190, 195))
        draw.rectangle((left, bottom - max(2, height // 20), right, bottom), fill=(170, 170, 175))
        _text_lines(draw, rng, (left + 6, top + height // 3, right - 6, top + height // 2))
    elif kind == 3:  # bag / pouch: trapezoid with a window and print
        inset = int(width * rng.uniform(0.0, 0.15))
        draw.polygon([(left + inset, top), (right - inset, top), (right, bottom), (left, bottom)], fill=body)
        window = (left + width // 4, top + height // 3, right - width // 4, bottom - height // 5)
        draw.ellipse(window, fill=_color(rng))
        _text_lines(draw, rng, (left + width // 6, top + 6, right - width // 6, top + height // 4))
    else:  # fruit / vegetable: a few overlapping ellipses with a stem
        for _ in range(int(rng.integers(1, 5))):
            w = int(width * rng.uniform(0.4, 0.8))
            h = int(height * rng.uniform(0.35, 0.7))
            x0 = int(rng.integers(left, max(left + 1, right - w)))
            y0 = int(rng.integers(top, max(top + 1, bottom - h)))
            tint = tuple(int(np.clip(c + rng.integers(-30, 30), 0, 255)) for c in body)
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=tint, outline=tuple(int(c * 0.7) for c in tint))
            draw.line((x0 + w // 2, y0, x0 + w // 2 + 3, y0 - h // 8), fill=(70, 90, 30), width=3)


def synthetic_product_photo(rng: np.random.Generator) -> Image.Image:
    """One product-like photo: a single item in a studio shot, or a row of items on a shelf."""
    width, height = int(rng.integers(300, 640)), int(rng.integers(300, 640))
    image = _background(rng, width, height)
    if rng.random() < 0.6:  # studio shot, one product filling much of the frame
        w, h = int(width * rng.uniform(0.35, 0.75)), int(height * rng.uniform(0.5, 0.9))
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        _draw_product(image, rng, (x0, y0, x0 + w, y0 + h))
    else:  # shelf: a row of products on a plank
        draw = ImageDraw.Draw(image)
        shelf_y = int(height * rng.uniform(0.7, 0.9))
        draw.rectangle((0, shelf_y, width, height), fill=_color(rng))
        x = int(rng.integers(0, 20))
        while x < width - 20:
            w = int(rng.integers(max(30, width // 8), max(31, width // 3)))
            h = int(shelf_y * rng.uniform(0.4, 0.9))
            _draw_product(image, rng, (x, shelf_y - h, min(width, x + w), shelf_y))
            x += w + int(rng.integers(2, 15))
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.5))))
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.7, 1.15) + rng.normal(
        0, rng.uniform(1, 6), (height, width, 3)
    )
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(70, 95)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def synthetic_product_photos(count: int, seed: int = 0) -> Iterator[Image.Image]:
    """``count`` product-like photos, the same for the same seed."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield synthetic_product_photo(rng)
