"""Near-duplicate search over 64-bit hashes without an O(N^2) pair loop.

Multi-index hashing with the generalised pigeonhole principle: cut the 64 bits into m chunks and
give chunk i a search radius r_i with sum(r_i + 1) >= threshold + 1. If two hashes differ in at most
`threshold` bits, some chunk i differs in at most r_i bits (otherwise the total would be at least
sum(r_i + 1)). So for every chunk we bucket the hashes by chunk value (a dense counting-sort table),
probe every bucket within radius r_i of each hash's chunk value, and check each candidate's full
64-bit distance with a vectorised popcount. The result is exact, not approximate.

For 1M hashes and threshold 8 the planner picks 3 chunks of 21-22 bits with radius 2 each (231
probes per chunk, about half a hash per bucket). Identical hashes are collapsed first, and candidate
expansion runs in bounded blocks, so a skewed bucket (many near-identical photos) costs time
proportional to its candidates but never an unbounded temporary array.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from mlc_pipeline.curate.hashing import popcount64

EXPAND_BLOCK = 4_000_000     # candidate pairs materialised at once (~100 MB of temporaries)

# Relative costs per element, measured on the 2-core dev box: a bucket probe and a candidate check
# each cost ~10 ns in this numpy code; the brute-force popcount costs ~3 ns per pair.
_COST_PROBE, _COST_CANDIDATE, _COST_BRUTE = 1.0, 1.0, 0.3


@dataclass(frozen=True)
class ChunkPlan:
    bits: tuple[int, ...]    # width of each chunk, high bits first; sums to 64
    radii: tuple[int, ...]   # Hamming radius searched inside each chunk

    def cost(self, n: int) -> float:
        "Estimated work for n uniformly random hashes (probes + expected candidates)."
        total = 0.0
        for b, r in zip(self.bits, self.radii):
            probes = sum(comb(b, k) for k in range(r + 1))
            total += n * probes * (_COST_PROBE + _COST_CANDIDATE * n / 2**b / 2)
        return total


def plan_chunks(n: int, threshold: int) -> ChunkPlan | None:
    "Cheapest exact chunking for n hashes, or None when blocked brute force is cheaper."
    best = None
    for m in range(3, 17):  # >= 3 chunks keeps each dense bucket table <= 2^22 entries (2 x 16 MiB)
        bits = tuple(64 // m + (i < 64 % m) for i in range(m))
        extra = max(0, threshold + 1 - m)  # radius still to hand out so that sum(r_i + 1) >= t + 1
        radii = tuple(extra // m + (i < extra % m) for i in range(m))  # wider chunks get more radius
        plan = ChunkPlan(bits, radii)
        if best is None or plan.cost(n) < best.cost(n):
            best = plan
    brute = _COST_BRUTE * n * (n - 1) / 2
    return None if brute < best.cost(n) else best


def find_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """All index pairs (i, j), i < j, whose hashes differ in at most `threshold` bits.

    Exact duplicates are included. Returns an int64 array of shape (k, 2), sorted by (i, j).
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    if not 0 <= threshold <= 64:
        raise ValueError(f"threshold must be within 0..64, got {threshold}")
    values, inverse = np.unique(hashes, return_inverse=True)
    value_pairs = _distinct_pairs(values, threshold)
    return _expand_to_items(inverse.ravel(), len(values), value_pairs)


