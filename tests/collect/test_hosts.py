"""collect/hosts.py: an image host that answered this run and then stops answering is never taken as
down, but it is not silent either (the nightly25 audit: the image server killed mid-collect, then 8
minutes with nothing logged while 113 downloads failed and the progress bar kept moving)."""

from __future__ import annotations

import logging
import subprocess
import time

import requests
from helpers import ENV, MLC, free_port

from mlc_pipeline.collect.download import Downloader, DownloadJob
from mlc_pipeline.collect.hosts import (HOST_DOWN_AFTER, HOST_SILENT_REPEAT_S, HOST_SILENT_WARN_S, HostHealth,
                                        ImageHostDown)
from mlc_pipeline.config import RetrySettings, SourceSettings
from mlc_pipeline.flickr_server import WorldSpec, build_world
from mlc_pipeline.flickr_server.rest import image_url

HOSTS_LOGGER = "mlc_pipeline.collect.hosts"


def test_the_image_server_stopped_mid_collect_is_warned_about_in_seconds(tmp_path, caplog):
    """The bundled server (`mlc serve-flickr`, as the audit ran it) serves the first downloads, then is
    killed: its later downloads fail with connection refused. A warning names the host within seconds;
    its downloads are still retried (failed as transient, pending for the next run), not cut off as a
    host that is down."""
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
    finally:
        server.kill()
        server.wait(timeout=30)
    assert stopped and sum(r.ok for r, _ in results) >= 10
    after = [r.reason for r, late in results if late and not r.ok]
    refused = [r for r in after if r == "transient:connectionerror"]
    assert len(refused) > 2 * HOST_DOWN_AFTER and len(results) == len(jobs), (len(results), after)
    # still retried: each failed on its own attempts, none was cut short as "host-down" (broken: in
    # flight as it was killed)
    assert set(after) <= {"transient:connectionerror", "transient:connection-broken"}, set(after)
    assert not downloader.hosts.down and downloader.hosts.stop_error() is None
    warnings = [r for r in caplog.records if r.name == HOSTS_LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    said = warnings[0].getMessage()
    assert said.startswith(f"image host {host} stopped answering: {HOST_DOWN_AFTER} connection errors "
                           "in a row since "), said
    assert "ConnectionError: connection refused" in said and "go on being retried" in said, said
    assert warnings[0].created - stopped[0] < 15, warnings[0].created - stopped[0]


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
