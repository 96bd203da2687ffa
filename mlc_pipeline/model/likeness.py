"""How much a pool image looks like a class, in the model's own feature space.

Mining must not turn class members that a pool query happens to return ("stuffed animal" finds
teddies) into negatives. The model's score cannot tell them from true hard negatives: both are the
images it accepts. On real photos its features tell them apart better (docs/training.md, "What
mining holds back"): a class member sits among the class's training images, a hard negative nearer
the "other" ones. The likeness of an image to class c is

    margin = mean cosine similarity to its K nearest training images of c
           - mean cosine similarity to its K nearest training "other" images

and a pool image is held for review when its margin to any class reaches that of a typical
validation image of that class (the median): images the model has never trained on, like the
pool's. The version's photos taken down since (`mlc remove`) and the copies a takedown holds are
no reference, as they are no training image any more (model/stage.without_takedowns). Any class,
not only the one it was accepted as: a balloon photo a "party" pool query found
may well be taken for a kite, and mined as a kite negative it still teaches the model to reject
balloons (audit, 2026-12-06).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlc_pipeline.dataset.takedowns import Takedowns
from mlc_pipeline.manifest import read_manifest
from mlc_pipeline.model.predict import score_and_embed

log = logging.getLogger(__name__)
K = 5                      # neighbours averaged: one look-alike training image is not enough
MAX_REFERENCE = 1000       # training images per class (and "other") embedded at most: bounded cost


@dataclass
class Likeness:
    classes: list[str]            # the columns of margins
    margins: np.ndarray           # (query images, classes): each image against every class; NaN: unread
    typical: dict[str, float]     # per class, the median margin of its validation images

    def looks_like(self, i: int) -> tuple[str | None, float]:
        """The class query image i looks like (its margin reaches the class's typical one, the
        furthest past it if several) and that margin; (None, NaN) for none."""
        over = self.margins[i] - np.array([self.typical[c] for c in self.classes])
        if np.isnan(over).all() or not (np.nan_to_num(over, nan=-np.inf) >= 0).any():
            return None, float("nan")
        j = int(np.nanargmax(over))
        return self.classes[j], float(self.margins[i, j])


def knn_similarity(queries: np.ndarray, reference: np.ndarray, k: int = K) -> np.ndarray:
    """Mean cosine similarity of each (L2-normalised) query to its k nearest reference rows."""
    sims = queries @ reference.T
    k = min(k, reference.shape[0])
    return np.sort(sims, axis=1)[:, -k:].mean(axis=1)


def reference_rows(manifest_csv: Path, classes: list[str], seed: int = 0, takedowns: Takedowns | None = None
                   ) -> tuple[dict[str, list[Path]], list[Path], list[tuple[Path, str]]]:
    """From the dataset version the model trained on: training images per class, training "other"
    images (each at most MAX_REFERENCE, a seeded sample), and the validation class images; none of
    `takedowns` (the catalog's now: a photo taken down since, or a copy a takedown holds)."""
    rows = read_manifest(manifest_csv)
    if takedowns:
        rows, gone = takedowns.left_out_of(rows)
        if gone:
            log.info("likeness: %d image(s) of %s taken down since left out of the references", len(gone),
                     Path(manifest_csv).parent.name)
    root = Path(manifest_csv).parent
    train_class: dict[str, list[Path]] = {c: [] for c in classes}
    train_other: list[Path] = []
    valid: list[tuple[Path, str]] = []
    for r in rows:
        labels = [lab for lab in r["labels"].split() if lab in train_class]
        path = root / r["path"]
        if r["split"] == "train":
            if not r["labels"].strip():
                train_other.append(path)
            for lab in labels:
                train_class[lab].append(path)
        elif r["split"] == "valid":
            valid += [(path, lab) for lab in labels]
    rng = random.Random(seed)

    def sample(paths: list[Path]) -> list[Path]:
        return paths if len(paths) <= MAX_REFERENCE else sorted(rng.sample(paths, MAX_REFERENCE))
    return {c: sample(p) for c, p in train_class.items()}, sample(train_other), valid


def pool_likeness(bundle, manifest_csv: Path, pool_paths: list[str],
                  takedowns: Takedowns | None = None) -> Likeness | None:
    """The margin of each accepted pool image against every class, and each class's typical
    margin, the version's images less `takedowns` (`reference_rows`); None (logged) when the
    dataset has no training "other" image to compare with or the manifest is gone."""
    if not Path(manifest_csv).is_file():
        log.warning("likeness hold skipped: the model's dataset manifest %s is not here", manifest_csv)
        return None
    train_class, train_other, valid = reference_rows(manifest_csv, bundle.classes, takedowns=takedowns)
    if not train_other:
        log.warning("likeness hold skipped: the model's dataset has no training 'other' image to compare with")
        return None
    order = [p for c in bundle.classes for p in train_class[c]] + train_other + [p for p, _ in valid] + list(pool_paths)
    _, feats, errors = score_and_embed(bundle, [str(p) for p in order])
    ok = ~np.isnan(feats).any(axis=1)
    at = 0
    class_ref: dict[str, np.ndarray] = {}
    for c in bundle.classes:
        n = len(train_class[c])
        class_ref[c] = feats[at:at + n][ok[at:at + n]]
        at += n
    other_ref = feats[at:at + len(train_other)][ok[at:at + len(train_other)]]
    at += len(train_other)
    valid_feats, valid_ok = feats[at:at + len(valid)], ok[at:at + len(valid)]
    at += len(valid)
    pool_feats, pool_ok = feats[at:], ok[at:]
    if not len(other_ref):
        log.warning("likeness hold skipped: no training 'other' image could be read")
        return None

    def margins(f: np.ndarray, cls: str) -> np.ndarray:
        """Margin of each row of f (read ones) against class cls; NaN without class references."""
        out = np.full(len(f), np.nan)
        if len(f) and len(class_ref[cls]):
            out[:] = knn_similarity(f, class_ref[cls]) - knn_similarity(f, other_ref)
        return out

    typical = {}
    for c in bundle.classes:
        rows = np.array([i for i, (_, lab) in enumerate(valid) if lab == c and valid_ok[i]], dtype=int)
        ms = margins(valid_feats[rows], c)
        ms = ms[~np.isnan(ms)]
        typical[c] = float(np.median(ms)) if len(ms) else float("inf")
        if not len(ms):
            log.warning("likeness hold: class %r has no readable validation image; none of its pool images is held by it", c)
    table = np.full((len(pool_paths), len(bundle.classes)), np.nan)
    for j, c in enumerate(bundle.classes):
        table[pool_ok, j] = margins(pool_feats[pool_ok], c)
    return Likeness(classes=list(bundle.classes), margins=table, typical=typical)
