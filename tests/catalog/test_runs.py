"""A run whose process died without recording its end (kill -9, a lost PostgreSQL connection) stayed
`running` for good: `mlc inspect` listed it as running and the lock-wait line named it as the holder
long after. Each run now records its process; one known gone on this machine is shown and recorded as
`crashed`, and runs of other machines are never declared over from here. With real killed processes,
on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlc_pipeline.catalog import Catalog, PostgresCatalog
from mlc_pipeline.catalog import runs
from mlc_pipeline.report.inspect import catalog_summary, format_catalog_summary

STARTS_A_RUN = """
import sys
from mlc_pipeline.catalog import Catalog, PostgresCatalog
where = PostgresCatalog(sys.argv[1], sys.argv[2]) if sys.argv[1].startswith("postgresql") else sys.argv[1]
c = Catalog(where)
backend = c.db.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"] if c.dialect == "postgresql" else 0
print(c.start_run("collect"), backend, flush=True)
sys.stdin.readline()            # until told; then a query (after a lost connection: an error, exit 1)
c.candidates()
"""

HOLDS_THE_SQLITE_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request, tmp_path):
    if request.param == "sqlite":
        return tmp_path / "catalog.sqlite"
    return PostgresCatalog(request.getfixturevalue("pg_url"), tmp_path)


def start_run(where) -> tuple[subprocess.Popen, str, int]:
    """A process that records a run and waits: (the process, its run id, its PostgreSQL backend pid)."""
    args = [str(where.url), str(where.root)] if isinstance(where, PostgresCatalog) else [str(where)]
    proc = subprocess.Popen([sys.executable, "-c", STARTS_A_RUN, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert len(line) == 2, proc.stderr.read()
    return proc, line[0], int(line[1])


def recorded(where, run_id: str) -> dict:
    """The run's row as stored (not as a reader shows it)."""
    with Catalog(where, readonly=True) as c:
        return dict(c.db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone())


def test_a_run_killed_with_sigkill_is_shown_then_recorded_as_crashed(where):
    Catalog(where).close()
    killed, dead_run, _ = start_run(where)
    live, live_run, _ = start_run(where)
    try:
        killed.kill()
        killed.wait(timeout=30)
        with Catalog(where, readonly=True) as c:        # `mlc inspect`: never writes, shows it ended
            shown = {r["run_id"]: r["status"] for r in c.runs()}
            text = format_catalog_summary(catalog_summary(c))
        assert shown == {dead_run: "crashed", live_run: "running"}
        assert f"{dead_run} collect  crashed" in text
        assert f"{live_run} collect  running (pid {live.pid})" in text
        assert recorded(where, dead_run)["status"] == "running"
        Catalog(where).close()                          # the next writer records it
        row = recorded(where, dead_run)
        assert row["status"] == "crashed" and row["finished_at"] and str(killed.pid) in row["summary"]
        assert recorded(where, live_run)["status"] == "running"     # a live process is never declared over
    finally:
        live.kill()
        live.wait(timeout=30)


