"""The server's counters (API calls and their times, image requests, concurrency, connections, photos
offered), read by tests and benchmarks through FlickrServer.stats()."""

from __future__ import annotations

import threading
import time
from collections import Counter


class ServerStats:
    """Counters the tests and benchmarks read through FlickrServer.stats()."""

    def __init__(self):
        self.lock = threading.Lock()
        self.api_calls = 0
        self.api_calls_by_method: Counter[str] = Counter()
        self.api_call_times: list[float] = []  # time.monotonic() of each call: the rate a client really kept
        self.image_requests = 0
        self.image_paths: Counter[str] = Counter()   # requests per image URL path: what a client fetched again
        self.images_in_flight = 0
        self.max_concurrent_image_connections = 0
        self.image_spans: list[list[float]] = []     # [arrival, end] of each image request (monotonic; inf: not ended)
        self.connections_opened = 0  # TCP connections accepted: shows whether clients keep them alive
        self.offered: set[str] = set()

    def connection_opened(self) -> None:
        with self.lock:
            self.connections_opened += 1

    def api_call(self, method: str) -> None:
        with self.lock:
            self.api_calls += 1
            self.api_calls_by_method[method] += 1
            self.api_call_times.append(time.monotonic())

    def image_started(self, path: str = "") -> list[float]:
        with self.lock:
            self.image_requests += 1
            self.image_paths[path] += 1
            self.images_in_flight += 1
            self.max_concurrent_image_connections = max(self.max_concurrent_image_connections, self.images_in_flight)
            span = [time.monotonic(), float("inf")]
            self.image_spans.append(span)
            return span

    def image_finished(self, span: list[float]) -> None:
        with self.lock:
            self.images_in_flight -= 1
            span[1] = time.monotonic()

    def max_overlapping(self, min_overlap_s: float) -> int:
        """The most image requests that each overlapped the others by at least `min_overlap_s`.
        max_concurrent_image_connections counts a request until its handler thread returns, which can be
        after the client read the last byte, released its per-host slot and sent the next request (a
        CI run under load saw 4 for a bound of 3): a handoff overlaps by that scheduling delay, a
        request beyond a client's bound by most of a request. Intervals overlap by >= g exactly when
        they still meet with g cut off their ends, and meeting intervals share a point (1-D Helly)."""
        with self.lock:
            shrunk = [(a, b - min_overlap_s) for a, b in self.image_spans if b - min_overlap_s >= a]
        events = sorted([(a, 1) for a, _ in shrunk] + [(b, -1) for _, b in shrunk], key=lambda e: (e[0], -e[1]))
        peak = level = 0
        for _, step in events:
            level += step
            peak = max(peak, level)
        return peak

    def add_offered(self, photo_ids: list[str]) -> None:
        with self.lock:
            self.offered.update(photo_ids)
