"""A hypothesis strategy for the photos nobody should send: any size from 1 to 60,000 px a side (aspect ratios up
to 1:60,000), every mode Pillow opens, animations, EXIF orientations, fully transparent pictures.

Pictures up to :data:`REAL_PIXELS` are really encoded (thin strips included: 60000×10 is real); bigger declared sizes
are crafted headers with a token of pixel data, which the decoder must refuse before decoding them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from tests.unit.imagefactory import gif_declaring_size, jpeg_declaring_size, png_bytes

REAL_PIXELS = 600_000  # encoded for real up to this many pixels (cheap: ~50 ms), crafted headers beyond

# Formats that store each mode as itself, and which of them can hold an animation or an EXIF orientation.
FORMATS_FOR_MODE = {
    "1": ["PNG", "BMP", "TIFF"],
    "L": ["PNG", "JPEG", "BMP", "TIFF"],
    "LA": ["PNG", "TIFF"],
    "P": ["PNG", "GIF", "BMP", "TIFF"],
    "PA": ["TIFF"],
    "RGB": ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"],
    "RGBA": ["PNG", "WEBP", "TIFF"],
    "CMYK": ["JPEG", "TIFF"],
    "I;16": ["PNG", "TIFF"],
    "I": ["TIFF"],
    "F": ["TIFF"],
}
MODES = list(FORMATS_FOR_MODE)
ANIMATED = {"PNG", "GIF", "WEBP"}
WITH_EXIF = {"JPEG", "PNG", "WEBP"}
MAX_SIDE = {"WEBP": 16383, "JPEG": 65535, "GIF": 65535}
ALPHA_MODES = {"LA", "PA", "RGBA"}

# Through a real handler each example costs a moto round trip: few, the same on every run, nothing stored on disk.
HANDLER_EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Hostile:
    """One generated upload and what it is."""

    data: bytes
    width: int
    height: int
    mode: str
    fmt: str
    real: bool  # encoded pixels (False: a crafted header)
    blank: bool = False  # every pixel fully transparent
    frames: int = 1
    orientation: int = 1

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        kind = "real" if self.real else "header"
        extra = f" blank={self.blank} frames={self.frames} orientation={self.orientation}"
        return f"Hostile({self.width}x{self.height} {self.mode} {self.fmt} {kind}{extra}, {len(self.data)} bytes)"


def pattern(width: int, height: int, mode: str, *, seed: int, blank: bool) -> Image.Image:
    """A cheap, asymmetric picture in ``mode``: colour ramps and a few bands, optionally alpha 0 everywhere."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    rgb = np.stack([base[0] + 50 * x + 0 * y, base[1] + 50 * y + 0 * x, base[2] * (1 - 0.5 * x * y)], axis=-1)
    rgb[: max(1, height // 5)] *= 0.5  # a band across the top
    pixels = np.clip(rgb, 0, 255).astype(np.uint8)
    if mode in ("I;16", "I", "F"):
        grey = pixels.mean(axis=-1)
        values = {"I;16": (grey * 257).astype(np.uint16), "I": (grey * 257).astype(np.int32), "F": grey / 255.0}
        return Image.fromarray(values[mode].astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    image = Image.fromarray(pixels, "RGB")
    if mode in ALPHA_MODES:
        alpha = np.zeros((height, width), np.uint8) if blank else np.full((height, width), 255, np.uint8)
        if not blank:
            alpha[:, : max(1, width // 4)] = 0  # a transparent margin: composited on white
        image.putalpha(Image.fromarray(alpha, "L"))
        return image.convert(mode) if mode != "RGBA" else image
    return image.convert(mode)


def encode_hostile(image: Image.Image, fmt: str, *, frames: int, orientation: int) -> bytes:
    options: dict = {}
    if fmt == "JPEG":
        options["quality"] = 85
    if fmt == "WEBP":
        options["lossless"] = True
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    if frames > 1:
        second = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        options.update(save_all=True, append_images=[second], duration=100, loop=0)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def crafted_header(width: int, height: int, fmt: str) -> bytes:
    if fmt == "JPEG":
        return jpeg_declaring_size(width, height)
    if fmt == "GIF":
        return gif_declaring_size(width, height)
    return png_bytes(width, height, bit_depth=8, colour_type=2, rows=None)


side = st.one_of(
    st.integers(1, 60_000),
    st.sampled_from([1, 2, 31, 32, 33, 297, 60_000]),
    st.integers(32, 900),  # ordinary photo sizes, so accepted images are common
)


@st.composite
def hostile_photos(draw: st.DrawFn) -> Hostile:
    width, height = draw(side), draw(side)
    if width * height > REAL_PIXELS:
        fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF"]))
        return Hostile(crafted_header(width, height, fmt), width, height, "RGB", fmt, real=False)
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from([f for f in FORMATS_FOR_MODE[mode] if max(width, height) <= MAX_SIDE.get(f, 10**9)]))
    blank = mode in ALPHA_MODES and draw(st.booleans())
    frames = 2 if fmt in ANIMATED and mode in ("RGB", "RGBA", "P", "L") and draw(st.booleans()) else 1
    orientation = draw(st.integers(1, 8)) if fmt in WITH_EXIF and frames == 1 else 1
    image = pattern(width, height, mode, seed=draw(st.integers(0, 2**16)), blank=blank)
    data = encode_hostile(image, fmt, frames=frames, orientation=orientation)
    return Hostile(data, width, height, mode, fmt, real=True, blank=blank, frames=frames, orientation=orientation)
