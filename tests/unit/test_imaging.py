"""Decoding and preprocessing: bad input gives typed errors, awkward input gives the right pixels."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from catalens.errors import CatalensError, ImageError
from catalens.imaging import (
    ImageLimits,
    PreprocessConfig,
    decode_image,
    load_and_preprocess,
    preprocess,
    to_rgb,
)
from tests.unit.imagefactory import (
    animated,
    encode,
    gif_declaring_size,
    gray16_png,
    jpeg_declaring_size,
    jpeg_with_orientation,
    photo,
    png_bomb,
    png_bytes,
    rgb16_png,
    stored_pixels,
)

CONFIG = PreprocessConfig()


def rgb_array(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image, dtype=np.float32)


def decode_error(data: bytes, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as caught:
        decode_image(data, **kwargs)
    assert isinstance(caught.value, CatalensError)
    return caught.value


# ---------------------------------------------------------------------------------------------------------------
# Bad input → typed errors with the right code and a message that names the problem


def test_empty_bytes_are_an_empty_image():
    error = decode_error(b"")
    assert error.code == "empty_image"
    assert "empty" in str(error)


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(7).bytes(5000),
        b"product,price\nmug,9.99\nteapot,24.50\n" * 20,
        b'{"title": "mug", "price": 9.99}',
        b"\x00" * 100,
    ],
    ids=["random-bytes", "csv-text", "json-text", "zeros"],
)
def test_non_images_are_not_an_image(data):
    error = decode_error(data)
    assert error.code == "not_an_image"
    assert f"{len(data)} bytes" in str(error)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
@pytest.mark.parametrize("keep", [0.5, 0.9], ids=["half", "most"])
def test_truncated_pixel_data_is_a_truncated_image(fmt, keep):
    data = encode(photo(320, 240, seed=3), fmt)
    error = decode_error(data[: int(len(data) * keep)])
    assert error.code == "truncated_image"
    assert "truncated" in str(error)


@pytest.mark.parametrize(("fmt", "cut"), [("JPEG", 200), ("JPEG", 20), ("PNG", 40), ("PNG", 12), ("GIF", 9)])
def test_truncated_header_is_a_truncated_image(fmt, cut):
    data = encode(photo(320, 240, seed=3), fmt)[:cut]
    error = decode_error(data)
    assert error.code == "truncated_image"
    assert fmt in str(error)


def test_damaged_png_data_is_a_truncated_image():
    data = bytearray(encode(photo(200, 150), "PNG"))
    data[200:400] = bytes(200)  # zero a stretch of the compressed stream
    assert decode_error(bytes(data)).code == "truncated_image"


def test_more_bytes_than_the_limit_is_too_large_before_decoding():
    data = encode(photo(320, 240), "JPEG")
    error = decode_error(data, limits=ImageLimits(max_bytes=len(data) - 1))
    assert error.code == "image_too_large"
    assert "limit" in str(error)
    # The default limit (10 MiB) refuses an 11 MiB upload even when it is not an image at all.
    assert decode_error(bytes(11 * 2**20)).code == "image_too_large"


def test_more_pixels_than_the_limit_is_refused_with_the_size_in_the_message():
    error = decode_error(png_bomb(8000, 8000))  # 64 MP: above our 50 MP, below Pillow's own limit
    assert error.code == "decompression_bomb"
    assert "8000×8000" in str(error)
    assert "64 MP" in str(error)
    assert "50 MP" in str(error)


def test_the_pixel_limit_is_configurable():
    data = encode(photo(400, 300), "JPEG")
    assert decode_image(data, limits=ImageLimits(max_pixels=400 * 300)).size == (400, 300)
    error = decode_error(data, limits=ImageLimits(max_pixels=400 * 300 - 1))
    assert error.code == "decompression_bomb"
    assert "400×300" in str(error)


@pytest.mark.parametrize(
    "data",
    [png_bomb(30_000, 30_000), jpeg_declaring_size(60_000, 60_000), gif_declaring_size(65_535, 65_535)],
    ids=["png-30000x30000", "jpeg-60000x60000", "gif-65535x65535"],
)
def test_decompression_bombs_are_refused_without_decoding(data):
    assert len(data) < 5000  # the whole point: tiny file, gigapixel header
    error = decode_error(data)
    assert error.code == "decompression_bomb"
    # A generous limit of ours does not switch off Pillow's own guard: still refused, not decoded.
    assert decode_error(data, limits=ImageLimits(max_pixels=10**12)).code == "decompression_bomb"


def test_pillows_bomb_warning_turned_error_is_still_a_typed_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        error = decode_error(png_bomb(10_000, 10_000), limits=ImageLimits(max_pixels=10**9))
    assert error.code == "decompression_bomb"


@pytest.mark.parametrize(
    "size", [(1, 1), (1, 20000), (20000, 1), (60000, 1), (31, 400), (400, 31)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_images_too_small_to_show_a_product_are_refused(size):
    data = encode(Image.new("RGB", size, (200, 40, 40)), "PNG")
    error = decode_error(data)
    assert error.code == "image_too_small"
    assert f"{size[0]}×{size[1]}" in str(error)
    assert "32 px" in str(error)
    with pytest.raises(ImageError, match="at least 32 px"):
        load_and_preprocess(data, CONFIG)


def test_the_smallest_accepted_image_has_sides_of_the_network_stride():
    assert ImageLimits().min_side == 32
    assert load_and_preprocess(encode(photo(32, 32), "PNG"), CONFIG).shape == (3, 224, 224)
    assert load_and_preprocess(encode(photo(32, 3000), "PNG"), CONFIG).shape == (3, 224, 224)
    assert decode_error(encode(photo(64, 48), "PNG"), limits=ImageLimits(min_side=50)).code == "image_too_small"


def test_a_one_pixel_strip_header_of_50_megapixels_is_refused_before_decoding():
    # 1×50,000,000 passes a 50 MP check; decoding it would allocate 200 MB for a row nothing can see.
    data = png_bytes(50_000_000, 1, bit_depth=8, colour_type=2, rows=None)
    assert decode_error(data).code == "image_too_small"


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGBA", "PNG"), ("RGBA", "WEBP"), ("RGBA", "TIFF"), ("LA", "PNG"), ("LA", "TIFF"), ("P", "PNG"), ("P", "GIF")],
)
def test_fully_transparent_images_are_blank(mode, fmt):
    if mode == "P":  # palette transparency: every pixel is the transparent index
        image, extra = Image.new("P", (120, 90), 0), {"transparency": 0}
    else:  # colour hidden under alpha 0
        image, extra = Image.new(mode, (120, 90), (30, 60, 90, 0)[-len(mode) :]), {}
    if fmt == "WEBP":
        extra["lossless"] = True
    error = decode_error(encode(image, fmt, **extra))
    assert error.code == "blank_image"
    assert "transparent" in str(error)


def test_one_visible_pixel_is_not_blank_and_plain_opaque_images_are_kept():
    image = Image.new("RGBA", (120, 90), (0, 0, 0, 0))
    image.putpixel((60, 45), (200, 30, 30, 255))
    assert decode_image(encode(image, "PNG")).size == (120, 90)
    # A single-colour opaque picture is a legitimate (if plain) product shot, e.g. a swatch: kept.
    assert decode_image(encode(Image.new("RGB", (120, 90), (255, 255, 255)), "PNG")).size == (120, 90)


def test_pillow_globals_are_left_alone():
    before = Image.MAX_IMAGE_PIXELS
    for data in (png_bomb(), encode(photo(100, 80), "JPEG")[:500]):
        with pytest.raises(ImageError):
            decode_image(data)
    assert before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200), "HEIC"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "PostScript"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF"),
        (b"8BPS\x00\x01" + bytes(40), "PSD"),
    ],
    ids=["heic", "svg", "eps", "pdf", "psd"],
)
def test_recognised_but_refused_formats_are_unsupported(data, named):
    error = decode_error(data)
    assert error.code == "unsupported_image"
    assert named in str(error)
    assert "JPEG" in str(error)  # says what to send instead


def test_formats_outside_the_allow_list_are_never_decoded():
    # Pillow can read these, but catalens refuses them before any decoder for them runs.
    for fmt in ("PPM", "TGA", "PCX"):
        data = encode(photo(40, 30), fmt)
        assert decode_error(data).code in {"not_an_image", "unsupported_image"}


def test_a_damaged_exif_block_does_not_reject_the_photo():
    upright = photo(200, 150)
    data = bytearray(jpeg_with_orientation(upright, 6))
    exif_at = data.index(b"Exif\x00\x00")
    data[exif_at + 6 : exif_at + 30] = b"\xff" * 24  # garbage TIFF header inside the EXIF segment
    image = decode_image(bytes(data))
    assert image.mode == "RGB"
    assert sorted(image.size) == [150, 200]


# ---------------------------------------------------------------------------------------------------------------
# Orientation and reduced-size decoding


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_rotated_copy_preprocesses_like_the_upright_photo(orientation):
    upright = photo(1200, 800, seed=11)  # large enough for the JPEG draft to kick in before the rotation
    reference = load_and_preprocess(jpeg_with_orientation(upright, 1), CONFIG)
    rotated = load_and_preprocess(jpeg_with_orientation(upright, orientation), CONFIG)
    assert mean_abs(rotated, reference) < 0.02
    # The test can fail: the stored pixels alone (orientation ignored) are far from the upright photo.
    ignoring_exif = load_and_preprocess(encode(stored_pixels(upright, orientation), "JPEG"), CONFIG)
    assert mean_abs(ignoring_exif, reference) > 0.1


def test_exif_orientation_gives_upright_dimensions():
    upright = photo(300, 200)
    for orientation in range(1, 9):
        assert decode_image(jpeg_with_orientation(upright, orientation)).size == (300, 200)


def test_draft_decoding_of_a_large_jpeg_matches_full_decoding():
    data = encode(photo(4000, 3000, seed=5), "JPEG")
    drafted = decode_image(data, target_short_side=CONFIG.resize_short)
    full = decode_image(data)
    assert full.size == (4000, 3000)
    assert drafted.size == (500, 375)  # 1/8 scale: the smallest whose short side is still >= 256
    assert mean_abs(preprocess(drafted, CONFIG), preprocess(full, CONFIG)) < 0.01


@pytest.mark.parametrize(
    ("size", "target"),
    [((4000, 3000), 256), ((513, 2000), 256), ((511, 700), 256), ((2048, 2048), 256), ((1000, 4000), 224)],
)
def test_draft_never_decodes_below_the_size_needed(size, target):
    image = decode_image(encode(photo(*size), "JPEG", quality=80), target_short_side=target)
    assert min(image.size) >= target
    assert min(image.size) < 2 * target or min(image.size) * 8 >= min(size)  # and it did reduce when it could


def test_load_and_preprocess_drafts_to_the_configured_decode_size():
    assert PreprocessConfig().decode_short_side == 256
    assert PreprocessConfig(center_crop=False).decode_short_side == 224


# ---------------------------------------------------------------------------------------------------------------
# Modes: transparency, CMYK, 16-bit, grey, palette, 1-bit, animations


def product_on_transparent_background(mode: str) -> Image.Image:
    image = Image.new("RGBA", (120, 90), (0, 0, 255, 0))  # blue, but fully transparent
    ImageDraw.Draw(image).rectangle((40, 30, 80, 60), fill=(200, 30, 30, 255))
    return image if mode == "RGBA" else image.convert(mode)


@pytest.mark.parametrize(
    ("mode", "fmt"), [("RGBA", "PNG"), ("RGBA", "WEBP"), ("RGBA", "TIFF"), ("LA", "PNG"), ("PA", None), ("RGBa", None)]
)
def test_transparency_is_composited_on_white(mode, fmt):
    source = product_on_transparent_background(mode)
    if fmt is None:  # modes no file format stores; decoders can still produce them
        rgb = rgb_array(to_rgb(source))
    else:
        extra = {"lossless": True} if fmt == "WEBP" else {}
        rgb = rgb_array(decode_image(encode(source, fmt, **extra)))
    assert np.all(rgb[5, 5] == 255)  # transparent background → white, not the hidden blue or black
    assert rgb[45, 60, 0] > rgb[45, 60, 2] or mode == "LA"  # product keeps its colour
    assert rgb[45, 60].mean() < 200  # and is not washed out


def test_palette_transparency_is_composited_on_white():
    image = Image.new("P", (60, 40), 0)
    image.putpalette([0, 0, 255] + [200, 30, 30] + [0, 0, 0] * 254)
    ImageDraw.Draw(image).rectangle((20, 10, 40, 30), fill=1)
    for fmt in ("PNG", "GIF"):
        rgb = rgb_array(decode_image(encode(image, fmt, transparency=0)))
        assert np.all(rgb[2, 2] == 255), fmt
        assert tuple(rgb[20, 30]) == (200, 30, 30), fmt


def test_cmyk_jpeg_with_adobe_inverted_data_decodes_to_the_right_colours():
    original = photo(200, 150, seed=2, noise=0)
    data = encode(original.convert("CMYK"), "JPEG", quality=95)
    assert b"Adobe" in data  # libjpeg writes Adobe-style (inverted) CMYK
    decoded = decode_image(data)
    assert mean_abs(rgb_array(decoded), rgb_array(original)) < 4
    # Colour inversion would be off by ~100 levels on average; this is the failure the test guards.
    inverted = 255 - rgb_array(original)
    assert mean_abs(rgb_array(decoded), inverted) > 40


def test_16_bit_greyscale_is_scaled_not_clipped_to_white():
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (32, 1))
    rgb = rgb_array(decode_image(gray16_png(ramp)))
    expected = np.round(ramp / 257.0)
    assert np.abs(rgb[..., 0] - expected).max() <= 1
    assert np.all(rgb[..., 0] == rgb[..., 1])
    assert np.all(rgb[..., 1] == rgb[..., 2])


def test_16_bit_rgb_png_keeps_its_colours():
    colours = np.zeros((40, 60, 3), dtype=np.uint16)  # above the 32 px minimum side
    colours[..., 0] = 50000  # ≈ 195
    colours[..., 1] = 10000  # ≈ 39
    colours[..., 2] = 65535  # 255
    rgb = rgb_array(decode_image(rgb16_png(colours)))
    assert np.abs(rgb[10, 10] - np.array([195, 39, 255])).max() <= 1


def test_32_bit_integer_greyscale_with_16_bit_values_is_scaled():
    ramp = np.tile(np.linspace(0, 65535, 128).astype(np.int32), (16, 1))
    rgb = rgb_array(to_rgb(Image.fromarray(ramp, "I")))
    assert np.abs(rgb[..., 0] - np.round(ramp / 257.0)).max() <= 1


@pytest.mark.parametrize(("mode", "fmt"), [("L", "JPEG"), ("L", "PNG"), ("1", "PNG"), ("1", "BMP"), ("P", "PNG")])
def test_grey_palette_and_bilevel_images_become_sensible_rgb(mode, fmt):
    source = photo(160, 120, seed=4).convert(mode)
    decoded = decode_image(encode(source, fmt))
    expected = rgb_array(source.convert("RGB"))
    tolerance = 3 if fmt == "JPEG" else 0
    assert mean_abs(rgb_array(decoded), expected) <= tolerance
    if mode in ("L", "1"):
        rgb = rgb_array(decoded)
        assert np.all(rgb[..., 0] == rgb[..., 2])


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"], ids=["gif", "webp", "apng"])
def test_animations_use_their_first_frame(fmt):
    data = encode_animation(fmt)
    with Image.open(io.BytesIO(data)) as probe:
        assert getattr(probe, "n_frames", 1) == 3  # really an animation
    rgb = rgb_array(decode_image(data))
    assert np.abs(rgb[30, 40] - np.array([200, 40, 40])).max() <= 8  # the red first frame, not green or blue


def encode_animation(fmt: str) -> bytes:
    return animated(fmt, [(200, 40, 40), (40, 200, 40), (40, 40, 200)])


# ---------------------------------------------------------------------------------------------------------------
# The model input


def test_output_is_float32_chw_normalised_per_config():
    colour = (100, 150, 200)
    tensor = load_and_preprocess(encode(Image.new("RGB", (300, 400), colour), "PNG"), CONFIG)
    assert tensor.shape == (3, 224, 224)
    assert tensor.dtype == np.float32
    assert tensor.flags["C_CONTIGUOUS"]
    for channel, value in enumerate(colour):
        np.testing.assert_allclose(tensor[channel], (value - 127.0) / 128.0, atol=1e-6)


def test_other_sizes_and_normalisation_follow_the_config():
    config = PreprocessConfig(size=160, resize_short=182, mean=0.0, std=255.0)
    tensor = load_and_preprocess(encode(Image.new("RGB", (500, 300), (255, 0, 51)), "PNG"), config)
    assert tensor.shape == (3, 160, 160)
    np.testing.assert_allclose(tensor[:, 80, 80], [1.0, 0.0, 0.2], atol=1e-6)


def framed(width: int, height: int, border: int) -> Image.Image:
    """Grey picture with black bands ``border`` px wide at the left and right edges."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, border - 1, height - 1), fill=(0, 0, 0))
    draw.rectangle((width - border, 0, width - 1, height - 1), fill=(0, 0, 0))
    return image


