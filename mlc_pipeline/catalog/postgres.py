"""The PostgreSQL catalog: a connection that speaks the SQLite-style SQL of `store.py`.

The catalog's statements are written once, with `?` placeholders; `to_pyformat` turns them into
psycopg's. Statements outside a transaction commit on their own (autocommit), as in SQLite. Where
SQLite relied on its single writer (`BEGIN IMMEDIATE`), a transaction here takes one advisory lock
per database first, so read-then-write blocks such as `upsert_found` and curation's decisions stay
serial across processes and machines; single statements, and readers, never wait for it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Iterator

from ..secrets import redact, remember
from . import runs
from mlc_pipeline.catalog_address import PostgresCatalog
from .schema import (ADDED_COLUMNS, FULL_ADVICE, LOCK_NOTICE_S, SCHEMA_VERSION, CatalogBusy, CatalogError,
                     CatalogFull, CatalogLost, creates, postgres_schema, refuse_newer)

log = logging.getLogger(__name__)
DIALECT = "postgresql"
FOR_UPDATE = " FOR UPDATE"     # a row lock until the transaction ends
LOST_SQLSTATES = ("57P01", "57P02", "57P03")   # admin_shutdown, crash_shutdown, cannot_connect_now
# Class 53, insufficient resources, as the server reports it during a command: what it lacks, and what
# to do, in one line (53300, no connection slot, only comes at connect: `connect` says it in one line).
SHORT_OF = {"53100": ("the PostgreSQL server's disk is full", "free space on the server's disk"),
            "53200": ("the PostgreSQL server is out of memory", "give the server memory or wait for other work")}
WRITER_LOCK = 0x6D6C632D636174     # pg_advisory_xact_lock key of the catalog's writer lock ("mlc-cat")


@functools.lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """`?` placeholders become `%s`; a literal `%` (LIKE 'held:%') becomes `%%`. A `?` inside a
    quoted string stays as it is."""
    out, quoted = [], False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        out.append("%%" if ch == "%" else "%s" if ch == "?" and not quoted else ch)
    return "".join(out)


class PgConnection:
    """The part of sqlite3.Connection's interface the catalog uses, on a psycopg connection."""

    def __init__(self, conn, target: PostgresCatalog, lock_timeout_s: float):
        self.conn, self.target, self.lock_timeout_s = conn, target, lock_timeout_s

    def execute(self, sql: str, params=()):
        with self.errors():
            return self.conn.execute(to_pyformat(sql), tuple(params))

    def executemany(self, sql: str, rows) -> None:
        with self.errors(), self.conn.cursor() as cur:
            cur.executemany(to_pyformat(sql), list(rows))

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """A lost connection, a lock held too long, a deadlock: one line (CatalogError), not a traceback."""
        import psycopg
        try:
            yield
        except psycopg.errors.LockNotAvailable:
            raise CatalogBusy(f"{self.target}: still locked by another writer after {self.lock_timeout_s:g} s: "
                              f"wait for it to finish or stop it, then rerun") from None
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:    # the one failed
            why = str(exc).splitlines()[0]
            raise CatalogBusy(redact(f"{self.target}: the server rolled this transaction back ({why}) to let "
                                     f"another writer's go on; what was committed is kept: rerun the same "
                                     f"command to resume")) from None
        except psycopg.OperationalError as exc:
            if exc.sqlstate in SHORT_OF:
                raise short_of(self.target, exc) from None
            # The server may say so (class 08, or 57P01-03: terminated, crashed, shutting down) before
            # the client has noticed the socket is gone (conn.broken).
            lost = (exc.sqlstate or "").startswith("08") or exc.sqlstate in LOST_SQLSTATES
            if not (lost or self.conn.broken or self.conn.closed):
                raise
            why = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise CatalogLost(redact(f"{self.target}: lost the connection to the catalog ({why}); what was "
                                      f"committed is kept: rerun the same command to resume")) from None

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus
        return self.conn.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self.conn.close()


