"""``catalens eval near-duplicates``: where to put ingest's near-duplicate threshold, measured on real photos.

A near-duplicate is the *same photo* uploaded again under another item id: re-encoded, resized, slightly cropped or
brightened. Different photos of the same product are not near-duplicates (a shop legitimately sells two sizes of one
apple). For a sample of grocery photos this command embeds each original and four such copies, and reports the cosine
of each copy to its original (what the threshold must catch) against the cosine of each original to its nearest
*other* photo, split into same fine class and other class (what it must not catch), with recall and false-flag rates
at candidate thresholds.

The threshold is the model's *copy cosine*; ``--record`` writes the one the rule picks (the lowest candidate that
flags at most ``--max-false-flags`` of the distinct photos), with the rates it was chosen from, into the measured
model facts (:mod:`catalens_tools.model.measured`), which ``catalens model build`` copies into the model card.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from catalens_tools.cli import group
from catalens_tools.model.measured import FACTS_PATH, record_fact

REPO_ROOT = Path(__file__).resolve().parents[3]
THRESHOLDS = (0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98)


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    commands = group(sub, groups, "eval", "evaluations (print JSON)")
    parser = commands.add_parser("near-duplicates", help="copy-vs-original and nearest-other-photo cosines")
    parser.add_argument("--grocery", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "grocery")
    parser.add_argument("--photos", type=int, default=200, help="originals sampled (spread over classes)")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-false-flags",
        type=float,
        default=0.005,
        help="share of distinct photos the chosen copy cosine may flag (default 0.005)",
    )
    parser.add_argument(
        "--record", action="store_true", help="write the chosen copy cosine for this model into the facts file"
    )
    parser.add_argument("--facts", type=Path, default=FACTS_PATH, help="measured model facts (default: the committed)")
    parser.set_defaults(func=run)


def choose_copy_cosine(at_threshold: dict[str, dict[str, float]], max_false_flags: float) -> float | None:
    """The lowest candidate flagging at most ``max_false_flags`` of distinct photos: as many copies caught as that
    budget allows (how the copy cosines of earlier models were chosen by hand). None when no candidate fits."""
    fitting = [float(t) for t, rates in at_threshold.items() if rates["photos_falsely_flagged"] <= max_false_flags]
    return min(fitting) if fitting else None


def _command_line(args: argparse.Namespace) -> str:
    """The command that measured, without this machine's paths (what another checkout would type)."""
    return (
        f"catalens eval near-duplicates --photos {args.photos} --variant {args.variant} --seed {args.seed} "
        f"--max-false-flags {args.max_false_flags:g} --record"
    )


def _copies(data: bytes) -> dict[str, bytes]:
    """The ways one photo comes back as an accidental duplicate."""
    from PIL import Image, ImageEnhance

    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size

    def jpeg(picture: Image.Image, quality: int) -> bytes:
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()

    crop = image.crop((int(width * 0.04), int(height * 0.04), int(width * 0.96), int(height * 0.96)))
    return {
        "reencoded_q60": jpeg(image, 60),
        "resized_50pct": jpeg(image.resize((width // 2, height // 2), Image.Resampling.LANCZOS), 85),
        "cropped_8pct": jpeg(crop, 85),
        "brighter_10pct": jpeg(ImageEnhance.Brightness(image).enhance(1.1), 85),
    }


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from catalens.embedder import Embedder
    from catalens.settings import load_settings

    rows = list(csv.DictReader((args.grocery / "labels.csv").open()))
    rows = [r for r in rows if r["role"] == "natural"]
    rng = np.random.default_rng(args.seed)
    chosen = [rows[i] for i in sorted(rng.choice(len(rows), size=min(args.photos, len(rows)), replace=False))]
    embedder = Embedder.from_dir(args.model_dir or load_settings().model_dir, args.variant)

    originals = [(args.grocery / r["path"]).read_bytes() for r in chosen]
    base = np.concatenate([embedder.embed_images(originals[i : i + 16]) for i in range(0, len(originals), 16)])
    copy_scores: dict[str, list[float]] = {}
    for index, data in enumerate(originals):
        copies = _copies(data)
        vectors = embedder.embed_images(list(copies.values()))
        for name, vector in zip(copies, vectors, strict=True):
            copy_scores.setdefault(name, []).append(float(vector @ base[index]))

    similarity = base @ base.T
    np.fill_diagonal(similarity, -np.inf)
    fine = np.array([r["fine_id"] for r in chosen])
    same = fine[:, None] == fine[None, :]
    nearest_same = np.where(same, similarity, -np.inf).max(axis=1)
    nearest_other = np.where(~same, similarity, -np.inf).max(axis=1)
    nearest_same = nearest_same[np.isfinite(nearest_same)]
    all_copies = np.array([s for scores in copy_scores.values() for s in scores])

    def summary(values: np.ndarray) -> dict[str, float]:
        quantiles = {"min": 0, "p1": 1, "p5": 5, "p50": 50, "p95": 95, "p99": 99, "max": 100}
        return {name: round(float(np.percentile(values, q)), 4) for name, q in quantiles.items()} | {"n": len(values)}

    distinct = np.concatenate([nearest_same, nearest_other])
    at_threshold = {
        f"{t:.2f}": {
            "copies_caught": round(float((all_copies >= t).mean()), 4),
            "photos_falsely_flagged": round(float((distinct >= t).mean()), 4),
        }
        for t in THRESHOLDS
    }
    measurement: dict[str, Any] = {
        "photos": len(chosen),
        "copy_to_original": {name: summary(np.array(v)) for name, v in copy_scores.items()}
        | {"all": summary(all_copies)},
        "nearest_other_photo_same_class": summary(nearest_same),
        "nearest_other_photo_other_class": summary(nearest_other),
        "at_threshold": at_threshold,
    }
    copy_cosine = choose_copy_cosine(at_threshold, args.max_false_flags)
    report = {
        "model": embedder.card.name + "." + args.variant,
        **measurement,
        "chosen_copy_cosine": copy_cosine,
        "card_copy_cosine": embedder.card.copy_cosine,
    }
    print(json.dumps(report, indent=2))
    if not args.record:
        return 0
    if copy_cosine is None:
        print(
            f"no candidate flags at most {args.max_false_flags:g} of distinct photos; nothing recorded", file=sys.stderr
        )
        return 1
    fact = {
        "value": copy_cosine,
        "variant": args.variant,
        "fingerprint": embedder.card.fingerprint(),
        "command": _command_line(args),
        "date": datetime.now(UTC).date().isoformat(),
        "rule": f"lowest candidate flagging at most {args.max_false_flags:g} of distinct photos",
        **measurement,
    }
    record_fact(embedder.card.name, "copy_cosine", fact, args.facts)
    print(f"recorded copy cosine {copy_cosine} for {embedder.card.name} in {args.facts}", file=sys.stderr)
    return 0
