"""Near-duplicate search time and memory as the number of hashes grows, up to 10,000,000.

For each size: uniform random 64-bit hashes with planted pairs at distances 0..threshold (the same
generator as bench_neardup.py), one `find_pairs` call, its wall time, the pairs found, whether every
planted pair was found, and the process's peak RSS growth. Each size runs in a fresh child process so
the peak memory is that size's alone; its time includes loading the compiled kernel (~0.5 s), and
its CPU time counts every thread. A size whose estimated memory would not fit in what
`/proc/meminfo` says is available is skipped, and the curve stops at the first size that runs past
`--budget-s`.

    nice -n 10 .venv/bin/python bench/bench_neardup_curve.py                     # 1M, 2M, 5M, 10M
    nice -n 10 .venv/bin/python bench/bench_neardup_curve.py --sizes 1e6 1e7 --threshold 8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BYTES_PER_HASH_ESTIMATE = 200    # generous: hashes, unique/inverse, chunk tables, candidate blocks


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def one_size(n: int, threshold: int, planted: int, out: mp.Queue) -> None:
    from bench_neardup import planted_hashes
    from mlc_pipeline.curate.neardup import find_pairs, plan_chunks

    hashes, pairs_planted, _ = planted_hashes(n, planted, threshold)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0, start = time.process_time(), time.perf_counter()   # process_time: every thread of the process
    pairs = find_pairs(hashes, threshold)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    found = {tuple(p) for p in pairs.tolist()} if len(pairs) < 5_000_000 else set(map(tuple, pairs.tolist()))
    missed = sum(tuple(p) not in found for p in pairs_planted.tolist())
    out.put({"n": n, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "pairs": int(len(pairs)), "planted_missed": missed,
             "plan": str(plan_chunks(n, threshold)), "peak_rss_growth_mib": round((rss1 - rss0) / 1024),
             "input_mib": round(hashes.nbytes / 2**20)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e6, 2e6, 5e6, 1e7])
    ap.add_argument("--threshold", type=int, default=8)
    ap.add_argument("--planted", type=int, default=1000)
    ap.add_argument("--budget-s", type=float, default=600, help="stop the curve after a size slower than this")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    rows = []
    ctx = mp.get_context("spawn")
    for n in (int(s) for s in args.sizes):
        need, avail = n * BYTES_PER_HASH_ESTIMATE, available_bytes()
        if need > avail:
            print(f"{n:>12,}: skipped, ~{need / 2**30:.1f} GiB estimated > {avail / 2**30:.1f} GiB available")
            break
        q = ctx.Queue()
        proc = ctx.Process(target=one_size, args=(n, args.threshold, args.planted, q))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"{n:>12,}: the child failed (exit {proc.exitcode}); stopping")
            break
        row = q.get()
        rows.append(row)
        print(f"{n:>12,}: {row['seconds']:8.2f} s ({row['cpu_seconds']:.1f} s CPU)  {n / row['seconds']:>10,.0f} hashes/s  {row['pairs']:>9,} pairs  "
              f"planted missed {row['planted_missed']}  peak +{row['peak_rss_growth_mib']} MiB  {row['plan']}",
              flush=True)
        if row["seconds"] > args.budget_s:
            print(f"stopping: {n:,} took longer than --budget-s {args.budget_s:g}")
            break
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
