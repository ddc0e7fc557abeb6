"""``catalens bench hostile`` reports every hostile input as a status, a time and a memory peak, and the peaks
stay under the bound the imaging tests assert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalens_tools.cli import main
from catalens_tools.commands.bench_hostile import CORPUS
from tests.unit.test_imaging import PEAK_MIB_UP_TO_2_MP


def test_the_corpus_is_fixed_and_holds_the_hostile_inputs_of_the_issue():
    names = " ".join(CORPUS)
    for kind in ("20000x1", "1x20000", "60000x1", "1x60000", "1x1", "transparent", "bomb", "truncated"):
        assert kind in names
    for kind in ("grey16", "float", "animated", "cmyk", "exif-rotated", "reference"):
        assert kind in names
    assert CORPUS["strip-20000x1.png"]() == CORPUS["strip-20000x1.png"]()  # same bytes on every run
    assert len(CORPUS["strip-60000x1.png"]()) < 400


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_bench_prints_status_time_and_memory_per_input_as_json(capsys):
    wanted = ["pixel-1x1", "strip-1x60000", "strip-32x60000", "bomb-header-1x50000000", "transparent"]
    assert main(["bench", "hostile", "--no-model", "--only", *wanted]) == 0
    report = json.loads(capsys.readouterr().out)
    statuses = {entry["input"]: entry["status"] for entry in report["inputs"]}
    assert statuses == {
        "pixel-1x1.png": "image_too_small",
        "strip-1x60000.png": "image_too_small",
        "strip-32x60000.png": "ok",
        "bomb-header-1x50000000.png": "image_too_small",
        "transparent-640x480.png": "blank_image",
    }
    for entry in report["inputs"]:
        assert entry["bytes"] > 0
        assert entry["wall_ms"] >= 0
        assert entry["added_rss_mib"] < PEAK_MIB_UP_TO_2_MP
        assert entry["exact"] is True
