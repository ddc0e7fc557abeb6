"""Image decoding and preprocessing: the one path from photo bytes to model input, used by ingest and query alike.

Invariant 5 of the design ("the same photo gives the same vector") holds only if every caller goes through
:func:`load_and_preprocess` with the :class:`PreprocessConfig` recorded in the model card.

Decoding is defensive because merchants and shoppers send arbitrary bytes:

- the byte size is checked before Pillow sees the data, the pixel count right after :func:`PIL.Image.open`
  (which reads only the header), so a decompression bomb is never decoded;
- so is the short side (:attr:`ImageLimits.min_side`): a 1×20000 strip or a 1×1 pixel shows no product, and a
  fully transparent image shows nothing at all; both are refused with their own codes;
- resizing never makes a copy bigger than a few megapixels, whatever the aspect ratio (see :func:`_resize_region`);
- only common photo formats are opened (an allow-list), so hostile or exotic decoders (EPS via Ghostscript,
  PSD, ...) are never reached;
- JPEGs are decoded at reduced size (``Image.draft``: libjpeg's DCT scaling) when the target size is known, which
  is ~8× faster for a 12 MP photo and never goes below the size the model needs;
- every failure is a typed :class:`~catalens.errors.ImageError` with a stable ``code`` and a message that names
  the problem.

Pillow globals (``MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``, warning filters) are never changed.

Example
-------
>>> tensor = load_and_preprocess(photo_bytes, PreprocessConfig())   # doctest: +SKIP
>>> tensor.shape, tensor.dtype                                      # doctest: +SKIP
((3, 224, 224), dtype('float32'))
"""

from __future__ import annotations

import importlib
import io
import math
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from catalens.errors import ImageError

__all__ = [
    "ALLOWED_FORMATS",
    "BlankImageError",
    "DecompressionBombImageError",
    "EmptyImageError",
    "ImageLimits",
    "ImageTooLargeError",
    "ImageTooSmallError",
    "InvalidRegionError",
    "NotAnImageError",
    "PreparedQuery",
    "PreprocessConfig",
    "Region",
    "TruncatedImageError",
    "UnsupportedImageError",
    "decode_image",
    "load_and_preprocess",
    "load_region_and_preprocess",
    "preprocess",
    "to_rgb",
]


def _register_photo_formats() -> tuple[str, ...]:
    """Import only the decoders of formats a product photo plausibly arrives in (JPEG also opens MPO, PNG also
    APNG); everything else is refused before its decoder runs. AVIF only where this Pillow build supports it."""
    wanted = {"JPEG": "JpegImagePlugin", "PNG": "PngImagePlugin", "WEBP": "WebPImagePlugin", "GIF": "GifImagePlugin"}
    wanted |= {"BMP": "BmpImagePlugin", "TIFF": "TiffImagePlugin", "AVIF": "AvifImagePlugin"}
    for module in wanted.values():
        try:
            importlib.import_module(f"PIL.{module}")
        except ImportError:
            continue
    return tuple(fmt for fmt in wanted if fmt in Image.OPEN)


ALLOWED_FORMATS: tuple[str, ...] = _register_photo_formats()

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


# --------------------------------------------------------------------------------------------------------------------
# Errors


class EmptyImageError(ImageError):
    """No bytes at all (an empty upload or a zero-length S3 object)."""

    code = "empty_image"


class NotAnImageError(ImageError):
    """The bytes are not an image of any format we recognise."""

    code = "not_an_image"


class TruncatedImageError(ImageError):
    """The header is a known image format but the data ends early or is damaged."""

    code = "truncated_image"


class ImageTooLargeError(ImageError):
    """More bytes than :attr:`ImageLimits.max_bytes`."""

    code = "image_too_large"


class DecompressionBombImageError(ImageError):
    """The header declares more pixels than :attr:`ImageLimits.max_pixels` (decoding it could exhaust memory)."""

    code = "decompression_bomb"


