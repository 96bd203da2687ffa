"""collect/flickr.py: what a failing Flickr API call leaves in the log, and how it is classified."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from helpers import ENV, MLC, write_config

from mlc_pipeline.collect.flickr import FlickrSource, SourceError, Transient, classify
from mlc_pipeline.config import RetrySettings, SourceSettings
from mlc_pipeline.secrets import Credentials

PAGE = "<html><body><h1>502 Bad Gateway</h1><p>upstream-said-no-line</p></body></html>"


class BadGateway(BaseHTTPRequestHandler):
    def do_POST(self):      # flickrapi posts its calls
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(PAGE.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def gateway():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BadGateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/rest/"
    server.shutdown()


def test_a_proxys_error_page_is_one_line_of_ours_not_its_body(gateway, caplog):
    """flickrapi logged a failed reply's whole body at ERROR, line by line, at every attempt (60
    lines for six tries at a proxy's 502 page: the secrets21 audit)."""
    source = FlickrSource(SourceSettings(kind="flickr", rest_url=gateway), Credentials("k" * 32, "s" * 16), "flickr")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception) as err:
        source.api.photos.search(text="kite", per_page=10)
    assert isinstance(classify(err.value, gateway), Transient)       # a 502: tried again later
    assert "upstream-said-no-line" not in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("flickrapi")]


def test_a_url_requests_cannot_call_is_the_configs_fault_not_a_reply():
    """InvalidURL is a ValueError, which classify took for JSON that does not parse (retried)."""
    for exc in (requests.exceptions.InvalidURL("bad"), requests.exceptions.MissingSchema("none")):
        got = classify(exc, "http://x/")
        assert isinstance(got, SourceError) and not isinstance(got, Transient)
        assert "source.rest_url cannot be called" in str(got)


def test_the_configured_call_budget_is_the_one_the_api_calls_obey():
    """`source.max_calls_per_hour` reaches the client: past the burst (a minute of the budget) each call
    waits its share of the hour. Real calls to the bundled server; the limiter's sleep is recorded
    instead of slept (the limiter's own rule is tested in test_retry.py)."""
    from mlc_pipeline.flickr_server import FlickrServer, WorldSpec
    with FlickrServer(WorldSpec(seed=2, scale=0.05)) as srv:
        source = FlickrSource(SourceSettings(kind="flickr", rest_url=srv.rest_url, max_calls_per_hour=120),
                              Credentials("k" * 32, "s" * 16), "flickr")
        waits = []
        source.limiter.sleep = waits.append
        for _ in range(5):
            source.call("photos.search", expect="photos", text="kite", per_page=10)
        assert srv.stats()["api_calls"] == 5
    assert waits and len(waits) == 5 - 2               # 120 an hour: a burst of 2, then ~30.5 s a call
    assert all(w == pytest.approx(3600 / 118, rel=0.01) for w in waits[:1])


def limited_source(srv, **settings):
    """A FlickrSource on the bundled server with quick backoff: only a honoured Retry-After waits long."""
    return FlickrSource(SourceSettings(kind="flickr", rest_url=srv.rest_url, retry=RetrySettings(
        attempts=3, base_delay_s=0.01, max_delay_s=0.02), **settings), Credentials("k" * 32, "s" * 16), "flickr")


def test_an_api_429_waits_what_retry_after_asks_and_then_goes_on(caplog):
    """A 429 from the API was retried like a 5xx, at once (audit collect25 D1: six tries in 8 s, then
    the run failed though the limit lifted after 40 s). Retry-After is waited now, and said."""
    from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec
    caplog.set_level(logging.WARNING)
    with FlickrServer(WorldSpec(seed=2, scale=0.05), FaultSpec(api429=1.0, retry_after_s=2)) as srv:
        source = limited_source(srv)
        started = time.monotonic()
        assert "photos" in source.call("photos.search", expect="photos", text="kite", per_page=10)
        assert time.monotonic() - started >= 2.0
        assert srv.stats()["api_calls"] == 2 and source.api_calls == 2
    assert "HTTP 429 from the API (it asked to wait 2 s); retry 1/2 in 2.0s" in caplog.text


def test_an_api_429_without_retry_after_backs_off_long_enough_for_a_window_to_close():
    from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec
    with FlickrServer(WorldSpec(seed=2, scale=0.05), FaultSpec(api429_bare=1.0, retry_after_s=1)) as srv:
        source = limited_source(srv)
        assert "photos" in source.call("photos.search", expect="photos", text="kite", per_page=10)
        assert srv.stats()["faults_injected"] == {"api429_bare": 1}


def test_a_retry_after_past_the_cap_waits_the_cap_and_the_message_says_what_was_asked():
    from mlc_pipeline.collect.flickr import RetriesExhausted
    from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec
    with FlickrServer(WorldSpec(seed=2, scale=0.05), FaultSpec(api429=1.0, retry_after_s=30)) as srv:
        source = limited_source(srv, max_retry_after_s=0.5)
        started = time.monotonic()
        with pytest.raises(RetriesExhausted) as err:
            source.call("photos.search", expect="photos", text="kite", per_page=10)
        assert 1.0 <= time.monotonic() - started < 5
    assert re.fullmatch(r"flickr.photos.search still failing after 3 attempts: HTTP 429 from the API \(it asked "
                        r"to wait 2\d s; source.max_retry_after_s caps a wait at 0.5 s\)", str(err.value)), str(err.value)