def test_the_lock_wait_line_no_longer_names_a_dead_run_as_the_holder(tmp_path, caplog):
    """The audit's case: long after a kill -9, another program held the SQLite file and the line said
    "runs recorded as running: collect <the dead run>"."""
    db = tmp_path / "catalog.sqlite"
    Catalog(db).close()
    killed, dead_run, _ = start_run(db)
    killed.kill()
    killed.wait(timeout=30)
    holder = subprocess.Popen([sys.executable, "-c", HOLDS_THE_SQLITE_LOCK, str(db), "3"], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "holding"
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline.catalog"):
        Catalog(db, lock_timeout_s=30).close()
    holder.wait(timeout=30)
    line, = [r.getMessage() for r in caplog.records if "locked by another process" in r.getMessage()]
    assert "runs recorded as running" not in line and "no live run recorded as running" in line, line
    assert f"runs whose process is gone (killed): collect {dead_run}" in line, line
    assert recorded(db, dead_run)["status"] == "crashed"


def test_postgres_a_run_whose_connection_was_lost_ends_as_crashed(pg_url, tmp_path, caplog):
    """The server dropped the run's connection: it could not record its end, and exited (one line)."""
    import psycopg
    where = PostgresCatalog(pg_url, tmp_path)
    Catalog(where).close()
    proc, run_id, backend = start_run(where)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        _, err = proc.communicate("go\n", timeout=60)
        assert proc.returncode == 1 and "lost the connection to the catalog" in err, err
        assert recorded(where, run_id)["status"] == "running"
        admin.execute("BEGIN")          # another writer holds the catalog's writer lock for a while
        admin.execute("SELECT pg_advisory_xact_lock(%s)", (0x6D6C632D636174,))
        timer = threading.Timer(3, admin.execute, ("ROLLBACK",))
        timer.start()
        with caplog.at_level(logging.WARNING, logger="mlc_pipeline.catalog"):
            Catalog(where, lock_timeout_s=30).close()
        timer.join()
    line, = [r.getMessage() for r in caplog.records if "another writer is in a transaction" in r.getMessage()]
    assert f"runs whose process is gone (killed): collect {run_id}" in line and "runs recorded as running" not in line
    assert recorded(where, run_id)["status"] == "crashed"


def test_postgres_the_lock_wait_line_never_names_the_waiters_own_run(pg_url, tmp_path, caplog):
    """The scale26 audit (finding 5): two curates at once on one PostgreSQL catalog, and the waiting
    one's line named as "another writer" only its own run. Its own runs are left out; another live
    process's run is named."""
    import psycopg
    where = PostgresCatalog(pg_url, tmp_path)
    with Catalog(where, lock_timeout_s=30) as waiter:
        own_run = waiter.start_run("curate")
        other, other_run, _ = start_run(where)
        try:
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute("BEGIN")          # another writer holds the catalog's writer lock for a while
                admin.execute("SELECT pg_advisory_xact_lock(%s)", (0x6D6C632D636174,))
                timer = threading.Timer(3, admin.execute, ("ROLLBACK",))
                timer.start()
                with caplog.at_level(logging.WARNING, logger="mlc_pipeline.catalog"):
                    waiter.save_licenses({1: ("CC BY", "https://creativecommons.org/licenses/by/2.0/")})
                timer.join()
        finally:
            other.kill()
            other.wait(timeout=30)
    line, = [r.getMessage() for r in caplog.records if "another writer is in a transaction" in r.getMessage()]
    assert own_run not in line, line
    assert f"runs recorded as running: collect {other_run} (pid {other.pid})" in line, line


def insert_run(where, run_id: str, host: str, pid: int, process: str) -> None:
    with Catalog(where) as c:
        c.db.execute("INSERT INTO runs (run_id, command, started_at, status, host, pid, process) "
                     "VALUES (?, 'collect', ?, 'running', ?, ?, ?)", (run_id, time.time() - 3600, host, pid, process))


def test_only_what_this_machine_can_know_is_declared_over(where):
    """Another host's run (a shared PostgreSQL catalog, an object store's catalog) stays running, shown
    as on that host; a pid now another process's (reused), or a boot since, is over."""
    machine, boot, namespace = runs.kernel()
    if not boot:
        pytest.skip("no /proc: the pid alone is checked")
    here = socket.gethostname()
    insert_run(where, "elsewhere", "another-host", os.getpid(), "/".join((machine, boot, namespace, "1")))
    insert_run(where, "reused-pid", here, os.getpid(), "/".join((machine, boot, namespace, "1")))
    insert_run(where, "other-namespace", here, 1, "/".join((machine, boot, "pid:[1]", "1")))
    insert_run(where, "old-version", here, None, None)
    if machine:
        insert_run(where, "before-reboot", here, os.getpid(), "/".join((machine, "an-earlier-boot", namespace, "1")))
    Catalog(where).close()
    with Catalog(where, readonly=True) as c:
        status = {r["run_id"]: r["status"] for r in c.runs()}
        text = format_catalog_summary(catalog_summary(c))
    assert status.pop("reused-pid") == "crashed" and status.pop("before-reboot", "crashed") == "crashed"
    assert status == {"elsewhere": "running", "other-namespace": "running", "old-version": "running"}
    assert "elsewhere collect  running (on another-host since " in text and "not checked from here" in text


def test_a_catalog_from_before_runs_named_their_process_still_opens_and_names_its_runs(tmp_path, caplog):
    import sqlite3
    db = tmp_path / "catalog.sqlite"
    with sqlite3.connect(db) as old:
        old.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, command TEXT NOT NULL, started_at REAL NOT NULL, "
                    "finished_at REAL, status TEXT NOT NULL, summary TEXT)")
        old.execute("INSERT INTO runs VALUES ('r1', 'curate', 0, NULL, 'running', NULL)")
    holder = subprocess.Popen([sys.executable, "-c", HOLDS_THE_SQLITE_LOCK, str(db), "3"], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "holding"
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline.catalog"):
        with Catalog(db, lock_timeout_s=30) as c:
            assert [(r["run_id"], r["status"]) for r in c.runs()] == [("r1", "running")]
    holder.wait(timeout=30)
    assert "runs recorded as running: curate r1" in caplog.text


def test_this_process_is_recorded_with_its_run(tmp_path):
    with Catalog(tmp_path / "catalog.sqlite") as c:
        run_id = c.start_run("curate")
        row = dict(c.db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone())
    assert (row["host"], row["pid"]) == (socket.gethostname(), os.getpid())
    assert row["process"] == runs.process_token(os.getpid()) and not runs.gone(row)
    assert Path(f"/proc/{os.getpid()}").exists() == bool(row["process"].split("/")[3])


def test_a_run_records_no_raw_machine_or_boot_id(where):
    # machine-id(5): the id "should be considered confidential" and not leave the machine, and a
    # catalog travels (object store, PostgreSQL, `mlc inspect --json`): only a hash of it is kept.
    machine_id = runs.read("/etc/machine-id")
    boot_id = runs.read("/proc/sys/kernel/random/boot_id")
    if not (machine_id or boot_id):
        pytest.skip("no machine or boot id here")
    with Catalog(where) as c:
        run_id = c.start_run("collect")
        c.finish_run(run_id, "completed", {})
        rows = [dict(r) for r in c.runs()]
    text = json.dumps(rows, default=str)
    assert run_id in text
    for raw in (machine_id, boot_id):
        assert not raw or raw not in text


def test_a_ctrl_c_raised_right_after_the_run_is_recorded_ends_it_as_interrupted(tmp_path):
    """Python raises a signal that arrives during a C call (the INSERT) right after it returns, before
    the caller holds the run id its `except` ends the run with: 1 in ~30 early Ctrl-Cs of `mlc collect`
    left the run `running`, then `crashed` (the interrupt22 audit). Here the INSERT is followed by the
    KeyboardInterrupt, as that signal is."""
    with Catalog(tmp_path / "catalog.sqlite") as catalog:
        real = catalog.db

        class InterruptedAfterInsert:
            def __getattr__(self, name):
                return getattr(real, name)

            def execute(self, sql, *args):
                result = real.execute(sql, *args)
                if sql.startswith("INSERT INTO runs"):
                    raise KeyboardInterrupt
                return result
        catalog.db = InterruptedAfterInsert()
        with pytest.raises(KeyboardInterrupt):
            catalog.start_run("collect")
        catalog.db = real
        (run,) = catalog.runs()
    assert run["command"] == "collect" and run["status"] == "interrupted", run


def test_a_run_starts_when_no_room_can_be_kept_for_its_end_record(tmp_path, caplog):
    """runs.reserve_end keeps 2 KiB beside a SQLite catalog for a run's end when the disk fills; a
    folder that cannot take it (here `runs` is a file) must not stop the command: said, and the run
    is recorded as ever."""
    (tmp_path / "runs").write_text("not a folder")
    with Catalog(tmp_path / "catalog.sqlite") as c:
        run_id = c.start_run("collect")
        c.finish_run(run_id, "completed", {"downloaded": 1})
        assert c.runs()[0]["status"] == "completed"
    assert "no room kept for run" in caplog.text and (tmp_path / "runs").read_text() == "not a folder"
    assert runs.left_end(tmp_path / "runs", run_id) is None     # a killed run's next writer: no end left


def test_an_end_record_of_another_shape_is_no_end_and_breaks_no_command(tmp_path, caplog):
    """runs.left_end: JSON that is not [status, summary] (a file edited by hand, another tool's) made
    every writer's catalog open fail (the review of 2026-12-07); it is said and the run is crashed."""
    ends = tmp_path / "runs"
    ends.mkdir()
    for text in ("{}", "[]", '["failed"]', "[1, 2]", "not json"):
        (ends / "r.end").write_text(text)
        assert runs.left_end(ends, "r") is None, text
    assert caplog.text.count("not a run's end record") == 5
    (ends / "r.end").write_text('["failed", "{\\"error\\": \\"disk full\\"}"]' + " " * 100)
    assert runs.left_end(ends, "r") == ("failed", '{"error": "disk full"}')
