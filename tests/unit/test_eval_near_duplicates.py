"""``catalens eval near-duplicates``: the copy cosine's rule, and ``--record`` writing the measured model facts that
``catalens model build`` then copies into the card (small generated photos, the test model)."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from catalens_tools.cli import main as cli_main
from catalens_tools.commands.eval_near_duplicates import choose_copy_cosine
from catalens_tools.model.build import build_fp32
from tests.unit.imagefactory import encode, photo

OTHER_MODEL = {"some-other-model": {"copy_cosine": {"value": 0.9, "command": "cmd", "date": "2026-11-26"}}}


def test_the_copy_cosine_is_the_lowest_candidate_within_the_false_flag_budget() -> None:
    """The serving model's measurement: 0.93 flags 1.4% of distinct photos, 0.94 0.3%: 0.94 at a 0.5% budget."""
    rates = {
        "0.92": {"copies_caught": 0.99, "photos_falsely_flagged": 0.03},
        "0.93": {"copies_caught": 0.985, "photos_falsely_flagged": 0.014},
        "0.94": {"copies_caught": 0.976, "photos_falsely_flagged": 0.003},
        "0.95": {"copies_caught": 0.91, "photos_falsely_flagged": 0.001},
    }
    assert choose_copy_cosine(rates, 0.005) == 0.94
    assert choose_copy_cosine(rates, 0.02) == 0.93
    assert choose_copy_cosine(rates, 0.0) is None


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A grocery-shaped folder: three products, two shelf photos each."""
    root = tmp_path_factory.mktemp("near-duplicates")
    rows = []
    for n in range(6):
        relative = f"train/product-{n // 2}/{n}.jpg"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(encode(photo(160, 120, seed=n)))
        rows.append({"path": relative, "role": "natural", "split": "train", "fine_id": str(n // 2)})
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def measure(photos: Path, model_dir: Path, facts: Path, *extra: str) -> int:
    args = ["eval", "near-duplicates", "--grocery", str(photos), "--photos", "6", "--model-dir", str(model_dir)]
    return cli_main([*args, "--facts", str(facts), *extra])


def test_record_writes_the_models_copy_cosine_and_the_build_puts_it_in_the_card(
    photos: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    facts = tmp_path / "measured.json"
    facts.write_text(json.dumps(OTHER_MODEL))
    assert measure(photos, model_dir, facts, "--max-false-flags", "1") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chosen_copy_cosine"] == 0.85  # every candidate fits a budget of 1: the lowest
    assert json.loads(facts.read_text()) == OTHER_MODEL  # measured, not recorded

    assert measure(photos, model_dir, facts, "--max-false-flags", "1", "--record") == 0
    report = json.loads(capsys.readouterr().out)
    recorded = json.loads(facts.read_text())
    assert recorded["some-other-model"] == OTHER_MODEL["some-other-model"]  # other models' facts are kept
    fact = recorded["efficientnet-lite0"]["copy_cosine"]
    assert fact["value"] == report["chosen_copy_cosine"]
    assert fact["command"] == (
        "catalens eval near-duplicates --photos 6 --variant fp32 --seed 0 --max-false-flags 1 --record"
    )
    assert fact["date"] == datetime.now(UTC).date().isoformat()
    assert fact["at_threshold"] == report["at_threshold"]
    assert fact["copy_to_original"]["all"]["n"] == 6 * 4  # four copies of each photo
    assert (fact["variant"], fact["photos"]) == ("fp32", 6)

    _, card = build_fp32(facts=facts)
    assert card.copy_cosine == fact["value"]
    assert card.measured["copy_cosine"] == {
        "model": "efficientnet-lite0",
        "variant": "fp32",
        "command": fact["command"],
        "date": fact["date"],
    }


def test_nothing_is_recorded_when_no_candidate_fits_the_budget(
    photos: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    facts = tmp_path / "measured.json"
    facts.write_text(json.dumps(OTHER_MODEL))
    assert measure(photos, model_dir, facts, "--max-false-flags", "-1", "--record") == 1
    assert "nothing recorded" in capsys.readouterr().err
    assert json.loads(facts.read_text()) == OTHER_MODEL