class UnsupportedImageError(ImageError):
    """A real image, but in a format or shape we refuse (HEIC, SVG, PSD, EPS, zero-sized, ...)."""

    code = "unsupported_image"


class ImageTooSmallError(ImageError):
    """A side shorter than :attr:`ImageLimits.min_side`: too few pixels to describe a product."""

    code = "image_too_small"


class BlankImageError(ImageError):
    """Every pixel is fully transparent: there is nothing in the picture to describe."""

    code = "blank_image"


class InvalidRegionError(ImageError):
    """A search region that is malformed, lies outside the photo, or is too small to show a product."""

    code = "invalid_region"


# --------------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class PreprocessConfig:
    """How a decoded photo becomes the model's input; recorded in the model card so ingest and query agree.

    Parameters
    ----------
    size
        Side of the square model input.
    resize_short
        The short side is resized to this (``resample``), then the centre ``size``×``size`` is cropped.
    center_crop
        ``False`` resizes the whole image to ``size``×``size`` instead (no crop, aspect ratio not kept).
    mean, std
        Per-channel normalisation ``x' = (x - mean) / std`` of 0..255 RGB values.
    resample
        Pillow resampling filter name: ``bicubic`` (default), ``bilinear``, ``lanczos``, ``box`` or ``nearest``.
    """

    size: int = 224
    resize_short: int = 256
    center_crop: bool = True
    mean: float = 127.0
    std: float = 128.0
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"PreprocessConfig.size must be positive, got {self.size}")
        if self.center_crop and self.resize_short < self.size:
            raise ValueError(
                f"PreprocessConfig.resize_short ({self.resize_short}) must be >= size ({self.size}) to centre-crop"
            )
        if not self.std > 0:
            raise ValueError(f"PreprocessConfig.std must be positive, got {self.std}")
        if self.resample not in _RESAMPLING:
            raise ValueError(f"PreprocessConfig.resample must be one of {sorted(_RESAMPLING)}, got {self.resample!r}")

    @property
    def decode_short_side(self) -> int:
        """The smallest short side the decoded image needs before resizing (what ``Image.draft`` may go down to)."""
        return self.resize_short if self.center_crop else self.size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, since they would mean different vectors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PreprocessConfig field(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class ImageLimits:
    """Limits checked before decoding. Pillow's own bomb limit (``MAX_IMAGE_PIXELS``×2) still applies on top.

    ``max_pixels`` also bounds the decoded image's memory whatever its shape: with ``min_side`` no side can exceed
    ``max_pixels / min_side`` (a 1×50,000,000 header is refused as too small, not decoded). Extreme aspect ratios
    above ``min_side`` are accepted: their centre square is embedded, at a cost bounded by the crop.
    """

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 50_000_000
    # EfficientNet's coarsest feature map has stride 32: a side shorter than that is less than one of its cells at
    # the photo's own resolution, so everything the model saw along it would be interpolation, not the photo.
    min_side: int = 32


# --------------------------------------------------------------------------------------------------------------------
# Decoding

# Signatures of the allowed formats: when Pillow cannot read such a header, the file is truncated or damaged.
_ALLOWED_SIGNATURES: tuple[tuple[str, re.Pattern[bytes]], ...] = (
    ("JPEG", re.compile(rb"\A\xff\xd8\xff", re.S)),
    ("PNG", re.compile(rb"\A\x89PNG\r\n\x1a\n", re.S)),
    ("GIF", re.compile(rb"\AGIF8[79]a", re.S)),
    ("WEBP", re.compile(rb"\ARIFF....WEBP", re.S)),
    ("BMP", re.compile(rb"\ABM", re.S)),
    ("TIFF", re.compile(rb"\A(II\*\x00|MM\x00\*)", re.S)),
    ("AVIF", re.compile(rb"\A....ftyp(avif|avis)", re.S)),
)

# Images we recognise but refuse, so the caller gets "convert it to JPEG" rather than "not an image".
_UNSUPPORTED_SIGNATURES: tuple[tuple[str, re.Pattern[bytes]], ...] = (
    ("HEIC/HEIF", re.compile(rb"\A....ftyp(heic|heix|hevc|hevx|heim|heis|mif1|msf1)", re.S)),
    ("SVG (vector)", re.compile(rb"\A\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*(<!DOCTYPE svg[^>]*>\s*)?<svg", re.S | re.I)),
    ("PDF", re.compile(rb"\A%PDF-", re.S)),
    ("PostScript/EPS", re.compile(rb"\A(%!PS|\xc5\xd0\xd3\xc6)", re.S)),
    ("Photoshop PSD", re.compile(rb"\A8BPS", re.S)),
    ("JPEG 2000", re.compile(rb"\A(\x00\x00\x00\x0cjP  \r\n\x87\n|\xff\x4f\xff\x51)", re.S)),
    ("JPEG XL", re.compile(rb"\A(\xff\x0a|\x00\x00\x00\x0cJXL \r\n\x87\n)", re.S)),
    ("ICO/CUR", re.compile(rb"\A\x00\x00[\x01\x02]\x00", re.S)),
    ("QOI", re.compile(rb"\Aqoif", re.S)),
)

# Decoder failures of a file whose header was fine: all mean "the pixel data is cut short or damaged".
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error, IndexError)


