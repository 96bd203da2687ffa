"""Near-duplicate search over 64-bit hashes without an O(N^2) pair loop.

Multi-index hashing with the generalised pigeonhole principle: cut the 64 bits into m chunks and
give chunk i a search radius r_i with sum(r_i + 1) >= threshold + 1. If two hashes differ in at most
`threshold` bits, some chunk i differs in at most r_i bits (otherwise the total would be at least
sum(r_i + 1)). So for every chunk we bucket the hashes by chunk value (a dense counting-sort table),
probe every bucket within radius r_i of each hash's chunk value, and check each candidate's full
64-bit distance with a vectorised popcount. The result is exact, not approximate.

For 1M hashes and threshold 8 the planner picks 3 chunks of 21-22 bits with radius 2 each (231
probes per chunk, about half a hash per bucket). Identical hashes are collapsed first. The probing
loop is compiled (mih_kernel.py, numba) and runs groups of flip masks on threads; its output grows
with the pairs found, so a skewed bucket (many near-identical photos) costs time in proportion to its
candidates but no temporary arrays. Inputs too small to repay loading the kernel go to brute force.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from math import comb
from typing import Literal

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from mlc_pipeline.curate.hashing import popcount64

Method = Literal["auto", "index", "brute"]


# Costs in ns, measured on the 2-core dev box (AMD EPYC, one thread) with the compiled kernel: a
# probe of an empty bucket is a bitmap test (2.4 ns); an occupied one adds the offset lookups and a
# mispredicted branch or two (7.6 ns); each candidate is a popcount (1.35 ns). Blocked numpy brute
# force costs 6.6 ns per pair. The index path also loads the compiled kernel (~0.5 s from numba's
# cache; the very first run on a machine compiles it, ~8 s), so small inputs go to brute force.
_NS_PROBE_EMPTY, _NS_PROBE_OCCUPIED, _NS_CANDIDATE, _NS_BRUTE_PAIR = 2.4, 7.6, 1.35, 6.6
_NS_INDEX_SETUP = 0.5e9


@dataclass(frozen=True)
class ChunkPlan:
    bits: tuple[int, ...]    # width of each chunk, high bits first; sums to 64
    radii: tuple[int, ...]   # Hamming radius searched inside each chunk

    def cost(self, n: int) -> float:
        "Estimated ns for n uniformly random hashes: probes (from one side) plus expected candidates."
        total = _NS_INDEX_SETUP
        for b, r in zip(self.bits, self.radii):
            per_bucket = n / 2**b
            masks = sum(comb(b, k) for k in range(1, r + 1))
            per_probe = _NS_PROBE_EMPTY + _NS_PROBE_OCCUPIED * -math.expm1(-per_bucket) + _NS_CANDIDATE * per_bucket
            total += n / 2 * (masks * per_probe + per_bucket * _NS_CANDIDATE)
        return total


def plan_chunks(n: int, threshold: int, force_index: bool = False) -> ChunkPlan | None:
    "Cheapest exact chunking for n hashes, or None when blocked brute force is cheaper."
    best = None
    for m in range(3, 17):  # >= 3 chunks keeps each dense bucket table <= 2^22 entries
        bits = tuple(64 // m + (i < 64 % m) for i in range(m))
        extra = max(0, threshold + 1 - m)  # radius still to hand out so that sum(r_i + 1) >= t + 1
        radii = tuple(extra // m + (i < extra % m) for i in range(m))  # wider chunks get more radius
        plan = ChunkPlan(bits, radii)
        if best is None or plan.cost(n) < best.cost(n):
            best = plan
    brute = _NS_BRUTE_PAIR * n * (n - 1) / 2
    return None if brute < best.cost(n) and not force_index else best


def find_pairs(hashes: np.ndarray, threshold: int, method: Method = "auto") -> np.ndarray:
    """All index pairs (i, j), i < j, whose hashes differ in at most `threshold` bits.

    Exact duplicates are included. Returns an int64 array of shape (k, 2), sorted by (i, j).
    `method`: "auto" (the planner's choice), "index" (multi-index hashing) or "brute" (blocked O(N^2)).
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    if not 0 <= threshold <= 64:
        raise ValueError(f"threshold must be within 0..64, got {threshold}")
    values, inverse = np.unique(hashes, return_inverse=True)
    value_pairs = _distinct_pairs(values, threshold, method)
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


def _distinct_pairs(values: np.ndarray, threshold: int, method: Method = "auto") -> np.ndarray:
    "Pairs (a, b), a < b, of *distinct* sorted values within `threshold`."
    n = len(values)
    if threshold == 0 or n < 2:
        return np.zeros((0, 2), np.int64)
    if method not in ("auto", "index", "brute"):
        raise ValueError(f"method must be auto, index or brute, got {method!r}")
    plan = None if method == "brute" else plan_chunks(n, threshold, force_index=method == "index")
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
    from mlc_pipeline.curate.mih_kernel import chunk_pairs  # numba: imported (and compiled) only when used
    index = np.int32 if len(values) < 2**31 else np.int64  # half the memory traffic of int64
    keys = ((values >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(index)
    order = np.argsort(keys, kind="stable").astype(index)  # the buckets: items sorted by chunk value
    sorted_keys, sorted_values = keys[order], values[order]
    counts = np.bincount(keys, minlength=1 << bits)
    bucket_starts = np.zeros((1 << bits) + 1, index)
    np.cumsum(counts, out=bucket_starts[1:])
    occupied = np.packbits(counts > 0, bitorder="little")
    occupied = np.pad(occupied, (0, -len(occupied) % 8)).view(np.uint64)  # little-endian words
    masks, tops = _flip_masks(bits, radius)
    # The masks split into groups of about equal size, searched at once on threads (the kernel
    # releases the GIL); the first group also pairs the items within each bucket.
    n_groups = max(1, min(len(masks), 4 * _threads()))
    cuts = np.linspace(0, len(masks), n_groups + 1).round().astype(int)
    jobs = [(masks[lo:hi], tops[lo:hi], k == 0) for k, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:]))]

    def search(job):
        return chunk_pairs(sorted_keys, sorted_values, order, bucket_starts, occupied, *job, threshold)

    with ThreadPoolExecutor(_threads()) as pool:
        for pairs in pool.map(search, jobs):
            if len(pairs):
                yield np.stack([np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])],
                               axis=1)


def _threads() -> int:
    "CPUs this process may use (a Dask worker or a container may be given fewer than the machine has)."
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _flip_masks(bits: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    "Every non-zero mask of <= `radius` bits, grouped by highest set bit, and that bit per mask."
    groups = _flip_masks_by_top_bit(bits, radius)
    masks = np.array([m for _, flips in groups for m in flips], dtype=np.int32)
    tops = np.array([top for top, flips in groups for _ in flips], dtype=np.int32)
    return masks, tops


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
