"""Property: whatever photo arrives, load_and_preprocess gives the right model input or a typed error, never another
exception, and its peak memory stays under one constant whatever the aspect ratio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings

from catalens.errors import ImageError
from catalens.imaging import ImageLimits, decode_image, load_and_preprocess
from tests.unit.hostile_images import Hostile, hostile_photos
from tests.unit.test_imaging import PEAK_MIB_UP_TO_2_MP, SERVING, resize_then_crop

LIMITS = ImageLimits()
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure here is a bug, never bad luck
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CLEAR_REFS = Path("/proc/self/clear_refs")


def rss_kib() -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def measured(data: bytes) -> tuple[np.ndarray | ImageError, float]:
    """The outcome of load_and_preprocess and the peak growth of the resident set during it (MiB)."""
    CLEAR_REFS.write_text("5")  # reset the high-water mark to the current resident set
    before, _ = rss_kib()
    try:
        outcome: np.ndarray | ImageError = load_and_preprocess(data, SERVING, LIMITS)
    except ImageError as exc:
        outcome = exc
    return outcome, (rss_kib()[1] - before) / 1024


@pytest.mark.skipif(not CLEAR_REFS.exists(), reason="needs Linux /proc to measure peak memory")
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # our own pixel check refuses them
@PROPERTY
@given(photo=hostile_photos())
def test_any_photo_gives_the_model_input_or_a_typed_error_in_bounded_memory(photo: Hostile) -> None:
    outcome, peak_mib = measured(photo.data)  # anything but an ImageError propagates and fails the test
    event(f"{'real' if photo.real else 'header'} {photo.mode}: {getattr(outcome, 'code', 'ok')}")

    assert peak_mib < PEAK_MIB_UP_TO_2_MP, f"{photo!r}: peak grew by {peak_mib:.0f} MiB"
    too_small = min(photo.width, photo.height) < LIMITS.min_side
    too_big = photo.width * photo.height > LIMITS.max_pixels
    if too_small or too_big:
        assert isinstance(outcome, ImageError)
        assert outcome.code in {"image_too_small", "decompression_bomb"}
        return
    if photo.blank:
        assert isinstance(outcome, ImageError)
        assert outcome.code == "blank_image"
        return
    if not photo.real:
        # A header with a token of pixel data: PNG and GIF are truncated_image; libjpeg fills the rows its scan lacks
        # with grey (a warning, not an error), which is what a damaged camera JPEG shows too.
        assert isinstance(outcome, ImageError) or (photo.fmt == "JPEG" and outcome.shape == (3, 260, 260))
        return
    assert isinstance(outcome, np.ndarray), f"{photo!r} was refused: {outcome}"
    assert outcome.shape == (3, SERVING.size, SERVING.size)
    assert outcome.dtype == np.float32
    assert np.all(outcome >= (0 - SERVING.mean) / SERVING.std)
    assert np.all(outcome <= (255 - SERVING.mean) / SERVING.std)
    # Correct: what resizing the whole decoded image, then cropping, shows (exactly so for ordinary aspect ratios).
    reference = resize_then_crop(decode_image(photo.data, target_short_side=SERVING.resize_short), SERVING)
    assert np.abs(outcome - reference).mean() * SERVING.std < 0.5, photo
