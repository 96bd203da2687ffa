"""An image host that fails for everyone is down, not each photo's fault (audit collect27 D1, D4), and a
429's Retry-After defers the photo instead of holding a download worker (D6). Real HTTP to the bundled
server and its faults.

D1: HTML error pages (or 403s, empty bodies, a redirect loop) for every photo marked every search result
failed for good, exit 0, "queries exhausted", and a rerun after the host recovered downloaded nothing.
D4: 5xx to everything cost 3,612 requests and 391 s for 120 wanted images, exit 0.
D6: 30% of images answering 429 once made a collect 4.3x slower: the Retry-After was slept in the worker."""

from __future__ import annotations

import time

from test_download import photo_jobs

from mlc_pipeline.collect.download import Downloader
from mlc_pipeline.config import RetrySettings, SourceSettings
from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec

WORLD = WorldSpec(seed=2, scale=0.05)
RETRY = {"attempts": 4, "base_delay_s": 0.01, "max_delay_s": 0.05}


def timed_batch(tmp_path, srv: FlickrServer, n: int, bound: int):
    """`n` photos of `srv` downloaded in one batch: (the downloader, its results, seconds, server stats)."""
    downloader = Downloader(SourceSettings(retry=RetrySettings(**RETRY), per_host_concurrency=bound),
                            [srv.static_host], tmp_path / "raw")
    started = time.monotonic()
    results = downloader.run(photo_jobs(srv, n))
    return downloader, results, time.monotonic() - started, srv.stats()


def test_a_retry_after_defers_the_photo_instead_of_holding_a_worker(tmp_path):
    """Every image answers 429 (Retry-After: 1 s) once. Slept in the worker, 40 photos over 2 workers
    took ~20 s; deferred, the workers ask the other photos meanwhile and the batch takes about the
    Retry-After once. The wait is still honoured (no photo asked again before it), and the per-host
    bound holds."""
    with FlickrServer(WORLD, FaultSpec(img429=1.0, retry_after_s=1, fault_repeats=1)) as srv:
        downloader, results, took, stats = timed_batch(tmp_path, srv, 40, bound=2)
    served = stats["image_requests_by_path"]
    assert sorted((r.ok, r.attempts) for r in results) == [(True, 2)] * 40
    assert set(served.values()) == {2}
    assert 1.0 <= took < 6, took
    assert downloader.max_in_flight[srv.static_host] <= 2
