"""Deciding which copy of a duplicated image stays, and what it is labelled.

Rules (docs/curation.md explains them and the measurements behind them):
1. Items with the same sha256 are exact duplicates: always one image, whatever their phashes.
2. Near duplicates need two signals. A *candidate* pair has a phash view within `threshold` bits
   of the other's (full image or a centre crop, see `hashing.view_phashes`); `confirm(a, b)` then
   scores the pixels (`similarity.FileSimilarity`). Only a candidate scoring >= `confirm_at` is a
   duplicate.
3. No chains: items are visited best first; an item not yet taken becomes a keeper and takes its
   *own* confirmed candidates. Every dropped item is therefore within the threshold of, and
   confirmed against, the very item kept for it (A~B and B~C never put A and C together).
4. The best copy (`_rank`): colour before a palette before grey (`Look.colour`, read from the files
   of the items that have a candidate by `describe`), then most pixels, then by encoding (lossless,
   then JPEG, then other formats; CMYK after RGB), then, within one encoding only: for JPEGs the finer
   quantisation (`Look.quant`: a re-encode at a lower quality has coarser tables; bytes also grow with
   noise and sharpening, so they do not count), for other encodings the larger file; then earliest
   `first_seen`, then lowest id.
5. Labels are merged only across sure duplicates: exact copies, or near ones scoring >= `sure_at`.
   A class item merged with an "other" item keeps the class (`class-wins`); different class sets
   give the union (`multi-label`, default) or the best class item's labels (`keep-best`). A
   confirmed pair with different labels that is not sure is a `Review`: both images are kept.
6. Every dropped item records the kept id, the kind ('exact' if its bytes equal the kept item's,
   else 'near') and its phash distance to the kept item (<= `threshold` for 'near').
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

import numpy as np

from mlc_pipeline.curate.hashing import hamming, hex_to_uint64
from mlc_pipeline.curate.neardup import find_pairs
from mlc_pipeline.curate.similarity import CONFIRM, SURE, Confirm

# A candidate is only a candidate (`confirm` decides), so the threshold trades the crops found against
# the pairs to confirm: at 12 bits any view finds 96-98 % of corner and one-sided crops of the fixture
# photos (79-82 % at 10) and confirms no pair of distinct photos; at 14 two distinct generated drawings
# confirm (docs/curation.md, section 5). phash sets 32 of its 64 bits: distances are even.
DEFAULT_THRESHOLD = 12

ClassConflict = Literal["multi-label", "keep-best"]

# Formats that lose nothing: a PNG of a JPEG holds what the JPEG decodes to, a JPEG of a PNG has lost some.
LOSSLESS = ("PNG", "BMP", "TIFF")


class Look(NamedTuple):
    "What a copy's file says of its quality beyond its size (`decide.FileLooks` reads it)."
    colour: int     # 0: colour, 1: a palette (at most 256 colours), 2: grey (no colour in its pixels)
    encoding: str   # "<format>/<mode>", e.g. "JPEG/RGB": quality is compared only within one
    quant: int = 0  # a JPEG's luminance + first chrominance quantisation tables, summed (lower: finer,
    #                 a higher quality); 0 for other formats (and unread): then bytes decide


NO_LOOK = Look(0, "")      # not read: ranked by pixels and bytes alone (as before looks existed)


@dataclass(frozen=True)
class DedupItem:
    id: int
    labels: frozenset[str]   # class names; empty = the "other" (negative) role
    sha256: str
    phash: str               # 16 hex digits
    pixels: int              # width * height
    first_seen: str          # sortable, e.g. an ISO timestamp
    view_hashes: tuple[str, ...] = ()   # phashes of centre crops (hashing.view_phashes), if known
    n_bytes: int = 0         # file size: of two copies with as many pixels and one encoding, the larger is kept
    look: Look | None = None  # colour and encoding; `resolve_duplicates(describe=...)` fills it in


class Duplicate(NamedTuple):
    kept_id: int
    kind: str                # 'exact' | 'near'
    distance: int            # Hamming distance of the phashes to the kept item's


class Conflict(NamedTuple):
    ids: tuple[int, ...]                     # the whole group, kept item first
    labels_seen: tuple[frozenset[str], ...]  # distinct label sets; frozenset() = "other"
    resolution: str                          # 'multi-label' | 'keep-best' | 'class-wins'


class Review(NamedTuple):
    "A confirmed but not sure near-duplicate pair whose labels differ: both kept, a person decides."
    ids: tuple[int, int]                     # (the better item, the other)
    labels_seen: tuple[frozenset[str], ...]
    distance: int                            # phash distance (best view pair)
    score: float                             # similarity score


class Candidate(NamedTuple):
    "A phash candidate pair that the second signal did not confirm (kept apart)."
    ids: tuple[int, int]
    distance: int
    score: float | None                      # None: a file could not be read


@dataclass
class DedupResult:
    kept: dict[int, frozenset[str]] = field(default_factory=dict)     # id -> final labels
    duplicates: dict[int, Duplicate] = field(default_factory=dict)    # dropped id -> why
    conflicts: list[Conflict] = field(default_factory=list)
    groups: list[list[int]] = field(default_factory=list)            # groups with > 1 member, kept first
    reviews: list[Review] = field(default_factory=list)
    unconfirmed: list[Candidate] = field(default_factory=list)


def resolve_duplicates(items: list[DedupItem], threshold: int = DEFAULT_THRESHOLD,
                       class_conflict: ClassConflict = "multi-label", confirm: Confirm | None = None,
                       confirm_at: float = CONFIRM, sure_at: float = SURE,
                       prefetch: Callable[[list[tuple]], object] | None = None,
                       describe: Callable[[list[DedupItem]], dict[int, Look]] | None = None) -> DedupResult:
    """Drop exact and confirmed near duplicates, keep the best item of each, settle its labels.

    `confirm(id_a, id_b)` returns a similarity score (or None when it cannot tell). Without it no
    near duplicate is confirmed, and only exact copies are dropped. `prefetch(pairs)`, if given, is
    told, before any is confirmed, the pairs (ids) the keepers will confirm if every candidate is
    confirmed (to score them in parallel; others are confirmed one by one as they come).
    `describe(items)`, if given, returns the `Look` of the items that have a near candidate (the
    only ones whose rank decides anything): which copy is kept then sees colour and encoding.
    """
    if class_conflict not in ("multi-label", "keep-best"):
        raise ValueError(f"unknown class_conflict rule {class_conflict!r}")
    if len({it.id for it in items}) != len(items):
        raise ValueError("DedupItem ids must be unique")
    result = DedupResult()
    units = _exact_units(items)                       # best item -> its byte-identical copies
    near = _near_candidates(list(units), threshold)   # id -> [(other id, distance)]
    if describe is not None and near:
        looks = describe([r for r in units if r.id in near])
        by_sha = {r.sha256: looks[r.id] for r in units if r.id in looks}     # same bytes, same look
        units = _exact_units([replace(it, look=by_sha[it.sha256]) if it.sha256 in by_sha else it for it in items])
    reps = sorted(units, key=_rank)
    unit_labels = {r.id: settle_labels(units[r], r, class_conflict)[0] for r in reps}
    by_id = {r.id: r for r in reps}
    neighbours = {i: sorted(((by_id[o], d) for o, d in lst), key=lambda x: (x[1], _rank(x[0])))
                  for i, lst in near.items()}
    if prefetch is not None and confirm is not None:
        prefetch(_pairs_if_all_confirmed(reps, neighbours))
    members: dict[int, list[DedupItem]] = {}          # keeper id -> every item it stands for
    taken: set[int] = set()
    for rep in reps:
        if rep.id in taken:
            continue
        taken.add(rep.id)
        members[rep.id] = list(units[rep])
        for other, distance in neighbours.get(rep.id, []):
            if other.id in taken:
                continue
            score = confirm(rep.id, other.id) if confirm is not None else None
            if score is None or score < confirm_at:
                result.unconfirmed.append(Candidate((rep.id, other.id), distance, score))
                continue
            if unit_labels[rep.id] != unit_labels[other.id] and score < sure_at:
                result.reviews.append(Review((rep.id, other.id), _labels_seen(units[rep] + units[other]),
                                             distance, score))
                continue
            taken.add(other.id)
            members[rep.id].extend(units[other])
    for keeper_id, group in members.items():
        best = group[0]
        labels, conflict = settle_labels(group, best, class_conflict)
        result.kept[keeper_id] = labels
        if len(group) == 1:
            continue
        ordered = [best] + sorted(group[1:], key=_rank)
        result.groups.append([m.id for m in ordered])
        if conflict is not None:
            result.conflicts.append(Conflict(tuple(m.id for m in ordered), _labels_seen(group), conflict))
        for m in ordered[1:]:
            kind = "exact" if m.sha256 == best.sha256 else "near"
            result.duplicates[m.id] = Duplicate(best.id, kind, view_distance(m, best))
    return result


def _pairs_if_all_confirmed(reps: list[DedupItem], neighbours: dict) -> list[tuple[int, int]]:
    """The pairs the loop above confirms if every candidate is confirmed: each keeper's candidates
    not taken yet (not every candidate pair: copies of one original are candidates of each other)."""
    taken, pairs = set(), []
    for rep in reps:
        if rep.id in taken:
            continue
        taken.add(rep.id)
        fresh = [other.id for other, _ in neighbours.get(rep.id, []) if other.id not in taken]
        pairs += [(rep.id, o) for o in fresh]
        taken.update(fresh)
    return pairs


def _exact_units(items: list[DedupItem]) -> dict[DedupItem, list[DedupItem]]:
    "Best item of each set of byte-identical items -> the set, best first."
    by_sha: dict[str, list[DedupItem]] = defaultdict(list)
    for it in items:
        by_sha[it.sha256].append(it)
    units = {}
    for same in by_sha.values():
        same.sort(key=_rank)
        units[same[0]] = same
    return units


def _views(item: DedupItem) -> list[str]:
    return [item.phash, *item.view_hashes]


def view_distance(a: DedupItem, b: DedupItem) -> int:
    "Smallest phash distance between any view of a and any view of b."
    return min(hamming(x, y) for x in _views(a) for y in _views(b))


def _near_candidates(reps: list[DedupItem], threshold: int) -> dict[int, list[tuple[int, int]]]:
    """id -> [(other id, distance)] for every pair with some view pair within `threshold`. One
    multi-index search over all views of all items."""
    views = [(k, h) for k, it in enumerate(reps) for h in _views(it)]
    if len(reps) < 2:
        return {}
    owner = np.array([k for k, _ in views], dtype=np.int64)
    pairs = find_pairs(hex_to_uint64([h for _, h in views]), threshold)
    a, b = owner[pairs[:, 0]], owner[pairs[:, 1]]
    keep = a != b
    found = {(min(i, j), max(i, j)) for i, j in zip(a[keep].tolist(), b[keep].tolist())}
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for i, j in found:
        d = view_distance(reps[i], reps[j])
        out[reps[i].id].append((reps[j].id, d))
        out[reps[j].id].append((reps[i].id, d))
    return out


def _rank(item: DedupItem) -> tuple:
    """Sort key of the best copy: colour before a palette before grey, then most pixels, then the
    encoding (lossless, JPEG, others; RGB before CMYK), then within one encoding (a PNG is larger
    than the JPEG it came from, a q92 grey JPEG than a q85 colour one): a JPEG's finer quantisation
    tables, or, for other encodings and files not read, most bytes; then seen first, then lowest id.
    Of two JPEGs at one quality the first seen stays, however many bytes noise or sharpening added to
    the other (audit curation29, finding 6: such edits replaced their originals)."""
    look = item.look or NO_LOOK
    fmt, _, mode = look.encoding.partition("/")
    encoding = (0 if fmt in LOSSLESS else 1 if fmt in ("JPEG", "MPO", "") else 2, mode in ("CMYK", "YCbCr"), look.encoding)
    quality = (look.quant, 0) if look.quant else (0, -item.n_bytes)
    return (look.colour, -item.pixels, encoding, *quality, item.first_seen, item.id)


def settle_labels(members: list[DedupItem], best: DedupItem, class_conflict: ClassConflict = "multi-label"
                  ) -> tuple[frozenset[str], str | None]:
    "Final labels of the kept item and the conflict resolution applied (None when none was needed)."
    class_sets = {m.labels for m in members if m.labels}
    has_other = any(not m.labels for m in members)
    if not class_sets:
        return frozenset(), None
    if len(class_sets) > 1:
        if class_conflict == "multi-label":
            return frozenset().union(*class_sets), "multi-label"
        best_class_item = min((m for m in members if m.labels), key=_rank)
        return best_class_item.labels, "keep-best"
    (labels,) = class_sets
    return labels, "class-wins" if has_other else None


def _labels_seen(members: list[DedupItem]) -> tuple[frozenset[str], ...]:
    return tuple(sorted({m.labels for m in members}, key=lambda s: (len(s), sorted(s))))
