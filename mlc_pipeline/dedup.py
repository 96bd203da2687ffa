"""Deciding which copy of a duplicated image stays, and what it is labelled.

Rules (docs/curation.md explains them and the threshold measurements):
1. Items with the same sha256 (exact) or phashes within `threshold` bits (near) are linked;
   links are transitive, so a group is a connected component.
2. Each group keeps ONE item, the best: most pixels, then earliest `first_seen`, then lowest id.
3. Labels of the kept item: a class image must never also be an "other" negative, so if a group mixes
   class items and "other" items (empty label set) the class labels win (`class-wins`). If it mixes
   different class label sets, `class_conflict` decides: "multi-label" (default) gives the kept
   item the union of the class labels; "keep-best" keeps the best class item's labels.
4. Every dropped item records the kept id, the kind ('exact' if its bytes equal the kept item's,
   else 'near') and its Hamming distance to the kept item (which can exceed `threshold` when the
   link is transitive).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np

from .hashing import hamming, hex_to_uint64
from .neardup import group_hashes, group_pairs

# Chosen with bench/calibrate_threshold.py on the 398 fixture photos: at 10 bits every re-encoded,
# resized (50-90%) or brightened copy is found, 78% of 5%-crops are, and no pair of distinct photos is
# that close (the closest distinct pair differs by 14 bits). phash sets exactly 32 of its 64 bits, so
# distances are even and 10 behaves like 11.
DEFAULT_THRESHOLD = 10

ClassConflict = Literal["multi-label", "keep-best"]


@dataclass(frozen=True)
class DedupItem:
    id: int
    labels: frozenset[str]   # class names; empty = the "other" (negative) role
    sha256: str
    phash: str               # 16 hex digits
    pixels: int              # width * height
    first_seen: str          # sortable, e.g. an ISO timestamp


class Duplicate(NamedTuple):
    kept_id: int
    kind: str                # 'exact' | 'near'
    distance: int            # Hamming distance of the phashes to the kept item's


class Conflict(NamedTuple):
    ids: tuple[int, ...]                     # the whole group, kept item first
    labels_seen: tuple[frozenset[str], ...]  # distinct label sets; frozenset() = "other"
    resolution: str                          # 'multi-label' | 'keep-best' | 'class-wins'


@dataclass
class DedupResult:
    kept: dict[int, frozenset[str]] = field(default_factory=dict)     # id -> final labels
    duplicates: dict[int, Duplicate] = field(default_factory=dict)    # dropped id -> why
    conflicts: list[Conflict] = field(default_factory=list)
    groups: list[list[int]] = field(default_factory=list)            # groups with > 1 member, kept first


def resolve_duplicates(items: list[DedupItem], threshold: int = DEFAULT_THRESHOLD,
                       class_conflict: ClassConflict = "multi-label") -> DedupResult:
    "Group exact and near duplicates, keep the best item per group and settle its labels."
    if class_conflict not in ("multi-label", "keep-best"):
        raise ValueError(f"unknown class_conflict rule {class_conflict!r}")
    if len({it.id for it in items}) != len(items):
        raise ValueError("DedupItem ids must be unique")
    result = DedupResult()
    for members in _groups(items, threshold):
        if len(members) == 1:
            result.kept[members[0].id] = members[0].labels
            continue
        best = min(members, key=_rank)
        labels, conflict = _settle_labels(members, best, class_conflict)
        result.kept[best.id] = labels
        ordered = [best] + sorted((m for m in members if m is not best), key=_rank)
        result.groups.append([m.id for m in ordered])
        if conflict is not None:
            result.conflicts.append(Conflict(tuple(m.id for m in ordered), _labels_seen(members), conflict))
        for m in ordered[1:]:
            kind = "exact" if m.sha256 == best.sha256 else "near"
            result.duplicates[m.id] = Duplicate(best.id, kind, hamming(m.phash, best.phash))
    return result


def _groups(items: list[DedupItem], threshold: int) -> list[list[DedupItem]]:
    "Connected components of exact (sha256) and near (phash) links, in order of first member."
    n = len(items)
    if n == 0:
        return []
    near = group_hashes(hex_to_uint64([it.phash for it in items]), threshold)
    _, exact = np.unique(np.array([it.sha256 for it in items]), return_inverse=True)
    # Link every item to the first item of its near group and of its exact group: O(n) edges.
    links = [np.stack([_first_of_label(labels)[labels], np.arange(n)], axis=1) for labels in (near, exact.ravel())]
    component = group_pairs(n, np.concatenate(links))
    order = np.argsort(component, kind="stable")
    bounds = np.flatnonzero(np.diff(component[order])) + 1
    return [[items[i] for i in part] for part in np.split(order, bounds)]


def _first_of_label(labels: np.ndarray) -> np.ndarray:
    "For contiguous labels 0..k-1, the index of the first item carrying each label."
    _, first = np.unique(labels, return_index=True)
    return first


def _rank(item: DedupItem) -> tuple:
    "Sort key of the best copy: most pixels, then seen first, then lowest id."
    return (-item.pixels, item.first_seen, item.id)


def _settle_labels(members: list[DedupItem], best: DedupItem, class_conflict: ClassConflict
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
