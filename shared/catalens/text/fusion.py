"""Photo and words together: one ranking from a visual score and a text score per candidate.

Candidates are the union of the photo's visual pool and the words' text pool; each gets both scores exactly (the
view scores the missing side), so the fusion never guesses. Two rules, chosen between on train-as-queries and
checked on val by ``catalens eval grocery --words`` (docs/evaluation.md, "Words"):

- ``linear`` (calibrated): ``visual + weight · text / best_text`` — the text score as a fraction of the best in the
  pool, in cosine units, so a full text match is worth ``weight`` of cosine and personal re-ranking's bounded boost
  keeps its meaning.
- ``rrf`` (reciprocal rank, Cormack et al. 2009): ``Σ 1 / (k + rank)`` over the two lists, scaled by ``(k + 1) / 2``
  so an item first in both scores 1. Scale-free, so it needs no weight, but it ignores how far apart scores are.

``explain`` gains ``visual`` (the photo's score), ``text`` (BM25), ``text_share`` (``text / best_text``) and ``fused``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from catalens.index.records import Hit


@dataclass(frozen=True)
class FusionParams:
    """How words move a photo's ranking.

    Parameters
    ----------
    method
        ``linear`` or ``rrf``.
    weight
        ``linear``: cosine units a best-in-pool text match adds.
    rrf_k
        ``rrf``: the rank offset (60 in the paper).
    """

    method: Literal["linear", "rrf"] = "linear"
    weight: float = 0.06
    rrf_k: int = 60


DEFAULT_FUSION = FusionParams()


def fuse(
    hits: Sequence[Hit], visual: np.ndarray, text: np.ndarray, params: FusionParams = DEFAULT_FUSION, *, explain: bool
) -> list[Hit]:
    """``hits`` (any order) re-scored from their ``visual`` and ``text`` scores, best first (ties: item id)."""
    visual = np.asarray(visual, dtype=np.float64)
    text = np.asarray(text, dtype=np.float64)
    best = float(text.max()) if text.size else 0.0
    if best <= 0:  # no candidate has a query word: the visual order stands as served (calibration's blocks kept)
        return [
            replace(hit, explain={**hit.explain, "text": 0.0, "text_share": 0.0}) if explain else hit for hit in hits
        ]
    share = text / best
    if params.method == "rrf":
        fused = np.zeros_like(visual)
        for scores, mask in ((visual, np.ones(visual.size, bool)), (text, text > 0)):
            order = np.lexsort((np.arange(scores.size), -scores))
            ranks = np.empty(scores.size, dtype=np.float64)
            ranks[order] = np.arange(1, scores.size + 1)
            fused += np.where(mask, 1.0 / (params.rrf_k + ranks), 0.0)
        fused *= (params.rrf_k + 1) / 2
    else:
        fused = visual + params.weight * share
    out = []
    for n, hit in enumerate(hits):
        details = hit.explain
        if explain:
            parts = {"visual": float(visual[n]), "text": float(text[n]), "text_share": float(share[n])}
            details = {**hit.explain, **parts, "fused": float(fused[n])}
        out.append(replace(hit, score=float(fused[n]), explain=details))
    out.sort(key=lambda hit: (-hit.score, hit.item_id))
    return out