def _sniff(data: bytes, table: tuple[tuple[str, re.Pattern[bytes]], ...]) -> str | None:
    head = data[:512]
    for name, pattern in table:
        if pattern.match(head):
            return name
    return None


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g} MP"


def _open(data: bytes) -> Image.Image:
    """``Image.open`` restricted to :data:`ALLOWED_FORMATS`, every failure mapped to a typed error."""
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fired inside open() (its limit, or warnings turned into errors): still a bomb.
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"image is {_megapixels(int(declared.group(1)))}" if declared else "image declares too many pixels"
        raise DecompressionBombImageError(
            f"{size}, more than Pillow will decode (possible decompression bomb)"
        ) from exc
    except UnidentifiedImageError as exc:
        _raise_unidentified(data, exc)
    except _DECODE_ERRORS as exc:
        fmt = _sniff(data, _ALLOWED_SIGNATURES)
        if fmt is not None:
            raise TruncatedImageError(f"{fmt} header is truncated or damaged: {exc}") from exc
        raise NotAnImageError(f"cannot read image header: {exc}") from exc


def _raise_unidentified(data: bytes, exc: Exception) -> None:
    unsupported = _sniff(data, _UNSUPPORTED_SIGNATURES)
    if unsupported is not None:
        raise UnsupportedImageError(
            f"{unsupported} images are not supported; send JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF"
        ) from exc
    known = _sniff(data, _ALLOWED_SIGNATURES)
    if known is not None:
        raise TruncatedImageError(
            f"starts like a {known} but its header cannot be read ({len(data)} bytes): truncated or damaged"
        ) from exc
    raise NotAnImageError(f"not an image: {len(data)} bytes in no supported format (starts with {data[:8]!r})") from exc


def _check_pixels(image: Image.Image, limits: ImageLimits) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise UnsupportedImageError(f"image has no pixels ({width}×{height})")
    pixels = width * height
    if pixels > limits.max_pixels:
        raise DecompressionBombImageError(
            f"image is {width}×{height} = {_megapixels(pixels)}, limit is {_megapixels(limits.max_pixels)}"
        )
    if min(width, height) < limits.min_side:
        raise ImageTooSmallError(
            f"image is {width}×{height}; both sides must be at least {limits.min_side} px to show a product"
        )