def group_hashes(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Connected-component label per hash, linking hashes within `threshold` (transitively).

    Same result as `group_pairs(n, find_pairs(...))` but never lists the pairs among identical
    hashes, so 10,000 copies of one image cost O(10,000), not O(10,000^2).
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    values, inverse = np.unique(hashes, return_inverse=True)
    value_labels = group_pairs(len(values), _distinct_pairs(values, threshold))
    return _relabel_by_first_item(value_labels[inverse.ravel()])


def group_pairs(n: int, pairs: np.ndarray) -> np.ndarray:
    "Connected-component label (0..k-1, numbered by first member) for each of n items."
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = scipy.sparse.coo_matrix(
        (np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    return _relabel_by_first_item(labels.astype(np.int64))


def find_pairs_bruteforce(hashes: np.ndarray, threshold: int, block_elems: int = 4_000_000) -> np.ndarray:
    "Reference O(N^2) search in row blocks; same output contract as `find_pairs`."
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    rows = max(1, block_elems // max(n, 1))
    out = []
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        dist = popcount64(hashes[i0:i1, None] ^ hashes[None, i0:])
        i, j = np.nonzero(dist <= threshold)
        i, j = i + i0, j + i0  # both row and column blocks start at item i0
        keep = j > i
        out.append(np.stack([i[keep], j[keep]], axis=1))
    return _sorted_pairs(np.concatenate(out) if out else np.zeros((0, 2), np.int64))


# ---------------------------------------------------------------------------------------------
# Internals


def _distinct_pairs(values: np.ndarray, threshold: int) -> np.ndarray:
    "Pairs (a, b), a < b, of *distinct* sorted values within `threshold`."
    n = len(values)
    if threshold == 0 or n < 2:
        return np.zeros((0, 2), np.int64)
    plan = plan_chunks(n, threshold)
    if plan is None:
        return find_pairs_bruteforce(values, threshold)
    found = []
    shift = 64
    for bits, radius in zip(plan.bits, plan.radii):
        shift -= bits
        found.extend(_chunk_candidates(values, shift, bits, radius, threshold))
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(found)
    # A pair close in several chunks is found several times; keep one copy.
    codes = np.unique(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([codes // n, codes % n], axis=1)


def _chunk_candidates(values, shift, bits, radius, threshold):
    "Verified pairs among `values` whose chunk at `shift` lies within `radius` bits."
    keys = ((values >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
    order = np.argsort(keys, kind="stable")  # the buckets: items sorted by chunk value
    # Everything below works on positions in this sorted order: probes of consecutive positions hit
    # nearby buckets, so the table lookups stay cache-friendly; item ids are looked up at the end.
    sorted_keys, sorted_values = keys[order], values[order]
    ends = np.cumsum(np.bincount(keys, minlength=1 << bits))
    starts = ends - np.diff(ends, prepend=0)
    occupied = starts != ends  # 1 byte per bucket: a cheap first test before the 8-byte lookups
    # Same chunk value: each position pairs with the later positions of its bucket.
    pos = np.arange(len(values))
    yield from _verify(sorted_values, order, pos, pos + 1, ends[sorted_keys] - pos - 1, threshold)
    # Other chunk values within the radius. A pair of buckets (k, k ^ flip) is probed from one side
    # only: from the key whose bit at flip's highest set bit is 0 (exactly the side where k < k ^ flip).
    for top_bit, flips in _flip_masks_by_top_bit(bits, radius):
        side = np.flatnonzero((sorted_keys >> top_bit) & 1 == 0)
        side_keys = sorted_keys[side]
        for flip in flips:
            probe = side_keys ^ flip
            hit = np.flatnonzero(occupied[probe])
            query, probe = side[hit], probe[hit]
            first = starts[probe]
            yield from _verify(sorted_values, order, query, first, ends[probe] - first, threshold)


def _verify(sorted_values, order, query, first, count, threshold):
    """Item pairs (order[q], order[p]) for p in first[k] .. first[k]+count[k]-1, q = query[k], whose
    values differ in at most `threshold` bits.

    Works in blocks of ~EXPAND_BLOCK candidates (one huge bucket is its own block), so a skewed
    bucket costs time but never an unbounded temporary array.
    """
    keep = count > 0
    query, first, count = query[keep], first[keep], count[keep]
    if len(query) == 0:
        return
    cum = np.cumsum(count)
    cuts = np.searchsorted(cum, np.arange(EXPAND_BLOCK, cum[-1], EXPAND_BLOCK), side="right")
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(query)]):
        if lo == hi:
            continue
        c = count[lo:hi]
        offset = np.cumsum(c) - c
        partner = np.repeat(first[lo:hi] - offset, c) + np.arange(int(c.sum()))
        q = np.repeat(query[lo:hi], c)
        close = np.flatnonzero(popcount64(sorted_values[q] ^ sorted_values[partner]) <= threshold)
        a, b = order[q[close]], order[partner[close]]
        yield np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)


def _flip_masks_by_top_bit(bits: int, radius: int) -> list[tuple[int, list[int]]]:
    "Every non-zero mask of `bits` bits with at most `radius` bits set, grouped by highest set bit."
    groups = []
    for top in range(bits):
        lower = [sum(1 << p for p in rest) for k in range(radius)
                 for rest in combinations(range(top), k)]
        groups.append((top, [(1 << top) | m for m in lower]))
    return groups if radius > 0 else []


def _ranges(items, first, count, order):
    "Pairs (items[k], order[first[k] + t]) for every k and 0 <= t < count[k], as two arrays."
    offset = np.cumsum(count) - count
    a = np.repeat(items, count)
    b = order[np.repeat(first - offset, count) + np.arange(int(count.sum()))]
    return a, b


def _expand_to_items(inverse: np.ndarray, n_values: int, value_pairs: np.ndarray) -> np.ndarray:
    "Pairs of distinct values -> pairs of items: every copy x every copy, plus copies among themselves."
    order = np.argsort(inverse, kind="stable")  # items grouped by value
    counts = np.bincount(inverse, minlength=n_values)
    starts = np.cumsum(counts) - counts
    # Copies of the same value: each pairs with the copies after it (like a same-bucket search).
    pos = np.arange(len(inverse))
    value = inverse[order]
    a, b = _ranges(order, pos + 1, starts[value] + counts[value] - pos - 1, order)
    # Copies of value u x copies of value v for each close pair (u, v).
    u, v = value_pairs[:, 0], value_pairs[:, 1]
    pair_index, a_copy = _ranges(np.arange(len(u)), starts[u], counts[u], order)
    vs = v[pair_index]
    a2, b2 = _ranges(a_copy, starts[vs], counts[vs], order)
    a, b = np.concatenate([a, a2]), np.concatenate([b, b2])
    return _sorted_pairs(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))


def _sorted_pairs(pairs: np.ndarray) -> np.ndarray:
    pairs = pairs.astype(np.int64).reshape(-1, 2)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _relabel_by_first_item(labels: np.ndarray) -> np.ndarray:
    "Renumber labels 0..k-1 in order of each group's first item, so results are deterministic."
    _, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first_index), np.int64)
    rank[np.argsort(first_index)] = np.arange(len(first_index))
    return rank[inverse.ravel()]
