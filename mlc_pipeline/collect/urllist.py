"""A URL list as the source (`source: {kind: urls, csv: images.csv}`): an img2dataset-style CSV.

Columns: `url` and `label` (required); `license`, `owner`, `title`, `photo_page` and `purpose`
(train | probe | pool, default train) optional. An empty label or "other" is an "other" image.
A row's label plays the part of a Flickr query: a set takes the rows whose label is one of its
`queries` (case and spacing ignored), so `classes: {cat: {queries: [cat], count: 50}}` takes the
rows labelled cat, and `other: {queries: [other], ...}` the unlabelled ones. The rows then go
through the same Collector as search results: the same downloader, catalog, curation and
deduplication. Rows that cannot be used (no url, not http(s), unknown purpose, a label no set
takes) are logged one line each, with a count, and skipped.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from mlc_pipeline.catalog import Found
from mlc_pipeline.collect.flickr import Target
from mlc_pipeline.config import Config, ConfigError, user_file

log = logging.getLogger(__name__)

SOURCE_NAME = "urls"
PURPOSES = ("train", "probe", "pool")
ATTRIBUTION = ("license", "owner", "title", "photo_page")


def label_key(text: str | None) -> str:
    """How labels and queries are compared: lowercase, single spaces; empty is 'other'."""
    return " ".join((text or "").lower().split()) or "other"


def photo_id(url: str) -> str:
    """A stable id for a URL (the catalog's key with the source name): the same URL, the same photo."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:20]


@dataclass(frozen=True)
class UrlRow:
    line: int
    url: str
    label: str          # as written in the CSV
    purpose: str
    license: str
    owner: str
    title: str
    photo_page: str


def set_labels(cfg: Config) -> dict[str, set[str]]:
    """purpose -> the label keys some set of that purpose takes (its queries)."""
    sets = [("train", qs) for qs in cfg.classes.values()] + [("train", cfg.other)]
    sets += [("probe", cfg.probe)] if cfg.probe else []
    sets += [("pool", cfg.mine.pool)] if cfg.mine.pool else []
    out: dict[str, set[str]] = {p: set() for p in PURPOSES}
    for purpose, qs in sets:
        out[purpose].update(label_key(q) for q in qs.queries)
    return out


def row_problem(row: dict, known: dict[str, set[str]]) -> tuple[str, str] | None:
    """Why a CSV row cannot be used, (kind, details), or None."""
    url = (row.get("url") or "").strip()
    if not url:
        return "no url", "the url cell is empty"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return "not http(s)", f"{url[:80]!r} is not an http(s) URL with a host"
    purpose = (row.get("purpose") or "").strip().lower() or "train"
    if purpose not in PURPOSES:
        return "unknown purpose", f"{purpose[:40]!r} is not train, probe or pool"
    if label_key(row.get("label")) not in known[purpose]:
        return "unknown label", (f"label {(row.get('label') or '').strip()[:40]!r} is in no {purpose} set's queries "
                f"({', '.join(sorted(known[purpose])) or 'none'})")
    return None


def read_url_list(path: str | Path, known: dict[str, set[str]]) -> list[UrlRow]:
    """The usable rows of the CSV; every other row is logged with its line number and reason."""
    path = Path(path)
    try:
        with user_file("source.csv", path, "CSV"), path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = {c.strip().lower() for c in reader.fieldnames or [] if c}
            missing = [c for c in ("url", "label") if c not in columns]
            if missing:
                raise ConfigError(f"source.csv: {path} has no {' or '.join(missing)} column (columns: "
                                  f"{', '.join(sorted(columns)) or 'none'}); a URL list needs url and label")
            records = [(reader.line_num, {(k or "").strip().lower(): v if isinstance(v, str) else ""
                                          for k, v in r.items()}) for r in reader]
    except csv.Error as exc:
        raise ConfigError(f"source.csv: {path} is not a readable CSV: {exc}") from None
    rows, bad, seen = [], Counter(), {}
    for line, r in records:                            # line: the file's line where the row ends
        problem = row_problem(r, known)
        if problem:
            log.warning("%s line %d skipped: %s: %s", path.name, line, *problem)
            bad[problem[0]] += 1
            continue
        row = UrlRow(line, r["url"].strip(), r.get("label", "").strip(),
                     (r.get("purpose") or "").strip().lower() or "train", r.get("license", "").strip(),
                     r.get("owner", "").strip(), r.get("title", "").strip(), r.get("photo_page", "").strip())
        first = seen.setdefault(row.url, row)
        if first is not row:     # one photo: a second label adds to it
            log.info("%s line %d: the same URL as line %d (one candidate)", path.name, line, first.line)
        rows.append(row)
    # A URL's attribution is its first row's, empty fields filled from later rows: every row of the URL
    # carries the same, so whichever is recorded last leaves it in the catalog.
    merged: dict[str, dict[str, str]] = {}
    for row in rows:
        fields = merged.setdefault(row.url, {})
        for k in ATTRIBUTION:
            fields[k] = fields.get(k) or getattr(row, k)
    rows = [replace(row, **merged[row.url]) for row in rows]
    if bad:
        log.warning("%s: %d of %d rows skipped (%s)", path.name, sum(bad.values()), len(records),
                    ", ".join(f"{why} {n}" for why, n in sorted(bad.items())))
    if not rows:
        log.warning("%s: no usable rows: nothing to collect", path.name)
    return rows


class UrlListSource:
    """Behaves like FlickrSource for the Collector: `search(query, target)` yields the rows of the
    target's purpose whose label is the query, as `Found` records."""

    name = SOURCE_NAME
    api_calls = 0                 # nothing is searched over the network
    skipped: dict[str, int] = {}  # search results left out: none (bad rows are refused when the list is read)
    unreadable: dict[str, str] = {}   # files of a folder not served: folder mode only

    def __init__(self, rows: list[UrlRow]):
        self.rows = rows

    @property
    def hosts(self) -> list[str]:
        """The image hosts the downloader may fetch from: those of the list's URLs (with their ports)."""
        return sorted({urlsplit(r.url).netloc.lower() for r in self.rows})

    def licenses(self) -> dict[int, tuple[str, str]]:
        return {}                 # a row's licence is its own text (license_name), not a Flickr id

    def license_allowed(self, license_id: int | None) -> bool:
        return True               # source.licenses filters Flickr licence ids: it does not apply to a list

    def current_url(self, url: str) -> str:
        return url

    def search(self, query: str, target: Target) -> Iterator[Found]:
        wanted = label_key(query)
        for r in self.rows:
            if r.purpose == target.purpose and label_key(r.label) == wanted:
                yield Found(source=self.name, photo_id=photo_id(r.url), purpose=target.purpose, label=target.label,
                            query=query, url=r.url, size_key=None, width=None, height=None, license_id=None,
                            license_name=r.license or None, owner=r.owner or None, owner_name=r.owner or None,
                            title=r.title or None, date_taken=None, date_upload=None, tags=None,
                            source_file=r.photo_page or None)


def url_list_source(cfg: Config) -> tuple[UrlListSource, list[str]]:
    """The configured URL list as a source, and the hosts it may download from."""
    source = UrlListSource(read_url_list(cfg.source.csv, set_labels(cfg)))
    return source, source.hosts
