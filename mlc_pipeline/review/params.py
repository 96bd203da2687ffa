"""What a request asks for: its browse filters, its numbers (from a URL or a JSON body), checked
once, at the edge, and its client; and what a page shows of a candidate's next build. Past it, the catalog gets only integers SQL can bind: one beyond 64 bits was an
OverflowError deep in a query (a 500 with a traceback), and a JSON `true` passed for the id 1."""

from __future__ import annotations

import re

from fastapi import HTTPException, Request

from mlc_pipeline.catalog import SQL_INT_MAX, review as cr
from mlc_pipeline.catalog.labels import effective_labels, next_build
from mlc_pipeline.review.security import CLIENT_HEADER


def whole_number(value, what: str, from_url: bool = False) -> int:
    """`value` as an int: a JSON integer, or a string of digits from a URL (`from_url`); ValueError
    naming `what` for anything else (a bool, a float, 1e400, words, a JSON string). The range is
    `fits_sql`'s to check."""
    if from_url and isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,40}", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number")
    return value


def fits_sql(n: int) -> bool:
    """Whether SQL can hold `n` (no candidate or action has an id beyond it)."""
    return -SQL_INT_MAX - 1 <= n <= SQL_INT_MAX


def filters_of(request: Request) -> dict:
    """The browse filters in the query string; 400 for a licence or round that is not a number SQL holds,
    and for a `reviewed` that is not 0 or 1 (any other value listed the reviewed images, as 1 does)."""
    q = request.query_params
    filters = {k: q.get(k, "").strip() for k in cr.FILTERS if q.get(k, "").strip()}
    if filters.get("reviewed", "0") not in ("0", "1"):
        raise HTTPException(400, f"the reviewed filter is 0 (no review decision in force) or 1 (one in force), "
                                 f"not {filters['reviewed'][:40]!r}")
    for name in ("licence", "round"):
        try:
            if name in filters and not fits_sql(whole_number(filters[name], name, from_url=True)):
                raise ValueError(f"{name} is out of range")
        except ValueError as exc:
            raise HTTPException(400, f"the {exc} (the licence and round filters are numbers)") from None
    return filters


def known_id(cid: int) -> int:
    """A candidate id from a URL, or 404: one past SQL's integers names no candidate either."""
    if not fits_sql(cid):
        raise HTTPException(404, f"no candidate {cid}")
    return cid


def effective(row: dict, licences=None, kept: dict | None = None) -> dict:
    """What the next build does with a candidate: its labels and whether it is in (the build's own
    rules, catalog.labels: what is shown is what is published); `licences`: the config's
    `source.licenses`, which the build applies too; `kept`: the row of the image it is a duplicate of
    (a copy of a photo taken down says why it is out)."""
    if kept is not None:
        row = {**row, "duplicate_of_status": kept["status"], "duplicate_of_sha256": kept["sha256"]}
    taken, why = next_build(row, licences)
    state = ("in" if taken else "out") + (f" ({why})" if why else "")
    # "changed in review": an override in force on a photo still here (what `mlc build` counts as such)
    return {"labels": effective_labels(row), "state": state, "reviewed": bool(
        row.get("review_labels") or row.get("review_include")) and row.get("status") != "removed"}


def client_of(request: Request) -> str:
    """The address and the browser tab's id (review.js makes one per tab): two tabs are two clients."""
    tab = "".join(ch for ch in (request.headers.get(CLIENT_HEADER) or "-")[:40] if ch.isprintable())
    return f"{request.client.host if request.client else '?'} tab={tab}"
