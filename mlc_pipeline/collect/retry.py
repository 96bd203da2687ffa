"""Retries with exponential backoff and jitter, and a token-bucket rate limiter."""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from typing import Callable, TypeVar

from mlc_pipeline.secrets import printable

T = TypeVar("T")
log = logging.getLogger(__name__)


class Transient(Exception):
    """A failure worth retrying; `wait_s` (if set) is what the server asked us to wait; `limited_by`:
    the host that answered HTTP 429 (its rate limit, not the photo's fault)."""

    def __init__(self, message: str, wait_s: float | None = None, limited_by: str | None = None):
        super().__init__(message)
        self.wait_s, self.limited_by = wait_s, limited_by


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date (None: absent or unreadable)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random = random) -> float:
    """Full jitter: uniform in [0, min(max, base * 2**attempt)] (AWS architecture blog's recipe)."""
    return rng.uniform(0, min(max_s, base_s * (2 ** attempt)))


def with_retries(call: Callable[[], T], attempts: int, base_s: float, max_s: float,
                 what: str, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `call`, retrying on `Transient` up to `attempts` tries in all; other errors pass through."""
    for attempt in range(attempts):
        try:
            return call()
        except Transient as exc:
            if attempt == attempts - 1:
                raise
            delay = exc.wait_s if exc.wait_s is not None else backoff_delay(attempt, base_s, max_s)
            log.warning("%s: %s; retry %d/%d in %.1fs", what, printable(str(exc)), attempt + 1, attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")


class RateLimiter:
    """Keeps calls under `per_hour` in ANY sliding hour, while allowing a short burst.

    A bucket of `burst` tokens refills at (per_hour - burst) / hour, so even a full bucket spent
    at once plus an hour of steady refill stays within the budget.
    """

    def __init__(self, per_hour: int, burst: int | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.burst = max(1, min(burst if burst is not None else per_hour // 60, per_hour // 2 or 1))
        self.rate = max(per_hour - self.burst, 1) / 3600.0
        self.tokens = float(self.burst)
        self.clock, self.sleep = clock, sleep
        self.stamp = clock()
        self.lock = threading.Lock()
        self.calls = 0

    def acquire(self) -> float:
        """Take one token, sleeping if needed. Returns the seconds waited."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= 1
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
            self.calls += 1
        if wait > 0:
            self.sleep(wait)
        return wait

    def drain(self) -> None:
        """The server said "too many requests" (HTTP 429): spend the burst, so the calls after the
        wait go at the steady rate instead of bursting into the limit again."""
        with self.lock:
            self.tokens = min(self.tokens, 0.0)
