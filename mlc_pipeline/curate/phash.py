"""phash of greyscale arrays, bit-identical to `imagehash.phash`, without its per-call overhead.

imagehash.phash(im) is: a LANCZOS resize to 32 x 32, a DCT along columns then rows (scipy.fftpack),
the 8 x 8 lowest frequencies, bit = coefficient > their median. With three views per image, its
three PIL resizes dominated hashing. Here each resize pass is a few small matrix products with the
integer weights Pillow uses (Resample.c: coefficients rounded to 22 fractional bits, sum + 2^21
shifted right by 22, clipped to 0..255; Pillow 13's pass order). The sums stay below 2^40, so float64
products are exact and the result is bit-identical: tests/test_hashing.py compares it with
imagehash.phash under the installed Pillow on the fixtures and on random sizes and shapes.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import scipy.fftpack  # imported here, not lazily: forked pool workers then share it
from threadpoolctl import ThreadpoolController

PHASH_SIDE = 32               # imagehash: hash_size 8 x highfreq_factor 4
PHASH_BITS_SIDE = 8
_PRECISION = 22               # Pillow's PRECISION_BITS for 8-bit images


def phash_of(*greys: np.ndarray) -> list[str]:
    "phash (16 hex digits) of each 2-D uint8 greyscale array; equal to `imagehash.phash` of it."
    return phash_many(greys)


def phash_many(greys: Sequence[np.ndarray]) -> list[str]:
    """`phash_of` for many arrays at once: the resize passes are batched by shape.

    Each pass is a product with a per-size weight matrix, so arrays of one width share their
    horizontal pass (stacked on top of each other) and arrays of one height share their vertical
    pass (side by side): the numpy calls per batch are per distinct size, not per array. On
    thumbnails the per-call overhead was most of the hashing time.
    """
    greys = [np.asarray(g, dtype=np.uint8) for g in greys]
    if not greys:
        return []
    thumbs = np.empty((len(greys), PHASH_SIDE, PHASH_SIDE))
    prime_weights([side for g in greys for side in g.shape])
    by_width: dict[int, list[int]] = defaultdict(list)
    with one_blas_thread():
        for k, g in enumerate(greys):
            h, w = g.shape
            if _vertical_first(h, w):   # rare (very tall images): one at a time
                thumbs[k] = _lanczos_thumbnail(g)
            else:
                by_width[w].append(k)
        columns: dict[int, np.ndarray] = {}
        for w, members in by_width.items():
            stacked = _to_8bit(_resize_columns(np.concatenate([greys[k] for k in members], dtype=np.float64), w))
            bounds = np.cumsum([0] + [greys[k].shape[0] for k in members])
            columns.update((k, stacked[a:b]) for k, a, b in zip(members, bounds[:-1], bounds[1:]))
        by_height: dict[int, list[int]] = defaultdict(list)
        for k in columns:
            by_height[columns[k].shape[0]].append(k)
        for members in by_height.values():
            side_by_side = np.concatenate([columns[k] for k in members], axis=1)   # h x 32m
            rows = _to_8bit(_resize_rows(side_by_side))                            # 32 x 32m
            thumbs[members] = rows.reshape(PHASH_SIDE, len(members), PHASH_SIDE).transpose(1, 0, 2)
    dct = scipy.fftpack.dct(thumbs, axis=1)[:, :PHASH_BITS_SIDE]  # the same 1-D transforms as imagehash
    low = scipy.fftpack.dct(dct, axis=2)[:, :, :PHASH_BITS_SIDE].reshape(len(greys), -1)
    ordered = np.sort(low, axis=1)
    half = low.shape[1] // 2
    median = (ordered[:, half - 1] + ordered[:, half]) / 2       # what np.median computes
    bits = np.packbits(low > median[:, None], axis=1)            # row-major, first bit highest
    return [row.tobytes().hex() for row in bits]


def _vertical_first(h: int, w: int) -> bool:
    """Pillow >= 13 runs the vertical pass first when the height shrinks more than twice as much as
    the width (each pass rounds to 8 bits, so the order shows in the result)."""
    return h - PHASH_SIDE > 0 and h - PHASH_SIDE > 2 * (w - PHASH_SIDE)


def _lanczos_thumbnail(grey: np.ndarray) -> np.ndarray:
    "`Image.fromarray(grey).resize((32, 32), LANCZOS)` as a float64 array of integer values."
    h, w = grey.shape
    pixels = grey.astype(np.float64)
    if _vertical_first(h, w):
        return _to_8bit(_resize_columns(_to_8bit(_resize_rows(pixels)), w))
    return _to_8bit(_resize_rows(_to_8bit(_resize_columns(pixels, w))))


def _resize_columns(pixels: np.ndarray, w: int) -> np.ndarray:
    "pixels (any rows x w) -> rows x 32 fixed-point sums; one product per band of 8 output columns."
    weights, bands = _lanczos_weights(w), _lanczos_bands(w)
    out = np.empty((pixels.shape[0], PHASH_SIDE))
    for lo, hi, c0, c1 in bands:
        np.matmul(pixels[:, lo:hi], weights[lo:hi, c0:c1], out=out[:, c0:c1])
    return out


def _resize_rows(pixels: np.ndarray) -> np.ndarray:
    "pixels (h x any columns) -> 32 x columns fixed-point sums, by the same bands."
    h = pixels.shape[0]
    weights, bands = _lanczos_weights(h), _lanczos_bands(h)
    out = np.empty((PHASH_SIDE, pixels.shape[1]))
    for lo, hi, c0, c1 in bands:
        np.matmul(weights[lo:hi, c0:c1].T, pixels[lo:hi], out=out[c0:c1])
    return out


def _lanczos_bands(n: int) -> tuple[tuple[int, int, int, int], ...]:
    """(first input, end input, first output, end output) per group of 8 outputs: each output pixel
    reads only ~6 x n / 32 inputs, so products over these bands skip the zeros of the dense matrix."""
    return _lanczos_cached(n)[1]


# OpenBLAS splits even these small products across threads; on a busy machine (or beside the other
# pool workers) that made hashing 5x slower. hashing.inspect_files holds one BLAS thread for its whole
# run, which forked pool workers inherit; other callers hold it for the duration of the products.
_blas_single_threaded = False


@lru_cache(maxsize=1)
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()  # ~50 ms: scans the loaded libraries once per process


@contextmanager
def one_blas_thread() -> Iterator[None]:
    "Hold numpy's BLAS to one thread (re-entrant; a no-op where it already is)."
    global _blas_single_threaded
    if _blas_single_threaded:
        yield
        return
    with _threadpools().limit(limits=1, user_api="blas"):
        _blas_single_threaded = True
        try:
            yield
        finally:
            _blas_single_threaded = False


def single_blas_thread_for_life() -> None:
    "For pool workers: forked ones inherit the setting from inspect_files, spawned ones do not."
    global _blas_single_threaded
    if not _blas_single_threaded:
        _threadpools().limit(limits=1, user_api="blas")
        _blas_single_threaded = True


def _to_8bit(sums: np.ndarray) -> np.ndarray:
    """Pillow's clip8((sum + 2^21) >> 22), on exact float64 sums (in place). The weights already carry
    the 2^-22 (a power of two, so every product and sum stays exact): only the rounding is left."""
    sums += 0.5
    np.floor(sums, out=sums)
    np.maximum(sums, 0.0, out=sums)
    return np.minimum(sums, 255.0, out=sums)


# Weight matrices by input size, per process. A pool worker starts with none, and computing one takes
# ~20 small numpy calls (~0.25 ms): for the ~150 sizes among 398 thumbnails (three views each) that
# was a quarter of a worker's hashing time. phash_many computes the sizes a batch lacks in one
# vectorised pass instead.
_LANCZOS: dict[int, tuple[np.ndarray, tuple[tuple[int, int, int, int], ...]]] = {}
_PRIMING = threading.Lock()
_MAX_CACHED_SIZES = 4096


def _lanczos_weights(n: int) -> np.ndarray:
    """(n, 32) matrix: column j holds Pillow's fixed-point LANCZOS weights of output pixel j when n
    pixels are resized to 32 (Resample.c, precompute_coeffs + normalize_coeffs_8bpc): integers
    (22 fractional bits) times 2^-22, so the products give Pillow's sums already shifted."""
    return _lanczos_cached(n)[0]