def _apply_exif_orientation(image: Image.Image) -> None:
    """Rotate/flip a loaded image upright in place; a damaged EXIF block must not reject an otherwise good photo."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # hostile EXIF can raise anything from struct.error to ValueError: keep the stored pixels
        return
    if orientation in range(2, 9):
        ImageOps.exif_transpose(image, in_place=True)


def _scale_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Map 16/32-bit integer or float grey levels to 0..255 (``Image.convert`` would clip them to white)."""
    if mode.startswith("I;16"):
        return (values.astype(np.float32) / 257.0).round()
    values = values.astype(np.float32)
    if mode == "F":
        finite = values[np.isfinite(values)]
        high = float(finite.max()) if finite.size else 0.0
        scaled = values * 255.0 if high <= 1.0 else values
    else:  # "I": 32-bit ints, in practice 8- or 16-bit data widened by the decoder
        high = float(values.max()) if values.size else 0.0
        scaled = values if high <= 255 else values / (257.0 if high <= 65535 else high / 255.0)
    return np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0).round()


_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB; transparency is composited on white (product shots live on white).

    Raises
    ------
    BlankImageError
        Every pixel is fully transparent (white on white would be embedded as if it were a product).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        grey = Image.fromarray(np.clip(_scale_to_8bit(np.asarray(image), mode), 0, 255).astype(np.uint8), "L")
        return grey.convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")  # also applies palette/colour-key transparency ("transparency" in info)
        if rgba.getchannel("A").getextrema()[1] == 0:
            raise BlankImageError(f"image is fully transparent ({image.width}×{image.height}): nothing to describe")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # CMYK (Adobe-inverted JPEGs are un-inverted by the decoder), L, 1, P, YCbCr, LAB, HSV: Pillow converts right.
    return image.convert("RGB")


