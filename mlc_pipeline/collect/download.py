"""Concurrent, bounded, validated image downloads with atomic writes.

Each job either ends as a file at its final path (written to a temporary file beside it, then
renamed, so a killed run never leaves a partial image and the rename never crosses file systems) or
as a recorded reason. Reasons starting with `transient:` are retried by the next run; the others are
final. Every job has a total deadline (`source.download_deadline_s`, all attempts together): a host
that trickles bytes is cut by a watchdog that shuts the socket down. A write error (disk full,
read-only, permissions) is not a per-image failure: it stops the whole run (`StorageError`), as Ctrl-C
does; either way the queue is cancelled and every download that finished is still handed back.

A batch stops the same way whatever it was doing when told to (Ctrl-C while its workers start
included): no job starts any more, the connections of those in flight are shut (waiting for headers
or reading a body), and the call returns once none is running, so no file lands after it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin

import requests

from mlc_pipeline.config import SourceSettings
from mlc_pipeline.collect.batch import Batch, Deferred
from mlc_pipeline.collect.connections import Live, WatchedAdapter, close_session, start_thread, watch
from mlc_pipeline.collect.hosts import HostHealth, host_allowed, host_of
from mlc_pipeline.collect.rawfiles import StorageError, disk_errors, final_path, shard_dir, temp_path
from mlc_pipeline.collect.retry import Transient, backoff_delay, retry_after_seconds
from mlc_pipeline.imageformat import HEAD_BYTES, declared_type, image_extension, unsupported_format
from mlc_pipeline.secrets import redact

log = logging.getLogger(__name__)

SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
# Content types that say nothing about the body (mirrors, object stores, URL lists): the magic bytes
# decide, as for any image (a user's audit: valid JPEGs served so were failed for good).
UNTYPED = ("", "application/octet-stream", "binary/octet-stream", "application/binary", "application/x-binary")
WATCHDOG_TICK_S = 0.1

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


class Cancelled(Exception):
    """The run is stopping (Ctrl-C or a write error): this job did not finish and stays pending."""


class Downloader:
    def __init__(self, settings: SourceSettings, allowed_hosts: list[str], raw_dir: Path,
                 tmp_root: Path | None = None, sleep: Callable[[float], object] | None = None):
        # tmp_root is unused (temp files live beside their images); kept for callers of older versions.
        self.s = settings
        self.allowed = list(allowed_hosts)
        self.raw_dir = raw_dir
        self.stopping = threading.Event()
        self.sleep = sleep or self.stopping.wait      # a retry wait ends early when the run stops
        self.local = threading.local()
        self.host_slots: dict[str, threading.BoundedSemaphore] = {}
        self.slots_lock = threading.Lock()
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}   # measured, so tests can prove the per-host bound
        self.watched: dict[int, tuple[float, Live]] = {}               # thread -> (deadline, connection)
        self.was_cut: set[int] = set()                                  # threads whose response was cut
        self.hosts = HostHealth()                   # hosts down, or refused, this run
        self.sessions: list[requests.Session] = []  # every thread's, for close()

    # --- plumbing ----------------------------------------------------------------------------
    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            sess = requests.Session()
            adapter = WatchedAdapter(pool_connections=4, pool_maxsize=self.s.per_host_concurrency,
                                     max_retries=0)
            sess.mount("http://", adapter)
            sess.mount("https://", adapter)
            sess.headers["User-Agent"] = "mlc-pipeline/0.1 (+image dataset collector)"
            self.local.session = sess
            with self.slots_lock:
                self.sessions.append(sess)
        return self.local.session

    def close(self, this_thread_only: bool = False) -> None:
        """Close the sessions' pools now: left to the garbage collector, their finalizers ran later in
        whatever the process did then (training), and a Ctrl-C that landed in one was lost. `sessions`
        owns them: a session is closed by whoever takes it off that list, a worker as it ends (its own)
        or the collect as it ends (every one left). run_into returns before its workers end, so the
        collect's close took a worker's session too, and the worker closed it again."""
        with self.slots_lock:
            mine = getattr(self.local, "session", None)
            closing = [sess for sess in self.sessions if not this_thread_only or sess is mine]
            self.sessions = [sess for sess in self.sessions if sess not in closing]
        for sess in closing:
            close_session(sess)
        self.local.__dict__.pop("session", None)

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
    def fetch(self, job: DownloadJob, first: int = 0, deadline: float | None = None) -> DownloadResult:
        """One photo, from its attempt `first` on (a deferred photo goes on where it was, within its deadline)."""
        if not SAFE_ID.match(job.photo_id):
            return DownloadResult(job.cid, False, reason="unsafe-photo-id")
        self.local.deadline = deadline or time.monotonic() + self.s.download_deadline_s
        attempts, host = self.s.retry.attempts, host_of(job.url)
        for attempt in range(first, attempts):
            if self.stopping.is_set():
                raise Cancelled()
            if host in self.hosts.down:
                return DownloadResult(job.cid, False, reason=f"transient:host-down:{host}", attempts=attempt)
            if (until := self.hosts.paused_until(host)) is not None:    # its host asked every worker to wait
                raise Deferred(until, attempt, self.local.deadline)   # (a 429): no attempt is spent
            try:
                done = self._fetch_once(job, attempt + 1)
                self.hosts.served(host)          # its failures so far were the photos', not the host's
                return done
            except Rejected as exc:     # the photo's verdict, unless its host fails for everyone (hosts.py)
                self.hosts.failed(host, job.cid, str(exc))
                return DownloadResult(job.cid, False, reason=self.hosts.final_or_transient(host, job.cid, str(exc)),
                                      attempts=attempt + 1)
            except Transient as exc:
                self.hosts.failed(host, job.cid, f"transient:{exc}")
                if attempt == attempts - 1:
                    return DownloadResult(job.cid, False, reason=f"transient:{exc}", attempts=attempt + 1)
                wait = exc.wait_s if exc.wait_s is not None else backoff_delay(
                    attempt, self.s.retry.base_delay_s, self.s.retry.max_delay_s)
                wait = min(wait, self.s.max_retry_after_s)
                if time.monotonic() + wait >= self.local.deadline:
                    return DownloadResult(job.cid, False, reason=f"transient:{self._deadline_reason()}:after-{exc}",
                                          attempts=attempt + 1)
                if exc.limited_by:        # a 429 pauses its host for every worker (hosts.py); the worker
                    raise Deferred(self.hosts.pause(exc.limited_by, time.monotonic() + wait), attempt + 1,
                                   self.local.deadline)          # takes another host's photo meanwhile
                self.sleep(wait)
        raise AssertionError("unreachable")

    def _deadline_reason(self) -> str:
        return f"deadline-exceeded:{self.s.download_deadline_s:g}s"

    def _fetch_once(self, job: DownloadJob, attempt: int) -> DownloadResult:
        url = job.url
        for hop in range(MAX_REDIRECTS + 1):
            if not host_allowed(url, self.allowed):
                host = host_of(url) or url[:40]
                if not hop:
                    self.hosts.refused_one(host)
                raise Rejected(f"host-not-allowed:{host}" + (":after-redirect" if hop else ""))
            host = host_of(url)
            with self.slot(host):
                if self.stopping.is_set():     # queued behind the host's slots while the run stopped
                    raise Cancelled()
                if (until := self.hosts.paused_until(host)) is not None:    # a 429 came while it queued:
                    raise Deferred(until, attempt - 1, self.local.deadline)  # not asked, no attempt spent
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
        left = self.local.deadline - time.monotonic()
        if left <= 0:
            raise Rejected(f"transient:{self._deadline_reason()}")
        me, live = threading.get_ident(), Live()
        with self.slots_lock:
            self.watched[me] = (self.local.deadline, live)
            self.was_cut.discard(me)
        watch(live)
        try:
            # The read timeout also bounds waiting for the headers by what is left of the deadline;
            # the watchdog bounds the body (a byte every few seconds never trips a read timeout), and
            # cuts either once the run stops.
            timeout = (self.s.timeout_s, min(self.s.timeout_s, left))
            with self.session().get(url, stream=True, timeout=timeout, allow_redirects=False) as resp:
                live.conn = getattr(resp.raw, "connection", None) or live.conn    # through a proxy too
                self.hosts.answered_by(host_of(url))
                return self._read(resp, url, job, attempt)
        except (Rejected, Transient, StorageError, Cancelled):
            raise
        except Exception as exc:
            if self._take_cut():
                raise self._cut_error() from None
            if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
                self.hosts.unanswered(host_of(url), exc)
                raise Transient(type(exc).__name__.lower()) from None
            if isinstance(exc, requests.exceptions.ChunkedEncodingError):
                raise Transient("connection-broken") from None
            raise
        finally:
            watch(None)
            with self.slots_lock:
                self.watched.pop(me, None)

    def _take_cut(self) -> bool:
        """Whether the watchdog cut this thread's response (and forget it)."""
        with self.slots_lock:
            cut = threading.get_ident() in self.was_cut
            self.was_cut.discard(threading.get_ident())
        return cut

    def _cut_error(self) -> Exception:
        return Cancelled() if self.stopping.is_set() else Rejected(f"transient:{self._deadline_reason()}")

    def _read(self, resp: requests.Response, url: str, job: DownloadJob, attempt: int) -> DownloadResult | str:
        code = resp.status_code
        if code in (301, 302, 303, 307, 308):
            location = resp.headers.get("Location")
            if not location:
                raise Rejected(f"http-{code}-without-location")
            return urljoin(url, location)
        if code == 429:
            raise Transient("http-429", retry_after_seconds(resp.headers.get("Retry-After")), host_of(url))
        if code >= 500:
            raise Transient(f"http-{code}")
        if code != 200:
            raise Rejected(f"http-{code}")
        ctype, bad = declared_type(resp.headers.get("Content-Type", ""))     # one type: "image/gif, text/html" is HTML
        if bad or not ctype.startswith("image/") and ctype not in UNTYPED:    # an HTML error page, JSON, ...
            raise Rejected(f"not-an-image:content-type={bad or ctype}")
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.s.max_image_bytes:
            raise Rejected("too-large")
        return self._save(resp, job, ctype, attempt)

    def _save(self, resp: requests.Response, job: DownloadJob, ctype: str, attempt: int) -> DownloadResult:
        """Stream to a temp file beside the final path (size cap enforced on bytes really received),
        then rename. A failing write is a StorageError, never a per-image failure."""
        folder = shard_dir(self.raw_dir, job.photo_id)
        tmp = temp_path(self.raw_dir, job.photo_id)
        digest, size, head = hashlib.sha256(), 0, b""
        try:
            with disk_errors(folder):
                folder.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as out:
                    for chunk in resp.iter_content(CHUNK):
                        size += len(chunk)
                        if size > self.s.max_image_bytes:
                            raise Rejected("too-large")
                        if len(head) < HEAD_BYTES:
                            head += chunk[:HEAD_BYTES - len(head)]
                        digest.update(chunk)
                        out.write(chunk)
                if size == 0:
                    raise Rejected("empty-body")
                ext = image_extension(head)
                if ext is None:     # a photo in a format not decoded here (HEIC) is not "not an image"
                    named = unsupported_format(head)
                    raise Rejected(f"unsupported-format:{named.lower()}" if named else "not-an-image:bad-magic")
                if self._take_cut():     # a body without Content-Length ends cleanly when cut
                    raise self._cut_error()
                path = final_path(self.raw_dir, job.photo_id, ext)
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return DownloadResult(job.cid, True, path, size, digest.hexdigest(), ctype, None, attempt)

    # --- many jobs ---------------------------------------------------------------------------
    def run(self, jobs: list[DownloadJob]) -> list[DownloadResult]:
        """All results, in completion order (see run_into)."""
        out: list[DownloadResult] = []
        self.run_into(jobs, out.append)
        return out

    def run_into(self, jobs: list[DownloadJob], record: Callable[[DownloadResult], None]) -> None:
        """Download `jobs`, handing each result to `record` in the calling thread as it completes.
        Workers = per-host bound x distinct hosts (capped).

        On Ctrl-C (or SIGTERM turned into one), a write error, or any exception from `record`, at any
        point (the workers still starting included): the queue is cancelled, downloads in flight are
        cut, every download that finished is still handed to `record` (no file in raw/ the catalog does
        not know; one interrupted inside `record` is handed again), and the exception goes on once no
        download runs."""
        hosts = {host_of(j.url) for j in jobs} or {""}
        workers = min(64, self.s.per_host_concurrency * len(hosts), max(1, len(jobs)))
        self.stopping.clear()
        batch, handed = Batch.of(jobs), 0
        watchdog_done = threading.Event()
        try:        # everything from here: a signal while a thread starts must stop the batch too
            start_thread(self._watchdog, watchdog_done, batch, name="download-deadline", daemon=True)
            for i in range(workers):
                start_thread(self._work, batch, name=f"download_{i}")
            while handed < len(jobs):
                with batch.cond:
                    while len(batch.done) <= handed:
                        batch.cond.wait()
                    job, outcome = batch.done[handed]
                res = self._outcome(job, outcome)
                if res is not None:
                    record(res)
                handed += 1
        except BaseException:
            self._stop(batch)
            for job, outcome in batch.done[handed:]:
                try:
                    res = self._outcome(job, outcome)
                except StorageError:
                    continue                # nothing was written: the candidate stays pending
                if res is not None:
                    record(res)
            raise
        finally:
            watchdog_done.set()

    def _work(self, batch: Batch) -> None:
        """A worker: takes jobs until none is left or the run stops; each outcome goes to batch.done."""
        try:
            while (taken := batch.take()) is not None:
                job, resume = taken
                try:
                    outcome: object = self.fetch(job, *resume)
                except BaseException as exc:    # not swallowed: the calling thread decides (see _outcome); Deferred
                    outcome = exc               # goes back into the batch
                batch.finish(job, outcome)
        finally:
            self.close(this_thread_only=True)

    def _stop(self, batch: Batch) -> None:
        """No job starts any more and those in flight are cut (again each tick: one may get its
        connection after a cut); returns once none is running, so none writes a file after."""
        with batch.cond:
            batch.closed = True
            batch.cond.notify_all()     # workers waiting for a deferred photo's time
        self.stopping.set()             # retry waits end; a job waiting for a host's slot gives up
        while True:
            self._cut_due()
            with batch.cond:
                if not batch.active:
                    return
                batch.cond.wait(WATCHDOG_TICK_S)

    def _outcome(self, job: DownloadJob, outcome: object) -> DownloadResult | None:
        """A finished job's result; None for a cancelled one; StorageError goes on (the run stops)."""
        if isinstance(outcome, (DownloadResult, Cancelled)):
            return outcome if isinstance(outcome, DownloadResult) else None
        if isinstance(outcome, StorageError) or not isinstance(outcome, Exception):
            raise outcome                   # type: ignore[misc]
        # a bug: record it, never lose the other jobs
        log.error("download of photo %s failed unexpectedly: %s", job.photo_id, redact(repr(outcome)))
        return DownloadResult(job.cid, False, reason=f"transient:error:{type(outcome).__name__}")

    def _watchdog(self, done: threading.Event, batch: Batch) -> None:
        """Ends with the batch, even where a signal skipped the caller's `done.set()`."""
        while not done.wait(WATCHDOG_TICK_S):
            if batch.idle():
                return
            self._cut_due()

    def _cut_due(self) -> None:
        """Cut the downloads past their deadline, and all of them once the run stops."""
        now, stopping = time.monotonic(), self.stopping.is_set()
        with self.slots_lock:           # held while cutting: the thread cannot move on to another request
            for t, (deadline, live) in list(self.watched.items()):
                if (stopping or now >= deadline) and live.cut():
                    del self.watched[t]
                    self.was_cut.add(t)
