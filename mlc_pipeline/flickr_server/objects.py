"""Objects of the procedural pictures: each drawer takes a centre and a size and returns drawing operations."""

from __future__ import annotations

import math
import random

from .shapes import ellipse, egg, random_color, rotate, shade, star, wavy_line

Op = tuple


def draw_balloon(rng: random.Random, cx: float, cy: float, size: float) -> list[Op]:
    color = random_color(rng, (0.55, 1.0), (0.6, 1.0))
    rx, ry = 0.36 * size, 0.46 * size
    body = egg(cx, cy, rx, ry)
    knot_y = cy + ry
    knot = [(cx, knot_y - 0.02 * size), (cx - 0.06 * size, knot_y + 0.07 * size), (cx + 0.06 * size, knot_y + 0.07 * size)]
    highlight = rotate(ellipse(cx - 0.14 * size, cy - 0.2 * size, 0.07 * size, 0.12 * size, 12), cx - 0.14 * size, cy - 0.2 * size, 30)
    string_color = rng.choice([(40, 40, 40), (90, 90, 90), (235, 235, 235)])
    string = wavy_line(cx, knot_y + 0.07 * size, rng.uniform(-25, 25), rng.uniform(0.7, 1.1) * size,
                       0.05 * size, rng.uniform(1, 2.5), rng.uniform(0, 6.3))
    angle = rng.uniform(-20, 20)
    parts = [
        ("line", string, string_color, max(2, 0.035 * size)),
        ("poly", knot, shade(color, 0.7), None, 0),
        ("poly", body, color, shade(color, 0.6), max(1, 0.015 * size)),
        ("poly", highlight, shade(color, 1.55), None, 0),
    ]
    return _rotate_ops(parts, cx, cy, angle)


def draw_kite(rng: random.Random, cx: float, cy: float, size: float) -> list[Op]:
    a = random_color(rng, (0.6, 1.0), (0.6, 1.0))
    b = random_color(rng, (0.6, 1.0), (0.6, 1.0), (0.0, 1.0))
    top, bottom = (cx, cy - 0.5 * size), (cx, cy + 0.5 * size)
    cross_y = cy - 0.18 * size
    left, right, cross = (cx - 0.33 * size, cross_y), (cx + 0.33 * size, cross_y), (cx, cross_y)
    spar = (40, 30, 20)
    parts: list[Op] = [
        ("poly", [top, right, cross], a, None, 0),
        ("poly", [right, bottom, cross], b, None, 0),
        ("poly", [bottom, left, cross], a, None, 0),
        ("poly", [left, top, cross], b, None, 0),
        ("line", [top, bottom], spar, max(1, 0.02 * size)),
        ("line", [left, right], spar, max(1, 0.02 * size)),
    ]
    tail = wavy_line(bottom[0], bottom[1], rng.uniform(-30, 30), rng.uniform(0.8, 1.2) * size,
                     0.08 * size, rng.uniform(1.0, 2.0), rng.uniform(0, 6.3))
    parts.insert(0, ("line", tail, (50, 50, 50), max(2, 0.02 * size)))
    bow_color = random_color(rng, (0.7, 1.0), (0.7, 1.0))
    for i in range(rng.randint(3, 5)):
        bx, by = tail[min(len(tail) - 1, 3 + i * 3)]
        w = 0.07 * size
        parts.append(("poly", [(bx, by), (bx - w, by - 0.6 * w), (bx - w, by + 0.6 * w)], bow_color, None, 0))
        parts.append(("poly", [(bx, by), (bx + w, by - 0.6 * w), (bx + w, by + 0.6 * w)], bow_color, None, 0))
    return _rotate_ops(parts, cx, cy, rng.uniform(-35, 35))


