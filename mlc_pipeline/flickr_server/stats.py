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
        self.images_in_flight = 0
        self.max_concurrent_image_connections = 0
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

    def image_started(self) -> None:
        with self.lock:
            self.image_requests += 1
            self.images_in_flight += 1
            self.max_concurrent_image_connections = max(self.max_concurrent_image_connections, self.images_in_flight)

    def image_finished(self) -> None:
        with self.lock:
            self.images_in_flight -= 1

    def add_offered(self, photo_ids: list[str]) -> None:
        with self.lock:
            self.offered.update(photo_ids)
