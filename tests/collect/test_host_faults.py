"""An image host that fails for everyone is down, not each photo's fault (audit collect27 D1, D4), and a
429 pauses its host for every worker, Retry-After long, without holding a download worker (D6). Real HTTP to the bundled
server and its faults.

D1: HTML error pages (or 403s, empty bodies, a redirect loop) for every photo marked every search result
failed for good, exit 0, "queries exhausted", and a rerun after the host recovered downloaded nothing.
D4: 5xx to everything cost 3,612 requests and 391 s for 120 wanted images, exit 0.
D6: 30% of images answering 429 once made a collect 4.3x slower: the Retry-After was slept in the worker.
Then each photo waited alone while the other workers asked the host's other photos (collect30)."""

from __future__ import annotations

import json
import time

import pytest
from test_download import photo_jobs

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.download import Downloader
from mlc_pipeline.collect.hosts import HOST_FAULT_AFTER, HostHealth, ImageHostDown
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import RetrySettings, SourceSettings, parse_config
from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec

WORLD = WorldSpec(seed=2, scale=0.05)
RETRY = {"attempts": 4, "base_delay_s": 0.01, "max_delay_s": 0.05}


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("FLICKR_API_KEY", "test-key-0123456789")
    monkeypatch.setenv("FLICKR_API_SECRET", "test-secret-9876543210")


def config(tmp_path, srv: FlickrServer):
    return parse_config({
        "data_dir": str(tmp_path / "data"),
        "source": {"kind": "flickr", "rest_url": srv.rest_url, "allowed_hosts": [srv.static_host],
                   "sizes": ["url_n", "url_m"], "retry": RETRY, "per_host_concurrency": 4},
        "classes": {"balloon": {"queries": ["balloon"], "count": 30}},
        "other": {"queries": ["sky"], "count": 20}})


def statuses(cfg) -> dict[int, tuple[str, str | None]]:
    with Catalog(cfg.catalog_path) as c:
        return {r["id"]: (r["status"], r["reason"]) for r in c.candidates()}


def timed_batch(tmp_path, srv: FlickrServer, n: int, bound: int):
    """`n` photos of `srv` downloaded in one batch: (the downloader, its results, seconds, server stats)."""
    downloader = Downloader(SourceSettings(retry=RetrySettings(**RETRY), per_host_concurrency=bound),
                            [srv.static_host], tmp_path / "raw")
    started = time.monotonic()
    results = downloader.run(photo_jobs(srv, n))
    return downloader, results, time.monotonic() - started, srv.stats()


def test_an_image_host_serving_error_pages_to_everyone_is_down_and_its_photos_come_back(tmp_path, creds):
    """Every image an HTML error page: the collect stops with ImageHostDown after about HOST_FAULT_AFTER
    photos, records none of them failed for good, and once the host serves images again a plain rerun
    downloads them."""
    with FlickrServer(WORLD, FaultSpec(html=1.0)) as srv:
        cfg, port = config(tmp_path, srv), srv.port
        with pytest.raises(ImageHostDown, match=f"image host {srv.static_host} \\(not-an-image for "
                                                f"{HOST_FAULT_AFTER} different photos in a row"):
            collect(cfg, progress=False)
        asked = srv.stats()["image_requests"]
    failed = {i: reason for i, (status, reason) in statuses(cfg).items() if status == "failed"}
    assert failed and set(failed.values()) == {f"transient:host-down:{srv.static_host}"}, set(failed.values())
    assert asked <= HOST_FAULT_AFTER + 2 * 4, asked      # stopped sending: not the whole frontier
    with FlickrServer(WORLD, port=port) as healthy:       # the host recovered (same URLs)
        again = collect(cfg, progress=False)
        assert healthy.stats()["image_requests"] >= len(failed)
    after = statuses(cfg)
    assert again.failed == {} and {after[i][0] for i in failed} == {"downloaded"}


def test_a_few_error_pages_among_served_images_stay_each_photos_final_verdict(tmp_path):
    """One photo's HTML page among good answers is that photo's fault: final, and the host is not down."""
    with FlickrServer(WORLD, FaultSpec(html=0.2, seed=3)) as srv:
        jobs = photo_jobs(srv, 60)
        downloader = Downloader(SourceSettings(retry=RetrySettings(**RETRY)), [srv.static_host], tmp_path / "raw")
        results = downloader.run(jobs)
    bad = [r.reason for r in results if not r.ok]
    assert bad and all(r.startswith("not-an-image") for r in bad), bad
    assert not downloader.hosts.down and downloader.hosts.stop_error() is None


def test_an_image_host_answering_5xx_to_everything_is_down_within_a_bounded_number_of_requests(tmp_path):
    attempts = RETRY["attempts"]
    with FlickrServer(WORLD, FaultSpec(img5xx=1.0, img5xx_code=500, fault_repeats=1000)) as srv:
        downloader, results, took, stats = timed_batch(tmp_path, srv, 100, bound=4)
    asked = stats["image_requests"]
    host = srv.static_host
    assert {r.reason for r in results} <= {"transient:http-500", f"transient:host-down:{host}"}
    assert sum(r.reason == f"transient:host-down:{host}" for r in results) >= 60
    assert asked <= (HOST_FAULT_AFTER + 4) * attempts, asked        # it was 100 x attempts
    assert took < 10, took
    assert isinstance(downloader.hosts.stop_error(), ImageHostDown)