def decode_image(
    data: bytes, *, target_short_side: int | None = None, limits: ImageLimits = ImageLimits()
) -> Image.Image:
    """Decode photo bytes into an upright RGB image, safely.

    Parameters
    ----------
    data
        The file's bytes (JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF; animations give their first frame).
    target_short_side
        When given, JPEGs are decoded at the smallest libjpeg scale (1/2, 1/4, 1/8) whose short side is still
        at least this many pixels; the result is therefore never smaller than what was asked for.
    limits
        Byte and pixel limits, both checked before any pixel is decoded.

    Raises
    ------
    ImageError
        A subclass whose ``code`` is one of ``empty_image``, ``image_too_large``, ``not_an_image``,
        ``unsupported_image``, ``decompression_bomb``, ``image_too_small``, ``truncated_image``, ``blank_image``.
    """
    return _decode(data, target_short_side, limits, None)[0]


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """The size the photo has once its EXIF orientation is applied (read from the header, before decoding)."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # hostile EXIF: _apply_exif_orientation keeps the stored pixels too
        orientation = 1
    width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _decode(
    data: bytes, target_short_side: int | None, limits: ImageLimits, region: Region | None
) -> tuple[Image.Image, tuple[int, int], tuple[int, int, int, int] | None]:
    """Decode, upright and convert; with ``region``, also cut it out (decoded finely enough for the region alone).

    Returns the image, the photo's upright size as sent, and the region's box in those pixels (None without one).
    """
    data = bytes(data) if not isinstance(data, bytes) else data
    if not data:
        raise EmptyImageError("image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"image is {len(data) / 2**20:.1f} MiB ({len(data)} bytes), limit is {limits.max_bytes / 2**20:.1f} MiB"
        )
    image = _open(data)  # reads the header only
    _check_pixels(image, limits)
    fmt = image.format or "image"
    drafts = target_short_side is not None and fmt in ("JPEG", "MPO")
    # A JPEG's EXIF is in its header; other formats may keep it after the pixels (reading it would decode them), but
    # they are never drafted, so their decoded size is the size sent.
    upright = _upright_size(image) if drafts else None
    box = region.to_pixels(*upright, min_side=limits.min_side) if region is not None and upright else None
    if box is not None and upright is not None and target_short_side is not None:
        # the region, not the photo, must keep the model's short side: decode correspondingly finer
        target_short_side = math.ceil(target_short_side * min(upright) / min(box[2] - box[0], box[3] - box[1]))
    try:
        if drafts:
            # draft picks the largest DCT scale whose output is still >= the requested size in both dimensions,
            # so asking for (t, t) keeps the short side >= t. EXIF orientation does not change the short side.
            image.draft("RGB", (target_short_side, target_short_side))
        image.load()  # the first frame of an animation (GIF, APNG, WebP) is the current one after open()
        _apply_exif_orientation(image)  # after the draft, so the transpose works on the small image
        rgb = to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecompressionBombImageError(f"{fmt} frame is too large to decode safely: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise TruncatedImageError(f"{fmt} data is truncated or damaged: {exc}") from exc
    if upright is None:
        upright = rgb.size
        box = region.to_pixels(*upright, min_side=limits.min_side) if region is not None else None
    if box is not None:
        rgb = crop_scaled(rgb, box, upright)
    return rgb, upright, box


def crop_scaled(image: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int]) -> Image.Image:
    """``box`` (pixels of a photo of ``size``) cut out of ``image``, the same photo decoded at any scale."""
    scale_x, scale_y = image.width / size[0], image.height / size[1]
    left, top = math.floor(box[0] * scale_x), math.floor(box[1] * scale_y)
    right = max(left + 1, min(image.width, math.ceil(box[2] * scale_x)))
    bottom = max(top + 1, min(image.height, math.ceil(box[3] * scale_y)))
    return image.crop((left, top, right, bottom))


# --------------------------------------------------------------------------------------------------------------------
# Regions


@dataclass(frozen=True)
class Region:
    """A box in a photo, ``left, top, right, bottom``: a search that looks at part of the photo only.

    Either every value is in ``[0, 1]`` (fractions of the photo's width and height) or they are pixels of the photo
    as sent, upright (its EXIF orientation applied). No pixel box can be mistaken for fractions: a box whose values
    are all at most 1 would be at most one pixel wide, far under the smallest region a product can show in.
    """

    left: float
    top: float
    right: float
    bottom: float

    @classmethod
    def from_values(cls, values: object) -> Region:
        """Four finite numbers ``>= 0`` with ``left < right`` and ``top < bottom``, else :class:`InvalidRegionError`."""
        if not isinstance(values, list | tuple) or len(values) != 4:
            raise InvalidRegionError("region must be four numbers: left,top,right,bottom (pixels or fractions 0..1)")
        numbers = []
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidRegionError(f"region values must be finite numbers, got {str(value)[:40]!r}")
            if value < 0:
                raise InvalidRegionError(f"region values must be >= 0, got {value}")
            numbers.append(float(value))
        left, top, right, bottom = numbers
        if not (left < right and top < bottom):
            raise InvalidRegionError(
                f"region needs left < right and top < bottom, got {left:g},{top:g},{right:g},{bottom:g}"
            )
        return cls(left, top, right, bottom)

    @property
    def normalized(self) -> bool:
        """True when the box is given as fractions of the photo's sides."""
        return max(self.left, self.top, self.right, self.bottom) <= 1.0

    def to_pixels(self, width: int, height: int, *, min_side: int = 1) -> tuple[int, int, int, int]:
        """The box in pixels of a ``width``×``height`` photo; outside the photo or too small is an error."""
        if self.normalized:
            box = (self.left * width, self.top * height, self.right * width, self.bottom * height)
        else:
            if self.right > width or self.bottom > height:
                raise InvalidRegionError(
                    f"region {self.left:g},{self.top:g},{self.right:g},{self.bottom:g} reaches outside the photo "
                    f"({width}×{height} px, upright)"
                )
            box = (self.left, self.top, self.right, self.bottom)
        left, top, right, bottom = (round(value) for value in box)
        if min(right - left, bottom - top) < min_side:
            raise InvalidRegionError(
                f"region is {right - left}×{bottom - top} px of a {width}×{height} photo; both sides must be at "
                f"least {min_side} px to show a product"
            )
        return left, top, right, bottom


@dataclass(frozen=True)
class PreparedQuery:
    """A query photo ready for the model, and where in the photo it was taken from (for the answer to show)."""

    tensor: np.ndarray
    box: tuple[int, int, int, int]  # pixels of the photo as sent, upright
    size: tuple[int, int]  # the photo's width and height, upright
    located: bool = False  # the box was found in the photo (main subject), not named by the request

    def describe(self, source: str) -> dict[str, object]:
        """The answer's ``query.region``: the box in pixels and in fractions, the photo's size, where it came from."""
        width, height = self.size
        left, top, right, bottom = self.box
        fractions = [round(left / width, 4), round(top / height, 4), round(right / width, 4), round(bottom / height, 4)]
        return {"source": source, "box": list(self.box), "normalized": fractions, "image_size": [width, height]}


# --------------------------------------------------------------------------------------------------------------------
# Preprocessing


# Shrinking by more than this factor first box-reduces by an integer factor, then resamples the rest: ~3× faster
# for a 12 MP PNG and within 1/255 of the plain filter (JPEGs are already drafted down to < 2× the target).
_REDUCING_GAP = 3.0


# Half-width of each filter's kernel in output pixels (Pillow's values): times the scale when shrinking, it is how
# far from an output pixel's centre the source pixels it reads can lie.
_FILTER_SUPPORT = {
    Image.Resampling.NEAREST: 0.5,
    Image.Resampling.BOX: 0.5,
    Image.Resampling.BILINEAR: 1.0,
    Image.Resampling.BICUBIC: 2.0,
    Image.Resampling.LANCZOS: 3.0,
}

# Resizing the whole image, then cropping, is what every vector in an index was made with; it stays the path for any
# image whose resized copy has at most this many pixels (aspect ratios up to ~45:1 at the serving 297 px short side),
# so those vectors stay bit-identical: Pillow 13 chooses which of its two resampling passes runs first from the
# image's shape, and a resize of a region cannot always reproduce that choice. Past this size the resized copy is
# never made, so memory depends on the crop, not on the aspect ratio.
_MAX_RESIZED_PIXELS = 4_000_000


def _resize_region(
    image: Image.Image, full_size: tuple[int, int], crop: tuple[int, int, int, int], resample: Image.Resampling
) -> Image.Image:
    """What ``image.resize(full_size).crop(crop)`` shows, computed from only the source pixels under the crop.

    A thin strip makes the resized copy arbitrarily large (20000×1 with a 297 px short side is 5.9 million × 297
    pixels); here the source is first cut to the crop's footprint plus the filter's reach, so the work is bounded by
    the crop whatever the aspect ratio. Sample positions are those of the whole resize; the pixels can differ from it
    by the rounding of Pillow's intermediate pass (a few levels at sharp edges).
    """
    width, height = image.size
    scale_x, scale_y = width / full_size[0], height / full_size[1]
    box = (crop[0] * scale_x, crop[1] * scale_y, crop[2] * scale_x, crop[3] * scale_y)
    support = _FILTER_SUPPORT[resample]
    reach_x, reach_y = support * max(scale_x, 1.0) + 2, support * max(scale_y, 1.0) + 2
    left, top = max(0, math.floor(box[0] - reach_x)), max(0, math.floor(box[1] - reach_y))
    right, bottom = min(width, math.ceil(box[2] + reach_x)), min(height, math.ceil(box[3] + reach_y))
    part = image.crop((left, top, right, bottom))
    shifted = (box[0] - left, box[1] - top, box[2] - left, box[3] - top)
    return part.resize((crop[2] - crop[0], crop[3] - crop[1]), resample, box=shifted, reducing_gap=_REDUCING_GAP)


def _resize_and_crop(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    resample = _RESAMPLING[config.resample]
    width, height = image.size
    if not config.center_crop:
        return image.resize((config.size, config.size), resample, reducing_gap=_REDUCING_GAP)
    scale = config.resize_short / min(width, height)
    new_size = (max(config.resize_short, round(width * scale)), max(config.resize_short, round(height * scale)))
    left = round((new_size[0] - config.size) / 2)
    top = round((new_size[1] - config.size) / 2)
    crop = (left, top, left + config.size, top + config.size)
    if new_size[0] * new_size[1] > _MAX_RESIZED_PIXELS:
        return _resize_region(image, new_size, crop, resample)
    if new_size != image.size:
        image = image.resize(new_size, resample, reducing_gap=_REDUCING_GAP)
    return image.crop(crop)


def preprocess(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """Decoded image → model input: float32 ``[3, size, size]``, RGB, ``(x - mean) / std``."""
    rgb = to_rgb(image)
    pixels = np.asarray(_resize_and_crop(rgb, config), dtype=np.float32)  # [size, size, 3]
    pixels -= config.mean
    pixels /= config.std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def load_and_preprocess(data: bytes, config: PreprocessConfig, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Photo bytes → model input; the single function ingest and query both call."""
    image = decode_image(data, target_short_side=config.decode_short_side, limits=limits)
    return preprocess(image, config)


def load_windows_and_preprocess(
    data: bytes,
    config: PreprocessConfig,
    limits: ImageLimits,
    windows_for: Callable[[int, int], list[tuple[int, int, int, int]]],
    smallest_share: float,
) -> tuple[list[PreparedQuery], tuple[int, int]]:
    """Model inputs of several windows of one photo, decoded once, finely enough for windows whose side is
    ``smallest_share`` of the photo's short side. ``windows_for(width, height)`` names them in the photo's upright
    pixels; returns one :class:`PreparedQuery` per window and the photo's upright size."""
    target = math.ceil(config.decode_short_side / smallest_share)
    image, size, _ = _decode(data, target, limits, None)
    scale_x, scale_y = image.width / size[0], image.height / size[1]
    prepared = []
    for box in windows_for(*size):
        crop = (
            math.floor(box[0] * scale_x),
            math.floor(box[1] * scale_y),
            max(math.floor(box[0] * scale_x) + 1, math.ceil(box[2] * scale_x)),
            max(math.floor(box[1] * scale_y) + 1, math.ceil(box[3] * scale_y)),
        )
        prepared.append(PreparedQuery(preprocess(image.crop(crop), config), box, size, located=True))
    return prepared, size


Locator = Callable[[Image.Image], "tuple[int, int, int, int] | None"]
"""Finds a box in a decoded photo (its own pixels), or None to keep the whole photo (:mod:`catalens.subject`)."""


def load_region_and_preprocess(
    data: bytes,
    config: PreprocessConfig,
    limits: ImageLimits = ImageLimits(),
    region: Region | None = None,
    *,
    locate: Locator | None = None,
) -> PreparedQuery:
    """Photo bytes → model input of ``region`` (the whole photo when None, exactly as :func:`load_and_preprocess`).

    The region is cut out first and then prepared like any photo (short side resized, centre crop), so a box drawn
    around a product is embedded as that product's own photo would be. Without a region, ``locate`` may choose one
    on the decoded photo (``PreparedQuery.located`` says it did).
    """
    image, size, box = _decode(data, config.decode_short_side, limits, region)
    located = False
    if box is None and locate is not None:
        found = locate(image)
        if found is not None:
            scale_x, scale_y = size[0] / image.width, size[1] / image.height
            box = (
                max(0, round(found[0] * scale_x)),
                max(0, round(found[1] * scale_y)),
                min(size[0], round(found[2] * scale_x)),
                min(size[1], round(found[3] * scale_y)),
            )
            image, located = image.crop(found), True
    return PreparedQuery(preprocess(image, config), box or (0, 0, *size), size, located)
