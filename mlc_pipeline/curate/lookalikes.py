"""Images that look like a photo taken down (`mlc remove`, curate/takedown.py), judged by perceptual
hashes alone: the photo's file is gone, so no pixel check can confirm a copy of it. The removed row
keeps its views' phashes, its four corner windows' and its mirror image's views'
(hashing.corner_phashes); an accepted image within LOOKALIKE_BITS of them is held out for review
(`overrides.hold`), and the hold's reason names the photo (`taken_down_name`), which is how `mlc
remove` finds every hold in force for a photo again (`holds_for`). docs/curation.md §7.

`window_bits`, the comparison of an image with a photo's corner windows and mirror views, also finds
the corner crops and mirror images of published test images for curate (`decide.window_copies`),
where pixels confirm them: those files are still there.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from mlc_pipeline.catalog import Catalog, overrides
from mlc_pipeline.catalog.labels import next_build
from mlc_pipeline.curate.hashing import hamming_uint64, hex_to_uint64
from mlc_pipeline.curate.neardup import find_pairs
from mlc_pipeline.curate.similarity import VIEW_CROPS

log = logging.getLogger(__name__)

LOOKALIKE_BITS = 8     # hashes this close: the same picture (docs/curation.md, "Near copies collected later")
CORNER_WINDOWS = 4     # hashing.corner_phashes: the four corner windows, then the mirror image's views,
MIRROR_VIEWS = 1 + len(VIEW_CROPS)      # then (a published test image's) its crop windows
KEPT_FOR = re.compile(r"held: kept in place of candidate (\d+), ")     # `hold_lookalikes_of_removed`'s keeps


def taken_down_name(row: dict) -> str:
    """How every hold's reason names the photo taken down it was made for (`holds_for` reads it)."""
    return f"{row['source']}:{row['photo_id']}, taken down"


def holds_for(catalog: Catalog, photos: list[dict]) -> list[dict]:
    """Every takedown hold in force (review decisions, `Catalog.takedown_holds`) made for these photos
    (rows, taken down): those whose reason names one of them, and the copies held as kept in place
    of one of those (a curate's keeps), whichever run made them. Their rows, in id order."""
    holds = catalog.takedown_holds()
    if not photos or not holds:
        return []
    named = re.compile("|".join(f" {re.escape(taken_down_name(r))} " for r in photos))
    found = {cid for cid, why in holds.items() if named.search(why)}
    while more := {cid for cid, why in holds.items() if cid not in found and (kept := KEPT_FOR.match(why))
                   and int(kept[1]) in found}:
        found |= more
    return [catalog.get(cid) for cid in sorted(found)]


def hold_lookalikes_of_removed(catalog: Catalog, rows: list[dict], keeps: dict[int, int] | None = None,
                               client: str = "curate", of: set[int] | None = None) -> list[dict]:
    """In a curate's (or a takedown's) transaction: each of `rows` (accepted) whose hashes
    are within LOOKALIKE_BITS of a photo taken down is held out for review (`overrides.hold`). Its file
    is gone, so a re-encode, resize or small crop of it collected since cannot be confirmed by
    pixels; the hashes alone decide, and a hold, not a removal, leaves the last word to a user.
    A row first accepted before a photo's takedown is compared with its corner windows and its mirror
    image's views alone: curate compared it by pixels with the photo while it had it (verify20) when
    its search found the pair, which it does by centred views only, never flipped or a corner
    (the export26 audit: a corner crop 2 bits from a corner window stayed published). A row a
    review undid a hold of is not held again (`overrides.hold`). `keeps`: row id -> the held copy
    this curate dropped in its favour (a copy of a held copy is held too: the verify17 audit saw a
    larger re-upload become the kept one of a held group, and published). `of`: only these photos
    taken down (ids). Returns those held."""
    held, keeps = [], keeps or {}
    for row in rows:
        if (copy := keeps.get(row["id"])) is not None and overrides.hold(
                catalog, row["id"], f"held: kept in place of candidate {copy}, held as a near copy of a photo taken "
                "down; undo this if it is another picture", client) is not None:
            held.append(row)
            log.warning("candidate %s (%s:%s) held: a near copy of candidate %s, held for a takedown", row["id"],
                        row["source"], row["photo_id"], copy)
    removed, held_ids = catalog.removed_hashes(), {r["id"] for r in held}
    removed = [r for r in removed if of is None or r["id"] in of]
    rows = [r for r in rows if r["phash"] and r["id"] not in held_ids]
    if not removed or not rows:
        return held
    views, corners, flipped = lookalike_bits(rows, removed)
    near = np.flatnonzero((np.minimum(np.minimum(views, corners), flipped) <= LOOKALIKE_BITS).any(axis=1))
    first = catalog.first_accepted([rows[i]["id"] for i in near])     # only those it may concern
    for i in near:
        for j, r in enumerate(removed):
            before = first.get(rows[i]["id"], np.inf) < (r["removed_at"] or 0)   # compared by pixels, if found
            bits = int(min(corners[i, j], flipped[i, j]) if before else min(views[i, j], corners[i, j], flipped[i, j]))
            if bits > LOOKALIKE_BITS:
                continue
            what, why_not = (("", "its file is gone, so no pixel check") if not before else
                             ("a mirror image of ", "curate's pixel check never compares flips")
                             if flipped[i, j] <= corners[i, j] else
                             ("a corner crop of ", "curate's search never compares a corner window"))
            why = (f"held: looks like {what}{taken_down_name(r)} ({takedown_reason(r)}): perceptual hashes {bits} "
                   f"bits apart ({why_not}); undo this if it is another picture")
            if overrides.hold(catalog, rows[i]["id"], why, client) is not None:
                held.append(rows[i])
                log.warning("candidate %s (%s:%s) %s", rows[i]["id"], rows[i]["source"], rows[i]["photo_id"], why)
            break
    return held


