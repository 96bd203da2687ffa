"""flickr.photos.search semantics: matching, sorting, paging and the result cap."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping

from .faults import unit_hash
from .model import Photo

DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 500
SORTS = ("date-posted-desc", "date-posted-asc", "date-taken-desc", "date-taken-asc",
         "interestingness-desc", "interestingness-asc", "relevance")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class SearchError(Exception):
    """A search the API refuses; code and message are what Flickr answers."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def normalize_word(word: str) -> str:
    """Lowercase and fold a plural 's' so 'Balloons' matches 'balloon' in free-text search."""
    word = word.lower()
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return word


def words_of(text: str) -> list[str]:
    """The words free-text search splits a text into ("hot-air" is two), lowercased, in order."""
    return [w.lower() for w in _WORD.findall(text)]


def text_tokens(text: str) -> set[str]:
    return {normalize_word(w) for w in _WORD.findall(text)}


def normalize_tag(tag: str) -> str:
    """Flickr's machine form of a tag: lowercase, no spaces or punctuation."""
    return "".join(_WORD.findall(tag.lower()))


@dataclass
class SearchQuery:
    include_words: list[str] = field(default_factory=list)
    exclude_words: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    exclude_tags: list[str] = field(default_factory=list)
    tag_mode: str = "any"
    licenses: set[int] | None = None
    min_upload: int | None = None
    max_upload: int | None = None
    min_taken: str | None = None
    max_taken: str | None = None
    sort: str = "date-posted-desc"
    per_page: int = DEFAULT_PER_PAGE
    page: int = 1
    text: str = ""


def _int_param(params: Mapping[str, str], name: str, default: int) -> int:
    value = str(params.get(name, "") or "").strip()
    if not value:
        return default
    try:
        return int(float(value))
    except ValueError:
        return default  # Flickr ignores a malformed number and uses the default


def _unix_time(value: str) -> int:
    """Flickr accepts unix timestamps or MySQL datetimes for the date bounds."""
    value = value.strip()
    if value.lstrip("-").isdigit():
        return int(value)
    for pattern in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return int(datetime.strptime(value, pattern).replace(tzinfo=timezone.utc).timestamp())
        except ValueError:
            continue
    raise SearchError(1, f"Invalid date: {value!r}")


def _taken_string(value: str) -> str:
    return datetime.fromtimestamp(_unix_time(value), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def parse_query(params: Mapping[str, str]) -> SearchQuery:
    query = SearchQuery()
    query.text = str(params.get("text", "") or "")
    for word in query.text.split():
        if word.startswith("-") and len(word) > 1:
            query.exclude_words += [normalize_word(w) for w in _WORD.findall(word[1:])]
        else:
            query.include_words += [normalize_word(w) for w in _WORD.findall(word)]
    for tag in str(params.get("tags", "") or "").split(","):
        tag = tag.strip()
        if tag.startswith("-") and normalize_tag(tag[1:]):
            query.exclude_tags.append(normalize_tag(tag[1:]))
        elif normalize_tag(tag):
            query.tags.append(normalize_tag(tag))
    query.tag_mode = "all" if str(params.get("tag_mode", "any")).lower() == "all" else "any"
    licence_text = str(params.get("license", "") or "").strip()
    if licence_text:
        query.licenses = {int(x) for x in licence_text.split(",") if x.strip().lstrip("-").isdigit()}
    if params.get("min_upload_date"):
        query.min_upload = _unix_time(str(params["min_upload_date"]))
    if params.get("max_upload_date"):
        query.max_upload = _unix_time(str(params["max_upload_date"]))
    if params.get("min_taken_date"):
        query.min_taken = _taken_string(str(params["min_taken_date"]))
    if params.get("max_taken_date"):
        query.max_taken = _taken_string(str(params["max_taken_date"]))
    sort = str(params.get("sort", "") or "date-posted-desc")
    query.sort = sort if sort in SORTS else "date-posted-desc"
    per_page = _int_param(params, "per_page", DEFAULT_PER_PAGE)
    query.per_page = DEFAULT_PER_PAGE if per_page < 1 else min(per_page, MAX_PER_PAGE)
    query.page = max(1, _int_param(params, "page", 1))
    return query


class SearchIndex:
    """Word and tag postings over a fixed list of photos."""

    def __init__(self, photos: list[Photo]):
        self.photos = photos
        self.words: dict[str, set[int]] = {}
        self.tags: dict[str, set[int]] = {}
        self.tag_sets: list[set[str]] = []
        for i, photo in enumerate(photos):
            tags = {normalize_tag(t) for t in photo.tags}
            self.tag_sets.append(tags)
            for tag in tags:
                self.tags.setdefault(tag, set()).add(i)
            for word in {normalize_word(t) for t in tags} | text_tokens(photo.title):
                self.words.setdefault(word, set()).add(i)

    def matching(self, query: SearchQuery) -> list[int]:
        if not query.include_words and not query.tags:
            raise SearchError(3, "Parameterless searches have been disabled. Please use flickr.photos.getRecent instead.")
        candidates: set[int] | None = None
        for word in query.include_words:
            hits = self.words.get(word, set())
            candidates = set(hits) if candidates is None else candidates & hits
        if query.tags:
            postings = [self.tags.get(tag, set()) for tag in query.tags]
            tag_hits = set.intersection(*postings) if query.tag_mode == "all" else set.union(*postings)
            candidates = tag_hits if candidates is None else candidates & tag_hits
        assert candidates is not None
        for word in query.exclude_words:
            candidates -= self.words.get(word, set())
        for tag in query.exclude_tags:
            candidates -= self.tags.get(tag, set())
        return [i for i in candidates if self._passes_filters(self.photos[i], query)]

    @staticmethod
    def _passes_filters(photo: Photo, query: SearchQuery) -> bool:
        if query.licenses is not None and photo.license not in query.licenses:
            return False
        if query.min_upload is not None and photo.dateupload < query.min_upload:
            return False
        if query.max_upload is not None and photo.dateupload > query.max_upload:
            return False
        if query.min_taken is not None and photo.datetaken < query.min_taken:
            return False
        if query.max_taken is not None and photo.datetaken > query.max_taken:
            return False
        return True

    def sorted_matches(self, query: SearchQuery) -> list[Photo]:
        photos = [self.photos[i] for i in self.matching(query)]
        sort = query.sort
        if sort.startswith("date-posted"):
            photos.sort(key=lambda p: (p.dateupload, int(p.id)), reverse=sort.endswith("desc"))
        elif sort.startswith("date-taken"):
            photos.sort(key=lambda p: (p.datetaken, int(p.id)), reverse=sort.endswith("desc"))
        elif sort.startswith("interestingness"):
            photos.sort(key=lambda p: (unit_hash("interest", p.id), p.id), reverse=sort.endswith("desc"))
        else:  # relevance: tag hits count most, then a stable per-query shuffle
            wanted = set(query.include_words) | set(query.tags)
            photos.sort(key=lambda p: (-len(wanted & {normalize_word(t) for t in p.tags}),
                                       unit_hash("relevance", query.text, p.id)))
        return photos


def page_of(photos: list[Photo], query: SearchQuery, result_cap: int) -> tuple[list[Photo], int]:
    """The requested page under Flickr's cap: results past result_cap are unreachable and pages past
    the last reachable one repeat it. Returns (page photos, number of pages for the true total)."""
    reachable = photos[:result_cap]
    last_page = max(1, math.ceil(len(reachable) / query.per_page))
    page = min(query.page, last_page)
    start = (page - 1) * query.per_page
    pages = math.ceil(len(photos) / query.per_page)
    return reachable[start:start + query.per_page], pages