def _lanczos_cached(n: int) -> tuple[np.ndarray, tuple[tuple[int, int, int, int], ...]]:
    """(weights, bands) of size n, from one cache entry: a threaded Dask worker hashes in several
    threads, and two caches filled one after the other let a thread find the weights of a size whose
    bands were not stored yet (a KeyError in the two-worker test)."""
    entry = _LANCZOS.get(n)
    return entry if entry is not None else prime_weights([n])[n]


def prime_weights(sizes) -> dict[int, tuple[np.ndarray, tuple[tuple[int, int, int, int], ...]]]:
    """Compute and cache the weight matrices (and bands) of every size not cached yet, vectorised;
    return the entries of `sizes` (read under the lock, so a cache another thread clears can't lose them)."""
    sizes = {int(n) for n in sizes}
    with _PRIMING:
        new = sizes - _LANCZOS.keys()
        if len(_LANCZOS) + len(new) > _MAX_CACHED_SIZES:  # bounded memory in a long-lived process
            _LANCZOS.clear()
            new = sizes
        new = sorted(new)
        for k in range(0, len(new), 32):   # 32 sizes at a time bounds the (sizes x 32 x taps) arrays
            group = new[k:k + 32]
            for n, matrix in zip(group, _fixed_point_weights(np.array(group, dtype=np.int64))):
                _LANCZOS[n] = (matrix, _bands_of(matrix))
        return {n: _LANCZOS[n] for n in sizes}