def test_centre_crop_cuts_the_long_side_and_no_crop_keeps_everything():
    image = framed(512, 256, border=40)  # 512×256 → resize short to 256 (no change) → crop the middle 224
    cropped = preprocess(image, CONFIG)
    assert np.allclose(cropped, (128 - 127) / 128, atol=1e-3)  # the black bands are outside the crop
    whole = preprocess(image, PreprocessConfig(center_crop=False))
    assert whole[:, 112, 0].max() < -0.9  # squashed to 224×224, the bands are still at the edges
    assert whole[:, 112, 223].max() < -0.9
    assert abs(whole[0, 112, 112] - (128 - 127) / 128) < 1e-3


def test_centre_crop_is_centred_for_portrait_images():
    image = framed(512, 256, border=40).transpose(Image.Transpose.ROTATE_90)  # 256×512, bands at top and bottom
    assert np.allclose(preprocess(image, CONFIG), (128 - 127) / 128, atol=1e-3)


def test_preprocess_accepts_any_mode():
    grey = Image.new("L", (300, 300), 64)
    np.testing.assert_allclose(preprocess(grey, CONFIG), (64 - 127) / 128, atol=1e-6)


def test_preprocess_config_round_trips_and_rejects_unknown_fields():
    config = PreprocessConfig(size=240, resize_short=274, center_crop=False, mean=0.5, std=2.0, resample="bilinear")
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="pooling"):
        PreprocessConfig.from_dict({**config.to_dict(), "pooling": "gem"})


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 0}, {"size": 300, "resize_short": 256}, {"std": 0.0}, {"resample": "sinc"}],
)
def test_invalid_preprocess_configs_are_refused(kwargs):
    with pytest.raises(ValueError, match="PreprocessConfig"):
        PreprocessConfig(**kwargs)


