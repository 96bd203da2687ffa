"""Fault injection: which request fails, how, and how often; all deterministic by FaultSpec.seed."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, fields

# malformed: a reply that says "ok" but lacks its payload (no "photos", no "licenses").
# api429: the request opens a rate-limit window of retry_after_s seconds in which every API call is
# answered HTTP 429 with Retry-After (the seconds left); api429_bare: the same window, no Retry-After.
# api_trickle: the real reply, its whole length announced, sent one byte every trickle_ms.
API_FAULTS = ("http500", "code105", "slow", "malformed", "api429", "api429_bare", "api_trickle")
RATE_LIMIT_FAULTS = ("api429", "api429_bare")
# Persistent image faults: a photo that has one keeps it on every attempt.
# octet: a whole, valid image served as application/octet-stream (mirrors and object stores do).
PHOTO_FAULTS = ("truncated", "empty", "html", "redirect_offsite", "oversize", "trickle", "octet")
DUPLICATE_FAULTS = ("dup_exact", "dup_near")
# Persistent search-result faults: the photo's entry in every search reply lacks its "id"; or its
# "license" (entry_no_license: a mirror that drops the field, or sends it empty: half of such photos each).
ENTRY_FAULTS = ("entry_no_id", "entry_no_license")
# Per-search-text faults: reply_no_license, every entry of the replies to a search text (each page,
# each retry) lacks its licence, as entry_no_license drops it, for that share of texts (a mirror whose
# index lost the field for some searches: a photo another text finds with its licence comes back bare).
REPLY_FAULTS = ("reply_no_license",)
# Transient image faults: the URL's first fault_repeats attempts fail, then it is served (img429;
# img5xx: HTTP img5xx_code, an overloaded CDN's error page; dropped: the connection closes after 60%
# of a body whose full Content-Length was announced).
TRANSIENT_IMAGE_FAULTS = ("img429", "img5xx", "dropped")
# Search paging faults: a page after the first answers the page before's entries (its first
# fault_repeats attempts); a reply's "pages" says 1 whatever "total" says; license_ignored: the
# search ignores its `license` filter (a mirror that does: results under any licence come back);
# dates_ignored: the same for min/max_upload_date (a mirror that does: every window holds every result).
PAGE_FAULTS = ("repeat_page", "pages_low", "license_ignored", "dates_ignored")
RATE_FIELDS = API_FAULTS + TRANSIENT_IMAGE_FAULTS + PHOTO_FAULTS + DUPLICATE_FAULTS + ENTRY_FAULTS + REPLY_FAULTS + PAGE_FAULTS

# `mlc serve-flickr --help`'s list of the faults (every FaultSpec field is named: tests/flickr_server).
FAULTS_HELP = """\
faults: --faults "NAME=RATE,..." (RATE 0..1: the share of requests, URLs or photos hit; "all" turns
several on at once), plus the knobs that shape them (NAME=NUMBER):
  API calls:  http500 (HTTP 500), code105 (Flickr's "service unavailable"), slow (slow_ms late),
              malformed (an "ok" without its payload), api429 / api429_bare (a rate-limit window of
              retry_after_s seconds, with / without Retry-After), api_trickle (a byte every trickle_ms)
              -- each request's first fault_repeats attempts, then it goes through
  search:     entry_no_id / entry_no_license (a photo's entries lack their id / their licence: the
              field left out or empty), reply_no_license (every entry of the replies to that share of
              search texts lacks its licence), repeat_page (a page answers the page before's entries),
              pages_low ("pages": 1), license_ignored / dates_ignored (the search ignores its licence
              filter / its min/max_upload_date)
  images, then served (a URL's first fault_repeats attempts): img429 (HTTP 429, Retry-After:
              retry_after_s), img5xx (HTTP img5xx_code, default 503: an overloaded CDN), dropped (the
              connection closes after 60% of the announced body)
  images, every attempt: truncated, empty, html (an error page, half of them typed image/jpeg),
              redirect_offsite, oversize (25 MB, no length), trickle (a byte every trickle_ms), octet
              (a valid image typed application/octet-stream)
  the world:  dup_exact, dup_near (copies of photos under other ids)
  knobs:      seed, slow_ms, retry_after_s, img5xx_code, trickle_ms, image_latency_ms (every image
              that much later), fault_repeats
e.g. "http500=0.1,img429=0.2,img5xx=0.1,img5xx_code=500,seed=3"
"""


@dataclass
class FaultSpec:
    """Rates (0..1) of each fault, all off by default, plus the knobs that shape them."""

    http500: float = 0.0
    code105: float = 0.0
    slow: float = 0.0
    malformed: float = 0.0
    api429: float = 0.0  # a rate-limit window: every API call answers 429 + Retry-After for retry_after_s
    api429_bare: float = 0.0  # the same window without a Retry-After header
    api_trickle: float = 0.0  # the reply arrives one byte every trickle_ms (an API no read timeout cuts)
    img429: float = 0.0
    img5xx: float = 0.0  # the image host answers HTTP img5xx_code (its first fault_repeats attempts), then serves it
    dropped: float = 0.0  # the connection drops mid-body (a short read against Content-Length), then it works
    truncated: float = 0.0  # the file itself is cut: every attempt gets the same 60%, announced as complete
    empty: float = 0.0
    html: float = 0.0
    dup_exact: float = 0.0
    dup_near: float = 0.0
    redirect_offsite: float = 0.0
    oversize: float = 0.0
    trickle: float = 0.0  # the image arrives one byte every trickle_ms (a host that never times out a read)
    octet: float = 0.0
    entry_no_id: float = 0.0
    entry_no_license: float = 0.0  # a photo's search entries carry no licence id: the field missing, or ""
    reply_no_license: float = 0.0  # share of search texts whose replies' entries all carry no licence id
    repeat_page: float = 0.0
    pages_low: float = 0.0
    license_ignored: float = 0.0  # share of searches answered as if no `license` filter was given
    dates_ignored: float = 0.0  # share of searches answered as if no min/max_upload_date was given
    seed: int = 0
    slow_ms: int = 1500
    retry_after_s: int = 1
    img5xx_code: int = 503  # the status img5xx answers (500, 502, 503, 504: what a CDN or mirror sends)
    trickle_ms: int = 5000  # trickle and api_trickle
    image_latency_ms: int = 0  # added to every image response (benchmarks)
    fault_repeats: int = 1  # consecutive failing attempts of one request before it succeeds

    @classmethod
    def parse(cls, text: str) -> "FaultSpec":
        """Parse 'http500=0.1,img429=0.2,seed=3'. The word 'all' starts from all_on(), wherever it
        stands: the settings given beside it override it ('img429=0.5,all' keeps 0.5)."""
        items = [part.strip() for part in (text or "").split(",") if part.strip()]
        spec = cls.all_on() if "all" in items else cls()
        known = [f.name for f in fields(cls)]
        for item in items:
            if item == "all":
                continue
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or name not in known:
                raise ValueError(f"bad fault setting {item!r}; known names: {', '.join(known)}")
            try:
                number = float(value) if name in RATE_FIELDS else int(value)
            except ValueError as error:
                raise ValueError(f"bad value in fault setting {item!r}") from error
            if name in RATE_FIELDS and not 0.0 <= number <= 1.0:
                raise ValueError(f"fault rate {name}={value} is not within 0..1")
            if name == "img5xx_code" and not 500 <= number <= 599:
                raise ValueError(f"img5xx_code={value} is no HTTP 5xx status (500..599)")
            setattr(spec, name, number)
        return spec

    @classmethod
    def all_on(cls) -> "FaultSpec":
        """Every fault at a moderate rate: a client with sane retries must still finish."""
        return cls(
            http500=0.05, code105=0.05, slow=0.02, img429=0.1,
            truncated=0.02, empty=0.02, html=0.02, dup_exact=0.03, dup_near=0.03,
            redirect_offsite=0.02, oversize=0.01, slow_ms=1500,
        )


def unit_hash(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from the given parts (same on every run and machine)."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def pick_by_rates(u: float, rates: list[tuple[str, float]]) -> str | None:
    """Map u in [0, 1) onto mutually exclusive faults laid end to end; None if u falls past them all."""
    edge = 0.0
    for name, rate in rates:
        edge += rate
        if u < edge:
            return name
    return None


class FaultPlan:
    """Live fault decisions for one server: counts attempts per request and every fault injected."""

    def __init__(self, spec: FaultSpec):
        self.spec = spec
        self._lock = threading.Lock()
        self._attempts: Counter[tuple[str, str]] = Counter()
        self._injected: Counter[str] = Counter()
        self._limited: tuple[str, float] | None = None   # an open rate-limit window: (fault, monotonic end)

    def _next_attempt(self, scope: str, key: str) -> int:
        with self._lock:
            attempt = self._attempts[(scope, key)]
            self._attempts[(scope, key)] += 1
        return attempt

    def api_fault(self, request_key: str) -> str | None:
        """The fault to inject into this API request (one of API_FAULTS), or None.

        request_key identifies the request without nonces or keys, so a retry is the same request:
        it fails for its first fault_repeats attempts and then succeeds. While a rate-limit window
        (api429, api429_bare) is open, every request gets that fault, whatever its own draw.
        """
        if self.rate_limit_left() > 0:
            self.count(self._limited[0])
            return self._limited[0]
        rates = [(name, getattr(self.spec, name)) for name in API_FAULTS]
        fault = pick_by_rates(unit_hash(self.spec.seed, "api", request_key), rates)
        if fault is None or self._next_attempt("api", request_key) >= self.spec.fault_repeats:
            return None
        self.count(fault)
        if fault in RATE_LIMIT_FAULTS:
            with self._lock:
                self._limited = (fault, time.monotonic() + self.spec.retry_after_s)
        return fault

    def rate_limit_left(self) -> float:
        """Seconds left of the open rate-limit window (0 when none is open)."""
        with self._lock:
            return max(0.0, self._limited[1] - time.monotonic()) if self._limited else 0.0

    def ignores_license(self, request_key: str) -> bool:
        """Whether this search is answered as if it had no `license` filter (counted when it had one)."""
        return unit_hash(self.spec.seed, "license", request_key) < self.spec.license_ignored

    def ignores_dates(self, request_key: str) -> bool:
        """Whether this search is answered as if it had no upload-date bounds."""
        return unit_hash(self.spec.seed, "dates", request_key) < self.spec.dates_ignored

    def image_429(self, url_path: str) -> bool:
        """Whether this image URL answers 429 now (its first fault_repeats attempts do)."""
        return self._transient_image_fault("img429", url_path)

    def image_5xx(self, url_path: str) -> bool:
        """Whether this image URL answers HTTP img5xx_code now (its first fault_repeats attempts do)."""
        return self._transient_image_fault("img5xx", url_path)

    def image_dropped(self, url_path: str) -> bool:
        """Whether this image URL's connection drops mid-body now (its first fault_repeats attempts do)."""
        return self._transient_image_fault("dropped", url_path)

    def _transient_image_fault(self, name: str, url_path: str) -> bool:
        """A TRANSIENT_IMAGE_FAULTS fault: drawn per URL at its rate, for the URL's first fault_repeats attempts."""
        if unit_hash(self.spec.seed, name, url_path) >= getattr(self.spec, name):
            return False
        if self._next_attempt(name, url_path) >= self.spec.fault_repeats:
            return False
        self.count(name)
        return True

    def photo_fault(self, photo_id: str) -> str | None:
        """The persistent fault of a photo (every size, every attempt), or None. Not counted here."""
        rates = [(name, getattr(self.spec, name)) for name in PHOTO_FAULTS]
        return pick_by_rates(unit_hash(self.spec.seed, "photo", photo_id), rates)

    def entry_without_id(self, photo_id: str) -> bool:
        """Whether this photo's search-result entry loses its "id" (in every reply); counted."""
        if unit_hash(self.spec.seed, "entry", photo_id) >= self.spec.entry_no_id:
            return False
        self.count("entry_no_id")
        return True

    def entry_without_license(self, photo_id: str) -> bool:
        """Whether this photo's search-result entry loses its "license" (in every reply); counted."""
        if unit_hash(self.spec.seed, "entry-license", photo_id) >= self.spec.entry_no_license:
            return False
        self.count("entry_no_license")
        return True

    def reply_without_license(self, text: str) -> bool:
        """Whether every entry of the replies to searches for this text loses its "license"."""
        return bool(text) and unit_hash(self.spec.seed, "reply-license", text) < self.spec.reply_no_license

    def damage_entries(self, response: dict, text: str = "") -> dict:
        """A search reply (for `text`) with the entries of photos that have the entry_no_id fault stripped
        of their id, and those with entry_no_license, or all of them where the text has reply_no_license,
        of their licence (the field left out, or sent empty: by photo). Each licence dropped is counted."""
        photos = response.get("photos")
        bare = self.reply_without_license(text)
        if (self.spec.entry_no_id or self.spec.entry_no_license or bare) and isinstance(photos, dict):
            photos["photo"] = [self._damaged(entry, bare) for entry in photos["photo"]]
        return response

    def _damaged(self, entry: dict, bare: bool = False) -> dict:
        photo_id = entry["id"]
        if "license" in entry and bare:
            self.count("reply_no_license")
        if "license" in entry and (bare or self.spec.entry_no_license and self.entry_without_license(photo_id)):
            entry = {k: v for k, v in entry.items() if k != "license"}
            if unit_hash(self.spec.seed, "license-empty", photo_id) < 0.5:
                entry["license"] = ""
        if self.spec.entry_no_id and self.entry_without_id(photo_id):
            entry = {k: v for k, v in entry.items() if k != "id"}
        return entry

    def damage_pages(self, params: dict, key: str, call) -> dict:
        """photos.search's reply (`call(params)`) with the paging faults: `repeat_page`, the page
        before's entries instead of this page's; `pages_low`, "pages": 1. Both counted."""
        response = call(params)
        photos = response.get("photos")
        if not isinstance(photos, dict):
            return response
        page = photos.get("page") if isinstance(photos.get("page"), int) else 1
        if page > 1 and unit_hash(self.spec.seed, "repeat", key) < self.spec.repeat_page \
                and self._next_attempt("repeat_page", key) < self.spec.fault_repeats:
            self.count("repeat_page")
            photos["photo"] = call({**params, "page": str(page - 1)})["photos"]["photo"]
        if unit_hash(self.spec.seed, "pages", key) < self.spec.pages_low:
            self.count("pages_low")
            photos["pages"] = 1
        return response

    def html_lies_about_type(self, photo_id: str) -> bool:
        """Half of the HTML error pages claim to be image/jpeg."""
        return unit_hash(self.spec.seed, "html-type", photo_id) < 0.5

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._injected[name] += n

    def injected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._injected)
