"""The catalog: the single source of truth about every image candidate.

Every SQL statement of the project lives in this module, so a server database can replace SQLite
by rewriting this file alone. One `Catalog` object is used from one thread at a time; concurrent
workers hand their results back to the thread that owns it.

Status lifecycle of a candidate:
  pending -> downloaded | failed | skipped           (collect)
  downloaded -> accepted | rejected | duplicate      (curate)
  any -> removed                                     (`mlc remove`: a takedown; final)
`reason` says why for every status but pending/downloaded/accepted; `events` keeps the history.

File paths are stored relative to the data root (the catalog's folder), so a data root can be moved
or copied as a whole; `candidates()`/`get()` return them as usable paths under the catalog's own
root. A file outside the data root keeps its absolute path. Schema 1 catalogs stored absolute paths:
`_migrate` rewrites them on open (see docs/reliability.md, "Relative paths").
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import quote

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2            # 2: file_path relative to the data root
MIGRATION_DIRS = ("raw", "quarantine")   # where file_path points inside a data root
LOCK_NOTICE_S = 2.0        # a catalog locked this long gets a line saying what we wait for

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


class CatalogError(Exception):
    """A catalog that cannot be opened as it is; the message names the file and what to do."""


def run_end_status(exc: BaseException) -> str:
    """How a run that raised `exc` is recorded: Ctrl-C and SIGTERM (a KeyboardInterrupt subclass in
    the CLI) are 'interrupted', anything else 'failed'."""
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


class Catalog:
    """`readonly=True` (inspect, reports) never writes, never waits for a writer and works on a
    read-only data root; a missing catalog then reads as an empty one. Writers wait up to
    `lock_timeout_s` for another writer, saying so after a couple of seconds."""

    def __init__(self, path: str | Path, readonly: bool = False, lock_timeout_s: float = 60.0):
        self.path = Path(path)
        if self.path.exists() and self.path.stat().st_size == 0:
            raise CatalogError(f"{self.path}: the catalog is an empty (0-byte) file, not a new catalog (truncated, or "
                               f"a failed copy?): restore it from a backup, or delete it to start over (everything "
                               f"is then downloaded again)")
        self.db = self._open_readonly() if readonly else self._open_writable(lock_timeout_s)
        if not readonly:
            self._migrate()

    def _open_writable(self, lock_timeout_s: float) -> sqlite3.Connection:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogError(f"{folder}: cannot create the data folder ({exc.strerror}); check data_dir") from None
        if not os.access(folder, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            raise CatalogError(f"{self.path}: the catalog (or its folder) is read-only; this command writes to it. "
                               f"Read-only commands (`mlc inspect`) work; make {folder} writable to run this one")
        try:
            db = sqlite3.connect(self.path, timeout=LOCK_NOTICE_S, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            self._check_readable(db)
            self._wait_for_writer(db, lock_timeout_s)
            db.execute(f"PRAGMA busy_timeout={int(lock_timeout_s * 1000)}")   # later writes wait as long
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable at checkpoints, never corrupt
            db.executescript(SCHEMA)
            for table, column, kind in ADDED_COLUMNS:   # columns added since a catalog was created
                if column not in {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as exc:
            raise self._unusable(exc) from None
        return db

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.exists():     # nothing collected yet: an empty catalog, and no file written
            db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            db.executescript(SCHEMA)
        else:
            where = quote(str(self.path.resolve()))
            try:
                db = sqlite3.connect(f"file:{where}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
                self._check_readable(db)
            except sqlite3.OperationalError as exc:
                if os.access(self.path.parent, os.W_OK):
                    raise self._unusable(exc) from None
                # A read-only folder: SQLite cannot create the WAL index beside the file, so read it
                # as an unchanging file (no writer can be at work on a read-only data root).
                try:
                    db = sqlite3.connect(f"file:{where}?immutable=1", uri=True, isolation_level=None,
                                         check_same_thread=False)
                    self._check_readable(db)
                except sqlite3.DatabaseError as exc:
                    raise self._unusable(exc) from None
            except sqlite3.DatabaseError as exc:
                raise self._unusable(exc) from None
            db.execute("PRAGMA query_only=1")
        db.row_factory = sqlite3.Row
        return db

    def _check_readable(self, db: sqlite3.Connection) -> None:
        """Fail now, naming the file, on something that is not an intact SQLite catalog."""
        bad = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if bad != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {bad}")

    def _wait_for_writer(self, db: sqlite3.Connection, lock_timeout_s: float) -> None:
        """Take and release the write lock once, so a second writer is told whom it waits for."""
        deadline = time.monotonic() + lock_timeout_s
        told = False
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("ROLLBACK")
                if told:
                    log.warning("%s: the other writer is done; going on", self.path)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
            holders = self._running_runs(db)
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError(f"still locked by another process after {lock_timeout_s:g} s "
                                               f"({holders}): wait for it to finish or stop it, then rerun")
            if not told:
                log.warning("%s: locked by another process (%s); waiting up to %g s", self.path, holders,
                            lock_timeout_s)
                told = True

    @staticmethod
    def _running_runs(db: sqlite3.Connection) -> str:
        try:
            rows = db.execute("SELECT command, run_id FROM runs WHERE status='running' ORDER BY started_at").fetchall()
        except sqlite3.DatabaseError:      # no runs table yet, or locked even for readers
            return "no run recorded as running"
        return "runs recorded as running: " + ", ".join(f"{r[0]} {r[1]}" for r in rows) if rows else (
            "no run recorded as running: a killed run, or another program holding the file")

    def _unusable(self, exc: BaseException) -> CatalogError:
        text = str(exc)
        if "locked" in text:
            return CatalogError(f"{self.path}: {text}")
        if "readonly" in text or "read-only" in text:
            return CatalogError(f"{self.path}: the catalog is read-only ({text}); make the data root writable")
        if "unable to open" in text:
            return CatalogError(f"{self.path}: cannot open the catalog ({text}); check the file's permissions")
        return CatalogError(f"{self.path}: not a readable catalog ({text}): the file is damaged or not an mlc "
                            f"catalog. Restore it from a backup (it is never replaced by a new one); to start "
                            f"over instead, move it aside and rerun")

    def close(self) -> None:
        self.db.close()

    # --- file paths: relative to the data root ------------------------------------------------
    @property
    def root(self) -> Path:
        """The data root: the catalog's own folder, wherever it has been moved or copied to."""
        return Path(os.path.abspath(self.path.parent))

    def stored_path(self, path: str | os.PathLike | None) -> str | None:
        """How a file path is recorded: relative (POSIX) when inside the data root, else absolute."""
        if path is None:
            return None
        p = Path(os.path.abspath(path))
        for candidate, root in ((p, self.root), (Path(os.path.realpath(p)), Path(os.path.realpath(self.root)))):
            if candidate.is_relative_to(root):
                return candidate.relative_to(root).as_posix()
        return str(p)

    def usable_path(self, stored: str | None) -> str | None:
        """A recorded path as one to open: relative ones are resolved against this data root."""
        if not stored:
            return stored
        return stored if os.path.isabs(stored) else str(self.root / stored)

    def _row(self, row: sqlite3.Row) -> dict:
        out = dict(row)
        if "file_path" in out:
            out["file_path"] = self.usable_path(out["file_path"])
        return out

    def _migrate(self) -> None:
        """Schema 1 -> 2: absolute file paths inside the data root become relative. A path under an
        old location of the data root (it was moved or copied) is rewritten when the same file is
        present under this root; the copy must never work on the original's files."""
        version = int(self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"catalog {self.path} has schema version {version}; this mlc-pipeline reads "
                               f"up to {SCHEMA_VERSION}: upgrade mlc-pipeline")
        if version == SCHEMA_VERSION:
            return
        try:
            with self.transaction():
                rows = self.db.execute("SELECT id, file_path FROM candidates WHERE file_path IS NOT NULL").fetchall()
                moved = kept = 0
                for r in rows:
                    new = self._migrated_path(r["file_path"])
                    if new != r["file_path"]:
                        self.db.execute("UPDATE candidates SET file_path=? WHERE id=?", (new, r["id"]))
                        moved += 1
                    elif os.path.isabs(new):
                        kept += 1
                self.db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('migrated_to_2', ?)",
                                (json.dumps({"at": time.time(), "root": str(self.root), "relative": moved,
                                             "left_absolute": kept}),))
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc):
                raise
            log.warning("catalog %s is read-only: its schema %d paths are used as recorded until a "
                        "writable open migrates them", self.path, version)
            return
        log.info("catalog %s migrated to schema %d: %d file paths made relative to the data root, "
                 "%d outside it left absolute", self.path, SCHEMA_VERSION, moved, kept)

    def _migrated_path(self, stored: str) -> str:
        if not os.path.isabs(stored):
            return stored
        rel = self.stored_path(stored)
        if not os.path.isabs(rel):
            return rel
        parts = Path(stored).parts
        for i in range(len(parts) - 1, 0, -1):       # .../<old root>/raw/<...>: the same file here?
            if parts[i] in MIGRATION_DIRS and (self.root.joinpath(*parts[i:])).is_file():
                return Path(*parts[i:]).as_posix()
        return stored

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
        if "file_path" in fields:
            fields["file_path"] = self.stored_path(fields["file_path"])
        cols = {"status": status, "reason": reason, "updated_at": now, **fields}
        if run_id:
            cols["run_id"] = run_id
        self.db.execute(f"UPDATE candidates SET {', '.join(k + '=?' for k in cols)} WHERE id=?",
                        (*cols.values(), cid))
        self._event(cid, run_id, stage, status, reason, now)

    def update_fields(self, cid: int, **fields) -> None:
        if "file_path" in fields:
            fields["file_path"] = self.stored_path(fields["file_path"])
        self.db.execute(f"UPDATE candidates SET {', '.join(k + '=?' for k in fields)} WHERE id=?",
                        (*fields.values(), cid))

    def _event(self, cid: int, run_id: str | None, stage: str, status: str, reason: str | None,
               at: float) -> None:
        self.db.execute("INSERT INTO events (candidate_id, run_id, at, stage, status, reason) VALUES (?,?,?,?,?,?)",
                        (cid, run_id, at, stage, status, reason))

    def candidates(self, where: str = "1=1", params: tuple = ()) -> list[dict]:
        return [self._row(r) for r in self.db.execute(f"SELECT * FROM candidates WHERE {where} ORDER BY id", params)]

    def get(self, cid: int) -> dict | None:
        row = self.db.execute("SELECT * FROM candidates WHERE id=?", (cid,)).fetchone()
        return self._row(row) if row else None

    def get_by_photo(self, source: str, photo_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM candidates WHERE source=? AND photo_id=?", (source, photo_id)).fetchone()
        return self._row(row) if row else None

    def events(self, cid: int) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM events WHERE candidate_id=? ORDER BY id", (cid,))]

    def count_downloaded(self, purpose: str, label: str) -> int:
        """Candidates of a purpose holding `label` (a class, or 'other') that have a file."""
        rows = self.db.execute(
            f"SELECT label FROM candidates WHERE purpose=? AND status IN ({','.join('?' * len(FILE_STATUSES))})",
            (purpose, *FILE_STATUSES))
        return sum(1 for r in rows if label in r["label"].split())

    def set_tally(self, purpose: str, label: str) -> dict:
        """Where the candidates of one set (a purpose and a class, or 'other') stand, for top-ups and
        shortfall reports: accepted counts by the labels curation settled on; the other statuses by
        the label the search gave, with their reasons cut before the first ':' or '='."""
        out: dict = {"accepted": 0, "downloaded": 0, "pending": 0,
                     "rejected": {}, "duplicate": {}, "failed": {}, "skipped": {}}
        rows = self.db.execute("SELECT status, reason, label, curated_label FROM candidates WHERE purpose=?",
                               (purpose,))
        for r in rows:
            status = r["status"]
            labels = (r["curated_label"] or r["label"]) if status == "accepted" else r["label"]
            if label not in labels.split():
                continue
            if isinstance(out.get(status), int):
                out[status] += 1
            elif status in out:
                reason = re.split("[:=]", r["reason"] or "unknown", maxsplit=1)[0]
                out[status][reason] = out[status].get(reason, 0) + 1
        return out

    def count_accepted(self, purpose: str, label: str) -> int:
        """Accepted candidates of a purpose whose curated labels hold `label` (a class, or 'other')."""
        rows = self.db.execute("SELECT curated_label FROM candidates WHERE purpose=? AND status='accepted'", (purpose,))
        return sum(1 for r in rows if label in (r["curated_label"] or "").split())

    def mined_in_round(self, round_no: int) -> list[dict]:
        """Pool images a mining round moved into the negatives, or held back for review."""
        return [self._row(r) for r in self.db.execute(
            "SELECT * FROM candidates WHERE mined_round=? OR (reason LIKE 'held:%' AND reason LIKE ?) ORDER BY id",
            (round_no, f"%:round={round_no}"))]

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