def draw_sailboat(rng: random.Random, cx: float, cy: float, size: float) -> list[Op]:
    # (cx, cy) is the middle of the deck line; the boat rises above it.
    hull_color = rng.choice([random_color(rng, (0.3, 0.9), (0.2, 0.6)), (245, 245, 240), (60, 40, 30)])
    sail_color = rng.choice([(250, 250, 245), (240, 235, 220), random_color(rng, (0.5, 1.0), (0.7, 1.0))])
    mast_x = cx - 0.05 * size
    parts: list[Op] = [
        ("poly", [(cx - 0.42 * size, cy), (cx + 0.42 * size, cy), (cx + 0.3 * size, cy + 0.14 * size), (cx - 0.3 * size, cy + 0.14 * size)],
         hull_color, shade(hull_color, 0.6), max(1, 0.01 * size)),
        ("line", [(mast_x, cy), (mast_x, cy - 0.85 * size)], (70, 55, 40), max(2, 0.02 * size)),
        ("poly", [(mast_x + 0.02 * size, cy - 0.82 * size), (mast_x + 0.02 * size, cy - 0.05 * size), (cx + 0.36 * size, cy - 0.05 * size)],
         sail_color, shade(sail_color, 0.7), max(1, 0.008 * size)),
    ]
    if rng.random() < 0.6:
        parts.append(("poly", [(mast_x - 0.02 * size, cy - 0.72 * size), (mast_x - 0.02 * size, cy - 0.05 * size), (cx - 0.34 * size, cy - 0.05 * size)],
                      shade(sail_color, 0.92), shade(sail_color, 0.7), max(1, 0.008 * size)))
    if rng.random() < 0.5:  # mirror: sails on the other side
        parts = [(op[0], [(2 * cx - x, y) for x, y in op[1]], *op[2:]) for op in parts]
    return _rotate_ops(parts, cx, cy - 0.4 * size, rng.uniform(-8, 8))


def draw_house(rng, cx, cy, size):
    wall = random_color(rng, (0.1, 0.6), (0.5, 1.0))
    roof = random_color(rng, (0.4, 0.9), (0.3, 0.7), (0.0, 0.1))
    w, h = 0.7 * size, 0.45 * size
    x0, y0 = cx - w / 2, cy - h / 3
    parts: list[Op] = [
        ("poly", [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)], wall, shade(wall, 0.6), max(1, 0.01 * size)),
        ("poly", [(x0 - 0.08 * size, y0), (x0 + w + 0.08 * size, y0), (cx, y0 - 0.35 * size)], roof, None, 0),
        ("poly", [(cx - 0.06 * size, y0 + h), (cx + 0.06 * size, y0 + h), (cx + 0.06 * size, y0 + 0.45 * h), (cx - 0.06 * size, y0 + 0.45 * h)],
         shade(wall, 0.45), None, 0),
    ]
    for wx in (x0 + 0.12 * w, x0 + 0.7 * w):
        parts.append(("poly", [(wx, y0 + 0.2 * h), (wx + 0.16 * w, y0 + 0.2 * h), (wx + 0.16 * w, y0 + 0.5 * h), (wx, y0 + 0.5 * h)],
                      (170, 210, 240), (60, 60, 60), 2))
    return parts


def draw_flower(rng, cx, cy, size):
    petal = random_color(rng, (0.5, 1.0), (0.7, 1.0))
    parts: list[Op] = [("line", [(cx, cy), (cx + rng.uniform(-0.1, 0.1) * size, cy + 0.9 * size)], (40, 120, 40), max(2, 0.03 * size))]
    parts.append(("poly", rotate(ellipse(cx + 0.12 * size, cy + 0.55 * size, 0.12 * size, 0.05 * size, 12), cx + 0.12 * size, cy + 0.55 * size, -30),
                  (50, 140, 50), None, 0))
    n = rng.randint(5, 8)
    for i in range(n):
        angle = 360 * i / n
        p = ellipse(cx, cy - 0.2 * size, 0.08 * size, 0.2 * size, 14)
        parts.append(("poly", rotate(p, cx, cy, angle), petal, shade(petal, 0.7), 1))
    parts.append(("poly", ellipse(cx, cy, 0.09 * size, 0.09 * size, 14), random_color(rng, (0.7, 1.0), (0.5, 0.9), (0.08, 0.15)), None, 0))
    return parts


