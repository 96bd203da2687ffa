"""The catalog: the single source of truth about every image candidate.

Every SQL statement of the project lives in this module, so a server database can replace SQLite
by rewriting this file alone. One `Catalog` object is used from one thread at a time; concurrent
workers hand their results back to the thread that owns it.

Status lifecycle of a candidate:
  pending -> downloaded | failed | skipped           (collect)
  downloaded -> accepted | rejected | duplicate      (curate)
  any -> removed                                     (`mlc remove`: a takedown; final)
`reason` says why for every status but pending/downloaded/accepted; `events` keeps the history.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, command TEXT NOT NULL, started_at REAL NOT NULL,
  finished_at REAL, status TEXT NOT NULL, summary TEXT
);
CREATE TABLE IF NOT EXISTS candidates (
  id INTEGER PRIMARY KEY,
  source TEXT NOT NULL,
  photo_id TEXT NOT NULL,
  purpose TEXT NOT NULL,            -- train | pool | probe
  label TEXT NOT NULL,              -- space-delimited class names, or 'other'
  queries TEXT NOT NULL,            -- JSON list of the queries that found it
  url TEXT, size_key TEXT, width INTEGER, height INTEGER,
  license_id INTEGER, license_name TEXT,
  owner TEXT, owner_name TEXT, title TEXT, date_taken TEXT, date_upload INTEGER, tags TEXT,
  file_path TEXT, bytes INTEGER, sha256 TEXT, content_type TEXT,
  status TEXT NOT NULL DEFAULT 'pending',
  reason TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  phash TEXT, img_width INTEGER, img_height INTEGER, duplicate_of INTEGER,
  hashed_sha256 TEXT,               -- the sha256 the phash/verify results belong to
  verify_reason TEXT,               -- NULL when the file verified fine
  curated_label TEXT,               -- labels after duplicate-conflict resolution
  view_hashes TEXT,                 -- phashes of centre crops (hashing.view_phashes), comma-separated
  mined_round INTEGER, mined_score REAL, mined_model TEXT,
  run_id TEXT, first_seen_at REAL NOT NULL, updated_at REAL NOT NULL,
  UNIQUE (source, photo_id)
);
CREATE INDEX IF NOT EXISTS candidates_status ON candidates (status);
CREATE INDEX IF NOT EXISTS candidates_label ON candidates (purpose, label);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY, candidate_id INTEGER NOT NULL, run_id TEXT, at REAL NOT NULL,
  stage TEXT NOT NULL, status TEXT NOT NULL, reason TEXT
);
CREATE INDEX IF NOT EXISTS events_candidate ON events (candidate_id);
CREATE TABLE IF NOT EXISTS licenses (id INTEGER PRIMARY KEY, name TEXT NOT NULL, url TEXT);
CREATE TABLE IF NOT EXISTS removals (
  id INTEGER PRIMARY KEY, candidate_id INTEGER NOT NULL, source TEXT NOT NULL, photo_id TEXT NOT NULL,
  owner TEXT, selector TEXT NOT NULL, reason TEXT NOT NULL, run_id TEXT, at REAL NOT NULL,
  files_deleted TEXT NOT NULL       -- JSON list of the paths deleted
);
"""
# Columns added after a catalog may have been created: (table, column, type), added when missing.
ADDED_COLUMNS = (("candidates", "view_hashes", "TEXT"),)

# Candidate fields that describe the photo (as the source reported it); updated on every sighting.
PHOTO_FIELDS = ("url", "size_key", "width", "height", "license_id", "license_name", "owner",
                "owner_name", "title", "date_taken", "date_upload", "tags")
PURPOSE_RANK = {"train": 0, "probe": 1, "pool": 2}   # a photo wanted for training stays training
FILE_STATUSES = ("downloaded", "accepted", "rejected", "duplicate")   # candidates that have a file


@dataclass
class Found:
    """A photo as a search reported it, with the role we want it in."""

    source: str
    photo_id: str
    purpose: str
    label: str
    query: str
    url: str | None
    size_key: str | None
    width: int | None
    height: int | None
    license_id: int | None
    license_name: str | None
    owner: str | None
    owner_name: str | None
    title: str | None
    date_taken: str | None
    date_upload: int | None
    tags: str | None


