"""The benchmarks measure what serves: their defaults come from the serving model's card, never a stand-in."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from catalens.embedder import DEFAULT_MODEL_NAME
from catalens.index.build import GRAPH_THRESHOLD, BuildParams
from catalens.model.card import ModelCard, model_paths
from catalens_tools.cli import build_parser, main

SERVING_DIM = 3984


@pytest.fixture(scope="module")
def serving_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model under its own name (a stand-in) and, beside it, a card under the serving model's name."""
    out = tmp_path_factory.mktemp("serving-models")
    onnx, card_path = model_paths(model_dir, "efficientnet-lite0", "fp32")
    shutil.copy(onnx, out / onnx.name)
    shutil.copy(card_path, out / card_path.name)
    serving = replace(ModelCard.load(card_path), name=DEFAULT_MODEL_NAME, dim=SERVING_DIM)
    serving_onnx, serving_card = model_paths(out, DEFAULT_MODEL_NAME, "fp32")
    shutil.copy(onnx, serving_onnx)
    serving_card.write_text(serving.to_json())
    return out


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_bench_index_defaults_to_the_serving_dimension_and_the_builders_layout(serving_dir: Path) -> None:
    from catalens_tools.commands.bench_index import LAYOUTS, resolve_dim

    args = _args("bench", "index", "--model-dir", str(serving_dir))
    assert resolve_dim(args) == (SERVING_DIM, f"card {DEFAULT_MODEL_NAME}.fp32")
    # the builder's layout first, the float32 one beside it in the same run
    assert args.layouts.split(",") == ["compact", "float32"]
    assert args.graph_threshold is None
    assert not args.peers
    assert LAYOUTS["compact"].params(BuildParams()) == BuildParams()
    assert LAYOUTS["float32"].params(BuildParams()).layout == "float32"
    assert _args("bench", "index", "--dim", "16").dim == 16


def test_bench_embed_defaults_to_the_serving_model(serving_dir: Path) -> None:
    from catalens_tools.commands.bench_embed import model_cards

    cards = model_cards(serving_dir, ["fp32"])
    assert cards["fp32"].name == DEFAULT_MODEL_NAME
    assert cards["fp32"].dim == SERVING_DIM
    assert model_cards(serving_dir, ["fp32"], "efficientnet-lite0")["fp32"].name == "efficientnet-lite0"


def test_bench_search_builds_as_the_builder_does() -> None:
    from catalens_tools.commands.bench_search import build_params, index_layout

    args = _args("bench", "search")
    params, basis = build_params(args, SERVING_DIM)
    assert basis is None
    assert replace(params, n_jobs=None, seed=0) == BuildParams()
    assert index_layout(args, SERVING_DIM) == {
        "dim": SERVING_DIM,
        "projection": None,
        "graph_from_items": GRAPH_THRESHOLD,
        "as_builder": True,
    }
    params, basis = build_params(_args("bench", "search", "--index-dim", "8"), 32)
    assert basis.shape == (32, 8)
    assert params.projection is not None


def test_bench_index_reports_per_item_costs_and_skips_what_cannot_fit(capsys) -> None:
    """Smoke test at a tiny size (numbers never asserted), and a size over the memory budget is estimated, not run."""
    argv = ["bench", "index", "--sizes", "300,100000000", "--dim", "16", "--queries", "20", "--exact-queries", "5"]
    argv += ["--cold-starts", "1", "--no-grocery", "--memory-budget", "1e9", "--candidates", "16,64"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["layout"], line["n"]) for line in lines] == [
        ("compact", 300),
        ("compact", 100_000_000),
        ("float32", 300),
        ("float32", 100_000_000),
    ]
    compact, _, dense, _ = lines
    for measured in (compact, dense):
        assert measured["dim"] == 16
        assert measured["builder"]["peak_rss_per_item"] > 0
        assert measured["compaction"]["peak_rss_per_item"] > 0
        assert measured["search_process"]["rss_per_item"] > 0
        assert set(measured["cold_start"]) >= {"import_s", "read_s", "verify_sha256_s", "first_answer_s"}
        assert measured["search"]["recall_at_10"] > 0.9
        assert [pool["candidates"] for pool in measured["search_candidates"]] == [16, 64]
        assert all(pool["recall_at_10"] > 0.9 and pool["p50_ms"] > 0 for pool in measured["search_candidates"])
        assert measured["search_process"]["heavy_modules"] == []
    assert dense["snapshot"]["bytes_per_item"] > 16 * 4
    # float32 reads everything before it answers; compact answers from its first stage and loads the chunks after
    assert dense["bytes_read_before_first_answer"] == dense["snapshot"]["bytes"]
    assert compact["bytes_read_before_first_answer"] < compact["snapshot"]["bytes"]
    assert compact["first_answer_stage"] == "first"
    for skipped in lines[1::2]:
        assert skipped["skipped"]["fits"] is False
        assert "N=300" in skipped["skipped"]["formula"]


def test_bench_swap_defaults_to_the_serving_dimension_at_100k(serving_dir: Path) -> None:
    from catalens_tools.commands.bench_index import resolve_dim

    args = _args("bench", "swap", "--model-dir", str(serving_dir))
    assert args.items == 100_000
    assert resolve_dim(args) == (SERVING_DIM, f"card {DEFAULT_MODEL_NAME}.fp32")
    assert args.swap_headroom is None  # the cache's own rule


def test_bench_index_detail_sweeps_and_filters_a_compact_graph_as_served(capsys) -> None:
    """The detail ran the walk on full-dimension queries and crashed on every compact snapshot with a graph: the walk
    runs on the narrower first stage, so the sweep and the filters now search as served."""
    argv = ["bench", "index", "--sizes", "1500", "--dim", "400", "--layouts", "compact", "--graph-threshold", "2"]
    argv += ["--queries", "20", "--exact-queries", "5", "--cold-starts", "1", "--no-grocery", "--detail"]
    assert main(argv) == 0
    (measured,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert measured["strategy"] == "graph"
    sweep = measured["graph_ef_sweep"]
    assert [pool["ef"] for pool in sweep] == [200, 256, 304, 352]
    assert all(pool["recall_at_10"] > 0.9 and pool["p50_ms"] > 0 for pool in sweep)
    filtered = measured["filtered"]
    assert len(filtered) == 5
    for entry in filtered:
        assert entry["rows"] > 0
        assert entry["auto"]["recall_at_10"] == 1.0  # at 1,500 rows every filter leaves fewer than 20k: exact
        assert 0 <= entry["graph"]["recall_at_10"] <= 1