def draw_fish(rng, cx, cy, size):
    body = random_color(rng, (0.6, 1.0), (0.6, 1.0))
    direction = rng.choice([-1, 1])
    parts: list[Op] = [
        ("poly", [(cx - direction * 0.38 * size, cy), (cx - direction * 0.62 * size, cy - 0.2 * size), (cx - direction * 0.62 * size, cy + 0.2 * size)],
         shade(body, 0.8), None, 0),
        ("poly", ellipse(cx, cy, 0.42 * size, 0.2 * size), body, shade(body, 0.6), max(1, 0.01 * size)),
        ("poly", [(cx - 0.1 * size, cy - 0.15 * size), (cx + 0.1 * size, cy - 0.17 * size), (cx - direction * 0.05 * size, cy - 0.3 * size)],
         shade(body, 0.7), None, 0),
        ("poly", ellipse(cx + direction * 0.25 * size, cy - 0.04 * size, 0.035 * size, 0.035 * size, 10), (15, 15, 15), None, 0),
    ]
    return _rotate_ops(parts, cx, cy, rng.uniform(-20, 20))


def draw_distractor(rng: random.Random, cx: float, cy: float, size: float) -> list[Op]:
    """Object-like shapes that are none of the classes: the hard negatives. Most are one-colour
    primitives; about a third are toys made of several coloured parts, because a "colorful toys"
    search returns those too, and without them no negative has inner edges or several colours."""
    if rng.random() < 0.35:
        return _draw_toy(rng, cx, cy, size)
    color = random_color(rng, (0.4, 1.0), (0.5, 1.0))
    outline = shade(color, 0.6) if rng.random() < 0.5 else None
    shape = rng.choices(["circle", "triangle", "square", "star", "rhombus", "line", "ring"], [25, 22, 20, 10, 8, 8, 7])[0]
    r = size / 2
    if shape == "circle":
        stretch = rng.uniform(0.92, 1.08)  # rounder than a balloon's egg (height/width 1.28)
        return [("poly", ellipse(cx, cy, r * stretch, r / stretch), color, outline, 2)]
    if shape == "ring":
        return [("poly", ellipse(cx, cy, r, r), color, None, 0), ("poly", ellipse(cx, cy, 0.6 * r, 0.6 * r), shade(color, 1.6), None, 0)]
    if shape == "triangle":
        points = [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in (rng.uniform(0, 2), rng.uniform(2, 4), rng.uniform(4, 6.2))]
        return [("poly", points, color, outline, 2)]
    if shape == "square":
        w, h = r, r * rng.uniform(0.6, 1.0)
        return [("poly", rotate([(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy + h), (cx - w, cy + h)], cx, cy, rng.uniform(0, 90)), color, outline, 2)]
    if shape == "star":
        return [("poly", rotate(star(cx, cy, r, r * 0.45), cx, cy, rng.uniform(0, 72)), color, outline, 2)]
    if shape == "rhombus":  # a kite-like diamond, but one colour, no spars and no tail
        return [("poly", rotate([(cx, cy - r), (cx + 0.6 * r, cy), (cx, cy + r), (cx - 0.6 * r, cy)], cx, cy, rng.uniform(-40, 40)), color, outline, 2)]
    line = wavy_line(cx, cy - r, rng.uniform(-60, 60), 2 * r, 0.1 * r, rng.uniform(0.5, 2), rng.uniform(0, 6.3))
    return [("line", line, rng.choice([(40, 40, 40), (235, 235, 235), color]), max(2, 0.04 * size))]


