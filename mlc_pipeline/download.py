"""Concurrent, bounded, validated image downloads with atomic writes.

Each job either ends as a file at its final path (written to a temporary file, then renamed, so a
killed run never leaves a partial image) or as a recorded reason. Reasons starting with
`transient:` are retried by the next run; the others are final.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from .config import SourceSettings
from .procs import pid_alive
from .retry import backoff_delay
from .secrets import redact

log = logging.getLogger(__name__)

SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
MAGIC = (  # (prefix, offset, extension)
    (b"\xff\xd8\xff", 0, "jpg"), (b"\x89PNG\r\n\x1a\n", 0, "png"), (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"), (b"WEBP", 8, "webp"), (b"BM", 0, "bmp"), (b"II*\x00", 0, "tif"),
    (b"MM\x00*", 0, "tif"),
)


@dataclass(frozen=True)
class DownloadJob:
    cid: int
    photo_id: str
    url: str


@dataclass
class DownloadResult:
    cid: int
    ok: bool
    path: Path | None = None
    bytes: int = 0
    sha256: str | None = None
    content_type: str | None = None
    reason: str | None = None
    attempts: int = 0


class Rejected(Exception):
    """A final failure: the reason is recorded and the job is not retried."""


class Retryable(Exception):
    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.wait_s = wait_s


def image_extension(head: bytes) -> str | None:
    for prefix, offset, ext in MAGIC:
        if head[offset:offset + len(prefix)] == prefix and (ext != "webp" or head[:4] == b"RIFF"):
            return ext
    return None


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.lower()


def host_allowed(url: str, allowed: Iterable[str]) -> bool:
    """Only http(s), only listed hosts; an entry without a port allows any port of that host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return False
    netloc = parts.netloc.lower()
    return any(a.lower() == netloc or a.lower() == parts.hostname for a in allowed)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date."""
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


def final_path(raw_dir: Path, photo_id: str, ext: str) -> Path:
    return raw_dir / photo_id[-2:].rjust(2, "_") / f"{photo_id}.{ext}"


def clean_stale_temp(tmp_root: Path) -> int:
    """Remove temp folders of download processes that are no longer alive (killed runs)."""
    removed = 0
    if not tmp_root.exists():
        return 0
    for d in tmp_root.iterdir():
        pid = d.name.split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        for f in d.glob("*"):
            f.unlink()
            removed += 1
        d.rmdir()
    return removed


class Downloader:
    def __init__(self, settings: SourceSettings, allowed_hosts: list[str], raw_dir: Path, tmp_root: Path,
                 sleep: Callable[[float], None] = time.sleep):
        self.s = settings
        self.allowed = list(allowed_hosts)
        self.raw_dir = raw_dir
        self.tmp_dir = tmp_root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.sleep = sleep
        self.local = threading.local()
        self.host_slots: dict[str, threading.BoundedSemaphore] = {}
        self.slots_lock = threading.Lock()
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}   # measured, so tests can prove the per-host bound

    # --- plumbing ----------------------------------------------------------------------------
    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            sess = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.s.per_host_concurrency, max_retries=0)
            sess.mount("http://", adapter)
            sess.mount("https://", adapter)
            sess.headers["User-Agent"] = "mlc-pipeline/0.1 (+image dataset collector)"
            self.local.session = sess
        return self.local.session

    def slot(self, host: str) -> threading.BoundedSemaphore:
        with self.slots_lock:
            if host not in self.host_slots:
                self.host_slots[host] = threading.BoundedSemaphore(self.s.per_host_concurrency)
                self.in_flight[host] = self.max_in_flight[host] = 0
            return self.host_slots[host]

    def _track(self, host: str, delta: int) -> None:
        with self.slots_lock:
            self.in_flight[host] += delta
            self.max_in_flight[host] = max(self.max_in_flight[host], self.in_flight[host])

    # --- one job -----------------------------------------------------------------------------
    def fetch(self, job: DownloadJob) -> DownloadResult:
        if not SAFE_ID.match(job.photo_id):
            return DownloadResult(job.cid, False, reason="unsafe-photo-id")
        attempts = self.s.retry.attempts
        for attempt in range(attempts):
            try:
                return self._fetch_once(job, attempt + 1)
            except Rejected as exc:
                return DownloadResult(job.cid, False, reason=str(exc), attempts=attempt + 1)
            except Retryable as exc:
                if attempt == attempts - 1:
                    return DownloadResult(job.cid, False, reason=f"transient:{exc}", attempts=attempt + 1)
                wait = exc.wait_s if exc.wait_s is not None else backoff_delay(
                    attempt, self.s.retry.base_delay_s, self.s.retry.max_delay_s)
                self.sleep(min(wait, self.s.max_retry_after_s))
        raise AssertionError("unreachable")

    def _fetch_once(self, job: DownloadJob, attempt: int) -> DownloadResult:
        url = job.url
        for _ in range(MAX_REDIRECTS + 1):
            if not host_allowed(url, self.allowed):
                raise Rejected(f"host-not-allowed:{host_of(url) or url[:40]}")
            host = host_of(url)
            with self.slot(host):
                self._track(host, +1)
                try:
                    result = self._get(url, job, attempt)
                finally:
                    self._track(host, -1)
            if isinstance(result, DownloadResult):
                return result
            url = result                       # a redirect: check the new host before following
        raise Rejected("too-many-redirects")

    def _get(self, url: str, job: DownloadJob, attempt: int) -> DownloadResult | str:
        try:
            with self.session().get(url, stream=True, timeout=self.s.timeout_s, allow_redirects=False) as resp:
                code = resp.status_code
                if code in (301, 302, 303, 307, 308):
                    location = resp.headers.get("Location")
                    if not location:
                        raise Rejected(f"http-{code}-without-location")
                    return urljoin(url, location)
                if code == 429:
                    raise Retryable("http-429", retry_after_seconds(resp.headers.get("Retry-After")))
                if code >= 500:
                    raise Retryable(f"http-{code}")
                if code != 200:
                    raise Rejected(f"http-{code}")
                ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if not ctype.startswith("image/"):
                    raise Rejected(f"not-an-image:content-type={ctype or 'none'}")
                declared = resp.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.s.max_image_bytes:
                    raise Rejected("too-large")
                return self._save(resp, job, ctype, attempt)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise Retryable(type(exc).__name__.lower()) from None
        except requests.exceptions.ChunkedEncodingError:
            raise Retryable("connection-broken") from None

    def _save(self, resp: requests.Response, job: DownloadJob, ctype: str, attempt: int) -> DownloadResult:
        """Stream to a temp file (size cap enforced on bytes really received), then rename."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_dir / f"{job.photo_id}.part"
        digest, size, head = hashlib.sha256(), 0, b""
        try:
            with open(tmp, "wb") as out:
                for chunk in resp.iter_content(CHUNK):
                    size += len(chunk)
                    if size > self.s.max_image_bytes:
                        raise Rejected("too-large")
                    if len(head) < 16:
                        head += chunk[:16]
                    digest.update(chunk)
                    out.write(chunk)
            if size == 0:
                raise Rejected("empty-body")
            ext = image_extension(head)
            if ext is None:
                raise Rejected("not-an-image:bad-magic")
            path = final_path(self.raw_dir, job.photo_id, ext)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return DownloadResult(job.cid, True, path, size, digest.hexdigest(), ctype, None, attempt)

    # --- many jobs ---------------------------------------------------------------------------
    def run(self, jobs: list[DownloadJob]) -> Iterator[DownloadResult]:
        """Results in completion order. Workers = per-host bound x distinct hosts (capped)."""
        hosts = {host_of(j.url) for j in jobs} or {""}
        workers = min(64, self.s.per_host_concurrency * len(hosts), max(1, len(jobs)))
        with ThreadPoolExecutor(workers, thread_name_prefix="download") as pool:
            futures = {pool.submit(self.fetch, job): job for job in jobs}
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    yield fut.result()
                except Exception as exc:  # a bug or an OS error: record it, never lose the other jobs
                    log.error("download of photo %s failed unexpectedly: %s", job.photo_id, redact(repr(exc)))
                    yield DownloadResult(job.cid, False, reason=f"transient:error:{type(exc).__name__}")
        if self.tmp_dir.exists() and not any(self.tmp_dir.iterdir()):
            self.tmp_dir.rmdir()
