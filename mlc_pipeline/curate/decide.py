"""Duplicate decisions over a curate's verified rows: inside each purpose (`dedup.resolve_duplicates`),
across purposes (a probe or pool image that duplicates a training image would leak, so it goes), and
against the test images of published dataset versions. What to decide only; `stage.py` reads the
catalog, inspects the files and records the decisions.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from functools import partial

import numpy as np
from PIL import Image, ImageOps

from mlc_pipeline.catalog.pairs import review_note, review_partner
from mlc_pipeline.config import Config
from mlc_pipeline.curate.dedup import DedupItem, Look, resolve_duplicates, settle_labels, view_distance
from mlc_pipeline.curate.hashing import hex_to_uint64
from mlc_pipeline.curate.lookalikes import LOOKALIKE_BITS, window_bits
from mlc_pipeline.curate.neardup import find_pairs
from mlc_pipeline.curate.pair_pool import prefetch_scores
from mlc_pipeline.curate.similarity import CONFIRM, METHOD, SURE, FileSimilarity, PairScores, Signature, similarity

PURPOSE_PRIORITY = ("train", "probe", "pool")   # a duplicate across purposes stays in the first
# Image modes whose pixels hold no colour (Pillow's names, read from the file's header): 1-bit, 8-bit
# and 16/32-bit grey, with or without alpha. "P" (and "PA") is a palette of at most 256 colours.
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
PALETTE_MODES = {"P", "PA"}
LOOKS = PairScores(100_000)       # file identity (path, size, mtime) -> Look, for the process

log = logging.getLogger(__name__)


def look_of(path: str) -> Look | None:
    """Colour, encoding and JPEG quantisation of an image file, from its header alone (no pixel is
    decoded: a draft decode of every copy added ~15 % to a curate of thumbnails); None when it cannot
    be read."""
    try:
        st = os.stat(path)
        key = (os.fspath(path), st.st_size, st.st_mtime_ns)
        if (known := LOOKS.get(key)) is not None:
            return known
        with Image.open(path) as im:
            mode, encoding, quant = im.mode, f"{im.format}/{im.mode}", quant_sum(im)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("cannot read %s to compare it with its copies (ranked by size alone): %s", path, exc)
        return None
    look = Look(2 if mode in GREY_MODES else 1 if mode in PALETTE_MODES else 0, encoding, quant)
    LOOKS.put(key, look)
    return look


def quant_sum(im: Image.Image) -> int:
    """A JPEG's quantisation, from its header (Pillow reads the tables on open): the sum of the
    luminance and first chrominance tables, lower for a higher quality (a third table, where an
    encoder writes one, repeats the second). 0 for other formats."""
    tables = getattr(im, "quantization", None) or {}
    return sum(sum(tables.get(k, ())) for k in (0, 1))


class FileLooks:
    "`describe` for `resolve_duplicates`: the Look of each item's file (`paths`: id -> path)."

    def __init__(self, paths: dict):
        self.paths = paths

    def __call__(self, items: list[DedupItem]) -> dict[int, Look]:
        looks = {it.id: look_of(self.paths[it.id]) for it in items if self.paths.get(it.id)}
        return {i: look for i, look in looks.items() if look is not None}


def labels_of(row: dict) -> frozenset[str]:
    return frozenset() if row["label"] == "other" else frozenset(row["label"].split())


def dedup_item(r: dict) -> DedupItem:
    return DedupItem(id=r["id"], labels=labels_of(r), sha256=r["sha256"], phash=r["phash"],
                     pixels=(r["img_width"] or 0) * (r["img_height"] or 0), first_seen=r["first_seen_at"],
                     view_hashes=tuple(r["view_hashes"].split(",")) if r.get("view_hashes") else (),
                     n_bytes=r.get("bytes") or 0)


def resolve(cfg: Config, rows: list[dict], published_tests: list[dict] | None = None,
            confirm: FileSimilarity | None = None, mirrored: MirroredSimilarity | None = None,
            put_back: set[tuple[int, int]] = frozenset()) -> dict[int, tuple[str, str | None, int | None, str | None]]:
    """Decide every verified row: id -> (status, reason, duplicate_of, curated_label).

    `published_tests`: test images of published dataset versions (`published_test_images`); a
    train or pool row that duplicates one of them, or is a corner crop or mirror image of one
    (`window_copies`), is dropped as `*-duplicate-of-test`. `confirm`: scores pairs (given, it holds
    the scores kept from earlier curates, and gets this one's); `mirrored`, a row's mirror image
    against a test image, likewise (on `confirm`'s files). `put_back`: (a copy put back in review, the
    image curate kept in its place) (catalog.putback): that image is never dropped as a copy of the
    put-back one published in test (below).
    """
    threshold = cfg.curate.hamming_threshold
    confirm = confirm if confirm is not None else FileSimilarity({})
    mirrored = mirrored if mirrored is not None else MirroredSimilarity(confirm.paths, confirm.digests)
    confirm.paths.update({r["id"]: r["file_path"] for r in rows})
    confirm.digests.update({r["id"]: r["sha256"] for r in rows})
    ids = {r["id"] for r in rows}
    by_id = {r["id"]: r for r in rows}
    decisions: dict[int, tuple] = {}
    test_copies: list[tuple[dict, int]] = []     # (a row dropped as a copy of a test image, that image's candidate)
    if published_tests:
        confirm.paths.update({("test", k): t["file_path"] for k, t in enumerate(published_tests)})
        confirm.digests.update({("test", k): t["sha256"] for k, t in enumerate(published_tests)})
        tests = [dict(t, id=("test", k)) for k, t in enumerate(published_tests)]
        # The published test photos themselves stay: their split is fixed by their photo id.
        test_photos = {(t["source"], t["photo_id"]) for t in tests}
        exposed = [r for r in rows if r["purpose"] in ("train", "pool")     # pool feeds hard-negative mining
                   and (r["source"], r["photo_id"]) not in test_photos]
        # A byte copy of a test photo's own file is `exact` (the published file is a re-encode of it).
        own_bytes: dict[str, int] = {}
        for k, t in enumerate(tests):
            if t["candidate_id"] in ids:
                own_bytes.setdefault(by_id[t["candidate_id"]]["sha256"], k)     # the first version
        found = {r["id"]: (tests[own_bytes[r["sha256"]]]["id"], 0, "exact") for r in exposed if r["sha256"] in own_bytes}
        found.update(cross_duplicates(tests, [r for r in exposed if r["id"] not in found], threshold, confirm))
        found.update(window_copies(tests, [r for r in exposed if r["id"] not in found], confirm, mirrored))
        partners = review_partners(rows)
        for rid, (tid, dist, kind) in found.items():
            t = tests[tid[1]]
            keeper = t["candidate_id"] if t["candidate_id"] in ids else None   # None: no longer in this catalog
            if frozenset((rid, keeper)) in partners or (keeper, rid) in put_back:
                # a review pair, or a copy put back in review and the image kept in its place, published
                # apart before they shared a split: decided below, as before (the review keeps the copy in)
                continue
            if keeper is not None:
                test_copies.append((by_id[rid], keeper))
            decisions[rid] = ("duplicate", f"{kind}-duplicate-of-test:{t['version']}:d={dist}", keeper, None)
        rows = [r for r in rows if r["id"] not in decisions]
    by_purpose: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_purpose[r["purpose"]].append(r)
    kept_higher: list[dict] = []     # kept rows of purposes earlier in PURPOSE_PRIORITY
    groups: dict[int, list[int]] = {}  # keeper id -> the ids of its group, keeper first
    for purpose in PURPOSE_PRIORITY:
        group = by_purpose.get(purpose, [])
        if not group:
            continue
        # Across purposes first: a probe or pool image that duplicates a training image would leak.
        if kept_higher:
            dup_of = cross_duplicates(kept_higher, group, threshold, confirm)
            for rid, (kid, dist, kind) in dup_of.items():
                decisions[rid] = ("duplicate", f"{kind}-duplicate-of-{purpose_of(kept_higher, kid)}:d={dist}", kid, None)
            group = [r for r in group if r["id"] not in dup_of]
        result = resolve_duplicates([dedup_item(r) for r in group], threshold, confirm=confirm,
                                    prefetch=partial(prefetch_scores, confirm, workers=cfg.curate.workers),
                                    describe=FileLooks({r["id"]: r["file_path"] for r in group}))
        groups.update((g[0], g) for g in result.groups)
        conflicts = {i: f"conflict:{res}" for ids, _, res in result.conflicts for i in ids}
        for (a, b), _, dist, score in result.reviews:   # kept, but a person should look at them
            for me, other in ((a, b), (b, a)):
                conflicts.setdefault(me, review_note(other, dist, score))
        for r in group:
            rid = r["id"]
            if rid in result.duplicates:
                kid, kind, dist = result.duplicates[rid]
                decisions[rid] = ("duplicate", f"{kind}-duplicate:d={dist}", kid, None)
            else:
                labels = result.kept[rid]
                label = " ".join(sorted(labels)) if labels else "other"
                decisions[rid] = ("accepted", conflicts.get(rid), None, label)
                kept_higher.append(r)
    merge_into_test_keepers(decisions, test_copies, by_id, groups, threshold, confirm)
    return decisions


def review_partners(rows: list[dict]) -> set[frozenset]:
    """The review pairs the catalog records (`review:label-conflict:with=<id>`, either image's note):
    a near copy under other labels that a person is to decide on. Its images share a split in every
    version built since 2026-12-07 (dataset/splits.py); one published apart, in train and in test, is
    not dropped as a copy of its own partner's test image (audit curation29, finding 3: the class photo
    went, the mislabelled copy stayed in test, and the note for the person was gone)."""
    pairs = set()
    for r in rows:
        if (partner := review_partner(r.get("reason"))) is not None:
            pairs.add(frozenset((r["id"], partner[0])))
    return pairs


def merge_into_test_keepers(decisions: dict, test_copies: list[tuple[dict, int]], rows_by_id: dict[int, dict],
                            groups: dict[int, list[int]], threshold: int, confirm) -> None:
    """Labels merge into a published test image from its copies dropped for it, as they would if the
    copies were still compared with it here: a copy of the same purpose that is a byte copy, or a
    candidate (within `threshold`) scoring >= SURE. Dropping the copies first relabelled the test image
    in the next version with no change of input (a byte copy under another class made it multi-label,
    and the curate after the build took that label away)."""
    merged: dict[int, list[dict]] = defaultdict(list)
    for copy, keeper in test_copies:
        k = rows_by_id.get(keeper)
        if k is None or decisions[keeper][0] != "accepted" or k["purpose"] != copy["purpose"]:
            continue
        if copy["sha256"] != k["sha256"]:
            if view_distance(dedup_item(k), dedup_item(copy)) > threshold:
                continue
            score = confirm(keeper, copy["id"])
            if score is None or score < SURE:
                continue
        merged[keeper].append(copy)
    for keeper, copies in merged.items():
        group = [dedup_item(rows_by_id[i]) for i in groups.get(keeper, [keeper])]
        labels, resolution = settle_labels(group + [dedup_item(c) for c in copies], group[0])
        status, reason, dup_of, _ = decisions[keeper]
        decisions[keeper] = (status, f"conflict:{resolution}" if resolution else reason, dup_of,
                             " ".join(sorted(labels)) if labels else "other")


def purpose_of(rows: list[dict], rid: int) -> str:
    return next(r["purpose"] for r in rows if r["id"] == rid)


def cross_duplicates(kept: list[dict], new: list[dict], threshold: int, confirm) -> dict[int, tuple[int, int, str]]:
    """new row id -> (kept row id, phash distance, 'exact' | 'near') for new rows that are byte copies
    of a kept row, or within the threshold of one (any crop view) and confirmed by `confirm`.
    Each new row is compared with kept rows directly, nearest first: no chains."""
    items = [dedup_item(r) for r in kept + new]
    views = [(k, h) for k, it in enumerate(items) for h in (it.phash, *it.view_hashes)]
    owner = np.array([k for k, _ in views], dtype=np.int64)
    pairs = find_pairs(hex_to_uint64([h for _, h in views]), threshold) if views else np.zeros((0, 2), np.int64)
    n_kept = len(kept)
    candidates: dict[int, set[int]] = defaultdict(set)     # new index -> kept indices
    for i, j in zip(owner[pairs[:, 0]].tolist(), owner[pairs[:, 1]].tolist()):
        if (i < n_kept) != (j < n_kept):
            k, m = (i, j) if i < n_kept else (j, i)
            candidates[m].add(k)
    by_sha = defaultdict(list)
    for k, r in enumerate(kept):
        by_sha[r["sha256"]].append(k)
    out: dict[int, tuple[int, int, str]] = {}
    for m in range(n_kept, len(items)):
        nid = items[m].id
        if by_sha.get(items[m].sha256):
            out[nid] = (items[by_sha[items[m].sha256][0]].id, 0, "exact")
            continue
        for dist, k in sorted((view_distance(items[k], items[m]), k) for k in candidates.get(m, ())):
            score = confirm(items[k].id, nid)
            if score is not None and score >= CONFIRM:
                out[nid] = (items[k].id, dist, "near")
                break
    return out


MIRROR_METHOD = f"mirror:{METHOD}"    # MirroredSimilarity's scores in the catalog (pair_scores)


class MirroredSimilarity(FileSimilarity):
    """`FileSimilarity` of the first image's mirror image with the second (`similarity` never compares
    flips), its scores kept apart from the images' own: under MIRROR_METHOD in the catalog, and in its
    own memo for the process. `window_copies` asks it for a row against a published test image."""

    def __init__(self, paths: dict, digests: dict | None = None, known: dict | None = None):
        super().__init__(paths, digests, known, memo=MIRRORED)

    def compare(self, a: Signature, b: Signature) -> float:
        return similarity(Signature(ImageOps.mirror(a.image)), b)


MIRRORED = PairScores(100_000)        # (file mirrored, other file) -> score, for the process


def window_copies(tests: list[dict], new: list[dict], confirm: FileSimilarity,
                  mirrored: MirroredSimilarity) -> dict[int, tuple[tuple, int, str]]:
    """new row id -> (test image id, bits, 'corner' | 'mirror' | 'crop') for the new rows that are a
    corner crop, a mirror image or a 15-20 % crop of a published test image: whole image within
    LOOKALIKE_BITS of one of its corner windows, mirror views or crop windows (`lookalikes.window_bits`,
    the takedown's rule; `corner_hashes`), and confirmed by pixels as every near copy is, at CONFIRM: a
    corner or crop window by `confirm` (its centred alignments and anchored search find a crop of up to
    20 % per side), a mirror view by `mirrored`. The search compares centred views only, so these were
    never its candidates (the export26 audit: a 7.5 % corner crop of a v1 test photo trained in v2); by
    hashes alone, different drawings of the generated world come as close (docs/curation.md, "Test
    images of earlier versions never train"). Nearest first."""
    near: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
    for (i, j), (corner, mirror, crop) in window_bits(new, tests, LOOKALIKE_BITS).items():
        near[i] += [(bits, j, kind) for bits, kind in ((corner, "corner"), (mirror, "mirror"), (crop, "crop"))
                    if bits <= LOOKALIKE_BITS]
    out: dict[int, tuple[tuple, int, str]] = {}
    for i, found in near.items():
        for bits, j, kind in sorted(found):
            t, rid = tests[j]["id"], new[i]["id"]
            score = mirrored(rid, t) if kind == "mirror" else confirm(t, rid)
            if score is not None and score >= CONFIRM:
                out[rid] = (t, bits, kind)
                break
    return out