def short_of(target: PostgresCatalog, exc) -> CatalogError:
    """The server's disk full (SQLSTATE 53100; `CatalogFull`) or its memory used up (53200): one line, as
    SQLite's full disk, with the server's own words (they name the file)."""
    why = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    what, remedy = SHORT_OF[exc.sqlstate]
    kind = CatalogFull if exc.sqlstate == "53100" else CatalogError
    return kind(redact(f"cannot write to the catalog {target}: {what} (SQLSTATE {exc.sqlstate}: {why}); {remedy}, "
                       f"{FULL_ADVICE}"))


def connect(target: PostgresCatalog, readonly: bool, lock_timeout_s: float) -> PgConnection:
    try:
        import psycopg
        from psycopg.rows import dict_row
    except ImportError:
        raise CatalogError(f"catalog {target}: PostgreSQL needs psycopg 3: pip install 'psycopg[binary]' "
                           f"(or mlc-pipeline[postgres])") from None
    remember(os.environ.get("PGPASSWORD", ""))       # masked should any message ever carry it
    try:
        conn = psycopg.connect(target.url, autocommit=True, row_factory=dict_row,
                               connect_timeout=int(os.environ.get("PGCONNECT_TIMEOUT", "10")),
                               application_name="mlc-pipeline")
    except psycopg.Error as exc:
        why = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise CatalogError(redact(f"catalog {target}: cannot connect ({why}). Check catalog.url, that the "
                                  f"server runs, and the password in PGPASSWORD or ~/.pgpass")) from None
    db = PgConnection(conn, target, lock_timeout_s)
    if readonly:
        conn.execute("SET default_transaction_read_only = on")
        return db
    conn.execute(f"SET lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
    begin(db)                     # two first opens at once: one creates the tables, the other waits
    try:
        refuse_newer(db, str(target), has_table(db, "meta"))     # a newer catalog: refused before any write
        # Schema statements only where something is missing: even IF NOT EXISTS locks the table
        # (ALTER TABLE exclusively), and would wait on every reader and writer of it.
        for name, statement in creates(postgres_schema()):
            if not has_table(db, name):
                conn.execute(statement)
        for table, column, kind in missing_columns(db, ADDED_COLUMNS):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
        db.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO NOTHING",
                   (str(SCHEMA_VERSION),))
    except BaseException as exc:
        conn.execute("ROLLBACK")
        if isinstance(exc, CatalogError):       # refused (a newer catalog): nothing more on this connection
            conn.close()
        raise
    conn.execute("COMMIT")
    return db


def missing_columns(db: PgConnection, columns) -> list[tuple[str, str, str]]:
    """The (table, column, type) of `columns` the database lacks (read from pg_attribute: no table lock)."""
    return [(table, column, kind) for table, column, kind in columns
            if not db.execute("SELECT 1 FROM pg_attribute WHERE attrelid=to_regclass(?) AND attname=? AND "
                              "NOT attisdropped", (table, column)).fetchone()]


def has_schema(db: PgConnection) -> bool:
    return db.execute("SELECT to_regclass('candidates') IS NOT NULL AS present").fetchone()["present"]


def begin(db: PgConnection) -> None:
    """BEGIN, then the catalog's writer lock: wait for another writer's transaction, said (whom for)
    once the wait lasts LOCK_NOTICE_S, as SQLite's is. Two machines on one catalog wait for each other
    often and for milliseconds: a line for each wait was 10-15 identical WARNINGs a command (beyond28)."""
    db.execute("BEGIN")
    if db.execute("SELECT pg_try_advisory_xact_lock(?) AS got", (WRITER_LOCK,)).fetchone()["got"]:
        return
    notice = min(LOCK_NOTICE_S, db.lock_timeout_s)
    try:
        wait_for_lock(db, notice)       # this transaction holds nothing yet: a silent wait, and done
        return
    except CatalogBusy:
        db.execute("ROLLBACK")
        if notice >= db.lock_timeout_s:
            raise
    # Whom we wait for is read outside the transaction: a table read in it stays locked while we wait,
    # and a holder changing that table's schema would wait on us (a deadlock the server breaks by failing one).
    log.warning("%s: another writer is in a transaction (%s); waiting up to %g s", db.target,
                running_runs(db), db.lock_timeout_s)
    db.execute("BEGIN")
    try:
        wait_for_lock(db, db.lock_timeout_s - notice)
    except CatalogError:
        db.execute("ROLLBACK")
        raise
    log.warning("%s: the other writer is done; going on", db.target)