def trickled_call(rest_url: str, srv) -> float:
    """Seconds a licences call takes when its first try's reply trickles (api_trickle, 10 ms a byte:
    ~20 s whole) and source.api_deadline_s is 0.5 s; the second try is answered at once."""
    source = FlickrSource(SourceSettings(kind="flickr", rest_url=rest_url, api_deadline_s=0.5, timeout_s=5,
                                         retry=RetrySettings(attempts=3, base_delay_s=0.01, max_delay_s=0.02)),
                          Credentials("k" * 32, "s" * 16), "flickr")
    started = time.monotonic()
    assert source.call("photos.licenses.getInfo", expect="licenses")["licenses"]["license"]
    assert srv.stats()["faults_injected"] == {"api_trickle": 1} and source.api_calls == 2
    return time.monotonic() - started


def test_an_api_that_trickles_its_reply_is_cut_at_the_deadline_and_tried_again(caplog):
    """The security26 audit: API calls had a per-read timeout only, and a reply trickled a byte every
    2 s hung collect for ever. Each try now has source.api_deadline_s; the cut try is retried."""
    from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec
    caplog.set_level(logging.WARNING)
    with FlickrServer(WorldSpec(seed=2, scale=0.05), FaultSpec(api_trickle=1.0, trickle_ms=10)) as srv:
        assert 0.5 <= trickled_call(srv.rest_url, srv) < 3
    assert (f"flickr.photos.licenses.getInfo: no complete reply from the API at 127.0.0.1:{srv.port} within "
            "source.api_deadline_s (0.5 s); retry 1/2 in") in caplog.text


def test_the_api_deadline_holds_through_a_proxy(monkeypatch):
    """Through HTTP_PROXY the connection comes from the proxy's pool, which the watchdog must see too.
    The bundled server stands in for the proxy: it answers the absolute URL a proxy is sent."""
    from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec
    with FlickrServer(WorldSpec(seed=2, scale=0.05), FaultSpec(api_trickle=1.0, trickle_ms=10)) as srv:
        monkeypatch.setenv("HTTP_PROXY", f"http://{srv.static_host}")
        for name in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        assert 0.5 <= trickled_call("http://api.flickr.invalid/services/rest/", srv) < 3


def test_collect_against_an_api_that_always_trickles_fails_in_one_line_within_its_deadlines(tmp_path):
    """Every try of every call trickled (a hostile or broken mirror): `mlc collect` ends after its
    retries, each cut at source.api_deadline_s, with the one line docs/collection.md "Faults" gives."""
    cfg = write_config(tmp_path, faults="api_trickle=1,fault_repeats=99,trickle_ms=200", api_deadline_s=1)
    started = time.monotonic()
    res = subprocess.run([*MLC, "collect", "-c", str(cfg), "--no-progress"], env=ENV, capture_output=True,
                         text=True, timeout=120)
    took = time.monotonic() - started
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert re.fullmatch(r"mlc: RetriesExhausted: flickr.photos.licenses.getInfo still failing after 3 attempts: "
                        r"no complete reply from the API at 127.0.0.1:\d+ within source.api_deadline_s \(1 s\)",
                        last), last
    assert took < 30, f"collect took {took:.0f} s for 3 tries of 1 s"


EVIL = "\x1b]0;TITLE-PWNED\x07\x1b[2J\x1b[31mfake: all good\nmlc: done\u202e"


