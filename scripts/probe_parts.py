"""Which part of a probe flower makes a model accept it? Re-draws the offline world's flowers with parts
removed (and two flower-free look-alikes), scores them with each bundle given, prints the share accepted.

    .venv/bin/python scripts/probe_parts.py DATA/models/<round-0 bundle> DATA/models/<round-1 bundle>

An analysis behind docs/training.md ("Why the distractors changed"), not a test or a benchmark.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from mlc_pipeline.flickr_server import objects, scenes
from mlc_pipeline.flickr_server.render import render_scene
from mlc_pipeline.flickr_server.shapes import ellipse, random_color
from mlc_pipeline.model.predict import score_paths
from mlc_pipeline.model.bundle import load_bundle

draw_flower = objects.draw_flower  # ops: stem, leaf, petals..., centre


def single_colour(rng, cx, cy, size):
    ops = draw_flower(rng, cx, cy, size)
    petal = ops[2][2]
    return ops[:-1] + [(ops[-1][0], ops[-1][1], petal, None, 0)]


def circle_on_string(rng, cx, cy, size):
    colour = random_color(rng, (0.5, 1.0), (0.7, 1.0))
    return [("line", [(cx, cy), (cx, cy + 0.9 * size)], (40, 40, 40), max(2, 0.03 * size)),
            ("poly", ellipse(cx, cy, 0.3 * size, 0.3 * size), colour, None, 0)]


def two_tone_circle(rng, cx, cy, size):
    outer, inner = random_color(rng, (0.5, 1.0), (0.7, 1.0)), random_color(rng, (0.5, 1.0), (0.7, 1.0))
    r = 0.35 * size
    return [("poly", ellipse(cx, cy, r, r), outer, None, 0), ("poly", ellipse(cx, cy, 0.45 * r, 0.45 * r), inner, None, 0)]


VARIANTS = {
    "flower as drawn": draw_flower,
    "without stem and leaf": lambda *a: draw_flower(*a)[2:],
    "petals the colour of the centre": single_colour,
    "petals only, one colour, no stem": lambda *a: single_colour(*a)[2:],
    "stem and leaf only": lambda *a: draw_flower(*a)[:2],
    "a plain circle on a dark string": circle_on_string,
    "a two-tone circle": two_tone_circle,
}


def main(bundle_dirs: list[str], pictures: int = 80) -> None:
    bundles = [load_bundle(b) for b in bundle_dirs]
    out = Path(tempfile.mkdtemp(prefix="probe-parts-"))
    try:
        for v, (name, drawer) in enumerate(VARIANTS.items()):
            scenes.OBJECT_DRAWERS["flower"] = drawer  # the same backgrounds and placements as real probe flowers
            paths = [out / f"{v}-{i}.jpg" for i in range(pictures)]
            for i, path in enumerate(paths):
                render_scene("flower", 1000 + i, (4, 3), 320, 240).save(path)
            cells = []
            for bundle in bundles:
                accepted = score_paths(bundle, paths) >= np.array(bundle.thresholds)
                by_class = ", ".join(f"{c} {r:.0%}" for c, r in zip(bundle.vocab, accepted.mean(0)))
                cells.append(f"{accepted.any(1).mean():.0%} ({by_class})")
            print(f"{name:34s} " + " | ".join(cells), flush=True)
    finally:
        scenes.OBJECT_DRAWERS["flower"] = draw_flower
        for path in out.iterdir():
            path.unlink()
        out.rmdir()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
