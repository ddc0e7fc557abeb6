"""Several products in one photo: candidate windows, and which of them hold distinct products.

A shelf or basket photo shows several products; a search for each needs a box around each. No detector is trained:
windows of a few sizes tile the photo, each is embedded, and a window's *objectness* is how much it looks like some
catalog product (its best hit's plain cosine). Windows are taken best first; one that overlaps a kept window by
more than 30% of the smaller one, or whose best hit is a kept window's best hit (the same product seen twice), is
skipped; so is any window below ``min_score`` (shelf, floor, hands). Both bars were chosen on the train composites
of ``catalens eval grocery --split train`` (docs/evaluation.md): a calibrated objectness and a 50% overlap bar
found fewer products.

Pure functions of boxes and scores; the search service embeds and searches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["MAX_GROUPS", "MIN_SCORE", "WINDOW_SIDES", "candidate_windows", "overlap", "select_groups"]

MAX_GROUPS = 5
# Window sides as shares of the photo's short side, each slid by half its side: 0.4 holds a product that spans a
# quarter to a half of the photo's short side (24 windows for a 4:3 photo: each costs one forward pass).
WINDOW_SIDES = (0.4,)
MIN_SCORE = 0.6  # a window whose best plain cosine is below this holds no product (chosen on train composites)

Box = tuple[int, int, int, int]


def candidate_windows(width: int, height: int, sides: Sequence[float] = WINDOW_SIDES) -> list[Box]:
    """Square windows of each side share, at half-side strides, covering the photo edge to edge."""
    short = min(width, height)
    windows: list[Box] = []
    for share in sides:
        side = max(1, round(share * short))
        for top in _positions(height, side):
            for left in _positions(width, side):
                windows.append((left, top, left + side, top + side))
    return windows


def _positions(length: int, side: int) -> list[int]:
    """Starts of windows of ``side`` along ``length``: half-side steps, the last flush with the end."""
    if side >= length:
        return [0]
    steps = math.ceil((length - side) / (side / 2))
    return [round(i * (length - side) / steps) for i in range(steps + 1)]


def overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area (1: one box lies inside the other)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / smaller if smaller > 0 else 0.0


def select_groups(
    windows: Sequence[Box],
    scores: Sequence[float],
    best_items: Sequence[str | None],
    groups: int,
    *,
    min_score: float = MIN_SCORE,
    max_overlap: float = 0.3,
) -> list[int]:
    """Indices of up to ``groups`` windows holding distinct products, best score first."""
    order = sorted(range(len(windows)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for index in order:
        if len(kept) >= groups or scores[index] < min_score:
            break
        if any(overlap(windows[index], windows[other]) > max_overlap for other in kept):
            continue
        if best_items[index] is not None and any(best_items[index] == best_items[other] for other in kept):
            continue
        kept.append(index)
    return kept
