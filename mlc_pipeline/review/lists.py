"""The model's lists on the queues page, a page at a time: the class images the latest mining round
rejects (review.csv), the test images the latest bundle answers wrong, and the unknown kinds it
accepts (test_scores.csv), each read by review/queues.py. They track the reviewer's work: a card
says what the review decided on its image, `?handled=hide` leaves those images out, and an image page
opened from a list steps (j/k) through that list and goes back (Esc, "← list") to the list's page that
holds it. Until 2026-12-07 the cards stayed unmarked, j/k stepped by id over every candidate, and Esc
went to the unfiltered browse page (the review29 audit).

What a page costs: a list is read from its bundle's files and matched to candidates once while those
files are unchanged (queues.resolved); the marks are two queries for the whole page (every review
decision in force, every photo taken down), not two per card; an image page opened from a list asks
the catalog nothing for it, or those two queries with `handled=hide`."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from fastapi import HTTPException

from mlc_pipeline.catalog import overrides as co
from mlc_pipeline.config import Config
from mlc_pipeline.review.queues import model_review_list, probes_accepted, unread, wrong_answers

# The lists, in the page's order, each read by its function: `<name>_page` is its page number in the
# queues page's URL, `?list=<name>` an image page opened from it.
LISTS = {"noisy": lambda cfg, catalog: model_review_list(cfg), "wrong": wrong_answers, "probes": probes_accepted}
# `handled`: "show" (the default) lists every image, the ones the review handled marked; "hide" leaves them out.
HANDLED = ("show", "hide")


def hide_handled(params) -> bool:
    """Whether the request (its query parameters) asks the lists without the images the review handled."""
    value = params.get("handled", "show")
    if value not in HANDLED:
        raise HTTPException(400, f"handled is 'show' (every image of the model's lists, the ones handled in review "
                                 f"marked) or 'hide' (those left out), not {value[:40]!r}")
    return value == "hide"


def model_lists(cfg: Config, catalog, at: dict[str, int], size: int, hide: bool) -> dict[str, dict]:
    """Each list's page `at[name]` (`paged`), with its bundle, why it cannot be drawn (`why`: queues.unread,
    for the two read from test_scores.csv), and how many images of it the review handled (`handled`),
    left out when `hide`; each card marked with what the review decided (`mark`)."""
    marks = review_marks(catalog)
    out = {}
    for name, read in LISTS.items():
        bundle, rows = read(cfg, catalog)
        shown = [r for r in rows if int(r["candidate_id"]) not in marks] if hide else rows
        out[name] = {**paged(shown, at[name], size, marks), "bundle": bundle, "handled": len(rows) - len(shown)
                     if hide else sum(int(r["candidate_id"]) in marks for r in rows),
                     "why": None if name == "noisy" else unread(bundle, name)}
    return out


def paged(rows: list[dict], at: int, size: int, marks: dict[int, str] | None = None) -> dict:
    """Page `at` of `rows` (past either end: the first or the last page), with the list's size; with
    `marks` (review_marks), each row of the page marked with what the review decided on its image."""
    pages = max(1, -(-len(rows) // size))
    at = min(max(1, at), pages)
    shown = rows[(at - 1) * size:at * size]
    if marks is not None:
        shown = [{**r, "mark": marks.get(int(r["candidate_id"]))} for r in shown]
    return {"rows": shown, "total": len(rows), "page": at, "pages": pages}


def review_marks(catalog) -> dict[int, str]:
    """What a card of a list says of the work done on its image, by candidate id: taken down, rejected,
    relabelled or put back in review; an image with no review decision in force is not in it. Two
    queries, whatever the lists' length."""
    marks = {}
    for cid, o in co.overrides(catalog).items():
        if o["include"] == "rejected" or o["labels"] or o["include"]:
            marks[cid] = ("rejected in review" if o["include"] == "rejected" else
                          f"relabelled: {o['labels']}" if o["labels"] else "put back in review")
    marks.update({r["id"]: "taken down" for r in catalog.candidates(status="removed")})
    return marks


def in_list(cfg: Config, catalog, name: str | None, cid: int, size: int, hide: bool = False) -> dict | None:
    """For an image page opened from list `name`: the previous and next image in the list's order
    (None at its ends, or both when the image is not in the list), the link back to the list's page that
    holds it, and the query that keeps j/k in the list. With `hide`, the images the review handled are
    skipped: an image just handled steps on to the next one still to do. None when `name` names no list."""
    if name not in LISTS:
        return None
    ids = [int(r["candidate_id"]) for r in LISTS[name](cfg, catalog)[1]]
    handled = set(review_marks(catalog)) if hide else set()
    at = ids.index(cid) if cid in ids else None
    before = [] if at is None else [x for x in ids[:at] if x not in handled]
    after = [] if at is None else [x for x in ids[at + 1:] if x not in handled]
    extra = {"handled": "hide"} if hide else {}
    return {"prev_id": before[-1] if before else None, "next_id": after[0] if after else None,
            "back": f"/queues?{urlencode({f'{name}_page': len(before) // size + 1, **extra})}#{name}",
            "query": urlencode({"list": name, **extra})}


def came_from(params, steps: dict) -> dict:
    """An image page's `steps` (its j/k neighbours, the query that keeps them, and where "← list" and
    Esc go) for one opened from a page that is no list of images, named by `from`: `duplicates:<page>`
    (the duplicates page), `log` (the action log), `image:<id>` (the image page whose "kept" or copy link
    it is). Esc went to the browse page of every candidate from these."""
    value = params.get("from")
    if value is None:
        return steps
    kind, _, arg = value.partition(":")
    if not re.fullmatch(r"duplicates(:[0-9]{1,9})?|log|image:[0-9]{1,18}", value):
        raise HTTPException(400, f"from is duplicates:<page>, log or image:<id> (the page an image was opened "
                                 f"from), not {value[:40]!r}")
    back = {"duplicates": f"/duplicates?page_no={arg or 1}", "log": "/log", "image": f"/image/{arg}"}[kind]
    return {**steps, "back": back, "query": "&".join(q for q in (steps["query"], urlencode({"from": value})) if q)}