def test_a_429_pauses_its_host_for_every_worker_while_other_hosts_go_on(tmp_path):
    """Host a answers each image 429 (Retry-After: 1 s) once, host b serves. A rate limit is the host's
    (shared/notes/flickr.md): after a 429 no worker asks host a anything until the Retry-After has
    passed, only the requests already in flight arrive (until 2026-12-07 each photo waited alone and
    the other workers asked a's other photos at once, meeting more 429s). The workers are not held
    meanwhile: host b's photos are all downloaded within a's first pause (audit collect27 D6)."""
    bound, retry_after = 2, 1.0
    with FlickrServer(WORLD, FaultSpec(img429=1.0, retry_after_s=1, fault_repeats=1)) as a, \
            FlickrServer(WORLD, FaultSpec(image_latency_ms=50), host="127.0.0.2") as b:
        jobs = photo_jobs(a, 5) + photo_jobs(b, 8, first_cid=5)
        d = Downloader(SourceSettings(retry=RetrySettings(**RETRY), per_host_concurrency=bound),
                       [a.static_host, b.static_host], tmp_path / "raw")
        started = time.monotonic()
        results = d.run(jobs)
        took = time.monotonic() - started
        stats = {srv: srv.stats() for srv in (a, b)}
    assert sorted((r.ok, r.attempts) for r in results) == [(True, 1)] * 8 + [(True, 2)] * 5
    assert set(stats[a]["image_requests_by_path"].values()) == {2}, "each of a's photos: a 429, then served"
    asked = sorted(stats[a]["image_spans"])
    first_429 = min(end for _, end in asked)
    in_pause = [arrival for arrival, _ in asked if arrival < first_429 + retry_after * 0.9]
    assert len(in_pause) <= bound, f"{len(in_pause)} requests to host a within its Retry-After: {asked}"
    assert max(end for _, end in stats[b]["image_spans"]) < first_429 + retry_after, "b waited for a's pause"
    assert took < 12, took


def test_retry_failed_downloads_again_the_photos_recorded_failed_for_good(tmp_path, creds):
    """`mlc collect --retry-failed`: a photo's own final verdict (an error page among served images) is
    not asked again by a plain rerun, and is by one with the flag, once the host serves it."""
    from mlc_pipeline.cli import build_parser
    args = build_parser().parse_args(["collect", "-c", "x.yaml", "--retry-failed"])
    assert args.retry_failed is True
    with FlickrServer(WORLD, FaultSpec(html=0.2, seed=3)) as srv:
        cfg, port = config(tmp_path, srv), srv.port
        collect(cfg, progress=False)
    final = {i for i, (status, reason) in statuses(cfg).items()
             if status == "failed" and reason.startswith("not-an-image")}
    assert final
    with FlickrServer(WORLD, port=port) as healthy:
        collect(cfg, progress=False)                       # a plain rerun: final stays final
        assert {statuses(cfg)[i][0] for i in final} == {"failed"}
        assert healthy.stats()["image_requests"] == 0
        again = collect(cfg, progress=False, retry_failed=True)
    assert again.failed == {} and {statuses(cfg)[i][0] for i in final} == {"downloaded"}


def test_dead_links_and_rate_limits_never_take_a_host_down():
    """404/410 say the photo is gone (a URL list's dead links come many in a row), 429 asks to wait:
    none is the host failing for everyone. A 403 is, after HOST_FAULT_AFTER photos."""
    health = HostHealth()
    for cid in range(3 * HOST_FAULT_AFTER):
        health.failed("img.example", cid, ("http-404", "http-410", "transient:http-429")[cid % 3])
    assert not health.down
    for cid in range(HOST_FAULT_AFTER):
        health.failed("img.example", cid, "http-403")
    assert "img.example" in health.down


def test_verdicts_taken_back_when_the_host_went_down_are_counted_transient_in_the_runs_record(tmp_path, creds):
    """The photos failed for good before their host was taken as down are recorded transient again
    (HostHealth.take_back); the run's record counts them so, under `transient`, and keeps no count of
    the verdicts taken back (`not-an-image: 0`)."""
    with FlickrServer(WORLD, FaultSpec(html=1.0)) as srv:
        cfg = config(tmp_path, srv)
        with pytest.raises(ImageHostDown):
            collect(cfg, progress=False)
    failed = [reason for status, reason in statuses(cfg).values() if status == "failed"]
    with Catalog(cfg.catalog_path) as c:
        (run,) = [r for r in c.runs() if r["command"] == "collect"]
    assert json.loads(run["summary"])["failed"] == {"transient": len(failed)} and len(failed) >= HOST_FAULT_AFTER, run
