"""A tiny synthetic shapes world for model tests (seconds on 2 CPU cores).

"red" = red discs, "blue" = blue squares, some images hold both, "other" = noise, stripes or
yellow/grey/brown shapes (no label), probe = green triangles (a kind no query asked for: evaluation only).
"""

from __future__ import annotations

import atexit
import csv
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 40
SPLIT_CYCLE = ["train"] * 6 + ["valid"] * 2 + ["test"] * 2  # 60/20/20


def background(rng: np.random.Generator) -> Image.Image:
    base = rng.integers(150, 256, size=3)
    noise = rng.integers(-25, 26, size=(SIZE, SIZE, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def disc(draw, rng, color=(220, 20, 20)):
    r = int(rng.integers(6, 10)); x, y = rng.integers(r, SIZE - r, size=2)
    draw.ellipse([x - r, y - r, x + r, y + r], fill=color)


def _square(draw, rng, color=(20, 20, 220)):
    s = int(rng.integers(10, 16)); x, y = rng.integers(0, SIZE - s, size=2)
    draw.rectangle([x, y, x + s, y + s], fill=color)


def _triangle(draw, rng, color=(20, 170, 20)):
    x, y = rng.integers(2, SIZE - 18, size=2)
    draw.polygon([(x, y + 16), (x + 16, y + 16), (x + 8, y)], fill=color)


NEUTRAL_COLORS = [(230, 200, 30), (90, 90, 90), (140, 90, 40)]  # yellow, grey, brown: no class colour


def draw(kind: str, rng: np.random.Generator) -> Image.Image:
    if kind == "other":  # noise, stripes, or shapes in colours no class uses
        style = rng.integers(3)
        if style == 0:
            return Image.fromarray(rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8))
        im = background(rng); d = ImageDraw.Draw(im)
        if style == 1:
            for x in range(0, SIZE, int(rng.integers(4, 9))):
                d.line([x, 0, x, SIZE], fill=tuple(int(v) for v in rng.integers(0, 120, size=3)), width=2)
        else:
            for _ in range(2):
                color = NEUTRAL_COLORS[int(rng.integers(len(NEUTRAL_COLORS)))]
                [disc, _square, _triangle][int(rng.integers(3))](d, rng, color)
        return im
    im = background(rng); d = ImageDraw.Draw(im)
    if kind == "probe":
        _triangle(d, rng)
    if "red" in kind:
        disc(d, rng)
    if "blue" in kind:
        _square(d, rng)
    return im


def make_shapes_dataset(root: Path, n_per_kind: int = 48, seed: int = 0) -> Path:
    """Write images + manifest.csv under `root`; return the manifest path."""
    rng = np.random.default_rng(seed)
    kinds = {"red": "red", "blue": "blue", "red+blue": "blue red", "other": "", "probe": ""}
    rows = []
    for kind, labels in kinds.items():
        n = n_per_kind // 2 if kind == "red+blue" else n_per_kind
        for i in range(n):
            rel = f"images/{kind}_{i:03d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            draw(kind, rng).save(root / rel, quality=90)
            split = "probe" if kind == "probe" else SPLIT_CYCLE[i % len(SPLIT_CYCLE)]
            rows.append({"path": rel, "labels": labels, "split": split, "source": "synthetic",
                         "photo_id": f"{kind}{i}"})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def record_curation(folder: Path, min_side: int = 16) -> None:
    """The curate settings beside the manifest, as a build records them in dataset.json (`mlc predict`
    refuses what they would: the drawn shapes are 40 px, under curation's default 64 px side)."""
    (folder / "dataset.json").write_text(json.dumps({"params": {"curate": {"min_side": min_side, "max_aspect": 4.0}}}))


# One thread: the same numbers on any machine (results depend on the thread count), and a 32 px
# model gains little from a second thread, while a busy machine makes two threads crawl.
# squish: these drawn shapes sit anywhere, up to the border; a random crop would cut them out.
FAST = dict(image_size=32, epochs=8, batch_size=16, seed=0, lr=3e-3, threads=1, crop="squish", mixup=0.0)


@functools.lru_cache(maxsize=None)
def trained_bundle(head: str = "sigmoid", other_mode: str = "negative") -> tuple[Path, Path]:
    """(manifest, bundle_dir), trained once per test session and shared by every test that needs a model."""
    root = Path(tempfile.mkdtemp(prefix="mlc-train-test-"))
    atexit.register(shutil.rmtree, root)
    manifest = make_shapes_dataset(root / "dataset")
    record_curation(manifest.parent)
    from mlc_pipeline.model.train import TrainConfig, train_model   # torch/fastai only when a model is wanted

    cfg = TrainConfig(head=head, other_mode=other_mode, **FAST)
    train_model(manifest, root / "bundle", cfg, dataset_version="test-v1")
    return manifest, root / "bundle"