def test_same_bytes_give_the_same_tensor():
    data = encode(photo(800, 600, seed=9), "JPEG")
    np.testing.assert_array_equal(load_and_preprocess(data, CONFIG), load_and_preprocess(data, CONFIG))


# ---------------------------------------------------------------------------------------------------------------
# Through the real model: what the shopper sees is what gets embedded


@pytest.fixture(scope="module")
def embedder(model_dir):
    from catalens.embedder import Embedder

    return Embedder.from_dir(model_dir, "fp32")


@pytest.mark.parametrize("picture", ["chelsea", "coffee"])
@pytest.mark.parametrize("scale", [1, 4], ids=["small", "drafted"])
def test_exif_rotated_photo_embeds_like_the_upright_one(embedder, picture, scale):
    from skimage import data as bundled

    upright = Image.fromarray(getattr(bundled, picture)())
    if scale != 1:  # large enough (1800×1200 and up) that the JPEG is decoded at reduced size before rotating
        upright = upright.resize((upright.width * scale, upright.height * scale), Image.Resampling.BICUBIC)
    reference = embedder.embed_images([jpeg_with_orientation(upright, 1)])[0]
    for orientation in (3, 6, 8):
        rotated = embedder.embed_images([jpeg_with_orientation(upright, orientation)])[0]
        assert float(rotated @ reference) > 0.99, orientation
        # Ignoring the EXIF tag would embed a sideways photo: measurably different (cosine ≈ 0.7–0.9 here).
        sideways = embedder.embed_images([encode(stored_pixels(upright, orientation), "JPEG")])[0]
        assert float(sideways @ reference) < 0.95, orientation