class EvilReplies(BaseHTTPRequestHandler):
    """An API whose replies carry terminal escape sequences: a key (a malformed reply), or a message."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.mode == "keys":
            body = {"stat": "ok", EVIL: 1, "x" * 5000: 2}
        else:
            body = {"stat": "fail", "code": 3, "message": f"refused {EVIL}"}
        send_json(self, body)

    def log_message(self, *args):
        pass


def send_json(handler: BaseHTTPRequestHandler, body: dict) -> None:
    out = json.dumps(body).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(out)))
    handler.end_headers()
    handler.wfile.write(out)


@pytest.mark.parametrize("mode", ["keys", "message"])
def test_escape_sequences_in_a_reply_never_reach_the_terminal(tmp_path, mode):
    """The security26 audit: a reply's key `ESC]0;TITLE BEL ESC[2J ESC[31m fake: all good` reached
    stderr raw, in the retry warnings and the final `mlc:` line, so a hostile mirror could retitle and
    clear the terminal and colour fake text. Every control character is escaped, a newline too (it
    forged a line of its own), and a huge key is cut."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), EvilReplies)
    server.mode = mode
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = tmp_path / "evil.yaml"
        config.write_text(
            f"data_dir: {tmp_path / 'data'}\n"
            f"source: {{kind: flickr, rest_url: 'http://127.0.0.1:{server.server_address[1]}/services/rest/', "
            "retry: {attempts: 2, base_delay_s: 0.01, max_delay_s: 0.02}}\n"
            "classes:\n  kite: {queries: [kite], count: 5}\nother: {queries: [sky], count: 5}\n")
        env = {**ENV, "FLICKR_API_KEY": "k0123456789abcdef", "FLICKR_API_SECRET": "s0123456789"}
        res = subprocess.run([*MLC, "collect", "-c", str(config), "--no-progress"], env=env, capture_output=True,
                             text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    err = res.stderr
    assert res.returncode == 1 and "Traceback" not in err, err
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", err), repr(err)
    escaped = "\\x1b]0;TITLE-PWNED\\x07\\x1b[2J\\x1b[31mfake: all good\\nmlc: done\\u202e"
    last = err.strip().splitlines()[-1]
    assert last.startswith("mlc: ") and escaped in last, repr(last)
    assert not any(line.startswith("mlc: done") for line in err.splitlines()), err
    if mode == "keys":
        assert "retry 1/1" in err and err.count(escaped) == 2, err       # the warning, then the last line
        assert "x" * 61 not in err and "x" * 60 + "..." in err


def test_an_api_that_ignores_upload_dates_is_not_split_into_endless_windows(caplog):
    """Audit collect27 D5: against a mirror that ignores min/max_upload_date, every window held every
    result, and a query over the cap was split down to ~8,400 one-day windows (119 API calls and no
    download in 60 s; ~9 h). A window holding all its parent's results, some uploaded outside it, stops
    the split: the reachable results are paged once, and it is said once."""
    from mlc_pipeline.collect.flickr import Target
    from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec
    caplog.set_level(logging.WARNING)
    with FlickrServer(WorldSpec(seed=6, scale=0.5, result_cap=40), FaultSpec(dates_ignored=1.0)) as srv:
        source = FlickrSource(SourceSettings(kind="flickr", rest_url=srv.rest_url, per_page=20,
                                             max_calls_per_hour=360000), Credentials("k" * 32, "s" * 16),
                              "flickr", result_cap=40)
        found = []
        for f in source.search("sky", Target("train", "sky")):
            found.append(f.photo_id)
            assert source.api_calls <= 40, "still splitting"
        total = int(source._search_page("sky", 1, None)["total"])
        assert srv.stats()["faults_injected"].get("dates_ignored", 0) > 0
    assert total > 40 and len(found) == len(set(found)) == 40
    assert source.api_calls <= 12
    assert caplog.text.count("the API ignores min/max_upload_date") == 1


def test_honest_windows_still_reach_past_the_cap():
    """The check above must not stop a split on an API that honours the dates (every result reached)."""
    from mlc_pipeline.collect.flickr import Target
    from mlc_pipeline.flickr_server import FlickrServer, WorldSpec
    with FlickrServer(WorldSpec(seed=6, scale=0.5, result_cap=40)) as srv:
        source = FlickrSource(SourceSettings(kind="flickr", rest_url=srv.rest_url, per_page=20,
                                             max_calls_per_hour=360000), Credentials("k" * 32, "s" * 16),
                              "flickr", result_cap=40)
        found = [f.photo_id for f in source.search("sky", Target("train", "sky"))]
        total = int(source._search_page("sky", 1, None)["total"])
    assert total > 40 and len(found) == len(set(found)) == total and not source.undated


class SameResults(BaseHTTPRequestHandler):
    """A mirror that answers every search with the same ten photos, no upload dates, 500 "total"."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        photos = [{"id": str(1000 + i), "license": "4", "owner": "o", "title": "t"} for i in range(10)]
        send_json(self, {"stat": "ok", "photos": {"page": 1, "pages": 50, "perpage": 10, "total": 500,
                                                  "photo": photos}})

    def log_message(self, *args):
        pass


def test_a_query_whose_calls_bring_nothing_new_ends_within_a_bounded_number_of_calls(caplog):
    """Audit collect27 D5: where the windows cannot be seen to be ignored (no upload dates in the replies),
    the split went on for thousands of calls that brought no new photo, and nothing was downloaded
    meanwhile. A query ends after STALE_CALLS calls in a row with no photo new to it, and says so."""
    from mlc_pipeline.collect.flickr import STALE_CALLS, Target
    server = ThreadingHTTPServer(("127.0.0.1", 0), SameResults)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    caplog.set_level(logging.WARNING)
    try:
        source = FlickrSource(SourceSettings(kind="flickr", rest_url=f"http://127.0.0.1:{server.server_address[1]}"
                                             "/services/rest/", per_page=10, max_calls_per_hour=360000),
                              Credentials("k" * 32, "s" * 16), "flickr", result_cap=40)
        found = []
        for f in source.search("sky", Target("train", "sky")):
            found.append(f.photo_id)
            assert source.api_calls <= 200, "still searching"
    finally:
        server.shutdown()
    assert sorted(found) == [str(1000 + i) for i in range(10)]
    assert source.api_calls < 2 * STALE_CALLS       # the first new photos come after the split's probes
    assert f"query 'sky': {STALE_CALLS} search calls in a row found no photo new to it" in caplog.text
