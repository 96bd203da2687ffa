"""The catalog: the single source of truth about every image candidate.

Every SQL statement of the project lives in this package; this module holds those both backends
share, written in SQLite's dialect with `?` placeholders (PostgreSQL gets them through
`postgres.to_pyformat`). The few that differ are the backends' own (`json_list_has`, `begin`). One
`Catalog` object is used from one thread at a time; concurrent workers hand their results back to
the thread that owns it. Several processes may write to one PostgreSQL catalog at once: see
`postgres.py` for how.

Status lifecycle of a candidate:
  pending -> downloaded | failed | skipped           (collect)
  downloaded -> accepted | rejected | duplicate      (curate)
  any -> removed                                     (`mlc remove`: a takedown; final)
`reason` says why for every status but pending/downloaded/accepted; `events` keeps the history.

File paths are stored relative to the data root (the catalog's folder, or for PostgreSQL the
configured data_dir), so a data root can be moved or copied as a whole; `candidates()`/`get()`
return them as usable paths under the catalog's own root. A file outside the data root keeps its
absolute path. Schema 1 catalogs stored absolute paths: a writable open migrates them (migrate.py,
which holds every schema version's story; docs/reliability.md, "Relative paths"). A catalog of a newer
schema than this code knows is refused, read-only too (schema.refuse_newer).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from . import migrate, postgres, runs, sqlite
from mlc_pipeline.catalog_address import PostgresCatalog
from .corners import KeptCornerQueries
from .pairs import PairScoreQueries
from .removals import RemovalQueries
from .rows import RowQueries
from .tallies import TallyQueries
from .schema import PHOTO_FIELDS, PURPOSE_RANK, Found, creates, merge_labels, postgres_ddl, refuse_newer, run_end_status

log = logging.getLogger(__name__)

RUNS_OF_THIS_PROCESS = runs.RUNS_OF_THIS_PROCESS     # the runs this process started (curate/unpublished.py)

class Catalog(RowQueries, RemovalQueries, TallyQueries, PairScoreQueries, KeptCornerQueries):
    """`where` is the SQLite file (a path) or a `PostgresCatalog` (config's `catalog_path` gives the
    right one). `readonly=True` (inspect, reports) never writes, never waits for a writer and works
    on a read-only data root; a missing catalog then reads as an empty one. Writers wait up to
    `lock_timeout_s` for another writer, saying so after a couple of seconds. A SQLite catalog that
    `mlc catalog migrate` moved to PostgreSQL is refused (sqlite.CatalogMoved) unless `moved_ok` (the copy),
    when opened and by every write transaction begun on a connection opened before the move."""

    def __init__(self, where: str | Path | PostgresCatalog, readonly: bool = False, lock_timeout_s: float = 60.0,
                 moved_ok: bool = False):
        if isinstance(where, PostgresCatalog):
            self.path, self._root, self.where, self.ends = None, Path(os.path.abspath(where.root)), str(where), None
            self.backend = postgres
            self.db = postgres.connect(where, readonly, lock_timeout_s)
            if readonly and not postgres.has_schema(self.db):   # nothing collected yet: read as empty
                self.db.close()
                self.db, self.backend = sqlite.open_empty(), sqlite
        else:
            self.path = Path(where)
            if not moved_ok:
                sqlite.refuse_moved(self.path)
            self._root, self.where, self.backend = Path(os.path.abspath(self.path.parent)), str(self.path), sqlite
            self.ends = self._root / "runs"     # room for its runs' end records (runs.reserve_end)
            self.db = (sqlite.open_readonly(self.path) if readonly else
                       sqlite.open_writable(self.path, lock_timeout_s, moved_ok))   # moved_ok: refused in `begin`
        if readonly:
            refuse_newer(self.db, self.where, self.has_table("meta"))
        else:
            self._migrate()
            runs.end_crashed(self.db, self.ends)    # runs whose process is known gone (kill -9) end as 'crashed'

    @property
    def dialect(self) -> str:
        return self.backend.DIALECT

    def close(self) -> None:
        self.db.close()

    def set_lock_timeout(self, seconds: float) -> None:
        """How long a later write waits for another writer's lock before CatalogBusy (an interactive
        client waits less than a batch command)."""
        self.backend.set_lock_timeout(self.db, seconds)

    def snapshot(self, dest: str | Path) -> None:
        """A consistent copy of the catalog while it is open (SQLite's online backup), for uploading."""
        sqlite.snapshot(self.db, dest)

    # --- file paths: relative to the data root ------------------------------------------------
    @property
    def root(self) -> Path:
        """The data root: the SQLite catalog's own folder, wherever it has been moved or copied to."""
        return self._root

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

    def _row(self, row) -> dict:
        out = dict(row)
        if "file_path" in out:
            out["file_path"] = self.usable_path(out["file_path"])
        return out

    def _migrate(self) -> None:
        """An older schema brought up to this code's (migrate.py); a newer one refused (CatalogTooNew)."""
        migrate.migrate(self)

    def has_table(self, name: str) -> bool:
        """Whether the catalog holds table (or index) `name` (tables other modules add, such as the review app's)."""
        return self.backend.has_table(self.db, name)

    def create_missing(self, ddl: str) -> None:
        """The tables and indexes `ddl` (SQLite's dialect, each CREATE ... IF NOT EXISTS) creates that the
        catalog lacks, in the caller's transaction: on PostgreSQL even IF NOT EXISTS locks the table."""
        for name, statement in creates(postgres_ddl(ddl) if self.dialect == "postgresql" else ddl):
            if not self.has_table(name):
                self.db.execute(statement)

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing, and one writer's transaction at a time (SQLite's write lock; for
        PostgreSQL the catalog's advisory lock): a block that reads and then writes sees no other
        writer's change in between."""
        with self._begun(self.backend.begin):
            yield

    @contextmanager
    def locked_candidate(self, cid: int) -> Iterator[dict | None]:
        """A transaction in which no other writer changes candidate `cid` (its row, and what hangs on
        it, such as its review): SQLite's write lock; for PostgreSQL a row lock (SELECT ... FOR
        UPDATE), so writers of other candidates go on. Yields the row, None when there is none."""
        with self._begun(self.backend.begin_atomic):
            row = self.db.execute(f"SELECT * FROM candidates WHERE id=?{self.backend.FOR_UPDATE}", (cid,)).fetchone()
            yield self._row(row) if row else None

    @contextmanager
    def _atomic(self) -> Iterator[None]:
        """Statements that belong together (a status and its event): inside the caller's
        transaction, or a transaction of their own."""
        if self.db.in_transaction:
            yield
            return
        with self._begun(self.backend.begin_atomic):
            yield

    @contextmanager
    def _begun(self, begin) -> Iterator[None]:
        """`begin`, then commit when the block ends; roll back when it raises, also for a signal just after
        BEGIN or before COMMIT (left open, it would take every later write with it, never committed)."""
        try:
            begin(self.db)
            yield
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    # --- runs -----------------------------------------------------------------------------
    def start_run(self, command: str) -> str:
        run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        RUNS_OF_THIS_PROCESS.add(run_id)
        me = runs.this_process()
        try:
            self.db.execute("INSERT INTO runs (run_id, command, started_at, status, host, pid, process) "
                            "VALUES (?,?,?,?,?,?,?)", (run_id, command, time.time(), "running", me["host"],
                                                       me["pid"], me["process"]))
            runs.reserve_end(self.ends, run_id)
        except BaseException as exc:
            # A Ctrl-C arriving while the INSERT runs is raised right after it, before the caller holds the
            # run id its `except` ends the run with: the run stayed `running`, later `crashed` (the
            # interrupt22 audit). Ended here (an UPDATE of nothing if the INSERT did not happen).
            self.finish_run(run_id, run_end_status(exc), {"error": type(exc).__name__})
            raise
        return run_id

    def finish_run(self, run_id: str, status: str, summary: dict | None = None) -> None:
        runs.finish(self.db, self.ends, run_id, status, summary)

    def fail_completed_runs(self, run_ids: list[str], error: str) -> list[str]:
        """Runs recorded completed whose work could not be published: recorded failed (runs.fail_completed)."""
        return runs.fail_completed(self.db, run_ids, error)

    def runs_in_flight(self, started_since: float, ended_since: float) -> list[dict]:
        """Runs recorded as running that started after `started_since`, and runs that ended after
        `ended_since`: their writers may not have published their files yet (curate/unpublished.py)."""
        rows = self.db.execute("SELECT run_id, command, started_at, finished_at, status FROM runs "
                               "WHERE (status='running' AND started_at>=?) OR finished_at>=?",
                               (started_since, ended_since))
        return [dict(r) for r in rows]

    def runs(self, limit: int = 20) -> list[dict]:
        """The latest runs; one recorded as running whose process is known gone reads as 'crashed'."""
        rows = self.db.execute("SELECT * FROM runs ORDER BY started_at DESC LIMIT ?", (limit,))
        return [runs.shown(dict(r)) for r in rows]

    def run(self, run_id: str) -> dict | None:
        """One run as `runs` shows it; None when the catalog has none of that id."""
        row = self.db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return runs.shown(dict(row)) if row else None

    # --- licences -------------------------------------------------------------------------
    def save_licenses(self, licenses: dict[int, tuple[str, str]]) -> None:
        with self.transaction():
            self.db.executemany("INSERT INTO licenses VALUES (?,?,?) ON CONFLICT (id) DO UPDATE "
                                "SET name=excluded.name, url=excluded.url",
                                [(i, name, url) for i, (name, url) in licenses.items()])

    def license_names(self) -> dict[int, str]:
        return {r["id"]: r["name"] for r in self.db.execute("SELECT id, name FROM licenses")}

    def license_urls(self) -> dict[int, str]:
        "Each licence's deed, as the source lists it (the attribution links to it)."
        return {r["id"]: r["url"] for r in self.db.execute("SELECT id, url FROM licenses WHERE url IS NOT NULL")}

    # --- candidates -----------------------------------------------------------------------
    def upsert_found(self, found: Iterable[Found], run_id: str) -> tuple[int, int]:
        """Record search results. Returns (new candidates, already known). Idempotent."""
        new = known = 0
        now = time.time()
        found = list(found)
        with self.transaction():
            rows = self._known_rows(found)       # one query for the batch, kept current below
            events: list[tuple] = []             # search events of new candidates, written together
            for f in found:
                key = (f.source, f.photo_id)
                row = rows.get(key)
                photo = {k: getattr(f, k) for k in PHOTO_FIELDS}
                if row is None:
                    status, reason = ("pending", None) if f.url else ("skipped", "no-allowed-size")
                    # ON CONFLICT: a writer outside this lock (another program) inserted it since.
                    inserted = self.db.execute(
                        f"INSERT INTO candidates (source, photo_id, purpose, label, queries, "
                        f"{', '.join(PHOTO_FIELDS)}, status, reason, run_id, first_seen_at, updated_at) "
                        f"VALUES (?,?,?,?,?,{','.join('?' * len(PHOTO_FIELDS))},?,?,?,?,?) "
                        f"ON CONFLICT (source, photo_id) DO NOTHING RETURNING id",
                        (f.source, f.photo_id, f.purpose, f.label, json.dumps([f.query]),
                         *photo.values(), status, reason, run_id, now, now)).fetchone()
                    if inserted is not None:
                        events.append((inserted["id"], run_id, now, "search", status, reason))
                        rows[key] = {"id": inserted["id"], "purpose": f.purpose, "label": f.label,
                                     "queries": json.dumps([f.query]), "status": status, "curated_label": None}
                        new += 1
                        continue
                    row = rows[key] = dict(self.db.execute(
                        "SELECT id, purpose, label, queries, status, curated_label FROM candidates "
                        "WHERE source=? AND photo_id=?",
                        key).fetchone())
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
                if f.license_id is None and not f.license_name:   # an entry that lost its licence (a mirror's):
                    del sets["license_id"], sets["license_name"]   # the known one stays (collect28)
                if row["curated_label"] is not None and label != row["label"]:
                    # An accepted image found under another class is usable for it now, as the next
                    # curate will say (a keeper's labels hold its own): counted so before then, the set
                    # is not topped up with more downloads (a renamed class downloaded a second set).
                    sets["curated_label"] = row["curated_label"] = merge_labels(row["curated_label"], label)
                self.db.execute(
                    f"UPDATE candidates SET purpose=?, label=?, queries=?, updated_at=?, "
                    f"{', '.join(k + '=?' for k in sets)} WHERE id=?",
                    (purpose, label, json.dumps(queries), now, *sets.values(), row["id"]))
                row.update(purpose=purpose, label=label, queries=json.dumps(queries))
                if row["status"] == "skipped" and f.url:
                    self._events(events)             # its search event before this one
                    events = []
                    self.set_status(row["id"], "pending", None, run_id, "search")
                    row["status"] = "pending"
            self._events(events)
        return new, known

    def _known_rows(self, found: list[Found], chunk: int = 500) -> dict[tuple[str, str], dict]:
        out: dict[tuple[str, str], dict] = {}
        by_source: dict[str, list[str]] = {}
        for f in found:
            by_source.setdefault(f.source, []).append(f.photo_id)
        for source, ids in by_source.items():
            ids = sorted(set(ids))
            for i in range(0, len(ids), chunk):
                part = ids[i:i + chunk]
                for r in self.db.execute("SELECT id, source, photo_id, purpose, label, queries, status, curated_label "
                                         "FROM candidates "
                                         f"WHERE source=? AND photo_id IN ({','.join('?' * len(part))})",
                                         (source, *part)):
                    out[(r["source"], r["photo_id"])] = dict(r)
        return out

    def _events(self, events: list[tuple]) -> None:
        if events:
            self.db.executemany("INSERT INTO events (candidate_id, run_id, at, stage, status, reason) "
                                "VALUES (?,?,?,?,?,?)", events)

    def set_status(self, cid: int, status: str, reason: str | None, run_id: str | None, stage: str,
                   **fields) -> bool:
        """Record a candidate's new status (and fields) with its event; False when it was not: the
        candidate was taken down meanwhile (a takedown is final), or there is none."""
        now = time.time()
        if "file_path" in fields:
            fields["file_path"] = self.stored_path(fields["file_path"])
        cols = {"status": status, "reason": reason, "updated_at": now, **fields}
        if run_id:
            cols["run_id"] = run_id
        # Sent together (PostgreSQL: one round trip); the event only when the status was set.
        with self.backend.pipeline(self.db), self._atomic():
            # A takedown is final: a writer that read the row before it was removed cannot bring it back.
            self.db.execute(f"UPDATE candidates SET {', '.join(k + '=?' for k in cols)} "
                            f"WHERE id=? AND (status<>'removed' OR ?='removed')", (*cols.values(), cid, status))
            logged = self.db.execute("INSERT INTO events (candidate_id, run_id, at, stage, status, reason) "
                                     "SELECT ?,?,?,?,?,? WHERE EXISTS (SELECT 1 FROM candidates WHERE id=? AND status=?)",
                                     (cid, run_id, now, stage, status, reason, cid, status))
        if not logged.rowcount and self.get(cid) is not None:
            log.warning("candidate %s was removed (takedown) meanwhile: %s to %s not recorded", cid, stage, status)
        return bool(logged.rowcount)

    def update_fields(self, cid: int, **fields) -> None:
        if "file_path" in fields:
            fields["file_path"] = self.stored_path(fields["file_path"])
        self.db.execute(f"UPDATE candidates SET {', '.join(k + '=?' for k in fields)} WHERE id=?",
                        (*fields.values(), cid))

    def stamp_verify_limits(self, key: str) -> int:
        """Give verdicts recorded before limits were kept with them (verify_limits NULL) these limits,
        in one statement; how many."""
        cur = self.db.execute("UPDATE candidates SET verify_limits=? WHERE verify_limits IS NULL "
                              "AND hashed_sha256 IS NOT NULL", (key,))
        return max(cur.rowcount, 0)
