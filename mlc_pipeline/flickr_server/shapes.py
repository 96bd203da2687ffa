"""Geometry and colour helpers for the procedural pictures (all coordinates in canonical pixels)."""

from __future__ import annotations

import colorsys
import math
import random

Point = tuple[float, float]
Color = tuple[int, int, int]


def rotate(points: list[Point], cx: float, cy: float, degrees: float) -> list[Point]:
    """Rotate points around (cx, cy)."""
    a = math.radians(degrees)
    cos_a, sin_a = math.cos(a), math.sin(a)
    return [(cx + (x - cx) * cos_a - (y - cy) * sin_a, cy + (x - cx) * sin_a + (y - cy) * cos_a) for x, y in points]


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> list[Point]:
    """An ellipse as a polygon, so it can be rotated like every other shape."""
    return [(cx + rx * math.cos(2 * math.pi * i / n), cy + ry * math.sin(2 * math.pi * i / n)) for i in range(n)]


def egg(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> list[Point]:
    """A balloon body: an ellipse whose lower half narrows."""
    points = []
    for i in range(n):
        t = 2 * math.pi * i / n
        y = math.sin(t)
        narrowing = 1.0 - 0.18 * max(0.0, y)
        points.append((cx + rx * math.cos(t) * narrowing, cy + ry * y))
    return points


def wavy_line(x0: float, y0: float, angle_deg: float, length: float, amplitude: float,
              waves: float, phase: float, n: int = 14) -> list[Point]:
    """A wavy polyline starting at (x0, y0) heading along angle_deg (0 = straight down)."""
    a = math.radians(angle_deg)
    dx, dy = math.sin(a), math.cos(a)  # direction
    px, py = dy, -dx  # perpendicular
    points = []
    for i in range(n + 1):
        t = i / n
        offset = amplitude * math.sin(phase + 2 * math.pi * waves * t) * min(1.0, 4 * t)
        points.append((x0 + dx * length * t + px * offset, y0 + dy * length * t + py * offset))
    return points


def star(cx: float, cy: float, r_outer: float, r_inner: float, tips: int = 5) -> list[Point]:
    points = []
    for i in range(2 * tips):
        r = r_outer if i % 2 == 0 else r_inner
        t = math.pi * i / tips - math.pi / 2
        points.append((cx + r * math.cos(t), cy + r * math.sin(t)))
    return points


def random_color(rng: random.Random, saturation: tuple[float, float] = (0.5, 1.0),
                 value: tuple[float, float] = (0.55, 1.0), hue: tuple[float, float] = (0.0, 1.0)) -> Color:
    h = rng.uniform(*hue) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(*saturation), rng.uniform(*value))
    return int(r * 255), int(g * 255), int(b * 255)


def shade(color: Color, factor: float) -> Color:
    """Darker (factor < 1) or lighter toward white (factor > 1)."""
    if factor <= 1.0:
        return tuple(int(c * factor) for c in color)  # type: ignore[return-value]
    t = min(1.0, factor - 1.0)
    return tuple(int(c + (255 - c) * t) for c in color)  # type: ignore[return-value]


def jitter(color: Color, rng: random.Random, amount: int = 25) -> Color:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in color)  # type: ignore[return-value]
