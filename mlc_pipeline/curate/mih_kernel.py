"""The compiled inner loop of multi-index hashing (neardup.py holds the plan and the bookkeeping).

One call searches one chunk of the 64-bit hashes for one group of flip masks: for every hash on the
probing side of a mask, look up the bucket `key ^ mask` in a CSR table of the hashes sorted by
chunk value, and keep each bucket member within `threshold` bits on all 64. Compiled by numba and
released from the GIL, so neardup runs several groups at once on threads. The numpy version of the
same loop did ~10 vectorised passes per probe and took 60 s of CPU for 3M hashes at threshold 8;
here a probe is a bitmap test and, for an occupied bucket, a popcount per member
(docs/curation.md, section 3).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def _popcount(typingctx, x):
    "Bits set in a uint64: LLVM's ctpop, one POPCNT instruction."
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.uint64(types.uint64), codegen


@numba.njit(cache=True, nogil=True)
def chunk_pairs(sorted_keys, sorted_values, order, bucket_starts, occupied, masks, tops, same_bucket, threshold):
    """Pairs (order[i], order[p]) whose values differ in at most `threshold` bits, where position p
    lies in bucket `sorted_keys[i] ^ masks[g]` and bit `tops[g]` (the mask's highest set bit) of
    `sorted_keys[i]` is 0, so each pair of buckets is probed from one side only. `masks` is grouped
    by top bit. With `same_bucket`, also the pairs within each bucket (i < p).

    sorted_keys: chunk value per position, ascending; sorted_values: the 64-bit hashes in that order;
    order: position -> item index; bucket_starts: CSR offsets (2^bits + 1 entries); occupied: a
    bitmap of the non-empty buckets (uint64 words), small enough to stay in cache, so most probes of
    an empty bucket never touch the larger offset table.
    """
    n = sorted_keys.shape[0]
    limit = np.uint64(threshold)
    pairs = np.empty((4096, 2), np.int64)
    k = 0
    if same_bucket:
        for i in range(n):
            value = sorted_values[i]
            for p in range(i + 1, bucket_starts[sorted_keys[i] + 1]):
                if _popcount(value ^ sorted_values[p]) <= limit:
                    if k == pairs.shape[0]:
                        pairs = _grown(pairs, k, 1)
                    pairs[k, 0], pairs[k, 1] = order[i], order[p]
                    k += 1
    side = np.empty(n, order.dtype)
    g = 0
    while g < masks.shape[0]:
        top = tops[g]
        # The positions probing for this top bit, in key order: probes of consecutive positions
        # land in nearby buckets, so the table lookups stay cache-friendly.
        n_side = 0
        for i in range(n):
            if (sorted_keys[i] >> top) & 1 == 0:
                side[n_side] = i
                n_side += 1
        while g < masks.shape[0] and tops[g] == top:
            s = 0
            while s < n_side:  # the probe loop stops when `pairs` may overflow; grow it and go on
                k, s = _probe(sorted_keys, sorted_values, order, bucket_starts, occupied, side, s, n_side,
                              masks[g], limit, pairs, k)
                if s < n_side:
                    pairs = _grown(pairs, k, n)
            g += 1
    return pairs[:k]


@numba.njit(cache=True, nogil=True)
def _probe(sorted_keys, sorted_values, order, bucket_starts, occupied, side, s, n_side, mask, limit, pairs, k):
    """Probe `key ^ mask` for side positions s.. and append the close pairs at pairs[k:]; return
    (k, where it stopped). It stops before a bucket that might not fit, so `pairs` is never
    reassigned here: an array reassigned inside the hot loop cost numba a reference count per probe."""
    capacity = pairs.shape[0]
    while s < n_side:
        i = side[s]
        probe = sorted_keys[i] ^ mask
        if (occupied[probe >> 6] >> (probe & 63)) & 1:
            start, end = bucket_starts[probe], bucket_starts[probe + 1]
            if k + (end - start) > capacity:
                return k, s
            value = sorted_values[i]
            for p in range(start, end):
                if _popcount(value ^ sorted_values[p]) <= limit:
                    pairs[k, 0], pairs[k, 1] = order[i], order[p]
                    k += 1
        s += 1
    return k, s


@numba.njit(cache=True)
def _grown(pairs, k, at_least):
    "A copy of pairs[:k] in an array with room for `at_least` more rows (at least twice the size)."
    bigger = np.empty((max(2 * pairs.shape[0], k + at_least), 2), np.int64)
    bigger[:k] = pairs[:k]
    return bigger
