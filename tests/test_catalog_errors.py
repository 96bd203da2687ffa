"""A catalog that is empty, damaged, read-only or locked: one line naming the file, never a new catalog."""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ENV, MLC, needs_namespaces, write_config

from mlc_pipeline.catalog import Catalog, CatalogError


def mlc(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(MLC + list(args), env=ENV, capture_output=True, text=True, timeout=timeout)


def one_line_error(res: subprocess.CompletedProcess, *words: str) -> str:
    assert res.returncode == 1, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    """A small collected data root, copied by the tests that damage it."""
    tmp = tmp_path_factory.mktemp("collected")
    cfg = write_config(tmp, count=5)
    res = mlc("collect", "-c", str(cfg), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    return cfg


def test_empty_catalog_is_never_a_new_catalog(tmp_path):
    cfg = write_config(tmp_path, count=5)
    db = tmp_path / "data" / "catalog.sqlite"
    db.parent.mkdir()
    db.write_bytes(b"")
    for command in (["collect", "-c", str(cfg), "--no-progress"], ["inspect", "-c", str(cfg)]):
        one_line_error(mlc(*command), str(db), "empty (0-byte)", "restore it from a backup")
    assert db.stat().st_size == 0, "the file was left as it was"
    assert not (tmp_path / "data" / "raw").exists(), "nothing was downloaded again"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_catalog_is_one_line_naming_the_file(tmp_path, collected, damage):
    db = collected.parent / "data" / "catalog.sqlite"
    data = db.read_bytes()
    bad = tmp_path / "data" / "catalog.sqlite"
    bad.parent.mkdir()
    bad.write_bytes(os.urandom(len(data)) if damage == "garbage" else data[: len(data) // 2])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(collected.read_text().replace(str(collected.parent / "data"), str(tmp_path / "data")))
    before = bad.read_bytes()
    for command in (["inspect", "-c", str(cfg)], ["curate", "-c", str(cfg)]):
        one_line_error(mlc(*command), str(bad), "not a readable catalog", "backup")
    assert bad.read_bytes() == before


def test_inspect_never_creates_a_catalog(tmp_path):
    """A wrong data_dir is not an empty project: inspect says there is no catalog there (issue 17)."""
    cfg = write_config(tmp_path, count=5)
    res = mlc("inspect", "-c", str(cfg))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "no catalog at" in lines[0] and str(tmp_path / "data" / "catalog.sqlite") in lines[0], lines[0]
    assert not (tmp_path / "data").exists(), "inspect created nothing"


@needs_namespaces
def test_read_only_data_root(collected):
    data = collected.parent / "data"
    ro = f"mount --bind {data} {data}; mount -o remount,bind,ro {data}"
    def run(*args):
        return subprocess.run(["unshare", "-rm", "sh", "-c", f"set -e; {ro}; exec \"$@\"", "sh", *MLC, *args],
                              env=ENV, capture_output=True, text=True, timeout=120)
    res = run("inspect", "-c", str(collected))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "balloon" in res.stdout and "downloaded" in res.stdout
    one_line_error(run("collect", "-c", str(collected), "--no-progress"), str(data / "catalog.sqlite"),
                   "read-only", "mlc inspect")


HOLD = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO runs (run_id, command, started_at, status) VALUES ('holder-run', 'collect', 0, 'running')")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


def hold_lock(db: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_locked_catalog_says_what_it_waits_for_then_goes_on(tmp_path, caplog):
    db = tmp_path / "catalog.sqlite"
    with Catalog(db) as c:
        c.start_run("curate")         # recorded as running: named in the message
    holder = hold_lock(db, 4)
    t0 = time.monotonic()
    with Catalog(db, readonly=True) as c:
        assert c.runs(), "a reader does not wait for the writer"
    assert time.monotonic() - t0 < 1
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline.catalog"):
        with Catalog(db, lock_timeout_s=30) as c:
            c.start_run("collect")
    took = time.monotonic() - t0
    holder.wait()
    assert 3 <= took < 10, took
    waiting = [r.getMessage() for r in caplog.records if "locked by another process" in r.getMessage()]
    assert len(waiting) == 1 and str(db) in waiting[0] and "curate" in waiting[0], caplog.text


def test_locked_catalog_gives_up_with_one_clear_error(tmp_path):
    db = tmp_path / "catalog.sqlite"
    Catalog(db).close()
    holder = hold_lock(db, 15)
    try:
        t0 = time.monotonic()
        with pytest.raises(CatalogError) as err:
            Catalog(db, lock_timeout_s=3)
        assert time.monotonic() - t0 < 8
    finally:
        holder.kill()
        holder.wait()
    assert str(db) in str(err.value) and "still locked" in str(err.value) and "\n" not in str(err.value)


def test_a_signal_just_after_begin_leaves_no_transaction_open(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM raised just after BEGIN returns (the eval loop checks for signals right after
    the call, before `_begun` entered its try): the transaction is rolled back, and the connection's
    later writes commit. Before, it stayed open and took every later write with it, uncommitted at
    exit (suspected in a clean-clone CI run's SIGTERM-during-collect failure)."""
    from mlc_pipeline.catalog import sqlite as backend
    c = Catalog(tmp_path / "catalog.sqlite")
    real_begin = backend.begin

    def begin_then_signal(db):
        real_begin(db)
        raise KeyboardInterrupt

    monkeypatch.setattr(backend, "begin", begin_then_signal)
    with pytest.raises(KeyboardInterrupt):
        with c.transaction():
            pass
    monkeypatch.setattr(backend, "begin", real_begin)
    assert not c.db.in_transaction
    run = c.start_run("kept")                      # a later write, outside any transaction
    c.close()
    with Catalog(tmp_path / "catalog.sqlite", readonly=True) as again:
        assert [r["run_id"] for r in again.runs()] == [run]
