"""The serving model as the benchmarks see it: its card decides the model they run and the dimension they index.

A benchmark that picks its own model or dimension measures a setup the builder never produces; reading both from
the card ``Settings.model_dir`` holds keeps the figures about what serves.
"""

from __future__ import annotations

from pathlib import Path

from catalens.model.card import ModelCard


def serving_card(model_dir: Path | None = None, variant: str = "fp32", name: str | None = None) -> ModelCard:
    """The card of the model search and ingest load (``name`` picks another built model, for comparison)."""
    from catalens.embedder import find_card
    from catalens.settings import load_settings

    folder = Path(model_dir) if model_dir is not None else load_settings().model_dir
    return ModelCard.load(find_card(folder, variant, name))