def wait_for_lock(db: PgConnection, seconds: float) -> None:
    """The writer lock in this transaction, waited for `seconds` at most (then CatalogBusy, which names
    lock_timeout_s); the transaction's later statements wait lock_timeout_s again."""
    db.execute(f"SET LOCAL lock_timeout = '{max(1, int(seconds * 1000))}ms'")
    db.execute("SELECT pg_advisory_xact_lock(?)", (WRITER_LOCK,))
    db.execute(f"SET LOCAL lock_timeout = '{int(db.lock_timeout_s * 1000)}ms'")


def running_runs(db: PgConnection) -> str:
    if not db.execute("SELECT to_regclass('runs') IS NOT NULL AS present").fetchone()["present"]:
        return "creating the catalog's tables"      # an error here would abort the waiting transaction
    named = db.execute("SELECT 1 FROM pg_attribute WHERE attrelid=to_regclass('runs') AND attname='process' "
                       "AND NOT attisdropped").fetchone()     # not before runs named their process
    rows = db.execute(f"SELECT {runs.COLUMNS if named else 'run_id, command, started_at'} FROM runs "
                      "WHERE status='running' ORDER BY started_at").fetchall()
    # The waiting process's own runs are not the other writer (the scale26 audit: two curates at once,
    # and the waiting one named only itself).
    return runs.describe(rows, "no live run recorded as running", leave_out=runs.RUNS_OF_THIS_PROCESS)


def json_list_has(column: str) -> str:
    """SQL that is true when the JSON list in `column` holds the parameter's value."""
    return f"EXISTS (SELECT 1 FROM jsonb_array_elements_text({column}::jsonb) AS q(value) WHERE q.value=?)"


def reset_identities(db: PgConnection, tables) -> None:
    """After rows were inserted with their ids (a copy), new ids continue after the largest one."""
    for table in tables:
        db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                   f"GREATEST((SELECT MAX(id) FROM {table}), 1), (SELECT MAX(id) IS NOT NULL FROM {table}))")


def set_lock_timeout(db: PgConnection, seconds: float) -> None:
    db.lock_timeout_s = seconds
    db.execute(f"SET lock_timeout = '{int(seconds * 1000)}ms'")


def begin_atomic(db: PgConnection) -> None:
    """A transaction for statements that belong together, without the writer lock: row locks suffice."""
    db.execute("BEGIN")


@contextlib.contextmanager
def pipeline(db: PgConnection) -> Iterator[None]:
    """Statements sent without waiting for each answer (libpq pipeline mode); errors surface at the end,
    where a lost connection is said in one line as anywhere else (`errors`), not in psycopg's words.
    A statement that failed there skips the rest, the COMMIT queued with them too: the transaction it
    left aborted is rolled back, or every later statement would fail with InFailedSqlTransaction, the
    run's end record included (collect28: a full disk said so instead of its own line)."""
    from psycopg.pq import TransactionStatus
    with db.errors():
        try:
            with db.conn.pipeline():
                yield
        except BaseException:
            if not db.conn.closed and db.conn.info.transaction_status == TransactionStatus.INERROR:
                db.conn.execute("ROLLBACK")
            raise


class PipelineNoise(logging.Filter):
    """psycopg logs a warning when a pipeline cannot be closed on a connection already lost; the loss
    itself is said in one line (`PgConnection.errors`), so this second, raw line is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("error ignored terminating")


logging.getLogger("psycopg").addFilter(PipelineNoise())


def has_table(db: PgConnection, name: str) -> bool:
    return db.execute("SELECT to_regclass(?) IS NOT NULL AS present", (name,)).fetchone()["present"]
