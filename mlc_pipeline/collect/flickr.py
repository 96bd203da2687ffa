"""Searching Flickr (or a Flickr-compatible server) through the `flickrapi` client.

flickrapi 2.4.0 gives us the signed HTTP call and JSON parsing, nothing more: pagination, the
4,000-result cap, retries, backoff and the call budget are ours (see shared/notes/flickr.md).
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import flickrapi
import requests
from urllib.parse import urlsplit, urlunsplit
from flickrapi.exceptions import FlickrError

from mlc_pipeline.catalog import Found
from mlc_pipeline.catalog.labels import licence_allowed
from mlc_pipeline.config import SourceSettings
from mlc_pipeline.collect.connections import Deadline, WatchedAdapter, close_session
from mlc_pipeline.collect.windows import DAY, as_int, date_windows
from mlc_pipeline.collect.retry import RateLimiter, Transient, retry_after_seconds, with_retries
from mlc_pipeline.secrets import Credentials, printable, redact

log = logging.getLogger(__name__)
# flickrapi logs every call's parameters (INFO/DEBUG) and, at ERROR, a failed reply's whole body line
# by line, at every attempt (60 lines for six tries at a proxy's 502 page: the secrets21 audit);
# classify() reports each failure in one line of ours.
logging.getLogger("flickrapi").setLevel(logging.CRITICAL)

FLICKR_EPOCH = 1072915200          # 2004-01-01: no upload is older
REPEATED_PAGES = 3                 # answers in a row with nothing new inside the reachable range: the end
STALE_CALLS = 30                   # a query's API calls in a row that bring no photo new to it: the end
STATUS_RE = re.compile(r"Status code (\d{3})")
KEY_SHOWN = 60                     # characters of a malformed reply's key a message shows
RATE_LIMITED_S = 1.0               # a 429 without Retry-After waits 1 s, 2 s, 4 s, ... (capped by max_retry_after_s)


class SourceError(RuntimeError):
    """A search failure that retrying will not fix (bad key, bad request)."""


class InvalidKeyError(SourceError):
    pass


class RetriesExhausted(SourceError):
    """A transient fault (105, 5xx, timeouts) outlasted every retry: worth another try later. Unless
    `unreachable`: every try's connection to an API that never answered this run was refused, a
    source.rest_url nothing listens at (a later try finds the same: the prefect28 audit)."""
    unreachable = False


def api_address(rest_url: str) -> str:
    """host:port of the API URL, for a message: no path, query or user info (nothing secret)."""
    parts = urlsplit(rest_url)
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:          # a port that is not a number: the URL as far as it parses
        port = None
    host = parts.hostname or "?"
    return f"[{host}]:{port}" if ":" in host and port else f"{host}:{port}" if port else host


def network_cause(exc: BaseException) -> str:
    """Why a connection failed, from the OS error under requests' and urllib3's wrappers
    ("connection refused", "name or service not known"), or what kind of timeout it was."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror and not isinstance(e, requests.RequestException):
            return e.strerror[:1].lower() + e.strerror[1:]
        todo += [x for x in (getattr(e, "reason", None), e.__cause__, e.__context__, *e.args)
                 if isinstance(x, BaseException)]
    if isinstance(exc, requests.ConnectTimeout):
        return "no connection within source.timeout_s"
    if isinstance(exc, requests.Timeout):
        return "no reply within source.timeout_s"
    return "the connection failed"


def classify(exc: Exception, rest_url: str | None = None) -> Exception:
    """Map a client error to Transient (retry) or SourceError (stop), with secrets masked.
    `rest_url`: the API URL called, named (host:port only) when it cannot be reached."""
    msg = printable(redact(str(exc)))      # a reply's message: no control character reaches a terminal
    if isinstance(exc, FlickrError):
        if exc.code == 100:
            return InvalidKeyError(
                f"Flickr rejected the API key ({msg}). Check FLICKR_API_KEY and FLICKR_API_SECRET (or, "
                "where they are not set in a Prefect deployment, its Secret blocks flickr-api-key and "
                "flickr-api-secret): the key may be mistyped, expired or revoked")
        if exc.code == 105:
            return Transient(f"Flickr is temporarily unavailable ({msg})")
        status = STATUS_RE.search(msg)
        if status and (int(status.group(1)) >= 500 or int(status.group(1)) == 429):
            return Transient(f"HTTP {status.group(1)} from the API")
        if status:      # 404, 403, ...: the address is wrong, not the request (a mistyped rest_url path)
            where = f" at {api_address(rest_url)}" if rest_url else ""
            return SourceError(f"the API{where} answered HTTP {status.group(1)}: check source.rest_url (its path "
                               "too: Flickr's is /services/rest/)")
        return SourceError(f"Flickr API error: {msg}")
    if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
        where = f" at {api_address(rest_url)}" if rest_url else ""
        cause = network_cause(exc)
        hint = (" (through the proxy that HTTP_PROXY/HTTPS_PROXY names: check it)"
                if isinstance(exc, requests.exceptions.ProxyError) else
                " (nothing listens there: check source.rest_url, or start the server)"
                if cause == "connection refused" else
                " (check source.rest_url and the network)" if isinstance(exc, requests.ConnectionError) else "")
        return Transient(redact(f"{type(exc).__name__} talking to the API{where}: {cause}{hint}"))
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema)):    # ValueErrors too, but no reply to parse
        return SourceError(f"source.rest_url cannot be called ({type(exc).__name__}): check it")
    if isinstance(exc, ValueError):   # JSON that does not parse: a proxy's error page, say
        return Transient(f"unparseable API response ({type(exc).__name__})")
    return exc


