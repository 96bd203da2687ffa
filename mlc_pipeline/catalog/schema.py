"""The catalog's schema and the plain data types around it, shared by both backends.

One schema, written once in SQLite's dialect; `postgres_schema()` derives PostgreSQL's from it by
changing column types only, so the two can never drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEMA_VERSION = 3            # what each version changed: migrate.py
MIGRATION_DIRS = ("raw", "quarantine")   # where file_path points inside a data root
SQL_INT_MAX = 2**63 - 1       # SQLite's INTEGER and PostgreSQL's BIGINT: the largest id or round a query binds
LOCK_NOTICE_S = 2.0        # a catalog locked this long gets a line saying what we wait for

# curate's note on each image of a review pair, `review:label-conflict:with=<id>:d=<bits>:s=<score>`
# (catalog/pairs.py); REVIEW_NOTES picks those rows, REVIEW_NOTED_ID is the <id> a note names, in
# functions SQLite and PostgreSQL share (substr, ltrim, length), so that one expression is indexed
# (partial indexes: only the notes) and queried on both (`pairs.review_partners`).
REVIEW_PAIR = "review:label-conflict:with="
REVIEW_NOTES = f"reason LIKE '{REVIEW_PAIR}%'"
REVIEW_NOTED_ID = (f"substr(reason, {len(REVIEW_PAIR) + 1}, length(reason) - {len(REVIEW_PAIR)} "
                   f"- length(ltrim(substr(reason, {len(REVIEW_PAIR) + 1}), '0123456789')))")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, command TEXT NOT NULL, started_at REAL NOT NULL,
  finished_at REAL, status TEXT NOT NULL, summary TEXT,
  host TEXT, pid INTEGER, process TEXT  -- who runs it (runs.py: is a killed run's process gone?)
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
  verify_limits TEXT,               -- JSON: the limits verify_reason was decided under (verify.limits_key)
  img_frames INTEGER,               -- frames in the file (the frame rule needs them to judge on record)
  mined_round INTEGER, mined_score REAL, mined_model TEXT,
  run_id TEXT, first_seen_at REAL NOT NULL, updated_at REAL NOT NULL,
  UNIQUE (source, photo_id)
);
CREATE INDEX IF NOT EXISTS candidates_status ON candidates (status);
CREATE INDEX IF NOT EXISTS candidates_label ON candidates (purpose, label);
CREATE INDEX IF NOT EXISTS candidates_review_partner ON candidates (@NOTED@) WHERE @NOTES@;
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY, candidate_id INTEGER NOT NULL, run_id TEXT, at REAL NOT NULL,
  stage TEXT NOT NULL, status TEXT NOT NULL, reason TEXT
);
CREATE INDEX IF NOT EXISTS events_candidate ON events (candidate_id);
CREATE INDEX IF NOT EXISTS events_review_partner ON events (@NOTED@) WHERE @NOTES@;
CREATE TABLE IF NOT EXISTS licenses (id INTEGER PRIMARY KEY, name TEXT NOT NULL, url TEXT);
CREATE TABLE IF NOT EXISTS removals (
  id INTEGER PRIMARY KEY, candidate_id INTEGER NOT NULL, source TEXT NOT NULL, photo_id TEXT NOT NULL,
  owner TEXT, selector TEXT NOT NULL, reason TEXT NOT NULL, run_id TEXT, at REAL NOT NULL,
  files_deleted TEXT NOT NULL       -- JSON list of the paths deleted
);
CREATE TABLE IF NOT EXISTS pair_scores (   -- a cache of near-duplicate scores (pairs.py)
  sha_a TEXT NOT NULL, sha_b TEXT NOT NULL, method TEXT NOT NULL, score REAL NOT NULL,
  PRIMARY KEY (method, sha_a, sha_b)
);
CREATE TABLE IF NOT EXISTS kept_corners (  -- a cache of published test files' corner hashes (corners.py)
  sha256 TEXT NOT NULL, method TEXT NOT NULL, hashes TEXT NOT NULL,
  PRIMARY KEY (method, sha256)
);
""".replace("@NOTED@", REVIEW_NOTED_ID).replace("@NOTES@", REVIEW_NOTES)
# Columns added after a catalog may have been created: (table, column, type), added when missing.
ADDED_COLUMNS = (("candidates", "view_hashes", "TEXT"), ("candidates", "source_file", "TEXT"),
                 ("candidates", "verify_limits", "TEXT"), ("candidates", "img_frames", "INTEGER"),
                 ("runs", "host", "TEXT"), ("runs", "pid", "INTEGER"), ("runs", "process", "TEXT"),
                 ("candidates", "corner_hashes", "TEXT"))     # a photo taken down: hashing.corner_phashes