# ---------------------------------------------------------------------------------------------------------------
# Bounded work: the resized copy of a thin strip is never made, ordinary photos keep their exact pixels

SERVING = PreprocessConfig(size=260, resize_short=297)  # the serving model card's preprocessing


def resize_then_crop(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """The reference: resize the whole image so its short side is ``resize_short``, then cut the centre square."""
    resample = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}[config.resample]
    rgb = to_rgb(image)
    scale = config.resize_short / min(rgb.size)
    size = (max(config.resize_short, round(rgb.width * scale)), max(config.resize_short, round(rgb.height * scale)))
    if size != rgb.size:
        rgb = rgb.resize(size, resample, reducing_gap=3.0)
    left, top = round((size[0] - config.size) / 2), round((size[1] - config.size) / 2)
    pixels = np.asarray(rgb.crop((left, top, left + config.size, top + config.size)), dtype=np.float32)
    return ((pixels - config.mean) / config.std).transpose(2, 0, 1)


@pytest.mark.parametrize(
    "config", [SERVING, CONFIG, PreprocessConfig(resample="lanczos")], ids=["serving", "224", "lanczos"]
)
@pytest.mark.parametrize(
    ("size", "mode"),
    [((640, 480), "RGB"), ((480, 640), "L"), ((1200, 300), "RGBA"), ((300, 1200), "P"), ((4000, 3000), "RGB"),
     ((200, 150), "RGB"), ((2048, 512), "CMYK"), ((257, 1028), "RGB"), ((297, 400), "RGB"), ((33, 100), "L")],
)  # fmt: skip
def test_ordinary_photos_give_exactly_the_pixels_of_resize_then_crop(config, size, mode):
    image = photo(*size, seed=sum(size)).convert(mode)
    np.testing.assert_array_equal(preprocess(image, config), resize_then_crop(image, config))