def lookalike_bits(rows: list[dict], removed: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rows x photos taken down, the least bits apart: (views) every view against every view, as the
    candidate search; (corners) the whole image against the photo's corner windows; (flipped) the
    whole image against the photo's mirror image's views (`window_bits`: 64 where more than
    LOOKALIKE_BITS apart, or where the photo has none kept)."""
    mine = hash_matrix(rows)
    views = np.full((len(rows), len(removed)), 64, dtype=np.int64)
    corners, flipped = views.copy(), views.copy()
    for j, their in enumerate(hash_matrix(removed)):
        views[:, j] = hamming_uint64(mine[:, :, None], their[None, None, :]).min(axis=(1, 2))
    for (i, j), (corner, mirror, crop) in window_bits(rows, removed, LOOKALIKE_BITS).items():
        corners[i, j], flipped[i, j] = min(corner, crop), mirror     # a takedown keeps no crop windows
    return views, corners, flipped


def window_bits(rows: list[dict], photos: list[dict], bits: int) -> dict[tuple[int, int], tuple[int, int, int]]:
    """(row index, photo index) -> the least bits between the row's whole image's phash and the photo's
    corner windows, its mirror image's views, and its crop windows (a published test image's: 15-20 %
    off every side, a corner or one edge) (its `corner_hashes`, hashing.corner_phashes), each 64 when
    more than `bits` apart; for the pairs within `bits` by one or another. The one comparison of
    whole images with corner windows: of images with photos taken down (`lookalike_bits`) and with
    published test images (`decide.window_copies`). Searched as the candidate search searches
    (`neardup.find_pairs`), not as a rows x photos matrix: a curate compares every training image with
    every published test image."""
    kept = [(j, k, h) for j, p in enumerate(photos) for k, h in enumerate((p.get("corner_hashes") or "").split(",")) if h]
    if not rows or not kept or bits < 0:
        return {}
    mine, theirs = hex_to_uint64([r["phash"] for r in rows]), hex_to_uint64([h for _, _, h in kept])
    pairs = find_pairs(np.concatenate([mine, theirs]), bits)
    n = len(rows)
    pairs = pairs[(pairs[:, 0] < n) & (pairs[:, 1] >= n)]       # (i, j), i < j: an image, then a window
    apart = hamming_uint64(mine[pairs[:, 0]], theirs[pairs[:, 1] - n])
    out: dict[tuple[int, int], tuple[int, int, int]] = {}
    for i, w, d in zip(pairs[:, 0].tolist(), (pairs[:, 1] - n).tolist(), apart.tolist()):
        j, k, _ = kept[w]
        least = list(out.get((i, j), (64, 64, 64)))
        kind = 0 if k < CORNER_WINDOWS else 1 if k < CORNER_WINDOWS + MIRROR_VIEWS else 2
        least[kind] = min(least[kind], d)
        out[(i, j)] = tuple(least)
    return out


def hold_if_looks_taken_down(catalog: Catalog, cid: int, client: str) -> dict | None:
    """After a review action or undo that leaves an image in the next build with no review decision in
    force: the comparison with the photos taken down that curate makes, and skips while a review
    decides (the verify19 audit: a reject made before an image's first curate, undone after it,
    published a copy of a photo taken down). Held as curate holds (by the corner windows and the
    mirror image's views alone for a photo taken down after it was first accepted), an undone hold
    not again; the row."""
    if not catalog.has_removed_hashes():      # the usual case, read in one row; the hashes under the lock
        return None
    with catalog.locked_candidate(cid) as row:
        include = overrides.override_of(catalog, cid)["include"] if catalog.has_table("review_overrides") else None
        if row is None or not row["phash"] or include is not None or not next_build(row)[0]:
            return None
        held = hold_lookalikes_of_removed(catalog, [row], client=client)
    return held[0] if held else None


def takedown_reason(row: dict) -> str:
    """The reason a removed candidate was taken down, as `mlc remove` was given it."""
    return (row["reason"] or "").removeprefix("takedown:")


def hash_matrix(rows: list[dict]) -> np.ndarray:
    """Each row's phash, then its centre-crop views' (hashing.view_phashes), padded with the phash."""
    width = 1 + len(VIEW_CROPS)
    hashes = []
    for r in rows:
        own = [r["phash"], *filter(None, (r["view_hashes"] or "").split(","))][:width]
        hashes += own + own[:1] * (width - len(own))
    return hex_to_uint64(hashes).reshape(len(rows), width)
