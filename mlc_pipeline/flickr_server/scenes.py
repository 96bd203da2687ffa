"""What a procedural picture shows, as a list of drawing operations in canonical pixel coordinates.

A scene is decided once from the photo's render seed (independent of the requested size), so every
size of a photo shows the same picture. Operations:
  ("grid", w, h, rgb_bytes, resample)  a tiny image stretched over the whole frame (gradients, textures)
  ("poly", points, fill, outline, width)
  ("line", points, fill, width)
  ("noise", strength_index, x_offset, y_offset)  film-grain noise added to the whole frame
"""

from __future__ import annotations

import random

from .backgrounds import BACKGROUNDS, background_water
from .objects import OBJECT_DRAWERS, Op, draw_clutter

CANONICAL_LONG_SIDE = 1000


def canonical_frame(aspect_w: int, aspect_h: int) -> tuple[int, int]:
    if aspect_w >= aspect_h:
        return CANONICAL_LONG_SIDE, round(CANONICAL_LONG_SIDE * aspect_h / aspect_w)
    return round(CANONICAL_LONG_SIDE * aspect_w / aspect_h), CANONICAL_LONG_SIDE


# ---------------------------------------------------------------- whole scenes

# Backgrounds each kind prefers (weights); sailboats are mostly on water, fish mostly under it.
_BACKGROUND_WEIGHTS = {
    "sailboat": {"water": 70, "plain_sky": 8, "sky_hills": 8, "texture": 4, "blobs": 4, "studio": 6},
    "fish": {"water": 40, "blobs": 20, "texture": 15, "studio": 25},
    "house": {"sky_hills": 35, "plain_sky": 25, "grass": 20, "street": 10, "studio": 10},
    "flower": {"grass": 40, "blobs": 20, "studio": 20, "sky_hills": 20},
}
_DEFAULT_WEIGHTS = {"sky_hills": 16, "plain_sky": 14, "grass": 12, "texture": 10, "stripes": 8, "checker": 7,
                    "blobs": 10, "water": 10, "street": 7, "studio": 6}


def choose_background(rng: random.Random, kind: str) -> str:
    weights = _BACKGROUND_WEIGHTS.get(kind, _DEFAULT_WEIGHTS)
    return rng.choices(list(weights), list(weights.values()))[0]


def _background_key(kind: str) -> str:
    return kind if "+" not in kind else "scene"


def describe_scene(kind: str, render_seed: int, cw: int, ch: int) -> list[Op]:
    """All drawing operations of a picture of `kind` (e.g. 'balloon', 'balloon+kite', 'scene')."""
    rng = random.Random(render_seed)
    background = choose_background(rng, _background_key(kind))  # must stay the first draw: see background_tags
    horizon = rng.uniform(0.3, 0.55)
    if background == "water":
        ops = background_water(rng, cw, ch, horizon)
    else:
        ops = BACKGROUNDS[background][0](rng, cw, ch)
    ops = ops + draw_clutter(rng, cw, ch)
    short = min(cw, ch)
    objects = [name for name in kind.split("+") if name in OBJECT_DRAWERS]
    first_side = rng.randint(0, 1)
    for i, name in enumerate(objects):
        # Several kinds in one frame each get their own half, so that neither hides the other.
        side = (first_side + i) % 2 if len(objects) > 1 else None
        ops += _place_objects(rng, name, cw, ch, short, background, horizon, side)
    ops.append(("noise", rng.randint(0, 2), rng.randint(0, 200), rng.randint(0, 200)))
    return ops


def _place_objects(rng, name, cw, ch, short, background, horizon, side: int | None) -> list[Op]:
    crowded = side is not None
    count = 1 if crowded else rng.choices([1, 2, 3], [70, 20, 10])[0]
    if name == "distractor":
        count = rng.choices([1, 2, 3, 4], [35, 30, 20, 15])[0]
    ops: list[Op] = []
    for _ in range(count):
        # Object size as a share of the short side; crowded frames hold smaller objects.
        low, high = (0.25, 0.6) if count == 1 else (0.22, 0.42)
        if crowded:
            low, high = 0.25, 0.45
        size = rng.uniform(low, high) * short
        cx = rng.uniform(0.15, 0.85) * cw if side is None else rng.uniform(0.15 + 0.45 * side, 0.4 + 0.45 * side) * cw
        cy = rng.uniform(0.2, 0.7) * ch
        if name == "sailboat" and background == "water":
            cy = rng.uniform(horizon + 0.05, 0.85) * ch  # hull sits on the water
        elif name == "sailboat":
            cy = rng.uniform(0.55, 0.85) * ch
        ops += OBJECT_DRAWERS[name](rng, cx, cy, size)
    return ops


def background_tags(kind: str, render_seed: int) -> list[str]:
    """Generic words for the background a picture is drawn on (scenes are tagged with them)."""
    return list(BACKGROUNDS[choose_background(random.Random(render_seed), _background_key(kind))][1])
