"""Test images made in code: photo-like pictures and the awkward files real uploads contain.

Every test tier can import these (``from tests.unit.imagefactory import photo, encode``); no binary fixtures are
checked in. Pictures are deterministic for a given seed and asymmetric, so a wrong rotation or flip shows.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

# Pixels stored for EXIF orientation o, so that the viewer's transform for o gives the upright picture back.
# (Orientations 2, 3, 4, 5, 7 are their own inverse; 6 and 8 are each other's.)
_STORE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def photo(width: int = 640, height: int = 480, *, seed: int = 0, noise: float = 6.0) -> Image.Image:
    """A photo-like RGB picture: lit gradient background, a few coloured shapes off-centre, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 0.6 + 0.4 * np.exp(-(((x - 0.3 * width) / width) ** 2 + ((y - 0.25 * height) / height) ** 2) * 3)
    base = rng.uniform(80, 200, size=3).astype(np.float32)
    tint = np.stack([x / width, y / height, 1 - x / width], axis=-1) * 60
    background = (base + tint) * light[..., None]
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.uniform(0, 0.8) * width, rng.uniform(0, 0.8) * height
        w, h = rng.uniform(0.08, 0.35) * width, rng.uniform(0.08, 0.35) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
    # A marker in the top-left quadrant only: rotations and flips move it.
    draw.rectangle((width * 0.05, height * 0.05, width * 0.2, height * 0.12), fill=(250, 20, 20))
    pixels = np.asarray(image, dtype=np.float32) + noise * rng.standard_normal((height, width, 3), dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **save_args) -> bytes:
    """The bytes Pillow writes for ``image`` in ``fmt`` (JPEG quality 90 unless given)."""
    if fmt == "JPEG":
        save_args.setdefault("quality", 90)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def stored_pixels(upright: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera stores for a picture that shows ``upright`` once EXIF ``orientation`` is applied."""
    return upright if orientation == 1 else upright.transpose(_STORE_FOR_ORIENTATION[orientation])


def jpeg_with_orientation(upright: Image.Image, orientation: int, **save_args) -> bytes:
    """A JPEG a phone would write: pixels stored as the sensor saw them, EXIF orientation says how to show them."""
    stored = stored_pixels(upright, orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", exif=exif.tobytes(), **save_args)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(width: int, height: int, *, bit_depth: int, colour_type: int, rows: bytes | None) -> bytes:
    """A hand-made PNG. ``rows`` is the raw scanline data without filter bytes; ``None`` writes a tiny IDAT
    that does not match the header (what a decompression bomb's header-only test needs)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    if rows is None:
        idat = zlib.compress(b"\x00" * 16)
    else:
        channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
        stride = width * channels * bit_depth // 8
        scanlines = b"".join(b"\x00" + rows[i * stride : (i + 1) * stride] for i in range(height))
        idat = zlib.compress(scanlines)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A ~60-byte PNG whose header declares ``width``×``height`` RGB pixels (decoding it would need GBs)."""
    return png_bytes(width, height, bit_depth=8, colour_type=2, rows=None)


def rgb16_png(pixels16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG from a uint16 ``[h, w, 3]`` array (Pillow cannot write one itself)."""
    height, width, _ = pixels16.shape
    return png_bytes(width, height, bit_depth=16, colour_type=2, rows=pixels16.astype(">u2").tobytes())


def gray16_png(pixels16: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG (Pillow opens it as mode ``I;16``)."""
    height, width = pixels16.shape
    return png_bytes(width, height, bit_depth=16, colour_type=0, rows=pixels16.astype(">u2").tobytes())


def jpeg_declaring_size(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to declare another size: a hostile header."""
    data = bytearray(encode(photo(64, 48), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def gif_declaring_size(width: int, height: int) -> bytes:
    """A small real GIF whose logical screen and first frame declare another size."""
    data = bytearray(encode(photo(32, 24).convert("P"), "GIF"))
    struct.pack_into("<HH", data, 6, width, height)
    frame = data.index(b"\x2c", 13)  # image descriptor: ',' left top width height
    struct.pack_into("<HH", data, frame + 5, width, height)
    return bytes(data)


def animated(fmt: str, colours: list[tuple[int, int, int]], size: tuple[int, int] = (64, 48)) -> bytes:
    """An animation (GIF, WEBP or PNG = APNG) whose frames are solid ``colours`` with a small white square."""
    frames = []
    for colour in colours:
        frame = Image.new("RGB", size, colour)
        ImageDraw.Draw(frame).rectangle((2, 2, 8, 8), fill=(255, 255, 255))
        frames.append(frame)
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)