@pytest.mark.parametrize("size", [(3000, 60), (60, 3000), (9000, 180)])
def test_a_strip_past_the_whole_resize_shows_the_same_picture_as_resize_then_crop(size):
    # 50:1 is past the whole-image path (its resized copy would be > 4 MP) yet still cheap to compute the old way.
    image = photo(*size, seed=7)
    difference = np.abs(preprocess(image, SERVING) - resize_then_crop(image, SERVING)) * SERVING.std
    assert difference.mean() < 0.5  # levels of 0..255: the same picture, rounding apart
    assert np.quantile(difference, 0.99) <= 2


# Peak growth of the resident set during one load_and_preprocess, in a fresh interpreter after a warm-up run: the
# kernel's high-water mark is reset just before the call (/proc/self/clear_refs), so imports and the warm-up do not
# count. tracemalloc would miss Pillow's pixel buffers, which are not allocated through Python.
_PEAK_PROBE = """
import sys
from catalens.imaging import PreprocessConfig, load_and_preprocess
from tests.unit.imagefactory import encode, photo

def status_kib():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

config = PreprocessConfig(size=260, resize_short=297)
load_and_preprocess(encode(photo(400, 300), "PNG"), config)
data = open(sys.argv[1], "rb").read()
with open("/proc/self/clear_refs", "w") as reset:
    reset.write("5")
before, _ = status_kib()
try:
    load_and_preprocess(data, config)
    status = "ok"
except Exception as exc:
    status = getattr(exc, "code", type(exc).__name__)
print(status, (status_kib()[1] - before) / 1024)
"""

