"""Backgrounds of the procedural pictures: each returns drawing operations (see scenes.py)."""

from __future__ import annotations

import math
import random

from .shapes import Color, jitter, random_color, rotate, shade

Op = tuple


def _grid(colors: list[list[Color]], resample: str) -> Op:
    h, w = len(colors), len(colors[0])
    data = bytes(channel for row in colors for color in row for channel in color)
    return ("grid", w, h, data, resample)


def _gradient(top: Color, bottom: Color, steps: int = 6) -> Op:
    rows = []
    for i in range(steps):
        t = i / (steps - 1)
        rows.append([tuple(int(a + (b - a) * t) for a, b in zip(top, bottom))])
    return _grid(rows, "bilinear")


def _sky(rng: random.Random) -> tuple[Color, Color]:
    palette = rng.choice(["blue", "blue", "dusk", "grey", "pale"])
    if palette == "blue":
        return random_color(rng, (0.5, 0.8), (0.6, 0.9), (0.55, 0.62)), random_color(rng, (0.1, 0.35), (0.85, 1.0), (0.55, 0.6))
    if palette == "dusk":
        return random_color(rng, (0.4, 0.7), (0.35, 0.6), (0.65, 0.8)), random_color(rng, (0.5, 0.8), (0.85, 1.0), (0.02, 0.12))
    if palette == "grey":
        g = rng.randint(120, 200)
        return (g - 20, g - 15, g), (g + 30, g + 30, g + 35)
    return random_color(rng, (0.05, 0.2), (0.9, 1.0)), random_color(rng, (0.05, 0.2), (0.8, 1.0))


def _hills(rng: random.Random, cw: int, ch: int, horizon: float) -> list[Op]:
    ops = []
    for layer in range(rng.randint(1, 3)):
        base = ch * (horizon + 0.08 * layer)
        amp, waves, phase = rng.uniform(0.03, 0.12) * ch, rng.uniform(0.5, 2.5), rng.uniform(0, 6.3)
        top = [(cw * i / 16, base - amp * (1 + math.sin(phase + waves * 2 * math.pi * i / 16))) for i in range(17)]
        color = random_color(rng, (0.3, 0.8), (0.25, 0.7), rng.choice([(0.2, 0.4), (0.05, 0.12), (0.25, 0.35)]))
        ops.append(("poly", top + [(cw, ch), (0, ch)], color, None, 0))
    return ops


def background_sky_hills(rng, cw, ch):
    top, bottom = _sky(rng)
    return [_gradient(top, bottom)] + _hills(rng, cw, ch, rng.uniform(0.5, 0.8))


def background_plain_sky(rng, cw, ch):
    top, bottom = _sky(rng)
    return [_gradient(top, bottom)]


def background_grass(rng, cw, ch):
    base = random_color(rng, (0.4, 0.8), (0.35, 0.75), (0.18, 0.35))
    cells = [[jitter(base, rng, 35) for _ in range(12)] for _ in range(9)]
    ops: list[Op] = [_grid(cells, "bicubic")]
    for _ in range(rng.randint(25, 60)):
        x, y = rng.uniform(0, cw), rng.uniform(0, ch)
        length = rng.uniform(0.02, 0.06) * ch
        ops.append(("line", [(x, y), (x + rng.uniform(-0.3, 0.3) * length, y - length)], shade(base, rng.uniform(0.6, 1.4)), 3))
    return ops


