"""The copies a review put back, each with the image curate kept in its place (its twin): read by the
build's splits (a put-back copy takes its twin's split) and by curate's test-leak check (a pair a
person separated is never linked again as a copy of a test image). docs/curation.md, "Splits".

A copy is put back by "not a duplicate" or "restore" (review_overrides.include = 'accepted'). Its twin
is the image it is a duplicate of now (`duplicate_of`), and, for "not a duplicate", the one the
action recorded (`detail.duplicate_of`): until 2026-12-07 a curate could accept the copy and drop the
twin instead, and the action's record is what still names the pair. An undo, or a later reject,
ends the override and with it the pair. Statements in SQLite's dialect, as overrides.py's.
"""

from __future__ import annotations

import json

from mlc_pipeline.catalog.overrides import has_review_tables
from mlc_pipeline.catalog.store import Catalog


def put_back_pairs(catalog: Catalog) -> list[dict]:
    """[{"copy": id, "twin": id, "source", "photo_id" (the twin's photo)}] for each copy put back in
    review while the override is in force; none on a catalog the review app never opened."""
    if not has_review_tables(catalog):
        return []
    pairs = {(r["cid"], r["twin"]) for r in catalog.db.execute(
        "SELECT c.id AS cid, c.duplicate_of AS twin FROM candidates c JOIN review_overrides o "
        "ON o.candidate_id = c.id WHERE o.include = 'accepted' AND c.status = 'duplicate' "
        "AND c.duplicate_of IS NOT NULL")}
    for r in catalog.db.execute(
            "SELECT a.candidate_id AS cid, a.detail FROM review_actions a JOIN review_overrides o "
            "ON o.candidate_id = a.candidate_id WHERE o.include = 'accepted' AND a.action = 'not-duplicate' "
            "AND a.undone_by IS NULL"):
        twin = json.loads(r["detail"] or "{}").get("duplicate_of")
        if isinstance(twin, int) and twin != r["cid"]:
            pairs.add((r["cid"], twin))
    out = []
    for cid, twin in sorted(pairs):
        if (kept := catalog.get(twin)) is not None:
            out.append({"copy": cid, "twin": twin, "source": kept["source"], "photo_id": kept["photo_id"]})
    return out
