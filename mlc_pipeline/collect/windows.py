"""Upload-date windows: how a Flickr query over the API's result cap is split (collect/flickr.py)."""

from __future__ import annotations

import logging
from typing import Iterator

log = logging.getLogger("mlc_pipeline.collect.flickr")
DAY = 86400


def as_int(value) -> int | None:
    """Flickr mixes strings and ints for numbers ("total": "234", "height_c": 600)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def date_windows(source, query: str, lo: int, hi: int, parent: int) -> Iterator[tuple[tuple[int, int], dict]]:
    """Upload-date windows, newest first, each holding at most `result_cap` results.

    Yields (window, first page) so the probing call is not wasted. A window holding all its parent's
    results, some uploaded outside it: the API ignores the bounds, the query splits no further (D5)."""
    first = source._search_page(query, 1, (lo, hi))
    total = as_int(first.get("total")) or 0
    dates = [as_int(p.get("dateupload")) for p in first.get("photo") or [] if isinstance(p, dict)]
    if total == parent and any(d is not None and not lo <= d <= hi for d in dates):
        log.warning("query %r: the API ignores min/max_upload_date (a window holds all %d results, some "
                    "uploaded outside it): not split further, only the first %d are reachable",
                    query, total, source.result_cap)
        source.undated.add(query)
        yield (lo, hi), first
        return
    if total <= source.result_cap or hi - lo <= DAY:
        if total > source.result_cap:
            log.warning("query %r: %d results within one day; only the first %d are reachable",
                        query, total, source.result_cap)
        yield (lo, hi), first
        return
    mid = (lo + hi) // 2
    for half in ((mid + 1, hi), (lo, mid)):
        if query not in source.undated:
            yield from date_windows(source, query, *half, total)
