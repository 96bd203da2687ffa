"""collect/hosts.py: an image host that answered this run and then stops answering is taken as down once
HOST_FAULT_AFTER different photos in a row failed (audit collect27 D4), and is not silent either (the nightly25 audit: the image server killed mid-collect, then 8
minutes with nothing logged while 113 downloads failed and the progress bar kept moving)."""

from __future__ import annotations

import logging
import subprocess
import time

import requests
from helpers import ENV, MLC, free_port

from mlc_pipeline.collect.download import Downloader, DownloadJob
from mlc_pipeline.collect.hosts import (HOST_DOWN_AFTER, HOST_FAULT_AFTER, HOST_SILENT_REPEAT_S, HOST_SILENT_WARN_S,
                                        HostHealth, ImageHostDown)
from mlc_pipeline.config import RetrySettings, SourceSettings
from mlc_pipeline.flickr_server import WorldSpec, build_world
from mlc_pipeline.flickr_server.rest import image_url

HOSTS_LOGGER = "mlc_pipeline.collect.hosts"


def test_the_image_server_stopped_mid_collect_is_taken_as_down_in_seconds(tmp_path, caplog):
    """The bundled server (`mlc serve-flickr`, as the audit ran it) serves the first downloads, then is
    killed: its later downloads fail with connection refused. Once HOST_FAULT_AFTER different photos in
    a row failed so, the host is down: nothing more is asked of it, its photos stay transient (pending
    for the next run) and the collect stops with ImageHostDown (audit collect27 D4: it retried for 15+
    minutes and ended "queries exhausted", exit 0)."""
    port = free_port()
    server = subprocess.Popen([*MLC, "serve-flickr", "--port", str(port), "--scale", "0.1",
                               "--faults", "image_latency_ms=20"], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        while "Static images:" not in (line := server.stdout.readline()):
            assert line, "serve-flickr exited"
        host = f"127.0.0.1:{port}"
        photos = build_world(WorldSpec(seed=0, scale=0.1)).photos[:120]    # the server's world
        jobs = [DownloadJob(i, str(p.id), image_url(host, p, "n")) for i, p in enumerate(photos)]
        settings = SourceSettings(kind="local", per_host_concurrency=2,
                                  retry=RetrySettings(attempts=3, base_delay_s=0.01, max_delay_s=0.05))
        downloader = Downloader(settings, [host], tmp_path / "raw")
        results, stopped = [], []

        def record(res) -> None:
            results.append((res, bool(stopped)))
            if res.ok and not stopped and sum(r.ok for r, _ in results) >= 10:
                server.kill()                   # the image server dies mid-collect
                stopped.append(time.time())

        with caplog.at_level(logging.INFO, logger=HOSTS_LOGGER):
            downloader.run_into(jobs, record)
        ended = time.time()
    finally:
        server.kill()
        server.wait(timeout=30)
    assert stopped and sum(r.ok for r, _ in results) >= 10 and len(results) == len(jobs)
    after = [r for r, late in results if late and not r.ok]
    assert {r.reason for r in after} <= {"transient:connectionerror", "transient:connection-broken",
                                         f"transient:host-down:{host}"}, {r.reason for r in after}
    # bounded: about HOST_FAULT_AFTER photos tried (each its attempts), the rest never asked
    tried = [r for r in after if r.attempts]
    assert len(tried) <= HOST_FAULT_AFTER + 2 * settings.per_host_concurrency, len(tried)
    assert sum(r.reason == f"transient:host-down:{host}" and not r.attempts for r in after) >= 50
    assert ended - stopped[0] < 15, ended - stopped[0]
    assert host in downloader.hosts.down and isinstance(downloader.hosts.stop_error(), ImageHostDown)
    said = [r.getMessage() for r in caplog.records if r.name == HOSTS_LOGGER and r.levelno == logging.WARNING]
    assert any(m.startswith(f"image host {host} failed {HOST_FAULT_AFTER} different photos in a row (no answer)")
               for m in said), said


def test_a_host_failing_slowly_is_warned_about_within_a_minute_then_every_few_minutes(caplog):
    """Connection errors that come slowly (a host that times out: 20 s each) reach HOST_DOWN_AFTER
    only after minutes: a minute of nothing but errors is enough. The warning comes again while it
    lasts, not at every error, and an INFO line says when the host answers again."""
    now = [1000.0]
    health = HostHealth(clock=lambda: now[0])
    refused = requests.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
    host = "img.example:8080"
    health.answered_by(host)

    def errors_at(*times: float) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=HOSTS_LOGGER):
            for t in times:
                now[0] = 1000.0 + t
                health.unanswered(host, refused)
        return [r.getMessage() for r in caplog.records if r.name == HOSTS_LOGGER]

    assert errors_at(0, 20, 40) == []                            # 40 s, 3 errors: not yet
    [first] = errors_at(HOST_SILENT_WARN_S)                       # a minute of nothing but errors
    assert first.startswith(f"image host {host} stopped answering: 4 connection errors in a row since "), first
    assert errors_at(*range(80, 300, 20)) == []                  # no flood: once per HOST_SILENT_REPEAT_S
    [again] = errors_at(HOST_SILENT_WARN_S + HOST_SILENT_REPEAT_S)
    assert again.startswith(f"image host {host} still not answering: 16 connection errors in a row"), again
    assert not health.down and health.stop_error() is None      # it answered this run: never taken as down
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=HOSTS_LOGGER):
        health.answered_by(host)
    assert caplog.messages == [f"image host {host} answers again, after 16 connection errors in a row over 360 s"]
    assert errors_at(400) == []                                   # a new streak starts from nothing


def test_a_host_that_never_answered_is_still_taken_as_down():
    health = HostHealth()
    refused = requests.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
    for _ in range(HOST_DOWN_AFTER):
        health.unanswered("dead.example", refused)
    assert isinstance(health.stop_error(), ImageHostDown) and "dead.example" in health.down
