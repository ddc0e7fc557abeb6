"""A quality-vs-latency scatter plot drawn with Pillow (no plotting library in the dependencies).

Each configuration is a numbered point pair: a filled dot for one quality figure (val) and a ring for another
(train-as-queries) at the same x; a legend on the right names the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

__all__ = ["Point", "scatter_png"]

# one colour per lever group (the study has thirteen): tab10, then black, a dark gold and a dark teal
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (0, 0, 0),
    (160, 120, 0),
    (0, 100, 100),
]


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float  # drawn as a filled dot
    y2: float | None = None  # drawn as a ring (optional)
    group: str = ""  # points of a group share a colour


_ASCII = str.maketrans({"→": "->", "α": "alpha-", "×": "x", "–": "-", "—": "-"})


def _text(value: str) -> str:
    """Pillow's built-in font has no arrows or Greek letters: spell them in ASCII."""
    return value.translate(_ASCII)


def _nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    span = max(high - low, 1e-9)
    step = 10 ** math.floor(math.log10(span / count))
    for factor in (1, 2, 2.5, 5, 10):
        if span / (step * factor) <= count:
            step *= factor
            break
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 2) if first + i * step <= high + 1e-9]


def scatter_png(
    points: Sequence[Point],
    path: Path,
    *,
    x_label: str,
    y_label: str,
    title: str,
    legend: tuple[str, str] = ("val", "train"),
    width: int = 1400,
    height: int = 760,
) -> Path:
    """Draw ``points`` and save a PNG at ``path``; returns the path."""
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=13)
    height = max(height, 70 + 28 + 20 * len(points) + 20)  # tall enough for every legend line
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 80, 70, 860, height - 70
    xs = [p.x for p in points]
    ys = [v for p in points for v in (p.y, p.y2) if v is not None]
    x_low, x_high = 0.0, max(xs) * 1.08
    y_low, y_high = math.floor(min(ys) * 20) / 20, math.ceil(max(ys) * 20) / 20

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (right - left),
            bottom - (y - y_low) / max(y_high - y_low, 1e-9) * (bottom - top),
        )

    draw.text((left, 12), _text(title), fill="black", font=font)
    for tick in _nice_ticks(x_low, x_high):
        px, _ = to_px(tick, y_low)
        draw.line((px, top, px, bottom), fill=(230, 230, 230))
        draw.text((px - 10, bottom + 8), f"{tick:g}", fill="black", font=small)
    for tick in _nice_ticks(y_low, y_high):
        _, py = to_px(x_low, tick)
        draw.line((left, py, right, py), fill=(230, 230, 230))
        draw.text((left - 50, py - 8), f"{tick:.2f}", fill="black", font=small)
    draw.rectangle((left, top, right, bottom), outline="black")
    draw.text(((left + right) // 2 - 120, bottom + 35), _text(x_label), fill="black", font=font)
    draw.text((10, top - 28), _text(y_label), fill="black", font=font)

    groups = list(dict.fromkeys(p.group for p in points))
    colour = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    for number, point in enumerate(points, start=1):
        c = colour[point.group]
        px, py = to_px(point.x, point.y)
        draw.ellipse((px - 5, py - 5, px + 5, py + 5), fill=c)
        if point.y2 is not None:
            qx, qy = to_px(point.x, point.y2)
            draw.line((px, py, qx, qy), fill=c)
            draw.ellipse((qx - 5, qy - 5, qx + 5, qy + 5), outline=c, width=2)
        draw.text((px + 7, py - 8), str(number), fill=c, font=small)

    legend_x, legend_y = right + 30, top
    draw.ellipse((legend_x, legend_y + 4, legend_x + 10, legend_y + 14), fill="black")
    draw.text((legend_x + 16, legend_y), legend[0], fill="black", font=small)
    draw.ellipse((legend_x + 90, legend_y + 4, legend_x + 100, legend_y + 14), outline="black", width=2)
    draw.text((legend_x + 106, legend_y), legend[1], fill="black", font=small)
    for number, point in enumerate(points, start=1):
        y = legend_y + 28 + (number - 1) * 20
        draw.text((legend_x, y), f"{number:>2}  {_text(point.label)}", fill=colour[point.group], font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path
