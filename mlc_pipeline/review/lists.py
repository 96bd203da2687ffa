"""The model's lists on the queues page, a page at a time: the class images the latest mining round
rejects (review.csv), the test images the latest bundle answers wrong, and the unknown kinds it
accepts (test_scores.csv), each read by review/queues.py. They track the reviewer's work: a card
says what the review decided on its image, and an image page opened from a list steps (j/k) through
that list and goes back (Esc, "← list") to the list's page that holds it. Until 2026-12-07 the cards
stayed unmarked, j/k stepped by id over every candidate, and Esc went to the unfiltered browse
page (the review29 audit)."""

from __future__ import annotations

from pathlib import Path

from mlc_pipeline.catalog import overrides as co
from mlc_pipeline.config import Config
from mlc_pipeline.review.queues import model_review_list, probes_accepted, wrong_answers

# The lists, in the page's order, each read by its function: `<name>_page` is its page number in the
# queues page's URL, `?list=<name>` an image page opened from it.
LISTS = {"noisy": lambda cfg, catalog: model_review_list(cfg), "wrong": wrong_answers, "probes": probes_accepted}


def model_lists(cfg: Config, catalog) -> dict[str, tuple[Path | None, list[dict]]]:
    """Each list's bundle and rows, in the list's order."""
    return {name: read(cfg, catalog) for name, read in LISTS.items()}


def paged(rows: list[dict], at: int, size: int, catalog=None) -> dict:
    """Page `at` of `rows` (past either end: the first or the last page), with the list's size; with
    the `catalog`, each row of the page marked with what the review decided on its image (`mark`)."""
    pages = max(1, -(-len(rows) // size))
    at = min(max(1, at), pages)
    shown = rows[(at - 1) * size:at * size]
    if catalog is not None:
        shown = [{**r, "mark": review_mark(catalog, int(r["candidate_id"]))} for r in shown]
    return {"rows": shown, "total": len(rows), "page": at, "pages": pages}


def review_mark(catalog, cid: int) -> str | None:
    """What a card of a list says of the work done on its image: taken down, rejected, relabelled or
    put back in review; None while no review decision is in force."""
    row = catalog.get(cid)
    if row is None:
        return None
    if row["status"] == "removed":
        return "taken down"
    override = co.override_of(catalog, cid)
    if override["include"] == "rejected":
        return "rejected in review"
    if override["labels"]:
        return f"relabelled: {override['labels']}"
    return "put back in review" if override["include"] else None


def in_list(cfg: Config, catalog, name: str | None, cid: int, size: int) -> dict | None:
    """For an image page opened from list `name`: the previous and next image in the list's order
    (None at its ends, or both when the image left the list), the link back to the list's page that
    holds it, and the query that keeps j/k in the list. None when `name` names no list."""
    if name not in LISTS:
        return None
    ids = [int(r["candidate_id"]) for r in LISTS[name](cfg, catalog)[1]]
    at = ids.index(cid) if cid in ids else None
    return {"prev_id": ids[at - 1] if at else None,
            "next_id": ids[at + 1] if at is not None and at + 1 < len(ids) else None,
            "back": f"/queues?{name}_page={at // size + 1 if at else 1}#{name}", "query": f"list={name}"}