def _draw_toy(rng: random.Random, cx: float, cy: float, size: float) -> list[Op]:
    """A toy of several coloured parts: beach ball, striped block, chequered cube face or target."""
    colors = [random_color(rng, (0.5, 1.0), (0.6, 1.0)) for _ in range(3)]
    seam = rng.choice([(30, 30, 30), (245, 245, 245), None])
    r = size / 2
    toy = rng.choice(["beachball", "stripes", "chequer", "target"])
    ops: list[Op] = []
    if toy == "beachball":  # wedges of alternating colours meeting in the middle
        n = rng.choice([4, 6, 8])
        start = rng.uniform(0, 360)
        for i in range(n):
            arc = [(cx + r * math.cos(math.radians(start + (i + t / 6) * 360 / n)),
                    cy + r * math.sin(math.radians(start + (i + t / 6) * 360 / n))) for t in range(7)]
            ops.append(("poly", [(cx, cy)] + arc, colors[i % (2 if n == 4 else 3)], seam, 1))
        ops.append(("poly", ellipse(cx, cy, 0.12 * r, 0.12 * r, 12), (245, 245, 245), None, 0))
        return ops
    if toy == "stripes":  # a block of 2-4 coloured bands
        w, h = r, r * rng.uniform(0.5, 1.0)
        n = rng.randint(2, 4)
        for i in range(n):
            x0, x1 = cx - w + 2 * w * i / n, cx - w + 2 * w * (i + 1) / n
            ops.append(("poly", [(x0, cy - h), (x1, cy - h), (x1, cy + h), (x0, cy + h)], colors[i % 3], seam, 1))
    elif toy == "chequer":  # a 2x2 or 3x3 face of coloured squares
        n = rng.choice([2, 3])
        cell = 2 * r / n
        for i in range(n):
            for j in range(n):
                x0, y0 = cx - r + i * cell, cy - r + j * cell
                ops.append(("poly", [(x0, y0), (x0 + cell, y0), (x0 + cell, y0 + cell), (x0, y0 + cell)],
                            colors[(i + j) % 2 if n == 2 else (i + 2 * j) % 3], seam or (30, 30, 30), 1))
    else:  # target: concentric rings
        for i, k in enumerate((1.0, 0.7, 0.4)):
            ops.append(("poly", ellipse(cx, cy, k * r, k * r), colors[i], seam, 1))
        return ops
    return _rotate_ops(ops, cx, cy, rng.uniform(0, 90))


def draw_clutter(rng: random.Random, cw: int, ch: int) -> list[Op]:
    """Small incidental things (at most ~6 % of the frame) so that no picture is perfectly clean."""
    ops: list[Op] = []
    short = min(cw, ch)
    for _ in range(rng.randint(0, 6)):
        x, y, s = rng.uniform(0, cw), rng.uniform(0, ch), rng.uniform(0.01, 0.06) * short
        color = random_color(rng, (0.0, 1.0), (0.2, 1.0))
        kind = rng.choice(["rect", "dot", "line", "tri"])
        if kind == "rect":
            ops.append(("poly", rotate([(x, y), (x + s, y), (x + s, y + 0.6 * s), (x, y + 0.6 * s)], x, y, rng.uniform(0, 90)), color, None, 0))
        elif kind == "dot":
            ops.append(("poly", ellipse(x, y, s / 2, s / 2, 10), color, None, 0))
        elif kind == "line":
            ops.append(("line", [(x, y), (x + rng.uniform(-3, 3) * s, y + rng.uniform(-3, 3) * s)], color, 2))
        else:
            ops.append(("poly", [(x, y), (x + s, y), (x + s / 2, y - s)], color, None, 0))
    return ops


OBJECT_DRAWERS = {
    "balloon": draw_balloon,
    "kite": draw_kite,
    "sailboat": draw_sailboat,
    "house": draw_house,
    "flower": draw_flower,
    "fish": draw_fish,
    "distractor": draw_distractor,
}


def _rotate_ops(ops: list[Op], cx: float, cy: float, angle: float) -> list[Op]:
    return [(op[0], rotate(op[1], cx, cy, angle), *op[2:]) for op in ops]
