"""The model's lists on the queues page, a page at a time: the class images the latest mining round
rejects (review.csv), the test images the latest bundle answers wrong, and the unknown kinds it
accepts (test_scores.csv), each read by review/queues.py."""

from __future__ import annotations

from pathlib import Path

from mlc_pipeline.config import Config
from mlc_pipeline.review.queues import model_review_list, probes_accepted, wrong_answers

# The lists, in the page's order: each one's page number is `<name>_page` in the queues page's URL.
LISTS = ("noisy", "wrong", "probes")


def model_lists(cfg: Config, catalog) -> dict[str, tuple[Path | None, list[dict]]]:
    """Each list's bundle and rows, in the list's order."""
    return {"noisy": model_review_list(cfg), "wrong": wrong_answers(cfg, catalog),
            "probes": probes_accepted(cfg, catalog)}


def paged(rows: list[dict], at: int, size: int) -> dict:
    """Page `at` of `rows` (past either end: the first or the last page), with the list's size."""
    pages = max(1, -(-len(rows) // size))
    at = min(max(1, at), pages)
    return {"rows": rows[(at - 1) * size:at * size], "total": len(rows), "page": at, "pages": pages}