# Stated bound: decoding and preprocessing a photo of up to 2 MP grows the process by at most this much, whatever
# its aspect ratio (the strips here need ~8 MiB, their decoded pixels; resizing a 32×60000 strip whole took ~730 MiB).
PEAK_MIB_UP_TO_2_MP = 32


def peak_mib(data: bytes, tmp_path) -> tuple[str, float]:
    import subprocess
    import sys

    path = tmp_path / "input"
    path.write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],  # the repository root, so the probe imports tests.unit.imagefactory
    )
    status, mib = done.stdout.split()
    return status, float(mib)


def strip_png(width: int, height: int) -> bytes:
    """A cheap-to-encode photo-like strip: a colour ramp along the long side with a few bands across it."""
    along = np.linspace(0, 1, max(width, height), dtype=np.float32)
    ramp = np.stack([along * 255, (1 - along) * 200, np.full_like(along, 90)], axis=-1)
    pixels = ramp[None, :, :] if width >= height else ramp[:, None, :]
    pixels = np.broadcast_to(pixels, (height, width, 3)).copy()
    pixels[:: max(1, min(width, height) // 4)] //= 2
    return encode(Image.fromarray(pixels.astype(np.uint8)), "PNG")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("size", [(60000, 32), (32, 60000), (20000, 100), (100, 20000), (1600, 1200)])
def test_peak_memory_is_bounded_whatever_the_aspect_ratio(size, tmp_path):
    status, mib = peak_mib(strip_png(*size) if size != (1600, 1200) else encode(photo(*size), "JPEG"), tmp_path)
    assert status == "ok"
    assert mib < PEAK_MIB_UP_TO_2_MP, f"{size}: peak grew by {mib:.0f} MiB"