def _bands_of(matrix: np.ndarray, group: int = 8) -> tuple[tuple[int, int, int, int], ...]:
    used = matrix != 0
    n = len(matrix)
    first = used.argmax(axis=0)                        # first non-zero input row of each output
    last = n - 1 - used[::-1].argmax(axis=0)           # ... and the last
    return tuple((int(first[c0:c0 + group].min()), int(last[c0:c0 + group].max()) + 1, c0, c0 + group)
                 for c0 in range(0, PHASH_SIDE, group))


def _fixed_point_weights(ns: np.ndarray) -> list[np.ndarray]:
    "Pillow's weight matrices for several input sizes at once (same expressions, broadcast over sizes)."
    scale = ns / PHASH_SIDE
    filterscale = np.maximum(scale, 1.0)
    support = 3.0 * filterscale
    center = (np.arange(PHASH_SIDE) + 0.5)[None, :] * scale[:, None]                       # (sizes, 32)
    first = np.maximum((center - support[:, None] + 0.5).astype(np.int64), 0)               # C's (int) truncates
    count = np.minimum((center + support[:, None] + 0.5).astype(np.int64), ns[:, None]) - first
    taps = np.arange(int(count.max()))
    inside = taps[None, None, :] < count[:, :, None]                                         # (sizes, 32, taps)
    source = taps[None, None, :] + first[:, :, None]
    x = (source - center[:, :, None] + 0.5) * (1.0 / filterscale)[:, None, None]
    weight = np.where(inside, _lanczos(x), 0.0)
    total = np.add.accumulate(weight, axis=2)[:, :, -1]                                      # summed in order, like C
    weight = np.where(total[..., None] != 0.0, weight / np.where(total == 0.0, 1.0, total)[..., None], weight)
    scaled = weight * float(1 << _PRECISION)
    fixed = np.trunc(np.where(weight < 0, scaled - 0.5, scaled + 0.5))
    out_index = np.broadcast_to(np.arange(PHASH_SIDE)[:, None], inside.shape[1:])
    matrices = []
    for k, n in enumerate(ns.tolist()):
        if n == PHASH_SIDE:  # Pillow skips a pass that keeps the size; weight 1 on the diagonal is the same
            matrices.append(np.eye(n))
            continue
        matrix = np.zeros((n, PHASH_SIDE))
        matrix[source[k][inside[k]], out_index[inside[k]]] = fixed[k][inside[k]] * (1.0 / (1 << _PRECISION))
        matrices.append(matrix)
    return matrices


def _lanczos(x: np.ndarray) -> np.ndarray:
    """Pillow's truncated sinc: sinc(x) * sinc(x / 3) on [-3, 3). np.sinc computes sin(pi x) / (pi x)
    with the same two roundings as Resample.c's sinc_filter, and 1 at 0."""
    return np.where((x >= -3.0) & (x < 3.0), np.sinc(x) * np.sinc(x / 3), 0.0)
