"""``catalens bench swap`` end to end at a tiny size, through moto's S3 server: both swaps serve the new version, the
compaction shares chunks and the rebuild goes through the first stage. Its numbers are never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalens_tools.cli import main


def test_bench_swap_compacts_and_swaps_through_moto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 1,024-d vectors behind a 32-axis first stage keep the chunks most of a version's bytes, as at 3,984-d, so the
    # cache's 0.3 rule takes the intended path: 100 changed items dirty one 128-slot chunk (~0.2 of the old version's
    # bytes added: loaded beside it), a rebuild changes every chunk (~1.0: through the first stage). Above 8,192 items
    # the codec is learned once and kept (a smaller catalog learns it again when a changed vector would clip).
    argv = ["bench", "swap", "--items", "8200", "--dim", "1024", "--coarse-dim", "32", "--chunk-rows", "128"]
    argv += ["--changes", "100", "--swap-headroom", "0.3", "--steady-searches", "50", "--timeout", "120"]
    argv += ["--stage-above-bytes", "0"]  # a tiny index would otherwise load whole, never through its first stage
    assert main([*argv, "--work", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    phases = {line["phase"]: line for line in lines}
    assert list(phases) == [
        "vectors",
        "first_build",
        "search_cold_start",
        "swap_a_compaction",
        "swap_b_rebuild",
        "search_stats",
        "summary",
    ]
    first = phases["first_build"]
    assert first["items"] == 8200
    assert first["bytes_uploaded"] > 0
    assert {"wall_s", "peak_rss_bytes", "peak_anon_bytes", "bytes_copied"} <= first.keys()
    cold = phases["search_cold_start"]
    assert cold["version"] == first["version"]
    assert cold["first_answer_stage"] in ("first", "full")
    assert cold["stage"] == "full"
    assert {"first_answer_s", "full_s", "steady_rss_bytes"} <= cold.keys()

    swap_a, swap_b = phases["swap_a_compaction"], phases["swap_b_rebuild"]
    assert swap_a["builder"]["deltas_written"] == 100
    assert swap_a["builder"]["deltas_included"] == 100
    assert swap_a["builder"]["objects_copied"] > 0  # unchanged chunks copied inside the store
    assert swap_a["version_bytes"]["added_over_old"] < 0.3 < swap_b["version_bytes"]["added_over_old"]
    for swap in (swap_a, swap_b):
        assert swap["served_version"]
        assert swap["search"]["version"] == swap["builder"]["version"]
        assert {"peak_rss_bytes", "rss_after_bytes", "full_s"} <= swap["search"].keys()
        assert swap["peak_over_steady"] > 0
    assert swap_a["search"]["first_stage_swaps"] == 0
    assert swap_b["search"]["first_stage_swaps"] == 1

    stats = phases["search_stats"]
    assert stats["swaps_through_first_stage"] == 1
    assert stats["versions_loaded"] == 3
    assert stats["full_vectors_loaded"] == 3
    summary = phases["summary"]
    assert {"swap_a_peak_over_steady", "swap_b_peak_over_steady", "checks", "pass"} <= summary.keys()
    assert summary["checks"]["compacts_and_serves_through_moto"]
    assert summary["checks"]["swap_a_shares_chunks"]
    assert summary["checks"]["swap_b_through_first_stage"]
