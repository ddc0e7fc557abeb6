"""Measured model facts: what an evaluation found out about a model and the product must know at run time.

``measured.json`` beside this module is keyed by model name, then by fact (today only ``copy_cosine``); each
fact holds its ``value``, the ``command`` that measured it, the ``date``, the ``variant`` measured, and the rates
the value was chosen from. ``catalens eval near-duplicates --record`` writes it; ``catalens model build`` copies
the facts of the model it builds into the model card, which is where the product reads them. The file is committed,
so a measurement is reviewed like code and every build of a model gets the same card.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from catalens.embedder import DEFAULT_MODEL_NAME
from catalens.errors import ModelError

FACTS_PATH = Path(__file__).with_name("measured.json")
SERVING_MODEL = DEFAULT_MODEL_NAME


def load_facts(path: Path = FACTS_PATH) -> dict[str, Any]:
    """The facts file as a dict (``{}`` when it does not exist yet)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ModelError(f"measured model facts {path} are not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"measured model facts {path} are not a JSON object")
    return data


def copy_cosine_of(name: str, facts: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """``(value, provenance)`` of model ``name``'s copy cosine for its card.

    A model nobody measured borrows the serving model's value: a build must give a usable card (tests and
    studies build many models nobody measures), and the serving model's is the measurement the product stands
    on. The provenance names the model the value was measured on, so the card says plainly when it is borrowed.
    """
    fact = facts.get(name, {}).get("copy_cosine") or facts.get(SERVING_MODEL, {}).get("copy_cosine")
    if not fact:
        raise ModelError(f"no copy cosine is recorded for {name} nor for the serving model {SERVING_MODEL}")
    measured_on = name if "copy_cosine" in facts.get(name, {}) else SERVING_MODEL
    provenance = {"model": measured_on} | {k: fact[k] for k in ("variant", "command", "date") if k in fact}
    return float(fact["value"]), provenance


def serving_copy_cosine(facts: dict[str, Any] | None = None) -> float:
    """The serving model's copy cosine: what studies use for vectors that come from no built model (no card)."""
    return copy_cosine_of(SERVING_MODEL, load_facts() if facts is None else facts)[0]


def record_fact(name: str, fact: str, entry: dict[str, Any], path: Path = FACTS_PATH) -> None:
    """Set ``facts[name][fact] = entry`` and rewrite the file (sorted keys: a re-measurement diffs cleanly)."""
    facts = load_facts(path)
    facts.setdefault(name, {})[fact] = entry
    text = json.dumps(facts, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