def background_texture(rng, cw, ch):
    n = rng.randint(5, 16)
    base = random_color(rng, (0.0, 0.7), (0.3, 0.95))
    cells = [[jitter(base, rng, rng.randint(20, 70)) for _ in range(n)] for _ in range(max(3, n * 3 // 4))]
    return [_grid(cells, "bicubic")]


def background_stripes(rng, cw, ch):
    colors = [random_color(rng, (0.2, 0.9), (0.4, 1.0)) for _ in range(rng.randint(2, 3))]
    angle, width = rng.uniform(0, 180), rng.uniform(0.04, 0.15) * max(cw, ch)
    span = 1.5 * max(cw, ch)
    ops: list[Op] = [("poly", [(0, 0), (cw, 0), (cw, ch), (0, ch)], colors[0], None, 0)]
    for i, x in enumerate(range(int(-span), int(span), max(1, int(width)))):
        band = [(cw / 2 + x, ch / 2 - span), (cw / 2 + x + width, ch / 2 - span),
                (cw / 2 + x + width, ch / 2 + span), (cw / 2 + x, ch / 2 + span)]
        ops.append(("poly", rotate(band, cw / 2, ch / 2, angle), colors[i % len(colors)], None, 0))
    return ops


def background_checker(rng, cw, ch):
    a, b = random_color(rng, (0.0, 0.8), (0.3, 1.0)), random_color(rng, (0.0, 0.8), (0.3, 1.0))
    n = rng.randint(4, 12)
    rows = max(2, round(n * ch / cw))
    cells = [[a if (x + y) % 2 == 0 else b for x in range(n)] for y in range(rows)]
    return [_grid(cells, "nearest")]


def background_blobs(rng, cw, ch):
    base = random_color(rng, (0.1, 0.6), (0.3, 0.9))
    cells = [[base] * 16 for _ in range(12)]
    for _ in range(rng.randint(4, 10)):
        color, x0, y0 = random_color(rng, (0.2, 0.9), (0.3, 1.0)), rng.randint(0, 15), rng.randint(0, 11)
        for y in range(max(0, y0 - 2), min(12, y0 + 3)):
            for x in range(max(0, x0 - 2), min(16, x0 + 3)):
                if (x - x0) ** 2 + (y - y0) ** 2 <= 5:
                    cells[y][x] = color
    return [_grid(cells, "bicubic")]


def background_water(rng, cw, ch, horizon: float | None = None):
    horizon = horizon if horizon is not None else rng.uniform(0.3, 0.55)
    top, bottom = _sky(rng)
    water_top = random_color(rng, (0.4, 0.8), (0.45, 0.8), (0.5, 0.6))
    water_bottom = shade(water_top, rng.uniform(0.5, 0.8))
    ops: list[Op] = [_gradient(top, bottom)]
    bands = 6
    for i in range(bands):  # the water gradient as a few horizontal bands: cheaper than per-pixel work
        t = i / (bands - 1)
        color = tuple(int(a + (b - a) * t) for a, b in zip(water_top, water_bottom))
        y0, y1 = ch * (horizon + (1 - horizon) * i / bands), ch * (horizon + (1 - horizon) * (i + 1) / bands)
        ops.append(("poly", [(0, y0), (cw, y0), (cw, y1), (0, y1)], color, None, 0))
    for _ in range(rng.randint(15, 40)):
        x, y = rng.uniform(0, cw), rng.uniform(horizon * ch, ch)
        length = rng.uniform(0.03, 0.1) * cw
        ops.append(("line", [(x, y), (x + length, y)], shade(water_top, rng.choice([0.7, 1.3])), 2))
    return ops


def background_street(rng, cw, ch):
    sky_top, sky_bottom = _sky(rng)
    ground = rng.uniform(0.6, 0.8) * ch
    ops: list[Op] = [_gradient(sky_top, sky_bottom)]
    x = 0.0
    while x < cw:
        width, height = rng.uniform(0.08, 0.2) * cw, rng.uniform(0.2, 0.5) * ch
        wall = random_color(rng, (0.0, 0.4), (0.35, 0.85))
        ops.append(("poly", [(x, ground - height), (x + width, ground - height), (x + width, ground), (x, ground)], wall, None, 0))
        x += width
    ops.append(("poly", [(0, ground), (cw, ground), (cw, ch), (0, ch)], (rng.randint(60, 110),) * 3, None, 0))
    for i in range(6):
        ops.append(("line", [(cw * i / 6, (ground + ch) / 2), (cw * (i + 0.5) / 6, (ground + ch) / 2)], (230, 230, 220), 6))
    return ops


def background_studio(rng, cw, ch):
    top = random_color(rng, (0.0, 0.5), (0.5, 1.0))
    return [_gradient(top, shade(top, rng.uniform(0.5, 0.9)))]


# Background name -> (drawing function, generic words a photographer would tag it with).
BACKGROUNDS = {
    "sky_hills": (background_sky_hills, ["landscape", "sky", "hills"]),
    "plain_sky": (background_plain_sky, ["sky", "clouds"]),
    "grass": (background_grass, ["grass", "garden", "field", "nature"]),
    "texture": (background_texture, ["texture", "abstract", "wall"]),
    "stripes": (background_stripes, ["pattern", "stripes", "abstract"]),
    "checker": (background_checker, ["pattern", "checkered", "tiles"]),
    "blobs": (background_blobs, ["abstract", "bokeh", "colors"]),
    "water": (background_water, ["water", "sea", "lake"]),
    "street": (background_street, ["street", "city", "urban"]),
    "studio": (background_studio, ["minimal", "studio"]),
}
