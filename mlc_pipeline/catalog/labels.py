"""What a review decided, as the build applies it to a candidate row: its labels and whether it is in.
Pure rules on a row (the candidate's columns, plus `review_labels` / `review_include` from the review's
overrides when they were joined), shared by the build (catalog.review.build_candidates), the review
app's "next build" line and collect's count of usable images (Catalog.set_tally)."""

from __future__ import annotations


def effective_labels(row: dict) -> str:
    """The labels the next build publishes a candidate under ('other': none of the classes), the one
    rule for the build and the review app: the review's labels (training images only), else the
    curated ones, else the labels it was searched under. Curate leaves `curated_label` NULL on
    duplicates and on images rejected at verification, so one that review puts back keeps its searched
    class; a photo of the "other" set was searched as 'other' and stays a negative."""
    reviewed = row.get("review_labels") if row.get("purpose") == "train" else None
    return reviewed or row.get("curated_label") or row.get("label") or "other"


def reviewed_status(row: dict) -> tuple[str, str | None]:
    """(status, reason) as the build sees the candidate: an accepted image the review rejected is out
    ('rejected', 'review'); a rejected or duplicate image the review put back, with its file, is in."""
    include = row.get("review_include")
    if row["status"] == "accepted" and include == "rejected":
        return "rejected", "review"
    if include == "accepted" and row["status"] in ("rejected", "duplicate") and row.get("file_path"):
        return "accepted", None
    return row["status"], row["reason"]