def outline(value) -> str:
    """What a malformed reply or entry held, for a message: its keys, never its values (no secrets), each
    at most KEY_SHOWN characters, control characters escaped (a hostile reply's key retitled and cleared
    the terminal: the security26 audit)."""
    if isinstance(value, dict):
        keys = (printable(k if len(k) <= KEY_SHOWN else k[:KEY_SHOWN] + "...") for k in sorted(map(str, value))[:8])
        return "keys: " + (", ".join(keys) or "none")
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class Target:
    """What a query is collected for: the role (train | pool | probe) and the label it gives."""

    purpose: str
    label: str


class FlickrSource:
    def __init__(self, settings: SourceSettings, credentials: Credentials, source_name: str,
                 rest_url: str | None = None, result_cap: int = 4000, static_host: str | None = None):
        self.settings = settings
        self.name = source_name
        self.result_cap = result_cap
        self.api = flickrapi.FlickrAPI(credentials.key, credentials.secret, format="parsed-json",
                                       store_token=False, timeout=settings.timeout_s)
        self.api.REST_URL = rest_url or settings.rest_url   # instance attribute: redirects every call
        # flickrapi keeps only "Status code 429 received" of a failed reply: our own session (its
        # class-wide one is shared by every instance) keeps the last response, for its Retry-After.
        self.replies = threading.local()
        session = requests.Session()
        session.hooks["response"].append(self._keep_reply)
        for scheme in ("http://", "https://"):      # each try has a deadline (`call`), a watchdog cuts
            session.mount(scheme, WatchedAdapter())
        self.api.flickr_oauth.session = session
        self.limiter = RateLimiter(settings.max_calls_per_hour)
        self.answered = False           # whether the API sent any reply (RetriesExhausted.unreachable)
        self.license_names: dict[int, str] = {}
        self.static_host = static_host
        self.skipped: Counter[str] = Counter()      # search results left out, by reason
        self.unlicensed_said: set[str] = set()      # queries whose results without a licence id were said
        self.undated: set[str] = set()              # queries whose windows the API does not narrow
        self.query_calls: Counter[str] = Counter()  # search calls, by query
        self.unreadable: dict[str, str] = {}        # folder mode: files not served (no image), path -> why

    def close(self) -> None:
        """Close the API session's connection pools now, not in a finalizer run later (Downloader.close)."""
        close_session(self.api.flickr_oauth.session)

    def current_url(self, url: str) -> str:
        """The bundled server may run on another port than when a URL was recorded (port 0, or a
        changed setting): point recorded URLs of the local source at the server running now."""
        if not self.static_host:
            return url
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, self.static_host, parts.path, parts.query, ""))

    # --- one API call, retried ---------------------------------------------------------------
    def _keep_reply(self, response: requests.Response, *args, **kwargs) -> None:
        self.replies.last = response
        self.answered = True

    def rate_limited(self, exc: Exception, tries: int) -> Exception:
        """`exc` as classified, or, for an HTTP 429, a Transient that waits what the server's
        Retry-After asks (seconds or an HTTP date), as image downloads do: capped by
        source.max_retry_after_s; without one, 1 s, 2 s, 4 s, ... (the same cap). Either way the
        limiter's burst is spent: the calls after the wait go at the steady rate."""
        reply = getattr(self.replies, "last", None)
        if not isinstance(exc, Transient) or reply is None or reply.status_code != 429:
            return exc
        self.limiter.drain()
        cap = self.settings.max_retry_after_s
        asked = retry_after_seconds(reply.headers.get("Retry-After"))
        if asked is None:
            wait = RATE_LIMITED_S * 2 ** (tries - 1) * random.uniform(1.0, 1.25)
            return Transient("HTTP 429 from the API (no Retry-After: backing off)", min(wait, cap))
        capped = f"; source.max_retry_after_s caps a wait at {cap:g} s" if asked > cap else ""
        return Transient(f"HTTP 429 from the API (it asked to wait {math.ceil(asked)} s{capped})", min(asked, cap))

    def call(self, method: str, expect: str | None = None, **params) -> dict:
        """`method` with retries. `expect`: the part of the reply the caller reads ("photos"); a reply
        without it (a "stat: ok" with no payload) is a transient fault, retried like a 5xx; an HTTP
        429 waits what the server asks (`rate_limited`). Every try is one call of the budget, and has
        `source.api_deadline_s` for its whole reply: a reply trickled a byte at a time (which the
        per-read `timeout_s` never cuts) is cut then, a timeout like any other (the security26 audit:
        such an API hung collect for ever)."""
        tries, refused = 0, True

        def once() -> dict:
            nonlocal tries, refused
            tries += 1
            self.limiter.acquire()
            self.replies.last = None
            deadline = Deadline(self.settings.api_deadline_s)
            try:
                with deadline:
                    reply = getattr(self.api, method)(**params)
            except (FlickrError, requests.RequestException, ValueError) as exc:
                refused = refused and not deadline.passed and isinstance(exc, requests.ConnectionError) and \
                    network_cause(exc) == "connection refused"
                if deadline.passed:
                    raise Transient(f"no complete reply from the API at {api_address(self.api.REST_URL)} within "
                                    f"source.api_deadline_s ({deadline.seconds:g} s)") from None
                raise self.rate_limited(classify(exc, self.api.REST_URL), tries) from None
            if expect is not None and not (isinstance(reply, dict) and isinstance(reply.get(expect), dict)):
                raise Transient(f"a malformed reply: no {expect!r} in it ({outline(reply)})")
            return reply

        r = self.settings.retry
        try:
            return with_retries(once, r.attempts, r.base_delay_s, r.max_delay_s, what=f"flickr.{method}")
        except Transient as exc:
            failed = RetriesExhausted(f"flickr.{method} still failing after {r.attempts} attempts: {exc}")
            failed.unreachable = refused and not self.answered
            raise failed from None

    @property
    def api_calls(self) -> int:
        return self.limiter.calls

    def licenses(self) -> dict[int, tuple[str, str]]:
        """The current licence list (never hard-coded: older lists stop at 8)."""
        reply = self.call("photos.licenses.getInfo", expect="licenses")
        entries = reply["licenses"].get("license") or []
        out = {int(x["id"]): (str(x["name"]), str(x.get("url") or "")) for x in entries
               if isinstance(x, dict) and as_int(x.get("id")) is not None and x.get("name")}
        if len(out) < len(entries):
            log.warning("flickr.photos.licenses.getInfo: %d licence entries without an id or a name skipped",
                        len(entries) - len(out))
        self.license_names = {i: name for i, (name, _) in out.items()}
        return out

    # --- search ------------------------------------------------------------------------------
    def _search_page(self, query: str, page: int, window: tuple[int, int] | None) -> dict:
        s = self.settings
        params = dict(text=query, page=page, per_page=s.per_page, sort="date-posted-desc",
                      content_type=1, media="photos", safe_search=s.safe_search,
                      extras=",".join(["license", "owner_name", "date_upload", "date_taken", "tags", *s.sizes,
                                      *(["source_file"] if self.name == "local" else [])]))
        if s.licenses != "any":
            params["license"] = ",".join(str(i) for i in s.licenses)
        if window:
            params["min_upload_date"], params["max_upload_date"] = window
        self.query_calls[query] += 1
        return self.call("photos.search", expect="photos", **params)["photos"]

    def _pages(self, query: str, window, first: dict) -> Iterator[dict]:
        """Photos of one window, page by page, to the last page `pages` or `total` names (the larger:
        either may be low), never past the cap, where pages repeat. An empty page ends it; a page
        repeating an earlier one inside that range is a fault to step over (a user's audit: one
        repeated page, or `pages` of 1, ended the query at its first page, "queries exhausted"),
        up to REPEATED_PAGES in a row."""
        seen: set[str] = set()
        page, reply, stale = 1, first, 0
        per_page = self.settings.per_page
        while True:
            entries = reply.get("photo")
            photos, skipped = self.usable_entries(query, page, entries)
            fresh = [p for p in photos if str(p["id"]) not in seen]
            stale = 0 if fresh or skipped else stale + 1
            if not entries or stale >= REPEATED_PAGES:
                return
            if stale == 1:      # asked once more: a page repeated in passing may answer right now
                log.warning("query %r: page %d repeats earlier results; asking for it again", query, page)
                reply = self._search_page(query, page, window)
                continue
            if stale:
                log.warning("query %r: page %d repeats earlier results again; going on to the next", query, page)
            seen.update(str(p["id"]) for p in fresh)
            yield from fresh
            reachable = min(max(as_int(reply.get("total")) or 0, (as_int(reply.get("pages")) or 0) * per_page),
                            self.result_cap)
            if page * per_page >= reachable:
                return
            page += 1
            reply = self._search_page(query, page, window)

    def usable_entries(self, query: str, page: int, entries) -> tuple[list[dict], int]:
        """A page's photo entries that name a photo, and how many did not (each logged and counted in
        `skipped`: the search goes on without them)."""
        usable, skipped = [], 0
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("id") not in (None, ""):
                usable.append(entry)
                continue
            skipped += 1
            self.skipped["entry-without-id"] += 1
            log.warning("query %r page %d: a result without a photo id skipped (%s)", query, page, outline(entry))
        return usable, skipped

    def search(self, query: str, target: Target) -> Iterator[Found]:
        """Every photo a query reaches, as `Found` records, lazily (one API call per page); those under
        a licence not allowed too, for the Collector to note (collect/licences.py)."""
        first = self._search_page(query, 1, None)
        total = as_int(first.get("total")) or 0
        if not total and not first.get("photo"):        # said here: a set's "queries exhausted" names none
            log.warning("query %r found no photos%s: check its spelling", query, "" if self.settings.licenses == "any"
                        else f" under the licences asked for ({', '.join(map(str, self.settings.licenses))})")
        if total <= self.result_cap:
            windows = iter([(None, first)])
        else:
            log.info("query %r has %d results (> %d cap): splitting by upload date", query, total, self.result_cap)
            windows = date_windows(self, query, FLICKR_EPOCH, int(time.time()) + DAY, total)
        seen: set[str] = set()
        fresh_at = self.query_calls[query]
        for window, page1 in windows:
            for photo in self._pages(query, window, page1):
                if str(photo["id"]) in seen:       # windows that overlap (a mirror's): nothing new
                    continue
                seen.add(str(photo["id"]))
                fresh_at = self.query_calls[query]
                yield self.to_found(photo, query, target)
            if self.query_calls[query] - fresh_at >= STALE_CALLS:
                log.warning("query %r: %d search calls in a row found no photo new to it: the query ends here",
                            query, STALE_CALLS)
                return

    def without_licence(self, query: str, photo_id: str) -> None:
        """A result with no licence id (the field missing, empty or no number: a mirror that drops it)
        under a licence list, of a photo the catalog does not know under an allowed licence (the
        Collector asks, collect/licences.py): an unknown licence is none of those listed, so it is no
        candidate (`licence_allowed`). Counted in `skipped` (the run's record) and said once per query:
        a mirror that drops every licence must not look like queries that found nothing."""
        self.skipped["entry-without-licence"] += 1
        if query not in self.unlicensed_said:
            self.unlicensed_said.add(query)
            log.warning("query %r: a result without a licence id (photo %s) left out: source.licenses lists the "
                        "licences allowed, and an unknown one is none of them (the run's summary counts them all)",
                        query, photo_id)

    def license_allowed(self, license_id: int | None) -> bool:
        """Does `source.licenses` allow this licence id? (The search asks for those only, but a mirror
        may ignore the filter, and a pending candidate's licence may have changed: collect/licences.py.)"""
        return licence_allowed(self.name, license_id, self.settings.licenses)

    def to_found(self, photo: dict, query: str, target: Target) -> Found:
        """A search entry as a `Found` record, whatever its licence (the Collector checks that)."""
        license_id = as_int(photo.get("license"))
        url = size_key = None
        width = height = None
        for key in self.settings.sizes:        # preferred first, fall back in order
            if photo.get(key):
                url, size_key = str(photo[key]), key
                suffix = key.removeprefix("url_")
                width, height = as_int(photo.get(f"width_{suffix}")), as_int(photo.get(f"height_{suffix}"))
                break
        return Found(
            source=self.name, photo_id=str(photo["id"]), purpose=target.purpose, label=target.label,
            query=query, url=url, size_key=size_key, width=width, height=height,
            license_id=license_id, license_name=self.license_names.get(license_id) if license_id is not None else None,
            owner=str(photo.get("owner") or ""), owner_name=str(photo.get("ownername") or ""),
            title=str(photo.get("title") or ""), date_taken=photo.get("datetaken") or None,
            date_upload=as_int(photo.get("dateupload")), tags=str(photo.get("tags") or ""),
            source_file=photo.get("source_file") or None)
