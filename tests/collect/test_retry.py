import email.utils
import time

import pytest

from mlc_pipeline.collect.retry import RateLimiter, Transient, backoff_delay, retry_after_seconds, with_retries
from mlc_pipeline.collect.hosts import host_allowed
from mlc_pipeline.imageformat import image_extension


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def test_rate_limiter_never_exceeds_budget_in_any_hour():
    clock = FakeClock()
    lim = RateLimiter(per_hour=120, clock=clock, sleep=clock.sleep)
    stamps = []
    for _ in range(400):
        lim.acquire()
        stamps.append(clock.now)
    # sliding one-hour windows starting at each call
    j = 0
    for i, t in enumerate(stamps):
        while j < len(stamps) and stamps[j] < t + 3600:
            j += 1
        assert j - i <= 120
    assert stamps[lim.burst - 1] == 0.0  # the burst is immediate


def test_with_retries_retries_transient_then_succeeds_and_honours_wait():
    calls, slept = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise Transient("105", wait_s=0.25 if len(calls) == 1 else None)
        return "ok"

    assert with_retries(flaky, 5, 0.01, 0.02, "t", sleep=slept.append) == "ok"
    assert len(calls) == 3 and slept[0] == 0.25 and 0 <= slept[1] <= 0.02


def test_with_retries_gives_up_and_passes_other_errors():
    with pytest.raises(Transient):
        with_retries(lambda: (_ for _ in ()).throw(Transient("x")), 3, 0, 0, "t", sleep=lambda s: None)
    with pytest.raises(KeyError):
        with_retries(lambda: {}["k"], 3, 0, 0, "t", sleep=lambda s: None)


def test_backoff_is_capped():
    assert all(0 <= backoff_delay(a, 0.5, 4.0) <= 4.0 for a in range(20))


def test_backoff_grows_with_each_attempt_up_to_the_cap():
    """Full jitter: uniform in [0, min(max, base * 2**attempt)]. A delay that stayed 0 passed the cap test."""
    import random
    rng = random.Random(0)
    for attempt, ceiling in ((0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)):
        draws = [backoff_delay(attempt, 0.5, 4.0, rng) for _ in range(2000)]
        assert max(draws) <= ceiling and max(draws) > 0.95 * ceiling       # reaches its ceiling
        assert abs(sum(draws) / len(draws) - ceiling / 2) < 0.05 * ceiling  # uniform: mean at half of it


@pytest.mark.parametrize("url, ok", [
    ("https://live.staticflickr.com/1/2_x.jpg", True),
    ("http://live.staticflickr.com:80/1/2_x.jpg", True),
    ("ftp://live.staticflickr.com/1/2_x.jpg", False),
    ("file:///etc/passwd", False),
    ("https://evil.example/live.staticflickr.com.jpg", False),
    ("https://live.staticflickr.com.evil.example/x.jpg", False),
    ("https://user:pw@live.staticflickr.com/x.jpg", False),
])
def test_host_allowed(url, ok):
    assert host_allowed(url, ["live.staticflickr.com"]) is ok


def test_host_with_port_must_match_exactly():
    assert host_allowed("http://127.0.0.1:8765/a.jpg", ["127.0.0.1:8765"])
    assert not host_allowed("http://127.0.0.1:9999/a.jpg", ["127.0.0.1:8765"])
    assert not host_allowed("http://localhost:8765/a.jpg", ["127.0.0.1:8765"])


def test_retry_after_and_magic():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    ahead = email.utils.formatdate(time.time() + 40, usegmt=True)         # an HTTP date 40 s from now
    assert 38 <= retry_after_seconds(ahead) <= 40
    assert image_extension(b"\xff\xd8\xff\xe0" + b"\0" * 12) == "jpg"
    assert image_extension(b"RIFF\0\0\0\0WEBPVP8 ") == "webp"
    assert image_extension(b"<!DOCTYPE html>") is None


def test_host_health_learns_what_a_dask_workers_downloads_found():
    """On a cluster each chunk's downloader keeps its own HostHealth; the collect stops on what the
    results say, as it does on its own downloads' (collect/hosts.py)."""
    from mlc_pipeline.collect.hosts import REFUSED_HOST_LIMIT, HostHealth, HostNotAllowed, ImageHostDown
    health = HostHealth()
    for reason in ("transient:connectionerror", "http-404", None, "host-not-allowed:b.example:after-redirect"):
        health.learn(reason)
    assert health.stop_error() is None
    health.learn("transient:host-down:a.example:8080")
    assert isinstance(health.stop_error(), ImageHostDown) and "a.example:8080 (taken as down by a Dask worker)" in \
        str(health.stop_error())
    refused = HostHealth()
    for _ in range(REFUSED_HOST_LIMIT):
        refused.learn("host-not-allowed:c.example")
    assert isinstance(refused.stop_error(), HostNotAllowed) and "c.example (10 images refused)" in str(refused.stop_error())


def test_drain_spends_the_burst_after_a_429():
    """After the server's "too many requests" the calls go at the steady rate, not a new burst."""
    clock, slept = FakeClock(), []
    limiter = RateLimiter(3600, burst=10, clock=clock, sleep=slept.append)
    limiter.acquire()
    limiter.drain()
    limiter.acquire()
    assert slept == [pytest.approx(1 / ((3600 - 10) / 3600))]
