"""The review's override store, on a Catalog's connection (the catalog is the only place that speaks
SQL; this module is its part for what a review decided). The review app (review/, its browse queries
in catalog/review.py) writes it; `mlc build` (`build_candidates`, `review_changed_photos`), mining
(`build_candidates`, `overrides`), the report's analysis (`overrides`) and takedowns (`hold`,
`override_of`) read it.

A review never edits a candidate's row: curate recomputes statuses and labels on every run and would
overwrite it. It writes two things instead:
  review_actions    every action (relabel, reject, restore, not-duplicate, remove, undo) with when,
                    why, which client, and the override state before and after it;
  review_overrides  per candidate, what the review decided: `labels` (replaces the curated labels)
                    and `include` ('accepted' puts a rejected or duplicate image back in, 'rejected'
                    keeps an accepted one out, 'from-pool' trains on a pool image under `labels`).
                    NULL means "as the catalog says".
`mlc build` reads the overrides (`build_candidates`) and records which photos the review changed; the
labels it publishes are `effective_labels`, the rule the review app shows as "next build"; what each
action does to the override is `next_state` (both in catalog/labels.py, pure rules on a row).
Undo reverts only an image's latest live action, and an action from a page drawn before another
tab's is refused (`seen_action`): no write from another tab is erased. Each action is one transaction
that first locks the image's row (`Catalog.locked_candidate`: SQLite's write lock, PostgreSQL's
SELECT ... FOR UPDATE): actions on one image are serial, every action is kept, and on PostgreSQL
nothing else waits. `SCHEMA` also creates the index of published manifests that the app's version
filters join (`review_version_rows`, filled by catalog/review.py): all the review tables are created
together, so one check (`has_review_tables`) and one copy (`TABLES`) cover them.

Both backends, one text: SQLite's dialect (`Catalog.create_missing` derives PostgreSQL's), new ids by
`INSERT ... RETURNING id` (SQLite >= 3.35), otherwise standard SQL, results read by column name.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from mlc_pipeline.catalog.labels import (FROM_POOL, HELD, ReviewError, decided_in_review, effective_labels, next_build,
                                         next_state)
from mlc_pipeline.catalog.store import Catalog

SCHEMA = """
CREATE TABLE IF NOT EXISTS review_actions (
  id INTEGER PRIMARY KEY,
  candidate_id INTEGER NOT NULL,
  action TEXT NOT NULL,             -- relabel | reject | restore | not-duplicate | remove | undo
  detail TEXT,                      -- JSON: what was asked (labels, the undone action, ...)
  before_state TEXT,                -- JSON override {"labels", "include"} before the action
  after_state TEXT,                 -- ... and after it
  reason TEXT NOT NULL,
  client TEXT NOT NULL,
  at REAL NOT NULL,
  undone_by INTEGER                 -- the undo action that reverted this one
);
CREATE INDEX IF NOT EXISTS review_actions_candidate ON review_actions (candidate_id);
CREATE TABLE IF NOT EXISTS review_overrides (
  candidate_id INTEGER PRIMARY KEY,
  labels TEXT,                      -- space-delimited classes or 'other', NULL: the curated labels
  include TEXT,                     -- 'accepted' | 'rejected', NULL: the catalog's status decides
  action_id INTEGER NOT NULL,
  updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS review_versions (
  dataset TEXT NOT NULL, version TEXT NOT NULL, fingerprint TEXT, indexed_at REAL NOT NULL,
  PRIMARY KEY (dataset, version)
);
CREATE TABLE IF NOT EXISTS review_version_rows (
  dataset TEXT NOT NULL, version TEXT NOT NULL, candidate_id INTEGER NOT NULL,
  split TEXT NOT NULL, labels TEXT NOT NULL,
  PRIMARY KEY (dataset, version, candidate_id)
);
CREATE INDEX IF NOT EXISTS review_version_rows_candidate ON review_version_rows (candidate_id);
"""
# The tables in the order a copy (`mlc catalog migrate`) fills them, with the key it orders them by.
TABLES = {"review_actions": "id", "review_overrides": "candidate_id", "review_versions": "dataset, version",
          "review_version_rows": "dataset, version, candidate_id"}
UNDOABLE = ("relabel", "reject", "restore", "not-duplicate")
EMPTY = {"labels": None, "include": None}


class UnknownCandidate(ReviewError):
    """No candidate has this id."""


class StaleUndo(ReviewError):
    """The action to undo is no longer the image's latest: another client acted since."""


class StaleAction(ReviewError):
    """The acting page is out of date: another client acted on the image since it was drawn."""


@dataclass
class ActionResult:
    action_id: int | None       # None: nothing changed, nothing logged (a relabel to the labels in force)
    state: dict


def ensure_schema(catalog: Catalog) -> None:
    """The review tables, created when missing, in one transaction: two first opens at once take turns."""
    with catalog.transaction():
        create_tables(catalog)


def create_tables(catalog: Catalog) -> None:
    """The review tables, created when missing, in the caller's transaction."""
    catalog.create_missing(SCHEMA)


def has_review_tables(catalog: Catalog) -> bool:
    """False on a catalog the review app never opened (a read-only one cannot get the tables)."""
    return catalog.has_table("review_overrides")


# --- actions -------------------------------------------------------------------------------------
def override_of(catalog: Catalog, cid: int) -> dict:
    row = catalog.db.execute("SELECT labels, include FROM review_overrides WHERE candidate_id=?", (cid,)).fetchone()
    return {"labels": row["labels"], "include": row["include"]} if row else dict(EMPTY)


def _store(catalog: Catalog, cid: int, state: dict, action_id: int, now: float) -> None:
    if state == EMPTY:
        catalog.db.execute("DELETE FROM review_overrides WHERE candidate_id=?", (cid,))
        return
    catalog.db.execute(
        "INSERT INTO review_overrides (candidate_id, labels, include, action_id, updated_at) VALUES (?,?,?,?,?) "
        "ON CONFLICT (candidate_id) DO UPDATE SET labels=excluded.labels, include=excluded.include, "
        "action_id=excluded.action_id, updated_at=excluded.updated_at",
        (cid, state["labels"], state["include"], action_id, now))


def _log(catalog: Catalog, cid: int, action: str, detail: dict, before: dict | None, after: dict | None,
         reason: str, client: str, now: float) -> int:
    row = catalog.db.execute(
        "INSERT INTO review_actions (candidate_id, action, detail, before_state, after_state, reason, client, at) "
        "VALUES (?,?,?,?,?,?,?,?) RETURNING id",
        (cid, action, json.dumps(detail, sort_keys=True), None if before is None else json.dumps(before),
         None if after is None else json.dumps(after), reason, client, now)).fetchone()
    return row["id"]


def act(catalog: Catalog, cid: int, action: str, reason: str, client: str, classes: list[str],
        labels: list[str] | None = None, check_file=None, seen_action: int | None = None) -> ActionResult:
    """Apply one review action atomically. `seen_action`: the image's latest undoable action (0: none)
    on the acting page; one since refuses this (StaleAction; None, a script's: the last write wins).
    `check_file(path)`: why a file to be put back is not usable (None: it is). A relabel to the labels
    the image already has changes nothing: not logged (no undo to offer), action_id None."""
    with catalog.locked_candidate(cid) as row:
        if row is None:
            raise UnknownCandidate(f"no candidate {cid}")
        latest = latest_undoable(catalog, cid) if seen_action is not None else None
        if seen_action is not None and (latest["id"] if latest else 0) != seen_action:
            who = f" ({latest['action']} by {latest['client']})" if latest else ""
            raise StaleAction(f"this image changed since the page was loaded{who}: reload to see it, then act")
        before = override_of(catalog, cid)
        if row["duplicate_of"] is not None:     # a byte copy of the image kept in its place is no other picture
            kept = catalog.db.execute("SELECT sha256, status, source, photo_id FROM candidates WHERE id=?",
                                      (row["duplicate_of"],)).fetchone()
            row = {**row, "duplicate_of_sha256": kept["sha256"] if kept else None}
            if (kept and kept["status"] == "removed" and action in ("restore", "not-duplicate") and row["status"] ==
                    "duplicate" and ((row["reason"] or "").startswith("exact-") or row["sha256"] == kept["sha256"])):
                raise ReviewError(f"the same bytes as candidate {row['duplicate_of']} ({kept['source']}:"
                                  f"{kept['photo_id']}), a photo taken down: a copy of it stays out of every "
                                  f"version, as the photo does")
        after = next_state(row, before, action, labels, classes)
        if action == "relabel" and after == before:
            return ActionResult(None, before)
        if after["include"] == "accepted" and check_file is not None:
            bad = check_file(row["file_path"])
            if bad:
                raise ReviewError(f"the file cannot be used ({bad}); it stays out")
        now = time.time()
        detail = {"labels": " ".join(sorted(set(labels or []))) or "other"} if action == "relabel" else {}
        if action == "not-duplicate":
            detail = {"duplicate_of": row["duplicate_of"], "reason_was": row["reason"]}
        action_id = _log(catalog, cid, action, detail, before, after, reason, client, now)
        _store(catalog, cid, after, action_id, now)
    return ActionResult(action_id, after)


def undo(catalog: Catalog, cid: int, action_id: int, reason: str, client: str) -> ActionResult:
    """Revert `action_id`, which must be the image's latest live action (StaleUndo otherwise)."""
    with catalog.locked_candidate(cid) as row:
        if row is None:
            raise UnknownCandidate(f"no candidate {cid}")
        latest = latest_undoable(catalog, cid)
        if latest is None or latest["id"] != action_id:
            target = catalog.db.execute("SELECT action, undone_by FROM review_actions WHERE id=? AND candidate_id=?",
                                        (action_id, cid)).fetchone()
            if target is None or target["action"] not in UNDOABLE:
                raise ReviewError(f"action {action_id} of this image cannot be undone")
            if target["undone_by"] is not None:
                raise StaleUndo(f"action {action_id} was already undone (action {target['undone_by']})")
            if latest is None:
                raise ReviewError(f"action {action_id} can no longer be undone: a takedown came after it")
            raise StaleUndo(f"a later action ({latest['action']} by {latest['client']}) came after action "
                            f"{action_id}: reload, and undo that one first")
        restored = json.loads(latest["before_state"])
        now = time.time()
        undo_id = _log(catalog, cid, "undo", {"undoes": action_id, "action": latest["action"]},
                       override_of(catalog, cid), restored, reason, client, now)
        catalog.db.execute("UPDATE review_actions SET undone_by=? WHERE id=?", (undo_id, action_id))
        _store(catalog, cid, restored, undo_id, now)
    return ActionResult(undo_id, restored)


def hold(catalog: Catalog, cid: int, reason: str, client: str) -> int | None:
    """A reviewer's reject, logged as one (an undo puts it back), in the caller's transaction, the row
    locked as an action locks it (takedowns hold copies so). None when a review decided in or out, or
    undid a hold of it before (a user said it is another picture: not asked again on every curate)."""
    create_tables(catalog)
    catalog.db.execute(f"SELECT id FROM candidates WHERE id=?{catalog.backend.FOR_UPDATE}", (cid,))
    before = override_of(catalog, cid)
    if before["include"] is not None or catalog.db.execute(
            "SELECT 1 FROM review_actions WHERE candidate_id=? AND action='reject' AND detail=? AND undone_by "
            "IS NOT NULL", (cid, HELD)).fetchone():
        return None
    now, after = time.time(), {**before, "include": "rejected"}
    action_id = _log(catalog, cid, "reject", json.loads(HELD), before, after, reason, client, now)
    _store(catalog, cid, after, action_id, now)
    return action_id


def log_removal(catalog: Catalog, cid: int, reason: str, client: str, files_deleted: int) -> int:
    """Log a takedown from the review app in the review log, never undoable (the takedown itself,
    `Catalog.record_removal`, is done by takedown.remove_photos)."""
    with catalog.locked_candidate(cid):
        return _log(catalog, cid, "remove", {"files_deleted": files_deleted}, None, None, reason, client, time.time())


def latest_undoable(catalog: Catalog, cid: int) -> dict | None:
    """The action an undo reverts: the image's latest action not undone yet (a stack, so undo after
    undo walks back through the image's history)."""
    row = catalog.db.execute(
        "SELECT * FROM review_actions WHERE candidate_id=? AND action <> 'undo' AND undone_by IS NULL "
        "ORDER BY id DESC LIMIT 1", (cid,)).fetchone()
    if row is None or row["action"] not in UNDOABLE:      # a takedown is final: nothing before it comes back
        return None
    return dict(row)


def actions(catalog: Catalog, cid: int) -> list[dict]:
    rows = catalog.db.execute("SELECT * FROM review_actions WHERE candidate_id=? ORDER BY id", (cid,))
    return [{**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in rows]


# --- what build uses -----------------------------------------------------------------------------
def build_candidates(catalog: Catalog) -> list[dict]:
    """The candidates a version is built from, the review applied: accepted training and probe images
    not rejected in review, plus those review put back, plus pool images labelled in review;
    `curated_label` is the label published (`effective_labels`)."""
    if not has_review_tables(catalog):
        return [{**c, "curated_label": effective_labels(c), "from_pool": False}
                for c in catalog.candidates("status='accepted' AND purpose IN ('train', 'probe')")]
    # Every row the rule could take (a pool image only with a review decision): labels.next_build decides.
    rows = catalog.db.execute(
        "SELECT c.*, o.labels AS review_labels, o.include AS review_include FROM candidates c "
        "LEFT JOIN review_overrides o ON o.candidate_id = c.id WHERE c.status IN ('accepted', 'rejected', "
        "'duplicate') AND (c.purpose IN ('train', 'probe') OR o.include = ?) ORDER BY c.id", (FROM_POOL,))
    out = []
    for c in map(dict, rows):
        if not next_build(c)[0]:
            continue
        c["file_path"] = catalog.usable_path(c["file_path"])
        c["curated_label"], c["from_pool"] = effective_labels(c), decided_in_review(c)
        del c["review_labels"], c["review_include"]
        out.append(c)
    return out


def overrides(catalog: Catalog) -> dict[int, dict]:
    """Every review decision in force, by candidate id (mining leaves these images alone)."""
    rows = catalog.db.execute("SELECT * FROM review_overrides") if has_review_tables(catalog) else []
    return {r["candidate_id"]: {"labels": r["labels"], "include": r["include"]} for r in rows}


def review_changed_photos(catalog: Catalog) -> list[str]:
    """'source:photo_id' of every candidate whose review override is in force (for the version diff)."""
    if not has_review_tables(catalog):
        return []
    rows = catalog.db.execute("SELECT c.source, c.photo_id FROM review_overrides o JOIN candidates c "
                              "ON c.id = o.candidate_id WHERE c.status <> 'removed' ORDER BY c.id")
    return [f"{r['source']}:{r['photo_id']}" for r in rows]
