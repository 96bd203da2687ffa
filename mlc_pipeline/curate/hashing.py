"""One pass per file: read once, sha256 the bytes, verify, perceptual-hash from the same decode.

The perceptual hash is imagehash's 64-bit DCT `phash`, written as 16 hex digits. It is computed on
the image as a viewer shows it (EXIF orientation applied, transparency on white) and from a small
greyscale decode: JPEGs are decoded in libjpeg's draft mode (1/2..1/8 scale, luma only), other
formats are box-reduced by the same power-of-two rule, so a photo hashes alike whatever its format
or size. On the 398 fixture photos the draft hash differs from a full-decode `imagehash.phash` by
0.3 bits on average (see docs/curation.md), and draft decoding still reads the whole entropy-coded
stream, so truncated JPEGs are still rejected.

The three views (full, 5 % and 10 % centre crops) are hashed from one greyscale array by
`phash.phash_many`: the same bits as `imagehash.phash`, several times cheaper, and batched over the
files of a chunk so that files of one size share their numpy calls.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from mlc_pipeline.curate.phash import one_blas_thread, phash_many, single_blas_thread_for_life
from mlc_pipeline.curate.similarity import VIEW_CROPS, crop_box
from mlc_pipeline.curate.verify import (ORIENTATION_TRANSPOSE, VerifyLimits, decode_checked, exif_orientation,
                                       load_format_plugins, read_limited, require_strict_decoding)
from mlc_pipeline.images import DECODE_ERRORS, to_rgb

log = logging.getLogger(__name__)

# phash resizes to 32x32; decoding (JPEG draft, box reduce otherwise) to >= 64 px on the short side
# keeps it within a mean 0.8 bits of a full decode on the hymenoptera (0.1 on the 180 px pets) and
# finds the same duplicates among real photos as 128 px did (docs/curation.md, section 3; flat
# generated drawings lost two chaos twins), while skipping most of the IDCT and resize work: at
# 128, thumbnails (<= 255 px) were hashed at full size.
HASH_DECODE_SIDE = 64
# A takedown keeps the phashes of its photo's four corner windows, this share cut off two adjacent
# edges: a copy cut at a corner (5-10 %) has a whole-image phash near one of them (docs/curation.md,
# "Near copies collected later"). For every image they would cost curate ~0.1 ms a view (ibid.); they
# are kept for photos taken down and for published test images (the catalog's kept_corners, by digest).
CORNER_CUT = 0.075
# A published test image keeps more windows (since 2026-12-07): with each of these cut off every side
# (centred), two adjacent edges (a corner) or one edge, for larger crops of it collected later (15-20 %
# per side: 26-30 bits from every view, docs/curation.md, "Test images of earlier versions never train").
CROP_WINDOW_CUTS = (0.15, 0.20)
# what kept corner hashes of published test images were made by (the catalog's kept_corners)
CORNER_METHOD = f"corners-v2:{CORNER_CUT}:{HASH_DECODE_SIDE}:{VIEW_CROPS}:{CROP_WINDOW_CUTS}"


@dataclass(frozen=True)
class FileRecord:
    path: str
    ok: bool
    reason: str | None          # verify.py reason code, None when ok
    sha256: str | None          # of the file's bytes; None only when the file could not be read
    phash: str | None           # 16 hex digits; None when not ok
    n_bytes: int | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None    # after EXIF orientation
    height: int | None = None
    frames: int | None = None
    view_hashes: str | None = None  # phashes of the centre crops in similarity.VIEW_CROPS, comma-separated


def inspect_file(path: str | os.PathLike, limits: VerifyLimits = VerifyLimits()) -> FileRecord:
    "sha256 + verification + phash of one file, from one read and one decode."
    return inspect_batch([path], limits)[0]


def inspect_batch(paths: Sequence[str | os.PathLike], limits: VerifyLimits = VerifyLimits()) -> list[FileRecord]:
    """`inspect_file` of each path, in one process: each file is read and decoded alone, then the
    views of the whole batch are phashed at once (phash.phash_many batches the resizes by size)."""
    require_strict_decoding()  # a misconfigured process must fail loudly, not per file
    decoded = [decode_for_hashing(os.fspath(p), limits) for p in paths]
    views = [v for _, vs in decoded for v in vs]
    try:
        hashes = iter(phash_many(views))
    except Exception:  # noqa: BLE001 -- one odd array must not cost the batch: redo it file by file
        log.exception("batched phash failed; hashing the %d files one by one", len(paths))
        return [_with_hashes(record, vs, phash_many) for record, vs in decoded]
    return [_with_hashes(record, vs, lambda vs: [next(hashes) for _ in vs]) for record, vs in decoded]


def decode_for_hashing(path: str, limits: VerifyLimits) -> tuple[FileRecord, list[np.ndarray]]:
    """Read, sha256, verify and decode one file: its record without hashes, and the greyscale views
    to hash (none when the file is rejected)."""
    data, reason = read_limited(path, limits)
    if data is None:
        return FileRecord(path=path, ok=False, reason=reason, sha256=None, phash=None), []
    sha256 = hashlib.sha256(data).hexdigest()
    side = HASH_DECODE_SIDE
    decoded = False
    try:
        check, frame = decode_checked(data, limits, draft=("L", (side, side)))
        decoded = True                  # the pixels are loaded: whatever fails now is our view code
        views = view_greys(frame, exif_orientation(frame)) if check.ok else []
    except Exception as e:  # noqa: BLE001 -- last line of defence: one hostile file must not end a batch
        unexpected(e, path, decoding=not decoded)
        return FileRecord(path=path, ok=False, reason=f"decode-error:{type(e).__name__}",
                          sha256=sha256, phash=None, n_bytes=len(data)), []
    return FileRecord(path=path, ok=check.ok, reason=check.reason, sha256=sha256, phash=None,
                      n_bytes=len(data), format=check.format, mode=check.mode,
                      width=check.width, height=check.height, frames=check.frames), views


def _with_hashes(record: FileRecord, views: list[np.ndarray], hash_views) -> FileRecord:
    if not views:
        return record
    try:
        hashes = hash_views(views)
    except Exception as e:  # noqa: BLE001 -- recorded as this file's reason, like a decode error
        unexpected(e, record.path, decoding=False)
        return replace(record, ok=False, reason=f"decode-error:{type(e).__name__}")
    return replace(record, phash=hashes[0], view_hashes=",".join(hashes[1:]))


def unexpected(exc: Exception, path: str, decoding: bool = True) -> None:
    """Log, with its traceback, an error that bad data is not known to cause: while decoding, one not
    in Pillow's `DECODE_ERRORS`; while hashing arrays already decoded, any. More likely a fault of our
    own code than of the file: it is still the file's reason (one file must not end a batch), but a
    bug that rejected every image left only `decode-error:<Type>` reasons and nothing in the log
    (the arch24 audit)."""
    if not (decoding and isinstance(exc, DECODE_ERRORS)):
        log.error("%s: unexpected %s while %s (recorded as its reason; likely a bug, not a bad file)",
                  path, type(exc).__name__, "decoding" if decoding else "hashing", exc_info=exc)


def view_phashes(im: Image.Image, orientation: int = 1) -> list[str]:
    """phash of the full image, then of each centre crop in `similarity.VIEW_CROPS`.

    A copy cropped by c % per side matches the original's c % view: the crop views make the phash
    search crop-robust (docs/curation.md, "Crops")."""
    return phash_many(view_greys(im, orientation))


def view_greys(im: Image.Image, orientation: int = 1) -> list[np.ndarray]:
    "The greyscale arrays `view_phashes` hashes: the full image, then each centre crop."
    return views_of(np.asarray(_hash_grey(im, orientation)))


def views_of(grey: np.ndarray) -> list[np.ndarray]:
    "A greyscale array, then each of its centre crops in `similarity.VIEW_CROPS`."
    h, w = grey.shape
    views = []
    for fraction in (0.0, *VIEW_CROPS):
        left, top, right, bottom = crop_box(w, h, fraction)
        views.append(grey[top:bottom, left:right])
    return views


def corner_phashes(path: str | os.PathLike, limits: VerifyLimits = VerifyLimits(),
                   crop_windows: bool = False) -> str | None:
    """What a takedown keeps of a photo beyond its own views, for copies collected once its file is
    gone (`curate.takedown`: a copy's whole-image phash is compared with each), and curate of a published
    test image (`curate.decide`): the phashes of the four windows with CORNER_CUT cut off two adjacent
    edges, then of its mirror image's views (a flipped re-upload: phash is not mirror-invariant), then
    with `crop_windows` (a published test image, whose pixels confirm a copy) `crop_window_greys`',
    decoded as for its own hashes, comma-separated; None when it cannot be read or decoded (under
    `limits`: a published copy is checked as `stage.published_test_images` checks it)."""
    record, views = decode_for_hashing(os.fspath(path), limits)
    if not record.ok or not views:
        return None
    return ",".join(phash_many(takedown_greys(views[0]) + (crop_window_greys(views[0]) if crop_windows else [])))


def takedown_greys(grey: np.ndarray) -> list[np.ndarray]:
    "`corner_phashes`' arrays: the four corner windows, then the mirror image and its centre crops."
    return corner_greys(grey) + views_of(np.ascontiguousarray(grey[:, ::-1]))


def corner_greys(grey: np.ndarray) -> list[np.ndarray]:
    "The four windows of a greyscale view (`view_greys`' first) with CORNER_CUT cut off two adjacent edges."
    h, w = grey.shape
    dx, dy = round(w * CORNER_CUT), round(h * CORNER_CUT)
    return [grey[dy:, dx:], grey[dy:, :w - dx], grey[:h - dy, dx:], grey[:h - dy, :w - dx]]


def crop_window_greys(grey: np.ndarray) -> list[np.ndarray]:
    """For each cut in CROP_WINDOW_CUTS: the window with it cut off every side, then off two adjacent
    edges (four corners), then off one edge (left, right, top, bottom)."""
    h, w = grey.shape
    windows = []
    for cut in CROP_WINDOW_CUTS:
        dx, dy = round(w * cut), round(h * cut)
        windows += [grey[dy:h - dy, dx:w - dx], grey[dy:, dx:], grey[dy:, :w - dx], grey[:h - dy, dx:],
                    grey[:h - dy, :w - dx], grey[:, dx:], grey[:, :w - dx], grey[dy:, :], grey[:h - dy, :]]
    return windows


def _hash_grey(im: Image.Image, orientation: int) -> Image.Image:
    grey = im if im.mode == "L" else to_rgb(im).convert("L")
    factor = _reduce_factor(grey.size)
    if factor > 1:  # box-reduce like JPEG draft does, so PNG and JPEG copies hash alike
        grey = grey.reduce(factor)
    if orientation in ORIENTATION_TRANSPOSE:
        grey = grey.transpose(ORIENTATION_TRANSPOSE[orientation])
    return grey


def _reduce_factor(size: tuple[int, int]) -> int:
    "Largest power of two that keeps both sides >= HASH_DECODE_SIDE (the JPEG draft rule, unbounded)."
    factor = 1
    while min(size) // (factor * 2) >= HASH_DECODE_SIDE:
        factor *= 2
    return factor


# ---------------------------------------------------------------------------------------------
# Parallel inspection


def inspect_files(paths: Iterable[str | os.PathLike], limits: VerifyLimits = VerifyLimits(),
                  workers: int | None = None, chunksize: int | None = None,
                  advance: Callable[[int], None] = lambda n: None) -> list[FileRecord]:
    """`inspect_file` over many paths on a process pool; results in input order.

    Per-file errors become reasons inside `inspect_file`. If a worker process dies outright (a
    decoder segfault, the OOM killer), the files it may have been holding are re-run one at a time
    so the culprit is recorded as `decode-error:WorkerCrashed` and every other file still gets its
    record. `advance(n)` is called as files are done (a progress bar).
    """
    require_strict_decoding()
    paths = [os.fspath(p) for p in paths]
    workers = workers or os.cpu_count() or 1
    with one_blas_thread():  # forked pool workers inherit it
        if workers <= 1 or len(paths) <= 1:
            records = []
            for chunk in _fixed_chunks(len(paths), 32):
                records.extend(inspect_batch(paths[chunk.start:chunk.stop], limits))
                advance(len(chunk))
            return records
        load_format_plugins(limits.formats)  # once, before the fork, rather than in every worker
        return _inspect_in_pool(paths, limits, workers, chunksize, advance)


def _inspect_in_pool(paths: list[str], limits: VerifyLimits, workers: int, chunksize: int | None,
                     advance: Callable[[int], None]) -> list[FileRecord]:
    chunks = _fixed_chunks(len(paths), chunksize) if chunksize else _guided_chunks(len(paths), workers)
    records: list[FileRecord | None] = [None] * len(paths)
    lost = _run_chunks(paths, chunks, limits, workers, records, advance)
    _run_one_by_one(paths, lost, limits, records)
    return records  # type: ignore[return-value]  # every slot is filled by now


def _fixed_chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _guided_chunks(n: int, workers: int, largest: int = 64, smallest: int = 8) -> list[range]:
    """Chunks that shrink as the work runs out: each is the remaining files / (2 x workers), within
    [smallest, largest]. Big chunks amortise the inter-process overhead and let phash_many batch the
    resizes of same-sized files; small ones at the end keep every worker busy until the last file
    (with 49-file chunks, 398 files ended with one worker idle for a whole chunk)."""
    chunks, start = [], 0
    while start < n:
        size = min(largest, max(smallest, (n - start) // (2 * workers)))
        chunks.append(range(start, min(start + size, n)))
        start += size
    return chunks


def _init_worker() -> None:
    """Pool workers exit when the parent dies (kill -9 of the pipeline): forked workers share the
    task pipe's write end, so without this they would wait on it forever. They also keep BLAS to one
    thread: the pool is the parallelism."""
    single_blas_thread_for_life()
    if sys.platform.startswith("linux"):  # die with the parent
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL) != 0:      # PR_SET_PDEATHSIG
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        if os.getppid() == 1:                      # the parent died before prctl took effect
            os._exit(1)


def new_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, initializer=_init_worker)


def _inspect_chunk(paths: Sequence[str], limits: VerifyLimits) -> list[FileRecord]:
    return inspect_batch(paths, limits)


def _run_chunks(paths, chunks, limits, workers, records, advance=lambda n: None) -> list[int]:
    "Run chunks with a bounded number in flight; return the file indices lost to a dead worker."
    todo, lost, running = list(reversed(chunks)), [], {}
    pool = new_pool(workers)
    try:
        while todo or running:
            while todo and len(running) < 2 * workers:
                chunk = todo.pop()
                running[pool.submit(_inspect_chunk, [paths[i] for i in chunk], limits)] = chunk
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                chunk = running.pop(fut)
                try:
                    records[chunk.start:chunk.stop] = fut.result()
                    advance(len(chunk))
                except BrokenProcessPool:
                    lost.extend(chunk)  # this chunk, or one in flight beside it, killed a worker
                    broken = True
            if broken:  # every future of a broken pool fails; collect them and start a fresh pool
                for fut, chunk in running.items():
                    lost.extend(chunk)
                running.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                pool = new_pool(workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return sorted(lost)


def _run_one_by_one(paths, indices, limits, records) -> None:
    "Inspect suspects alone in a one-worker pool, so a crash is pinned on exactly one file."
    if not indices:
        return
    pool = new_pool(1)
    try:
        for i in indices:
            try:
                (records[i],) = pool.submit(_inspect_chunk, [paths[i]], limits).result()
            except BrokenProcessPool:
                records[i] = FileRecord(path=paths[i], ok=False, reason="decode-error:WorkerCrashed",
                                        sha256=None, phash=None)
                pool.shutdown(wait=True)
                pool = new_pool(1)
    finally:
        pool.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------
# Hash arithmetic


def hex_to_uint64(hexes: Sequence[str]) -> np.ndarray:
    "16-hex-digit hashes -> uint64 array (vectorised: one bytes.fromhex over the joined string)."
    if len(hexes) == 0:
        return np.zeros(0, dtype=np.uint64)
    if any(len(h) != 16 for h in hexes):
        raise ValueError("every hash must be exactly 16 hex digits")
    return np.frombuffer(bytes.fromhex("".join(hexes)), dtype=">u8").astype(np.uint64)


def uint64_to_hex(values: np.ndarray) -> list[str]:
    return [f"{v:016x}" for v in np.asarray(values, dtype=np.uint64).tolist()]


def popcount64(x: np.ndarray) -> np.ndarray:
    "Number of set bits of each uint64 (numpy >= 2 has a native ufunc; else a byte lookup table)."
    x = np.asarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.uint8, copy=False)  # already uint8: no second pass
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1, dtype=np.uint8)


def hamming(a: str | int, b: str | int) -> int:
    "Hamming distance of two 64-bit hashes given as hex strings or ints."
    a = int(a, 16) if isinstance(a, str) else int(a)
    b = int(b, 16) if isinstance(b, str) else int(b)
    return (a ^ b).bit_count()


def hamming_uint64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    "Element-wise (broadcasting) Hamming distances of uint64 arrays."
    return popcount64(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))
