"""Downloader throughput: ours vs a sequential flickr_scraper-style loop, same server, same run.

The baseline is what ultralytics/flickr_scraper does per photo: one blocking `requests.get(url)`
at a time, body written to disk. Both download the same URLs from the bundled Flickr-compatible
server with the same added latency per image (default 50 ms, a real CDN's round trip); the
server's image cache is warmed first so neither side pays for drawing pictures.

    .venv/bin/python bench/bench_collect.py [--images 400] [--latency-ms 50] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import requests

from mlc_pipeline.config import SourceSettings
from mlc_pipeline.collect.download import Downloader, DownloadJob
from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec


def image_urls(srv: FlickrServer, n: int) -> list[tuple[str, str]]:
    out = []
    for p in srv.world.photos:
        if "n" in p.sizes:
            out.append((p.id, f"http://{srv.static_host}/static/{p.server}/{p.id}_{p.secret}_n.jpg"))
        if len(out) == n:
            return out
    raise SystemExit(f"the world has fewer than {n} photos with url_n")


def sequential_baseline(urls, folder: Path) -> float:
    t0 = time.perf_counter()
    for pid, url in urls:
        body = requests.get(url, timeout=10).content     # flickr_scraper's download_uri
        (folder / f"{pid}.jpg").write_bytes(body)
    return time.perf_counter() - t0


def ours(urls, folder: Path, concurrency: int, host: str) -> tuple[float, int, int]:
    settings = SourceSettings(per_host_concurrency=concurrency)
    dl = Downloader(settings, [host], folder / "raw", folder / "tmp")
    jobs = [DownloadJob(i, pid, url) for i, (pid, url) in enumerate(urls)]
    t0 = time.perf_counter()
    ok = sum(r.ok for r in dl.run(jobs))
    return time.perf_counter() - t0, ok, max(dl.max_in_flight.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--latency-ms", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=SourceSettings().per_host_concurrency,
                    help="per-host bound (default: the config default)")
    args = ap.parse_args()
    faults = FaultSpec(image_latency_ms=args.latency_ms)
    with FlickrServer(WorldSpec(seed=0, scale=1.0), faults) as srv, tempfile.TemporaryDirectory() as tmp:
        urls = image_urls(srv, args.images)
        for pid, _ in urls:                                # warm the server's render cache
            srv.world.image_bytes(pid, "n")
        base_dir, our_dir = Path(tmp, "base"), Path(tmp, "ours")
        base_dir.mkdir(), our_dir.mkdir()
        t_base = sequential_baseline(urls, base_dir)
        t_ours, ok, peak = ours(urls, our_dir, args.concurrency, srv.static_host)
        server_peak = srv.stats()["max_concurrent_image_connections"]
    n = len(urls)
    print(f"images: {n}, added latency {args.latency_ms} ms/image, per-host bound {args.concurrency}")
    print(f"baseline (sequential requests.get loop): {t_base:6.2f} s  {n / t_base:7.1f} img/s")
    print(f"mlc-pipeline Downloader:                 {t_ours:6.2f} s  {n / t_ours:7.1f} img/s  ({ok}/{n} ok)")
    print(f"peak connections to the host: ours {peak}, seen by the server {server_peak} (bound {args.concurrency})")
    print(f"speed-up: {t_base / t_ours:.1f}x")


if __name__ == "__main__":
    main()
