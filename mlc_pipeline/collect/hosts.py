"""Image hosts as a collect sees them: which may be asked (`source.allowed_hosts`), and which are down.

A host that refuses every connection, or results on a host the config does not allow, would
otherwise cost each photo its retries and end in "queries exhausted" with exit 0 (a user's audit: 3
minutes of silence; 279 refusals and no hint). `HostHealth` counts both and names the error a
collect stops with; the photos stay pending (down) or are asked again once allowed.

A host that answered this run and then stops answering (it died mid-collect) is taken as down by
the rule below (until 2026-12-07 never: audit collect27 D4). It is not silent either (the nightly25 audit: 8 minutes
with nothing logged while 113 downloads failed): after `HOST_DOWN_AFTER` connection errors in a
row, or as soon as every connection of `HOST_SILENT_WARN_S` seconds has failed, a WARNING names
it, the count and since when; while it goes on, the warning is repeated every `HOST_SILENT_REPEAT_S`
seconds; once it answers again, an INFO line says so.

A host that fails for everyone is down too, whether or not it answered (audit collect27 D1, D4: a
403 or an HTML error page for every photo marked all 602 search results failed for good, exit 0,
"queries exhausted"; 5xx to everything cost 3,612 requests and 391 s): `HOST_FAULT_AFTER` different
photos in a row failing the same way (`fault_kind`: an HTTP 4xx status but 404/410, not an image, an empty body,
a redirect loop, a 5xx, no answer), with no image served in between, take it as down. Its remaining
downloads stop at once, the streak's photos are recorded `transient:host-down:<host>` (not their
final verdicts: the next collect asks again) and the collect ends with `ImageHostDown`. One photo's
403 among served images stays that photo's final verdict."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable
from urllib.parse import urlsplit

from mlc_pipeline.collect.flickr import SourceError, network_cause
from mlc_pipeline.secrets import redact

log = logging.getLogger(__name__)

# Connection errors in a row from an image host that has not answered once this run: it is down,
# and its remaining downloads fail at once instead of each waiting out its retries.
HOST_DOWN_AFTER = 20
# A host that answered and then fails every connection: warned about after this many in a row, or
# after this many seconds of nothing but failures (at the next failure), whichever comes first; the
# warning comes again every HOST_SILENT_REPEAT_S while it lasts.
HOST_SILENT_WARN_S = 60.0
HOST_SILENT_REPEAT_S = 300.0
# Search results whose first URL is on a host source.allowed_hosts does not list: this many from one
# host end the collect with the setting to change.
REFUSED_HOST_LIMIT = 10
# Different photos in a row failing the same way on one host, no image served between: the host is down.
HOST_FAULT_AFTER = 20


def fault_kind(reason: str) -> str | None:
    """The kind of a download failure that can be the host's rather than the photo's (None: the
    photo's own: too large, a deadline, a refused host...)."""
    reason = reason.removeprefix("transient:")
    if reason.startswith("not-an-image"):
        return "not-an-image"
    if reason in ("empty-body", "too-many-redirects", "connection-broken", "connectionerror", "timeout",
                  "readtimeout", "connecttimeout"):
        return "no answer" if reason.endswith(("error", "timeout", "broken")) else reason
    # 429: asked to wait; 404, 410: the photo is gone (a URL list's dead links are many, and each its own)
    if reason.startswith("http-") and reason[5:8].isdigit() and reason[5:8] not in ("429", "404", "410"):
        return "http-5xx" if reason[5] == "5" else reason[:8]
    return None


class ImageHostDown(SourceError):
    """An image host answered no connection this run (`HOST_DOWN_AFTER` failures in a row)."""


class HostNotAllowed(SourceError):
    """Many search results point at an image host source.allowed_hosts does not list."""


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


def refused_url(reason: str) -> str | None:
    """A URL on the host a redirect led to, from `host-not-allowed:<host>:after-redirect`; None for a
    refusal of the search result's own URL (its host is the URL's)."""
    suffix = ":after-redirect"
    return f"http://{reason[len('host-not-allowed:'):-len(suffix)]}/" if reason.endswith(suffix) else None


class HostHealth:
    """What one collect's downloads learnt about their hosts (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.lock = threading.Lock()
        self.clock = clock
        self.answered: set[str] = set()             # hosts that sent any reply this run
        self.failures: dict[str, int] = {}          # connection errors from hosts not in `answered`
        self.down: dict[str, str] = {}              # host -> why it is taken as down (the last cause)
        self.refused: dict[str, int] = {}           # host -> results refused: not in allowed_hosts
        # a host in `answered` failing every connection now: host -> [errors in a row, since, warned at]
        self.silent: dict[str, list] = {}
        # host -> (the kind of failure, {photo: its reason}) of the photos failing in a row, none served
        self.streak: dict[str, tuple[str, dict[int, str]]] = {}
        self.taken_back: dict[int, tuple[str, str]] = {}   # photo -> (its final reason, host): the host was down
        self.paused: dict[str, float] = {}          # host -> until when (time.monotonic()) it asked us to wait

    def pause(self, host: str, until: float) -> float:
        """`host` answered 429: no request goes to it until `until` (a later end wins). A rate limit is
        the host's, per client or key, not one photo's (shared/notes/flickr.md): asking its other
        photos meanwhile only meets more 429s. Returns when the host may be asked again."""
        with self.lock:
            self.paused[host] = max(until, self.paused.get(host, 0.0))
            return self.paused[host]

    def paused_until(self, host: str) -> float | None:
        """When `host` may be asked again, if it asked us to wait and that time has not come."""
        with self.lock:
            until = self.paused.get(host)
        return until if until is not None and until > time.monotonic() else None

    def served(self, host: str) -> None:
        """An image was saved from `host`: its failures so far were the photos'."""
        with self.lock:
            self.streak.pop(host, None)

    def failed(self, host: str, cid: int, reason: str) -> None:
        """A photo's attempt on `host` failed with `reason` (`transient:` for a retried one)."""
        kind = fault_kind(reason)
        if kind is None:
            return
        with self.lock:
            if kind == "no answer" and host not in self.answered:
                return                  # never answered: HOST_DOWN_AFTER connections decide (unanswered)
            was, photos = self.streak.get(host, (kind, {}))
            photos = photos if was == kind else {}
            photos[cid] = reason
            self.streak[host] = (kind, photos)
            if len(photos) >= HOST_FAULT_AFTER and host not in self.down:
                self.down[host] = f"{kind} for {len(photos)} different photos in a row, no image served"
                self.taken_back.update((c, (r, host)) for c, r in photos.items() if not r.startswith("transient:"))
                log.warning("image host %s failed %d different photos in a row (%s), none served between: "
                            "taken as down for this run; its photos stay for the next collect",
                            host, len(photos), kind)

    def final_or_transient(self, host: str, cid: int, reason: str) -> str:
        """A photo's final verdict, or `transient:host-down:<host>` where its host was down for everyone."""
        with self.lock:
            if host in self.down and fault_kind(reason) is not None:
                self.taken_back.pop(cid, None)
                return f"transient:host-down:{host}"
        return reason

    def answered_by(self, host: str) -> None:
        with self.lock:
            self.answered.add(host)
            if host in self.silent:
                errors, since, warned = self.silent.pop(host)
                if warned is not None:
                    log.info("image host %s answers again, after %d connection errors in a row over %.0f s",
                             host, errors, self.clock() - since)

    def take_back(self) -> list[tuple[int, str, str]]:
        """The photos given a final verdict before their host was taken as down for everyone: (photo,
        that verdict, the transient reason to record instead)."""
        with self.lock:
            out = [(c, r, f"transient:host-down:{h}") for c, (r, h) in self.taken_back.items()]
            self.taken_back.clear()
        return out

    def refused_one(self, host: str) -> None:
        with self.lock:
            self.refused[host] = self.refused.get(host, 0) + 1

    def unanswered(self, host: str, exc: Exception) -> None:
        with self.lock:
            if host in self.answered:
                self._still_silent(host, exc)
                return
            self.failures[host] = self.failures.get(host, 0) + 1
            if self.failures[host] >= HOST_DOWN_AFTER and host not in self.down:
                self.down[host] = f"{type(exc).__name__}: {network_cause(exc)}"
                log.warning("image host %s answered none of %d connections (%s): taken as down for this run",
                            host, self.failures[host], self.down[host])

    def _still_silent(self, host: str, exc: Exception) -> None:
        """A connection error from a host that answered this run (self.lock held): warn when it looks
        gone (see the module doc), never take it as down."""
        now = self.clock()
        streak = self.silent.setdefault(host, [0, now, None])
        streak[0] += 1
        errors, since, warned = streak
        due = (errors >= HOST_DOWN_AFTER or now - since >= HOST_SILENT_WARN_S) if warned is None \
            else now - warned >= HOST_SILENT_REPEAT_S
        if not due:
            return
        streak[2] = now
        log.warning("image host %s %s answering: %d connection errors in a row since %s (last: %s: %s); it "
                    "answered earlier this run: taken as down once %d different photos in a row failed (failed "
                    "ones stay pending for the next run)", host, "stopped" if warned is None else "still not", errors,
                    time.strftime("%H:%M:%S", time.localtime(since)), type(exc).__name__, network_cause(exc),
                    HOST_FAULT_AFTER)

    def learn(self, reason: str | None) -> None:
        """What a Dask worker's downloader found, told by a result's reason (each chunk has its own
        HostHealth): a host it took as down, a result on a host not allowed."""
        if reason and reason.startswith("transient:host-down:"):
            with self.lock:
                self.down.setdefault(reason.split(":", 2)[2], "taken as down by a Dask worker")
        elif reason and reason.startswith("host-not-allowed:") and not reason.endswith(":after-redirect"):
            self.refused_one(reason.split(":", 1)[1])

    def stop_error(self) -> SourceError | None:
        """The error a collect ends with when an image host was down (its photos failed, retried next run), or
        many results were on a host allowed_hosts does not list (asked again once it does)."""
        if many := {h: n for h, n in self.refused.items() if n >= REFUSED_HOST_LIMIT}:
            return HostNotAllowed(redact(
                "the search results' images are on host(s) that source.allowed_hosts does not list: "
                + ", ".join(f"{h} ({n} images refused)" for h, n in sorted(many.items()))
                + "; add the host to source.allowed_hosts and run again: those photos are downloaded then"))
        if not self.down:
            return None
        hosts = "; ".join(f"{h} ({why})" for h, why in sorted(self.down.items()))
        what = "answered none of %d connections in a row" % HOST_DOWN_AFTER if all(
            "photos in a row" not in why for why in self.down.values()) else "was down for everyone"
        return ImageHostDown(redact(
            f"the image host {hosts} {what} this run: nothing more was asked of it. Check the host (or "
            "the network, or the proxy HTTP_PROXY/HTTPS_PROXY names), then run again: its photos, recorded "
            "failed (transient:host-down), are tried again then"))
