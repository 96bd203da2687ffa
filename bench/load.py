"""Load run: collect 5,000 images from the bundled server with every fault on.

    .venv/bin/python bench/load.py [--images 5000] [--scale 4] [--budget 1200] [--per-page 100] [--json out.json]

`--images` is the sum of the targets (30% per class, 10% "other"); a photo of two classes fills a
slot of each, so slightly fewer distinct files are downloaded.

`mlc collect` runs as a subprocess (so its peak memory is its own) against a server in this
process with `FaultSpec.all_on()`. Reports throughput, the collector's peak RSS, where every
candidate ended, and the API call rate the server saw. The budget is set low on purpose
(`--budget` calls per hour, small pages) so that the rate limiter really binds; the check is the
token bucket's promise: in every window of w seconds, at most burst + rate * w calls (+1 for the
call in flight), which is also what keeps any sliding hour under the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import FAST_RETRIES, source_yaml

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec
from mlc_pipeline.collect.retry import RateLimiter

ENV = {**os.environ, "FLICKR_API_KEY": "load-key-0000", "FLICKR_API_SECRET": "load-secret-0000"}
CLASSES = ("balloon", "kite", "sailboat")


def targets(images: int) -> dict[str, int]:
    """Images wanted per label: 30% per class, the rest "other"."""
    per_class = images * 3 // 10
    return {**{c: per_class for c in CLASSES}, "other": images - 3 * per_class}


def write_config(path: Path, data_dir: Path, srv: FlickrServer, images: int, budget: int, per_page: int) -> Path:
    wanted = targets(images)
    classes = "\n".join(f"  {c}: {{queries: [{c}], count: {wanted[c]}}}" for c in CLASSES)
    source = source_yaml(srv, per_page=per_page, max_calls_per_hour=budget,
                         **{**FAST_RETRIES, "timeout_s": 2.0, "retry": "{attempts: 8, base_delay_s: 0.05, max_delay_s: 1.0}"})
    path.write_text(f"""
data_dir: {data_dir}
{source}
classes:
{classes}
other: {{queries: [landscape, texture, pattern, street, sky, garden], count: {wanted["other"]}}}
""")
    return path


def worst_window_excess(times: list[float], limiter: RateLimiter) -> tuple[float, dict]:
    """max over windows [t_i, t_j] of calls - (burst + rate * width); <= 1 means the envelope held."""
    worst, where = float("-inf"), {}
    for i in range(len(times)):
        for j in range(i, len(times)):
            width = times[j] - times[i]
            excess = (j - i + 1) - (limiter.burst + limiter.rate * width)
            if excess > worst:
                worst, where = excess, {"calls": j - i + 1, "seconds": round(width, 2)}
    return worst, where


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--scale", type=float, default=4.0, help="world scale (4: ~1,700 licensed photos per class)")
    ap.add_argument("--budget", type=int, default=1200, help="max_calls_per_hour given to the collector")
    ap.add_argument("--per-page", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="mlc-load-") as tmp, \
            FlickrServer(WorldSpec(seed=args.seed, scale=args.scale), FaultSpec.parse(f"all,seed={args.seed}")) as srv:
        work = Path(tmp)
        cfg = write_config(work / "load.yaml", work / "data", srv, args.images, args.budget, args.per_page)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", "collect", "-c", str(cfg), "--no-progress"],
                              env=ENV, capture_output=True, text=True)
        seconds = time.monotonic() - t0
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
        stats = srv.stats()
        with Catalog(work / "data" / "catalog.sqlite") as catalog:
            rows = [(r["status"], r["reason"]) for r in catalog.candidates()]
            # A photo of two classes fills a slot of each: counted per target, as the collector does.
            wanted = targets(args.images)
            have = {label: catalog.count_downloaded("train", label) for label in wanted}
        by_status = Counter(r[0] for r in rows)
        reasons = Counter(f"{r[0]}: {(r[1] or '').split(':')[0]}" for r in rows if r[1])
        unexplained = sum(1 for r in rows if r[0] in ("failed", "skipped") and not r[1])
        stray = [p.name for p in (work / "data").rglob("*") if p.name.endswith(".part")]
        downloaded = by_status.get("downloaded", 0)
        limiter = RateLimiter(args.budget)
        times = stats["api_call_times"]
        excess, window = worst_window_excess(times, limiter)
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        report = {
            "exit_code": proc.returncode, "seconds": round(seconds, 1), "downloaded": downloaded,
            "images_per_second": round(downloaded / seconds, 1), "filled": have, "wanted": wanted, "collector_peak_rss_mb": round(peak_rss_mb),
            "candidates": len(rows), "by_status": dict(by_status), "by_reason": dict(reasons),
            "unexplained": unexplained, "partial_files": stray,
            "api_calls": stats["api_calls"], "api_calls_by_method": stats["api_calls_by_method"],
            "api_call_span_s": round(span, 1), "budget_per_hour": args.budget,
            "bucket": {"burst": limiter.burst, "rate_per_s": round(limiter.rate, 4)},
            "worst_window_excess": round(excess, 2), "worst_window": window,
            "image_requests": stats["image_requests"], "faults_injected": stats["faults_injected"],
            "max_concurrent_image_connections": stats["max_concurrent_image_connections"],
        }
        if proc.returncode != 0:
            report["stderr_tail"] = proc.stderr[-3000:]
    print(json.dumps(report, indent=1))
    ok = (proc.returncode == 0 and all(have[t] >= n for t, n in wanted.items()) and not unexplained and not stray
          and excess <= 1.0 and stats["api_calls"] <= args.budget)
    print(f"targets filled {have} of {wanted}")
    print(f"{downloaded} images in {report['seconds']} s ({report['images_per_second']} img/s), collector peak RSS "
          f"{report['collector_peak_rss_mb']} MB; {stats['api_calls']} API calls over {report['api_call_span_s']} s "
          f"against a budget of {args.budget}/h (burst {limiter.burst}, worst window excess {report['worst_window_excess']})")
    print("LOAD: PASS" if ok else "LOAD: FAIL")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