def merge_labels(current: str, new: str) -> str:
    """A photo found under two classes is one candidate with both labels; a class beats 'other'."""
    labels = {x for x in (current + " " + new).split() if x and x != "other"}
    return " ".join(sorted(labels)) if labels else "other"


class Catalog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable at checkpoints, never corrupt
        self.db.executescript(SCHEMA)
        for table, column, kind in ADDED_COLUMNS:
            if column not in {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- runs -----------------------------------------------------------------------------
    def start_run(self, command: str) -> str:
        run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.db.execute("INSERT INTO runs (run_id, command, started_at, status) VALUES (?,?,?,?)",
                        (run_id, command, time.time(), "running"))
        return run_id

    def finish_run(self, run_id: str, status: str, summary: dict | None = None) -> None:
        self.db.execute("UPDATE runs SET finished_at=?, status=?, summary=? WHERE run_id=?",
                        (time.time(), status, json.dumps(summary or {}, sort_keys=True), run_id))

    def runs(self, limit: int = 20) -> list[dict]:
        rows = self.db.execute("SELECT * FROM runs ORDER BY started_at DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]

    # --- licences -------------------------------------------------------------------------
    def save_licenses(self, licenses: dict[int, tuple[str, str]]) -> None:
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO licenses VALUES (?,?,?)",
                                [(i, name, url) for i, (name, url) in licenses.items()])

    def license_names(self) -> dict[int, str]:
        return {r["id"]: r["name"] for r in self.db.execute("SELECT id, name FROM licenses")}

    # --- candidates -----------------------------------------------------------------------
    def upsert_found(self, found: Iterable[Found], run_id: str) -> tuple[int, int]:
        """Record search results. Returns (new candidates, already known). Idempotent."""
        new = known = 0
        now = time.time()
        with self.transaction():
            for f in found:
                row = self.db.execute("SELECT id, purpose, label, queries, status FROM candidates "
                                      "WHERE source=? AND photo_id=?", (f.source, f.photo_id)).fetchone()
                photo = {k: getattr(f, k) for k in PHOTO_FIELDS}
                if row is None:
                    cur = self.db.execute(
                        f"INSERT INTO candidates (source, photo_id, purpose, label, queries, "
                        f"{', '.join(PHOTO_FIELDS)}, status, run_id, first_seen_at, updated_at) "
                        f"VALUES (?,?,?,?,?,{','.join('?' * len(PHOTO_FIELDS))},?,?,?,?)",
                        (f.source, f.photo_id, f.purpose, f.label, json.dumps([f.query]),
                         *photo.values(), "pending" if f.url else "skipped", run_id, now, now))
                    cid = cur.lastrowid
                    if not f.url:
                        self.db.execute("UPDATE candidates SET reason='no-allowed-size' WHERE id=?", (cid,))
                    self._event(cid, run_id, "search", "pending" if f.url else "skipped",
                                None if f.url else "no-allowed-size", now)
                    new += 1
                    continue
                known += 1
                queries = json.loads(row["queries"])
                if f.query not in queries:
                    queries.append(f.query)
                purpose = min(row["purpose"], f.purpose, key=PURPOSE_RANK.__getitem__)
                label = merge_labels(row["label"], f.label) if purpose == f.purpose == row["purpose"] else (
                    f.label if purpose == f.purpose else row["label"])
                # The URL only changes for a candidate that has not been downloaded yet.
                keep_url = row["status"] not in ("pending", "skipped")
                sets = {k: v for k, v in photo.items() if not (keep_url and k in ("url", "size_key", "width", "height"))}
                self.db.execute(
                    f"UPDATE candidates SET purpose=?, label=?, queries=?, updated_at=?, "
                    f"{', '.join(k + '=?' for k in sets)} WHERE id=?",
                    (purpose, label, json.dumps(queries), now, *sets.values(), row["id"]))
                if row["status"] == "skipped" and f.url:
                    self.set_status(row["id"], "pending", None, run_id, "search")
        return new, known

    def set_status(self, cid: int, status: str, reason: str | None, run_id: str | None, stage: str,
                   **fields) -> None:
        now = time.time()
        cols = {"status": status, "reason": reason, "updated_at": now, **fields}
        if run_id:
            cols["run_id"] = run_id
        self.db.execute(f"UPDATE candidates SET {', '.join(k + '=?' for k in cols)} WHERE id=?",
                        (*cols.values(), cid))
        self._event(cid, run_id, stage, status, reason, now)

    def update_fields(self, cid: int, **fields) -> None:
        self.db.execute(f"UPDATE candidates SET {', '.join(k + '=?' for k in fields)} WHERE id=?",
                        (*fields.values(), cid))

    def _event(self, cid: int, run_id: str | None, stage: str, status: str, reason: str | None,
               at: float) -> None:
        self.db.execute("INSERT INTO events (candidate_id, run_id, at, stage, status, reason) VALUES (?,?,?,?,?,?)",
                        (cid, run_id, at, stage, status, reason))

    def candidates(self, where: str = "1=1", params: tuple = ()) -> list[dict]:
        return [dict(r) for r in self.db.execute(f"SELECT * FROM candidates WHERE {where} ORDER BY id", params)]

    def get(self, cid: int) -> dict | None:
        row = self.db.execute("SELECT * FROM candidates WHERE id=?", (cid,)).fetchone()
        return dict(row) if row else None

    def get_by_photo(self, source: str, photo_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM candidates WHERE source=? AND photo_id=?", (source, photo_id)).fetchone()
        return dict(row) if row else None

    def events(self, cid: int) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM events WHERE candidate_id=? ORDER BY id", (cid,))]

    def count_downloaded(self, purpose: str, label: str) -> int:
        """Candidates of a purpose holding `label` (a class, or 'other') that have a file."""
        rows = self.db.execute(
            f"SELECT label FROM candidates WHERE purpose=? AND status IN ({','.join('?' * len(FILE_STATUSES))})",
            (purpose, *FILE_STATUSES))
        return sum(1 for r in rows if label in r["label"].split())

    def counts(self) -> list[dict]:
        """Counts per purpose, label and status: what `mlc inspect` starts from."""
        rows = self.db.execute("SELECT purpose, label, status, COUNT(*) AS n FROM candidates "
                               "GROUP BY purpose, label, status ORDER BY purpose, label, status")
        return [dict(r) for r in rows]

    def reasons(self) -> list[dict]:
        rows = self.db.execute("SELECT status, reason, COUNT(*) AS n FROM candidates WHERE reason IS NOT NULL "
                               "GROUP BY status, reason ORDER BY n DESC")
        return [dict(r) for r in rows]

    # --- takedowns ------------------------------------------------------------------------
    def removal_targets(self, photo_id: str | None = None, owner: str | None = None,
                        query: str | None = None) -> list[dict]:
        """Candidates a takedown names: by photo id, by owner (id or name), or by a search query."""
        if photo_id is not None:
            return self.candidates("photo_id=?", (photo_id,))
        if owner is not None:
            return self.candidates("owner=? OR owner_name=?", (owner, owner))
        if query is not None:
            return self.candidates("EXISTS (SELECT 1 FROM json_each(candidates.queries) WHERE value=?)", (query,))
        raise ValueError("name a photo id, an owner or a query")

    def record_removal(self, row: dict, selector: str, reason: str, run_id: str, files_deleted: list[str]) -> None:
        """Mark a candidate removed for good and keep the decision, its reason and what was deleted."""
        now = time.time()
        self.db.execute("INSERT INTO removals (candidate_id, source, photo_id, owner, selector, reason, run_id, at, "
                        "files_deleted) VALUES (?,?,?,?,?,?,?,?,?)",
                        (row["id"], row["source"], row["photo_id"], row["owner"], selector, reason, run_id, now,
                         json.dumps(files_deleted)))
        self.set_status(row["id"], "removed", f"takedown:{reason}", run_id, "remove", file_path=None)

    def removed_owners(self) -> set[str]:
        "Owners removed as a whole (`mlc remove --owner`): their later photos stay out too."
        rows = self.db.execute("SELECT DISTINCT owner FROM removals WHERE selector LIKE 'owner:%' AND owner IS NOT NULL")
        return {r["owner"] for r in rows}

    def removals(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM removals ORDER BY id")]
