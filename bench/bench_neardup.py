"""Near-duplicate search: our multi-index `find_pairs` vs imagededup's brute-force `find_duplicates`.

1. 1,000,000 uniform random 64-bit hashes with 1,000 planted pairs at distances 0..8, threshold 8:
   time `find_pairs`, check every planted pair is found.
2. A 20,000-hash sample (all planted pairs that fall in it + random others): ours == exact brute
   force, and ours vs imagededup `PHash().find_duplicates(encoding_map=..., max_distance_threshold=8)`
   (its Cython brute force on all CPUs) on the same sample; the ratio is printed. imagededup is
   O(N^2), so its 1M time is also extrapolated from the sample.

    .venv/bin/python bench/bench_neardup.py            # 1,000,000 hashes
    .venv/bin/python bench/bench_neardup.py --quick    # 200,000 hashes, 5,000-hash sample
    .venv/bin/python bench/bench_neardup.py --n 3000000 --sample 0   # 1M images x 3 views, no baseline

CPU time is printed beside wall time: on a shared machine the wall time mostly measures the others.
Each side's time is a first call: ours on 1M hashes is this process's first, ours on the sample runs
in a fresh process (numba loads its compiled kernel from its cache, or compiles it when the cache is
empty: run once beforehand for the figures below), imagededup's is its first call.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlc_pipeline.curate.hashing import uint64_to_hex  # noqa: E402
from mlc_pipeline.curate.neardup import find_pairs, find_pairs_bruteforce, plan_chunks  # noqa: E402


def planted_hashes(n: int, n_planted: int, max_distance: int, seed: int = 0):
    "Random hashes; `n_planted` (src, dst) pairs where dst = src with 0..max_distance bits flipped."
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    ends = rng.choice(n, 2 * n_planted, replace=False)
    src, dst = ends[:n_planted], ends[n_planted:]
    distances = np.arange(n_planted) % (max_distance + 1)
    for s, d, k in zip(src, dst, distances):
        value = int(hashes[s])
        for bit in rng.choice(64, k, replace=False):
            value ^= 1 << int(bit)
        hashes[d] = value
    planted = np.sort(np.stack([src, dst], axis=1), axis=1)
    return hashes, planted, distances


def imagededup_pairs(sample: np.ndarray, threshold: int) -> tuple[float, set[tuple[int, int]]]:
    import imagededup.methods.hashing  # noqa: F401 -- creates its INFO-level logger
    from imagededup.methods import PHash

    logging.getLogger("imagededup.methods.hashing").setLevel(logging.WARNING)
    logging.getLogger("imagededup.handlers.search.retrieval").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Parameter num_enc_workers has no effect")
    encoding_map = {str(i): h for i, h in enumerate(uint64_to_hex(sample))}
    start = time.perf_counter()
    found = PHash(verbose=False).find_duplicates(encoding_map=encoding_map, max_distance_threshold=threshold)
    seconds = time.perf_counter() - start
    pairs = {(min(int(a), int(b)), max(int(a), int(b))) for a, dups in found.items() for b in dups}
    return seconds, pairs


def sample_of(hashes: np.ndarray, planted: np.ndarray, size: int) -> np.ndarray:
    "The planted pairs' ends first (so the sample has real positives), then random others."
    rng = np.random.default_rng(1)
    keep = planted[: size // 4].ravel()
    others = np.setdiff1d(rng.choice(len(hashes), size, replace=False), keep)[: size - len(keep)]
    return hashes[np.concatenate([keep, others])]


def sample_child(n: int, n_planted: int, threshold: int, size: int) -> None:
    "A fresh process: the same sample, and the time of its first `find_pairs` call, printed last."
    hashes, planted, _ = planted_hashes(n, n_planted, threshold)
    sample = sample_of(hashes, planted, size)
    start = time.perf_counter()
    find_pairs(sample, threshold)
    print(time.perf_counter() - start)


def main() -> None:
    if sys.argv[1:2] == ["--sample-child"]:
        return sample_child(*map(int, sys.argv[2:6]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true",
                        help="200,000 hashes and a 5,000-hash sample (imagededup needs ~3.5 min for 20,000)")
    parser.add_argument("--threshold", type=int, default=8)
    parser.add_argument("--planted", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=20_000)
    args = parser.parse_args()
    n = 200_000 if args.quick else args.n
    if args.quick:
        args.sample = 5_000
    t = args.threshold

    hashes, planted, distances = planted_hashes(n, args.planted, t)
    print(f"{n:,} random hashes, {args.planted} planted pairs at distances 0..{t}, threshold {t}; "
          f"plan {plan_chunks(n, t)}")
    start, cpu = time.perf_counter(), time.process_time()
    pairs = find_pairs(hashes, t)
    full_s, full_cpu = time.perf_counter() - start, time.process_time() - cpu
    found = {tuple(p) for p in pairs.tolist()}
    missed = [tuple(p) for p in planted.tolist() if tuple(p) not in found]
    print(f"ours      find_pairs on {n:,}: {full_s:6.2f} s ({full_cpu:.1f} s CPU; load average "
          f"{os.getloadavg()[0]:.1f}), {len(pairs)} pairs, "
          f"planted found {args.planted - len(missed)}/{args.planted}"
          f"{'' if not missed else f'  MISSED {missed[:5]}'}")

    if args.sample == 0:
        return
    sample = sample_of(hashes, planted, args.sample)
    # Our side's sample time is its first call in a fresh process, as imagededup's is: in this process
    # the kernel is already loaded by the run above (0.03 s against 0.6 s with numba's cache filled, 11 s
    # with it empty: the bench23 audit)
    child = subprocess.run([sys.executable, __file__, "--sample-child", str(n), str(args.planted), str(t),
                            str(args.sample)], capture_output=True, text=True, check=True)
    ours_s = float(child.stdout.split()[-1])
    start = time.perf_counter()
    ours = find_pairs(sample, t)
    warm_s = time.perf_counter() - start
    brute = find_pairs_bruteforce(sample, t)
    print(f"ours      find_pairs on {len(sample):,}: {ours_s:6.3f} s as the first call of a fresh process "
          f"({warm_s:.3f} s once loaded), {len(ours)} pairs; equal to brute force: {np.array_equal(ours, brute)}")
    try:
        import imagededup  # noqa: F401
    except ImportError:
        print("baseline  imagededup is not installed (pip install -e .[bench]): comparison skipped")
        return
    base_s, base_pairs = imagededup_pairs(sample, t)
    print(f"baseline  imagededup find_duplicates on {len(sample):,}: {base_s:6.3f} s, {len(base_pairs)} pairs; "
          f"same pairs as ours: {base_pairs == {tuple(p) for p in ours.tolist()}}")
    print(f"ratio     baseline / ours at {len(sample):,} = {base_s / ours_s:.1f}x")
    extrapolated = base_s * (n / len(sample)) ** 2
    print(f"          imagededup at {n:,} extrapolated (O(N^2)): ~{extrapolated:,.0f} s "
          f"= ~{extrapolated / full_s:,.0f}x our measured {full_s:.1f} s")


if __name__ == "__main__":
    main()
