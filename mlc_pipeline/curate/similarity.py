"""The second signal: do two images show the same picture, once aligned?

PHash compares the 8x8 lowest DCT frequencies of a 32x32 thumbnail. On flat pictures (generated
drawings, product shots on white) unrelated images share those, so a phash match alone is only a
*candidate*. `similarity` confirms or refutes it on detail that phash throws away: the high-pass
residual (image minus its box blur) of a 48x48 greyscale thumbnail, compared by normalised
correlation. Sky gradients and plain backgrounds vanish from the residual; edges of the objects
remain, and two different drawings on the same background correlate weakly.

Crops and small rotations would misalign the residuals, so the score is the best over a few
alignments: centre crops of 0 to 10 % per side (2.5 % steps) on either image, and rotations of 0 and
+-3 degrees. Measured in docs/curation.md ("Second signal"): the 1,208 phash candidate pairs of the
default generated world (all distinct pictures) score at most 0.873; 95 % of resized, re-encoded,
5/10 %-cropped and 3-degree-rotated fixture photos score >= 0.957.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from mlc_pipeline.curate.verify import to_rgb

log = logging.getLogger(__name__)

# Centre crops (fraction cut off each side) hashed beside the full view, so a copy cropped by up to
# ~12 % per side still has a view within the phash threshold of one of the original's views.
VIEW_CROPS = (0.05, 0.10)
# One image may be cropped relative to the other by 0..10 % per side (in 2.5 % steps); a rotated copy has
# filled corners, so rotations are compared from 5 % crops upwards.
CROPS = (0.0, 0.025, 0.05, 0.075, 0.10)
ROTATIONS = (0, -3, 3)
ROTATED_FLOOR = 0.05
THUMB_SIDE = 48
CONFIRM = 0.92      # a phash candidate at or above this score is a duplicate
SURE = 0.97         # ... and at or above this, it may merge labels (beyond doubt)


def crop_view(im: Image.Image, fraction: float) -> Image.Image:
    "The centre of `im` with `fraction` of its width and height cut off each side."
    if not fraction:
        return im
    return im.crop(crop_box(*im.size, fraction))


def crop_box(width: int, height: int, fraction: float) -> tuple[int, int, int, int]:
    "(left, top, right, bottom) of `crop_view`."
    dx, dy = round(width * fraction), round(height * fraction)
    return dx, dy, width - dx, height - dy


def load_grey(path: str | os.PathLike, side: int = 128) -> Image.Image:
    "A small greyscale copy of an image file as a viewer shows it (draft decode for JPEGs)."
    with Image.open(path) as im:
        im.draft("L", (side, side))
        im = ImageOps.exif_transpose(im)
        # As hashing converts: 16-bit keeps its top 8 bits (a plain convert("L") clips it to white),
        # transparency goes on white.
        grey = im if im.mode == "L" else to_rgb(im).convert("L")
    if min(grey.size) > 2 * side:
        grey.thumbnail((2 * side, 2 * side), Image.Resampling.BOX)
    return grey


def _residual(im: Image.Image) -> np.ndarray:
    "Unit-norm high-pass residual of a THUMB_SIDE x THUMB_SIDE thumbnail."
    thumb = im.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    blurred = thumb.filter(ImageFilter.BoxBlur(THUMB_SIDE // 8))
    r = np.asarray(thumb, np.float32).ravel() - np.asarray(blurred, np.float32).ravel()
    r -= r.mean()
    norm = float(np.linalg.norm(r))
    return r / norm if norm > 1e-6 else r


def _alignments() -> tuple[list[tuple[int, float]], list[tuple[int, int]]]:
    "The (rotation, crop) views of an image, and the (view of a, view of b) pairs that are compared."
    views = [(0, c) for c in CROPS] + [(r, c) for r in ROTATIONS if r for c in CROPS if c >= ROTATED_FLOOR]
    pairs = []
    for ia, (ra, ca) in enumerate(views):
        for ib, (rb, cb) in enumerate(views):
            if ra == 0 and rb == 0 and min(ca, cb) == 0:                       # one side cropped
                pairs.append((ia, ib))
            elif ra == 0 and rb != 0 and min(ca, cb) == ROTATED_FLOOR:           # b rotated
                pairs.append((ia, ib))
    return views, pairs


VIEWS, VIEW_PAIRS = _alignments()
_PA, _PB = (np.array(x) for x in zip(*VIEW_PAIRS))


def residuals(im: Image.Image) -> np.ndarray:
    "The residual of every view in VIEWS, one row each (what `similarity` compares)."
    if max(im.size) > 3 * THUMB_SIDE:   # enough for the views of 10 % crops; rotating is cheaper
        im = im.resize(_fit(im.size, 3 * THUMB_SIDE), Image.Resampling.BOX)
    rotated = {r: im.rotate(r, resample=Image.Resampling.BILINEAR) if r else im for r in ROTATIONS}
    return np.stack([_residual(crop_view(rotated[r], c)) for r, c in VIEWS])


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def similarity(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """Best normalised correlation of the residuals over the alignments; 1.0 = identical detail.
    Takes images, or their `residuals` (cheaper when one image is compared many times)."""
    ra = a if isinstance(a, np.ndarray) else residuals(a)
    rb = b if isinstance(b, np.ndarray) else residuals(b)
    # Both directions: either image may be the cropped or the rotated one.
    return float(max((ra[_PA] * rb[_PB]).sum(axis=1).max(), (rb[_PA] * ra[_PB]).sum(axis=1).max()))


class FileSimilarity:
    """`similarity` of files, decoded once each and cached; `None` when a file cannot be read.

    Used as the `confirm` callback of `dedup.resolve_duplicates`: keys are item ids.
    """

    def __init__(self, paths: dict[Hashable, str | os.PathLike]):
        self.paths = paths
        self._residuals: dict[Hashable, np.ndarray | None] = {}

    def residuals(self, key: Hashable) -> np.ndarray | None:
        if key not in self._residuals:
            path = self.paths.get(key)
            try:
                self._residuals[key] = residuals(load_grey(path)) if path else None
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                log.warning("cannot re-read %s to confirm a near-duplicate: %s", path, exc)
                self._residuals[key] = None
        return self._residuals[key]

    def __call__(self, a: Hashable, b: Hashable) -> float | None:
        ra, rb = self.residuals(a), self.residuals(b)
        if ra is None or rb is None:
            return None
        return similarity(ra, rb)


Confirm = Callable[[Hashable, Hashable], "float | None"]
