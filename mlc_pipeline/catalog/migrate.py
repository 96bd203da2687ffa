"""The catalog's schema versions, and the migration a writable open makes of an older catalog.

  1  mlc-pipeline 0.1.0 (2026-11-22): file paths recorded absolute.
  2  0.2.0 (2026-12-01): file paths relative to the data root; a schema 1 catalog's are rewritten
     (`migrated_path`): the data root can be moved or copied whole.
  3  0.3.0 (2026-12-07): columns and tables added since 0.2.0: candidates' source_file,
     verify_limits, img_frames, corner_hashes; runs' host, pid, process; the tables pair_scores and
     kept_corners. Every open adds what is missing (schema.ADDED_COLUMNS, CREATE ... IF NOT EXISTS),
     and older rows keep NULL there, which this code reads as "recorded before" (verify_limits: the
     limits of the first curate that sees them). The version moves so that code can tell: 0.2.0 code
     refuses to open a catalog of a schema above 2 for writing (a RuntimeError traceback; a second
     machine on one PostgreSQL catalog, not upgraded yet, stops instead of writing rows without what
     0.3.0 records), but its read-only opens (`mlc inspect`, reports) read it without a word; 0.3.0
     refuses one above 3, read-only opens too (`schema.refuse_newer`, one line).

Each migration is recorded in meta as `migrated_to_N` (JSON: when, from which version, what it did,
`told`: false), in the transaction that moves `schema_version`, and said in a warning: it happens once,
on the first writable open by the newer code, whichever command that is. The next summary of `mlc
curate` (and so of `mlc run`) says it once more (`untold`), in whatever process or machine it runs, and
marks the record told. (Until 2026-12-07 a per-process list held that line: after `mlc collect` had
migrated, `mlc curate` said nothing, and the review app's list only grew: the review30 audit.) A
read-only open migrates nothing and reads an older catalog as it is.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from pathlib import Path

from .schema import MIGRATION_DIRS, SCHEMA_VERSION, refuse_newer

log = logging.getLogger(__name__)

# What each version changed, as the line saying a migration to it tells (the log, a command's summary).
CHANGED = {2: "file paths are recorded relative to the data root",
           3: "the columns and tables added since mlc-pipeline 0.2.0 are part of the schema; mlc-pipeline "
              "older than 0.3.0 refuses to write to this catalog from now on (upgrade every machine that uses it)"}
RECORDS = "key LIKE 'migrated!_to!_%' ESCAPE '!'"     # meta's migration records


def migrate(catalog) -> None:
    """Bring a writable catalog from its schema version up to SCHEMA_VERSION, in one transaction; a
    catalog of a newer schema is refused (CatalogTooNew)."""
    version = refuse_newer(catalog.db, catalog.where, True)
    if version is None or version == SCHEMA_VERSION:
        return
    try:
        with catalog.transaction():
            version = refuse_newer(catalog.db, catalog.where, True)     # another process migrated it meanwhile?
            if version == SCHEMA_VERSION:
                return
            now, done = time.time(), {}
            if version < 2:
                done[2] = relative_paths(catalog)
            for to in range(max(version, 2) + 1, SCHEMA_VERSION + 1):
                done[to] = {}
            for to, what in done.items():
                catalog.db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                                   (f"migrated_to_{to}", json.dumps({"at": now, "from": version, **what,
                                                                     "told": False})))
            catalog.db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc):
            raise
        log.warning("catalog %s is read-only: its schema %d is used as recorded until a writable open migrates it",
                    catalog.where, version)
        return
    for line in said(done):
        log.warning("%s: %s", catalog.where, line)


def said(done: dict[int, dict]) -> list[str]:
    """The lines the migrations `done` ({version reached: its record}) are told in (the log, a summary)."""
    lines = []
    for to, what in sorted(done.items()):
        extra = (f": {what['relative']} file paths made relative to the data root, {what['left_absolute']} outside "
                 f"it left absolute" if "relative" in what else "")
        lines.append(f"catalog migrated from schema {to - 1} to {to} ({CHANGED[to]}){extra}")
    return lines


def untold(catalog) -> list[str]:
    """The migrations of a writable `catalog` that no summary has said yet, as `said` tells them, each
    marked told as it is handed out: one summary says it (`mlc curate`'s, so `mlc run`'s), whichever
    process or machine makes it. Records without `told` (0.2.0's, or made before it was recorded) count
    as told."""
    out = []
    for row in sorted(catalog.db.execute(f"SELECT key, value FROM meta WHERE {RECORDS}").fetchall(),
                      key=lambda r: int(r["key"].rsplit("_", 1)[1])):
        what = json.loads(row["value"])
        if what.get("told", True):
            continue
        marked = catalog.db.execute("UPDATE meta SET value=? WHERE key=? AND value=?",
                                    (json.dumps({**what, "told": True}), row["key"], row["value"]))
        if marked.rowcount == 1:        # 0: another summary took it meanwhile, and says it
            out += said({int(row["key"].rsplit("_", 1)[1]): what})
    return out


def relative_paths(catalog) -> dict:
    """Schema 1 -> 2: absolute file paths inside the data root become relative. A path under an old
    location of the data root (it was moved or copied) is rewritten when the same file is present
    under this root; the copy must never work on the original's files."""
    rows = catalog.db.execute("SELECT id, file_path FROM candidates WHERE file_path IS NOT NULL").fetchall()
    moved = kept = 0
    for r in rows:
        new = migrated_path(catalog, r["file_path"])
        if new != r["file_path"]:
            catalog.db.execute("UPDATE candidates SET file_path=? WHERE id=?", (new, r["id"]))
            moved += 1
        elif os.path.isabs(new):
            kept += 1
    return {"root": str(catalog.root), "relative": moved, "left_absolute": kept}


def migrated_path(catalog, stored: str) -> str:
    if not os.path.isabs(stored):
        return stored
    rel = catalog.stored_path(stored)
    if not os.path.isabs(rel):
        return rel
    parts = Path(stored).parts
    for i in range(len(parts) - 1, 0, -1):       # .../<old root>/raw/<...>: the same file here?
        if parts[i] in MIGRATION_DIRS and (catalog.root.joinpath(*parts[i:])).is_file():
            return Path(*parts[i:]).as_posix()
    return stored
