"""The embedded SQLite catalog: opening the file, and what is wrong when it cannot be opened.

SQLite has one writer at a time: `BEGIN IMMEDIATE` takes the file's write lock, and a second writer
waits for it (busy_timeout). Readers never wait (WAL).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

from mlc_pipeline.config_messages import ConfigError
from . import runs
from .schema import (ADDED_COLUMNS, FULL_ADVICE, LOCK_NOTICE_S, SCHEMA, SCHEMA_VERSION, CatalogBusy, CatalogError,
                     CatalogFull, refuse_newer)

log = logging.getLogger(__name__)
DIALECT = "sqlite"
FOR_UPDATE = ""                # the write lock of BEGIN IMMEDIATE covers every row


class CatalogMoved(ConfigError):
    """The SQLite catalog was moved to PostgreSQL by `mlc catalog migrate`: a config still naming it is
    refused (one line, exit 2), since every write there would be lost and every read stale."""


class Connection(sqlite3.Connection):
    """A writable catalog's connection: a write that finds the disk full (SQLITE_FULL) is one line naming
    the catalog and its disk (`CatalogFull`, a CatalogError), not sqlite3's "database or disk is full"
    after a traceback (the collect27 audit). `path` and `moved_ok` are set by `open_writable`."""
    path: Path
    moved_ok: bool = False

    def execute(self, *args):
        return self.full_disk(super().execute, args)

    def executemany(self, *args):
        return self.full_disk(super().executemany, args)

    def executescript(self, *args):
        return self.full_disk(super().executescript, args)

    def full_disk(self, call, args):
        try:
            return call(*args)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                raise
            raise CatalogFull(f"cannot write to the catalog {self.path}: {disk_of(self.path)} is full (SQLITE_FULL); "
                              f"free space there, {FULL_ADVICE}") from None


def disk_of(path: Path) -> str:
    """The disk a file is on, for a message: its mount point and the space left there."""
    mount = Path(os.path.abspath(path.parent))
    try:
        while mount.parent != mount and os.stat(mount.parent).st_dev == os.stat(mount).st_dev:
            mount = mount.parent
        free = os.statvfs(mount)
        return f"the disk mounted at {mount} ({free.f_bavail * free.f_frsize // 1024} KiB free)"
    except OSError:
        return f"the disk of {path.parent}"


def moved_marker(path: Path) -> Path:
    """Where `mlc catalog migrate` records that the SQLite catalog `path` moved to PostgreSQL: beside it,
    `catalog.sqlite` -> `catalog.moved` (the name the marker has in an object store's data root)."""
    return path.with_suffix(".moved")


def refuse_moved(path: Path) -> None:
    """CatalogMoved when the catalog at `path` was moved (scale26 audit: on a local data root, a takedown
    recorded in the old SQLite catalog was undone by the next collect on PostgreSQL)."""
    marker = moved_marker(path)
    try:
        text = marker.read_text()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CatalogError(f"{marker}: cannot read it ({exc.strerror}): it says whether {path} was moved to "
                           f"PostgreSQL; check its permissions") from None
    try:
        moved = json.loads(text)
    except ValueError:
        moved = {}
    moved = moved if isinstance(moved, dict) else {}
    to = moved.get("to") or "a PostgreSQL catalog"
    raise CatalogMoved(
        f"the catalog {path} was moved to {to} by `mlc catalog migrate` ({moved.get('on', 'date unknown')}): set "
        f"catalog.url: {to} in this config (the password in PGPASSWORD or ~/.pgpass). Only to go back to the SQLite "
        f"catalog for good, delete {marker}: that file knows nothing recorded in PostgreSQL since (a takedown "
        f"recorded there would be undone)")


def check_openable(path: Path) -> None:
    if path.exists() and path.stat().st_size == 0:
        raise CatalogError(f"{path}: the catalog is an empty (0-byte) file, not a new catalog (truncated, or "
                           f"a failed copy?): restore it from a backup, or delete it to start over (everything "
                           f"is then downloaded again)")


def create_whole(path: Path) -> None:
    """Make a new catalog appear at `path` whole: its schema is written to a file beside it, then
    hard-linked into place. sqlite3.connect makes the file empty first and writes later, and a second
    process starting at that moment took the 0-byte file for a truncated catalog (check_openable). A
    process that loses the race uses the winner's file; a filesystem without hard links keeps the old
    way (connect creates the file)."""
    new = path.with_name(f".{path.name}.new-{os.getpid()}-{time.monotonic_ns()}")
    try:
        db = sqlite3.connect(new, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")       # kept in the file's header
            db.executescript(SCHEMA)
            add_columns(db)
        finally:
            db.close()
        os.link(new, path)
    except FileExistsError:
        pass                                # another process created it first: that is the catalog
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise CatalogError(f"{path}: cannot create the catalog ({exc.strerror or exc})") from None
        log.debug("%s: no hard links here (%s): the catalog is created in place", path.parent, exc.strerror)
    finally:
        for leftover in (new, new.with_name(new.name + "-wal"), new.with_name(new.name + "-shm")):
            leftover.unlink(missing_ok=True)


def open_writable(path: Path, lock_timeout_s: float, moved_ok: bool = False) -> sqlite3.Connection:
    check_openable(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CatalogError(f"{folder}: cannot create the data folder ({exc.strerror}); check data_dir") from None
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CatalogError(f"{path}: the catalog (or its folder) is read-only; this command writes to it. "
                           f"Read-only commands (`mlc inspect`) work; make {folder} writable to run this one")
    try:
        if not path.exists():
            create_whole(path)
        db = sqlite3.connect(path, timeout=LOCK_NOTICE_S, isolation_level=None, check_same_thread=False,
                             factory=Connection)
        db.path, db.moved_ok = path, moved_ok
        db.row_factory = sqlite3.Row
        check_readable(db)
        wait_for_writer(db, path, lock_timeout_s)
        db.execute(f"PRAGMA busy_timeout={int(lock_timeout_s * 1000)}")   # later writes wait as long
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable at checkpoints, never corrupt
        try:
            refuse_newer(db, str(path), has_table(db, "meta"))     # a newer catalog: refused before any write
        except CatalogError:
            db.close()
            raise
        db.executescript(SCHEMA)
        add_columns(db)
    except sqlite3.DatabaseError as exc:
        raise unusable(path, exc) from None
    return db


def add_columns(db: sqlite3.Connection) -> None:
    """The columns added since a catalog was created, and its schema version if it has none, in one
    write transaction: two processes opening an older catalog at once both added a column, and the
    second failed ("duplicate column")."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for table, column, kind in ADDED_COLUMNS:
            if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        db.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO NOTHING",
                   (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")


def open_empty() -> sqlite3.Connection:
    """An empty catalog in memory: what a read-only open of a catalog not created yet reads."""
    db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    db.executescript(SCHEMA)
    db.row_factory = sqlite3.Row
    return db


def open_readonly(path: Path) -> sqlite3.Connection:
    check_openable(path)
    if not path.exists():     # nothing collected yet: an empty catalog, and no file written
        return open_empty()
    where = quote(str(path.resolve()))
    try:
        db = sqlite3.connect(f"file:{where}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        check_readable(db)
    except sqlite3.OperationalError as exc:
        if os.access(path.parent, os.W_OK):
            raise unusable(path, exc) from None
        # A read-only folder: SQLite cannot create the WAL index beside the file, so read it
        # as an unchanging file (no writer can be at work on a read-only data root).
        try:
            db = sqlite3.connect(f"file:{where}?immutable=1", uri=True, isolation_level=None,
                                 check_same_thread=False)
            check_readable(db)
        except sqlite3.DatabaseError as exc:
            raise unusable(path, exc) from None
    except sqlite3.DatabaseError as exc:
        raise unusable(path, exc) from None
    db.execute("PRAGMA query_only=1")
    db.row_factory = sqlite3.Row
    return db


def check_readable(db: sqlite3.Connection) -> None:
    """Fail now, naming the file, on something that is not an intact SQLite catalog."""
    bad = db.execute("PRAGMA quick_check(1)").fetchone()[0]
    if bad != "ok":
        raise sqlite3.DatabaseError(f"quick_check: {bad}")


def held_by_another(exc: sqlite3.OperationalError) -> bool:
    """SQLite's answer when another connection holds the write lock past the busy timeout."""
    return "locked" in str(exc) or "busy" in str(exc)


def wait_for_writer(db: sqlite3.Connection, path: Path, lock_timeout_s: float) -> None:
    """Take and release the write lock once, so a second writer is told whom it waits for."""
    deadline = time.monotonic() + lock_timeout_s
    told = False
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            if told:
                log.warning("%s: the other writer is done; going on", path)
            return
        except sqlite3.OperationalError as exc:
            if not held_by_another(exc):
                raise
        holders = running_runs(db)
        if time.monotonic() >= deadline:
            raise sqlite3.OperationalError(f"still locked by another process after {lock_timeout_s:g} s "
                                           f"({holders}): wait for it to finish or stop it, then rerun")
        if not told:
            log.warning("%s: locked by another process (%s); waiting up to %g s", path, holders, lock_timeout_s)
            told = True


def running_runs(db) -> str:
    for columns in (runs.COLUMNS, "run_id, command, started_at"):   # a catalog from before runs named their process
        try:
            rows = db.execute(f"SELECT {columns} FROM runs WHERE status='running' ORDER BY started_at").fetchall()
        except sqlite3.DatabaseError:      # no runs table yet, or locked even for readers
            continue
        return runs.describe(rows, "no live run recorded as running: another program holding the file")
    return "no run recorded as running"


def unusable(path: Path, exc: BaseException) -> CatalogError:
    text = str(exc)
    if "locked" in text:
        return CatalogBusy(f"{path}: {text}")
    if "readonly" in text or "read-only" in text:
        return CatalogError(f"{path}: the catalog is read-only ({text}); make the data root writable")
    if "unable to open" in text:
        return CatalogError(f"{path}: cannot open the catalog ({text}); check the file's permissions")
    return CatalogError(f"{path}: not a readable catalog ({text}): the file is damaged or not an mlc "
                        f"catalog. Restore it from a backup (it is never replaced by a new one); to start "
                        f"over instead, move it aside and rerun")


def begin(db: sqlite3.Connection) -> None:
    try:
        db.execute("BEGIN IMMEDIATE")      # the write lock now, not at the first write: no upgrade deadlock
    except sqlite3.OperationalError as exc:
        if not held_by_another(exc):
            raise
        waited = db.execute("PRAGMA busy_timeout").fetchone()[0] / 1000
        raise CatalogBusy(f"still locked by another writer after {waited:g} s ({running_runs(db)}): wait for "
                          f"it to finish or stop it, then rerun") from None
    # Under the write lock, so also on a connection opened before the move (a running `mlc review`): the
    # migration writes the marker before it lets go of this lock, so a write after its copy is refused
    # here (the caller rolls back), never committed to a file that PostgreSQL no longer follows.
    if isinstance(db, Connection) and not db.moved_ok:
        refuse_moved(db.path)


def set_lock_timeout(db: sqlite3.Connection, seconds: float) -> None:
    db.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")


def json_list_has(column: str) -> str:
    """SQL that is true when the JSON list in `column` holds the parameter's value."""
    return f"EXISTS (SELECT 1 FROM json_each({column}) WHERE value=?)"


begin_atomic = begin


def pipeline(db: sqlite3.Connection):
    return contextlib.nullcontext()     # in-process: nothing to batch


def has_table(db: sqlite3.Connection, name: str) -> bool:
    """A table or an index of that name (one namespace in SQLite, as a relation's in PostgreSQL)."""
    return db.execute("SELECT 1 FROM sqlite_master WHERE type IN ('table', 'index') AND name=?",
                      (name,)).fetchone() is not None


def snapshot(db: sqlite3.Connection, dest: str | Path) -> None:
    """A consistent copy of the open catalog `db` into the file `dest` (SQLite's online backup)."""
    out = sqlite3.connect(dest)
    try:
        db.backup(out)
    finally:
        out.close()
