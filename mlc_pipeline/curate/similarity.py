"""The second signal: do two images show the same picture, once aligned?

PHash compares the 8x8 lowest DCT frequencies of a 32x32 thumbnail. On flat pictures (generated
drawings, product shots on white) unrelated images share those, so a phash match alone is only a
*candidate*. `similarity` confirms or refutes it on detail that phash throws away: the high-pass
residual (image minus its box blur) of a 48x48 greyscale thumbnail, compared by normalised
correlation. Sky gradients and plain backgrounds vanish from the residual; edges of the objects
remain, and two different drawings on the same background correlate weakly.

Crops and small rotations would misalign the residuals, so the score is the best over a few
alignments: centre crops of 0 to 20 % per side (2.5 % steps) on either image, and rotations of 0 and
+-3 degrees (with crops of 5 to 10 %). A pair those leave under CONFIRM is searched once more for a
crop at a corner or along one side (`anchored_search`). Measured in docs/curation.md ("Second signal"): the 1,230 phash
candidate pairs of the default generated world (all distinct pictures) score at most 0.873; 95 % of
resized, re-encoded, 5/10 %-cropped and 3-degree-rotated fixture photos score >= 0.957.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from scipy.ndimage import uniform_filter

from mlc_pipeline.images import to_rgb

log = logging.getLogger(__name__)

# Centre crops (fraction cut off each side) hashed beside the full view, so a copy cropped by up to
# ~12 % per side still has a view within the phash threshold of one of the original's views.
VIEW_CROPS = (0.05, 0.10)
# One image may be cropped relative to the other by 0..20 % per side (in 2.5 % steps; 0..10 % until
# 2026-12-07); a rotated copy has filled corners, so rotations are compared with 5-10 % crops.
CROPS = (0.0, 0.025, 0.05, 0.075, 0.10, 0.125, 0.15, 0.175, 0.20)
ROTATIONS = (0, -3, 3)
ROTATED_FLOOR, ROTATED_CEILING = 0.05, 0.10
ROTATED_CROPS = tuple(c for c in CROPS if ROTATED_FLOOR <= c <= ROTATED_CEILING)
THUMB_SIDE = 48
BLUR = THUMB_SIDE // 8     # the box blur's radius: the residual is the thumbnail minus its blur
GREY_SIDE = 128     # decoded at least this size (`load_grey`) ...
SEARCH_SIDE = 3 * THUMB_SIDE     # ... and shrunk to at most this long side (`_shrunk`)
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


def load_grey(path: str | os.PathLike | io.BytesIO, side: int = GREY_SIDE) -> Image.Image:
    "A small greyscale copy of an image file (or its bytes) as a viewer shows it (draft decode for JPEGs)."
    with Image.open(path) as im:
        im.draft("L", (side, side))
        im = ImageOps.exif_transpose(im)
        # As hashing converts: 16-bit keeps its top 8 bits (a plain convert("L") clips it to white),
        # transparency goes on white.
        grey = im if im.mode == "L" else to_rgb(im).convert("L")
    if min(grey.size) > 2 * side:
        grey.thumbnail((2 * side, 2 * side), Image.Resampling.BOX)
    return grey


def _residual(im: Image.Image, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    "Unit-norm high-pass residual of a THUMB_SIDE x THUMB_SIDE thumbnail (of `box`, if given)."
    thumb = im.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX, box=box)
    blurred = thumb.filter(ImageFilter.BoxBlur(BLUR))
    r = np.asarray(thumb, np.float32).ravel() - np.asarray(blurred, np.float32).ravel()
    r -= r.mean()
    norm = float(np.linalg.norm(r))
    return r / norm if norm > 1e-6 else r


def _alignments() -> tuple[list[tuple[int, float]], list[tuple[int, int]]]:
    "The (rotation, crop) views of an image, and the (view of a, view of b) pairs that are compared."
    views = [(0, c) for c in CROPS] + [(r, c) for r in ROTATIONS if r for c in ROTATED_CROPS]
    pairs = []
    for ia, (ra, ca) in enumerate(views):
        for ib, (rb, cb) in enumerate(views):
            if ra == 0 and rb == 0 and min(ca, cb) == 0:                       # one side cropped
                pairs.append((ia, ib))
            elif ra == 0 and rb != 0 and min(ca, cb) == ROTATED_FLOOR and ca in ROTATED_CROPS:   # b rotated
                pairs.append((ia, ib))
    return views, pairs


VIEWS, VIEW_PAIRS = _alignments()
_PA, _PB = (np.array(x) for x in zip(*VIEW_PAIRS))
# The views without rotation come first in VIEWS; the alignments between them are compared first.
N_PLAIN = sum(1 for r, _ in VIEWS if r == 0)
_PLAIN = (_PA < N_PLAIN) & (_PB < N_PLAIN)
_PLAIN_A, _PLAIN_B = _PA[_PLAIN], _PB[_PLAIN]
_B_CROPPED = _PLAIN_A > 0       # a's centre against b's whole (and the whole pictures: PLAIN_B is 0 then)


def residuals(im: Image.Image) -> np.ndarray:
    "The residual of every view in VIEWS, one row each (what `similarity` compares)."
    im = _shrunk(im)
    return np.concatenate([plain_residuals(im), rotated_residuals(im)])


def plain_residuals(im: Image.Image) -> np.ndarray:
    "The rows of `residuals` for the views without rotation (the first N_PLAIN of VIEWS)."
    return np.stack([_residual(crop_view(im, c)) for r, c in VIEWS if r == 0])


def rotated_residuals(im: Image.Image) -> np.ndarray:
    "The other rows of `residuals`: the rotated views (rotating is most of their cost)."
    rotated = {r: im.rotate(r, resample=Image.Resampling.BILINEAR) for r in ROTATIONS if r}
    return np.stack([_residual(crop_view(rotated[r], c)) for r, c in VIEWS if r != 0])


def _shrunk(im: Image.Image) -> Image.Image:
    "At most SEARCH_SIDE on the long side: enough for the views of 20 % crops; rotating is cheaper."
    return im.resize(_fit(im.size, SEARCH_SIDE), Image.Resampling.BOX) if max(im.size) > SEARCH_SIDE else im


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


class Signature:
    """What `similarity` compares of one image: the residuals of its fixed views (computed when first
    asked for: most true copies are settled by the full view alone), and the image itself."""

    def __init__(self, im: Image.Image):
        self.image = _shrunk(im)     # greyscale, long side <= SEARCH_SIDE: where a crop is searched
        self._full: np.ndarray | None = None
        self._plain: np.ndarray | None = None
        self._residuals: np.ndarray | None = None

    @property
    def full(self) -> np.ndarray:
        "The residual of the whole picture (VIEWS[0]), the first row of `residuals`."
        if self._full is None:
            self._full = self.plain[0] if self._plain is not None else _residual(self.image)
        return self._full

    @property
    def plain(self) -> np.ndarray:
        "The first N_PLAIN rows of `residuals`: the views without rotation."
        if self._plain is None:
            self._plain = plain_residuals(self.image)
        return self._plain

    @property
    def residuals(self) -> np.ndarray:
        "One row per VIEWS entry."
        if self._residuals is None:
            self._residuals = np.concatenate([self.plain, rotated_residuals(self.image)])
        return self._residuals


def signature(im: Image.Image) -> Signature:
    "The `Signature` of a greyscale image (`load_grey`)."
    return Signature(im)


def similarity(a: Image.Image | Signature, b: Image.Image | Signature) -> float:
    """Best normalised correlation of the residuals over the alignments; 1.0 = identical detail.
    Takes images, or their `signature`s (cheaper when one image is compared many times)."""
    sa = a if isinstance(a, Signature) else signature(a)
    sb = b if isinstance(b, Signature) else signature(b)
    # The whole pictures first: a resized or re-encoded copy is beyond doubt there, and the other
    # alignments (a third of a curate's time on thumbnails) could only confirm it again.
    whole = float(sa.full @ sb.full)
    if whole >= SURE:
        return whole
    # Then the crops without rotation (a centred crop is beyond doubt there), and only then the
    # rotations: each step is only taken for a pair the previous ones leave short of SURE, so a
    # score is below SURE exactly when it was before, and equal to it.
    plain = (sa.plain[_PLAIN_A] * sb.plain[_PLAIN_B]).sum(axis=1)     # either image may be the cropped one
    if plain.max() >= SURE:
        return float(plain.max())
    ra, rb = sa.residuals, sb.residuals      # both directions: either image may be the rotated one
    fixed = float(max((ra[_PA] * rb[_PB]).sum(axis=1).max(), (rb[_PA] * ra[_PB]).sum(axis=1).max()))
    if fixed >= CONFIRM:
        return fixed
    # Not a centred crop: look for either image in a corner of the other (only for pairs still in
    # doubt), first in the direction the centred crops leaned to; a window beyond doubt ends it.
    b_in_a = plain[_B_CROPPED].max() >= plain[~_B_CROPPED].max()
    first, second = ((sa.image, sb), (sb.image, sa)) if b_in_a else ((sb.image, sa), (sa.image, sb))
    best = max(fixed, anchored_search(*first))
    return best if best >= SURE else max(best, anchored_search(*second))


class FileSimilarity:
    """`similarity` of files, decoded once each and cached; `None` when a file cannot be read.

    Used as the `confirm` callback of `dedup.resolve_duplicates`: keys are item ids. A pair's score is
    also kept for the process (`PAIR_SCORES`, by both files' path, size and modification time): every
    curate decides every image again, and `mlc run` curates after each collect round, so the same
    candidate pairs came back round after round, each time decoded and searched again.

    Across processes (a nightly curate), by content: given the files' sha256 `digests` (key ->
    digest), `known` scores (digest pair, smaller first -> score; the catalog's, under METHOD) are
    used as they are, and every score found in this object is added to `scored` for the caller to keep,
    but only when both files' bytes, as read to score them, are those digests (`READ_DIGESTS`): a
    file rewritten in place at the same size is not re-inspected by a curate, and a score of its new
    bytes kept under its old digest outlived the change (a user's audit). Such files' keys are in
    `changed`, for the caller to have them inspected again.
    """

    def __init__(self, paths: dict[Hashable, str | os.PathLike], digests: dict[Hashable, str] | None = None,
                 known: dict[tuple[str, str], float] | None = None, memo: PairScores | None = None):
        self.paths = paths
        self.memo = PAIR_SCORES if memo is None else memo     # the process's scores of `compare`
        self.digests = {} if digests is None else digests
        self.known = dict(known or {})
        self.scored: dict[tuple[str, str], float] = {}
        self.changed: set[Hashable] = set()
        self._signatures: dict[Hashable, Signature | None] = {}
        self._files: dict[Hashable, tuple | None] = {}

    def digest_pair(self, a: Hashable, b: Hashable) -> tuple[str, str] | None:
        "What a pair's score is kept by across processes: both digests, the smaller first (None: unknown)."
        da, db = self.digests.get(a), self.digests.get(b)
        return (min(da, db), max(da, db)) if da and db and da != db else None

    def kept_score(self, a: Hashable, b: Hashable) -> float | None:
        "The pair's score if it is known without decoding either file (kept, or scored in this process)."
        if (digests := self.digest_pair(a, b)) is not None and (score := self.known.get(digests)) is not None:
            return score
        fa, fb = self.file_of(a), self.file_of(b)
        return self.memo.get(tuple(sorted((fa, fb)))) if fa and fb else None

    def signature(self, key: Hashable) -> Signature | None:
        if key not in self._signatures:
            path = self.paths.get(key)
            try:
                self._signatures[key] = None
                if path:
                    data = Path(path).read_bytes()      # the bytes hashed are the bytes scored
                    READ_DIGESTS.put(self.file_of(key), hashlib.sha256(data).hexdigest())
                    self._signatures[key] = signature(load_grey(io.BytesIO(data)))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                log.warning("cannot re-read %s to confirm a near-duplicate: %s", path, exc)
                self._signatures[key] = None
        return self._signatures[key]

    def file_of(self, key: Hashable) -> tuple | None:
        "What a pair's cached score is keyed by: the file's path, size and mtime (None: no file)."
        if key not in self._files:
            path = self.paths.get(key)
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None       # `signature` says why, if the pair is scored
            self._files[key] = (os.fspath(path), st.st_size, st.st_mtime_ns) if st else None
        return self._files[key]

    def __call__(self, a: Hashable, b: Hashable) -> float | None:
        digests = self.digest_pair(a, b)
        if digests is not None and (kept := self.known.get(digests)) is not None:
            return kept
        fa, fb = self.file_of(a), self.file_of(b)
        pair = tuple(sorted((fa, fb))) if fa and fb else None
        score = self.memo.get(pair) if pair is not None else None
        if score is None:
            sa, sb = self.signature(a), self.signature(b)
            if sa is None or sb is None:
                return None
            score = self.compare(sa, sb)
            if pair is not None:
                self.memo.put(pair, score)
        if digests is not None and self._as_recorded(a, fa) and self._as_recorded(b, fb):
            self.known[digests] = self.scored[digests] = score
        return score

    def compare(self, a: Signature, b: Signature) -> float:
        "What a pair's score is (`similarity`); `decide.MirroredSimilarity` compares a's mirror image."
        return similarity(a, b)

    def _as_recorded(self, key: Hashable, file: tuple | None) -> bool:
        "Whether the file's bytes, as read to score it, are its recorded digest (else: `changed`)."
        read = READ_DIGESTS.get(file) if file else None
        if read is not None and read != self.digests.get(key):
            if key not in self.changed:
                log.warning("%s changed since it was hashed (its bytes are not the recorded sha256): its "
                            "near-duplicate scores are used now, not kept, and the file is inspected again",
                            file[0])
            self.changed.add(key)
        return read is not None and read == self.digests.get(key)


class PairScores:
    """A bounded, thread-safe memo of pair scores (least recently used out first)."""

    def __init__(self, limit: int):
        self.limit, self._scores, self._lock = limit, OrderedDict(), threading.Lock()

    def get(self, pair: tuple) -> float | None:
        with self._lock:
            score = self._scores.get(pair)
            if score is not None:
                self._scores.move_to_end(pair)
            return score

    def put(self, pair: tuple, score: float) -> None:
        with self._lock:
            self._scores[pair] = score
            if len(self._scores) > self.limit:
                self._scores.popitem(last=False)


PAIR_SCORES = PairScores(200_000)     # ~60 MB at most; a curate of the default world scores ~1,200 pairs
READ_DIGESTS = PairScores(400_000)    # file identity (path, size, mtime) -> sha256 of the bytes scored


Confirm = Callable[[Hashable, Hashable], "float | None"]


# ---- Crops at a corner or along one side: the copy as a window anchored in a corner of the original --
# A copy cut at two adjacent edges (a corner crop) or at one edge is a window of the original that
# touches one of its corners. Both images are compared as squashed THUMB_SIDE squares, so the copy
# shows `cover_w` x `cover_h` of the original's sides, and the aspect ratios fix one from the other
# (cover_w / cover_h = the copy's aspect / the original's): for each corner, the only unknown is one
# cover in COVER_MIN..1. Windows anywhere inside the original (free position) were tried and rejected:
# on the generated world's flat drawings, sliding a smooth horizon over another one reached 0.926.
COVER_MIN = 0.75          # the copy keeps at least 75 % of each side of the original (80 % until 2026-12-07)
COVER_STEP = 0.025
CORNERS = ((0, 0), (1, 0), (0, 1), (1, 1))   # which corner the window touches: (right?, bottom?)
REFINE = (-3, -2, -1, 1, 2, 3)      # the best window refined in quarter COVER_STEPs around it

# What a kept score was computed by (catalog/pairs.py): scores of another method are not used. Every
# parameter a score depends on is in it (the search stops at SURE / CONFIRM: they bound the score as
# well; ROTATED_CEILING was not, until the review30 audit); "v1" is raised by hand when the code
# computes a score differently.
METHOD = (f"residual-v1:{THUMB_SIDE}:{CROPS}:{ROTATIONS}:{ROTATED_FLOOR}:{COVER_MIN}:{COVER_STEP}:"
          f"{ROTATED_CEILING}:{BLUR}:{GREY_SIDE}:{SEARCH_SIDE}:{SURE}:{CONFIRM}:{CORNERS}:{REFINE}")


def anchored_search(big: Image.Image, small: Signature) -> float:
    "Best score of `small`'s full view against a window of `big` that touches one of its corners."
    ratio = (small.image.width / small.image.height) / (big.width / big.height)
    template = _residuals_of(np.asarray(small.image.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX),
                                        np.float32)[None])[0]
    # Coarse: covers (of big's height) every COVER_STEP; the largest one keeps the full width or height.
    top = min(1.0, 1.0 / ratio)
    starts = [top - k * COVER_STEP for k in range(int((top - COVER_MIN) / COVER_STEP + 1e-9) + 1)]
    starts = [c for c in starts if c * ratio >= COVER_MIN - 1e-9]
    if not starts:
        return 0.0
    tries = [(corner, c) for corner in CORNERS for c in starts]
    score, (corner, cover) = max(zip(_corner_scores(big, template, ratio, tries), tries))
    if score >= SURE:              # beyond doubt already: refining can only raise it
        return float(score)
    # Refine the best window's cover between its grid neighbours, in quarter steps (one batch).
    tries = [(corner, cover + k * COVER_STEP / 4) for k in REFINE]
    tries = [(k, c) for k, c in tries if COVER_MIN - 1e-9 <= c <= top + 1e-9 and c * ratio >= COVER_MIN - 1e-9]
    return float(max([score, *_corner_scores(big, template, ratio, tries)]))


def _corner_scores(big: Image.Image, template: np.ndarray, ratio: float,
                   tries: list[tuple[tuple[int, int], float]]) -> np.ndarray:
    "Score of each (corner, cover of big's height) window against `template`."
    w, h = big.size
    thumbs = []
    for (right, bottom), cover_h in tries:
        ww, wh = min(cover_h * ratio, 1.0) * w, min(cover_h, 1.0) * h
        left, top = right * (w - ww), bottom * (h - wh)
        thumb = big.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX, box=(left, top, left + ww, top + wh))
        thumbs.append(np.asarray(thumb, np.float32))
    if not thumbs:
        return np.zeros(0)
    return _residuals_of(np.stack(thumbs)) @ template


def _residuals_of(thumbs: np.ndarray) -> np.ndarray:
    """Unit-norm high-pass residuals of a stack of thumbnails, one row each: `_residual`'s box blur
    (radius THUMB_SIDE // 8, edges extended), for many windows at once."""
    r = BLUR
    blurred = uniform_filter(thumbs, size=(1, 2 * r + 1, 2 * r + 1), mode="nearest")
    res = (thumbs - blurred).reshape(len(thumbs), -1)
    res -= res.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(res, axis=1, keepdims=True)
    return res / np.maximum(norm, 1e-6)