# Tables in the order a copy fills them; those whose ids a database assigns (identity columns).
TABLES = ("meta", "runs", "licenses", "candidates", "events", "removals", "pair_scores", "kept_corners")
GENERATED_IDS = ("candidates", "events", "removals")

# Candidate fields that describe the photo (as the source reported it); updated on every sighting.
PHOTO_FIELDS = ("url", "size_key", "width", "height", "license_id", "license_name", "owner",
                "owner_name", "title", "date_taken", "date_upload", "tags", "source_file")
PURPOSE_RANK = {"train": 0, "probe": 1, "pool": 2}   # a photo wanted for training stays training
FILE_STATUSES = ("downloaded", "accepted", "rejected", "duplicate")   # candidates that have a file


def postgres_type(sqlite_type: str) -> str:
    """SQLite's types as PostgreSQL spells them at the same width: SQLite's INTEGER and REAL are
    64-bit (PostgreSQL's INTEGER and REAL are 32-bit: timestamps and byte counts would not fit)."""
    return {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION"}.get(sqlite_type, sqlite_type)


def postgres_ddl(ddl: str) -> str:
    """DDL written for SQLite, for PostgreSQL: the ids SQLite assigns (`id INTEGER PRIMARY KEY`)
    become identity columns (another key, such as `candidate_id INTEGER PRIMARY KEY`, stays a plain
    key), and the types keep their width."""
    ddl = re.sub(r"\bid INTEGER PRIMARY KEY", "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", ddl)
    return re.sub(r"\b(INTEGER|REAL)\b", lambda m: postgres_type(m.group(1)), ddl)


def creates(ddl: str) -> list[tuple[str, str]]:
    """(name, statement) of each table or index `ddl` creates: every statement of the catalog's DDL is
    one CREATE TABLE / [UNIQUE] INDEX ... IF NOT EXISTS, so a connection can run only what is missing."""
    out = []
    for statement in filter(str.strip, ddl.split(";")):
        found = re.match(r"\s*CREATE\s+(?:TABLE|(?:UNIQUE\s+)?INDEX)\s+IF\s+NOT\s+EXISTS\s+(\w+)", statement, re.I)
        if found is None:
            raise ValueError(f"not a CREATE ... IF NOT EXISTS statement: {statement.strip()[:60]}")
        out.append((found.group(1), statement))
    return out


def postgres_schema() -> str:
    """SCHEMA for PostgreSQL (`postgres_ddl`)."""
    return postgres_ddl(SCHEMA)


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
    source_file: str | None = None    # folder mode: the original file, relative to the served folder


def merge_labels(current: str, new: str) -> str:
    """A photo found under two classes is one candidate with both labels; a class beats 'other'."""
    labels = {x for x in (current + " " + new).split() if x and x != "other"}
    return " ".join(sorted(labels)) if labels else "other"


class CatalogError(Exception):
    """A catalog that cannot be opened as it is; the message names it and says what to do."""


class CatalogTooNew(CatalogError):
    """A catalog of a newer schema than this code knows: a newer mlc-pipeline wrote it (refused, one line)."""


def refuse_newer(db, where: str, has_meta: bool) -> int | None:
    """The catalog's schema version (None: it records none yet); CatalogTooNew when this code is older
    than the schema. Read before anything is written: a newer catalog is never altered by older code."""
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() if has_meta else None
    version = int(row["value"]) if row is not None else None
    if version is not None and version > SCHEMA_VERSION:
        raise CatalogTooNew(f"catalog {where} has schema version {version}, written by a newer mlc-pipeline; this "
                            f"one reads schema versions up to {SCHEMA_VERSION}: upgrade mlc-pipeline here (to the "
                            f"version that wrote it, or later) before using this catalog")
    return version


class CatalogBusy(CatalogError):
    """Another writer held the catalog's lock longer than this connection waits for it."""


class CatalogFull(CatalogError):
    """The disk under the catalog is full: no write can be recorded until space is freed."""


# What a full catalog's one line tells to do, on SQLite and PostgreSQL alike.
FULL_ADVICE = ("then rerun the same command (what was recorded is kept; a collect adopts the images it finished "
               "but could not record)")


class CatalogLost(CatalogError):
    """The connection to a catalog server was lost; what was committed is kept (a rerun resumes)."""


def run_end_status(exc: BaseException) -> str:
    """How a run that raised `exc` is recorded: a stop from outside is 'interrupted' (Ctrl-C, SIGTERM:
    a KeyboardInterrupt subclass in the CLI; a Prefect run's cancel, its TerminationSignal: like every
    such signal a BaseException that is no Exception), anything else 'failed'."""
    return "failed" if isinstance(exc, Exception) else "interrupted"
