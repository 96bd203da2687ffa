"""A PostgreSQL server whose disk is full (SQLSTATE 53100) is one line, as SQLite's full disk is
(collect28; the collect27 audit's D3 fixed it for SQLite only). A real server, the session's (tests/
pgserver.py), made to run out of disk for real: the test database's tables live in a tablespace on a
small tmpfs mounted for the test. Mounting one where the server sees it needs root (the server runs in
this mount namespace), so the test is skipped otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid

import pytest
import yaml

from helpers import ENV, MLC, write_config

from mlc_pipeline.catalog import Catalog, CatalogFull, PostgresCatalog


@contextlib.contextmanager
def small_tablespace(server, size: str):
    """A database whose tables live on a tmpfs of `size`: (its url, the tablespace's folder)."""
    import psycopg
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs the PostgreSQL server sees needs root")
    folder = server.dir / f"small-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    name = folder.name.replace("-", "_")
    try:
        if server.as_root:
            shutil.chown(folder, "mlc-pg")
        with psycopg.connect(server.url(), password=server.password, autocommit=True) as admin:
            admin.execute(f"CREATE TABLESPACE {name} LOCATION '{folder}'")
            admin.execute(f"CREATE DATABASE {name}")
            admin.execute(f"ALTER DATABASE {name} SET default_tablespace = {name}")
        yield server.url(name), folder
    finally:
        with psycopg.connect(server.url(), password=server.password, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"DROP TABLESPACE IF EXISTS {name}")
        subprocess.run(["umount", str(folder)], check=True)
        folder.rmdir()


def test_a_full_postgres_disk_is_one_line_from_the_catalog(postgres_server, tmp_path):
    """Rows written until the server's disk (the tablespace's) is full: CatalogFull naming the catalog
    and the server's words, not psycopg's DiskFull."""
    from mlc_pipeline.catalog.schema import Found
    with small_tablespace(postgres_server, "1m") as (url, folder):
        c = Catalog(PostgresCatalog(url, tmp_path))
        run = c.start_run("collect")
        rows = (Found("flickr", f"{i}", "train", "ants", "ants", f"http://img.test/{i}.jpg", "url_m", 500, 375, 4,
                      "CC BY", "o", "Owner", "x" * 200, None, None, "tag " * 50) for i in range(10 ** 6))
        with pytest.raises(CatalogFull) as full:
            for _ in range(1000):
                c.upsert_found([next(rows) for _ in range(200)], run)
        c.close()
    said = str(full.value)
    assert said.startswith(f"cannot write to the catalog {PostgresCatalog(url, tmp_path)}: the PostgreSQL server's "
                           f"disk is full (SQLSTATE 53100: could not extend file"), said
    assert "No space left on device" in said and said.endswith("free space on the server's disk, then rerun the "
                                                                 "same command (what was recorded is kept; a "
                                                                 "collect adopts the images it finished but could "
                                                                 "not record)"), said
    assert "\n" not in said and postgres_server.password not in said


def test_a_collect_into_a_full_postgres_catalog_ends_in_that_one_line(postgres_server, tmp_path):
    """`mlc collect` into a catalog whose server's disk fills up: exit 1, that one line, no traceback
    (before: psycopg's `DiskFull`, then `InFailedSqlTransaction` from every later statement, the run's end
    record included, since the failed pipelined write left its transaction aborted). Once the disk has
    room again, the rerun completes, and the stopped run is recorded failed with the line."""
    with small_tablespace(postgres_server, "400k") as (url, folder):
        config = write_config(tmp_path, count=200)
        cfg = yaml.safe_load(config.read_text())
        cfg["catalog"] = {"url": url}
        config.write_text(yaml.safe_dump(cfg))
        env = {**ENV, "PGPASSWORD": os.environ["PGPASSWORD"]}
        res = subprocess.run([*MLC, "collect", "-c", str(config), "--no-progress"], env=env,
                             capture_output=True, text=True, timeout=300)
        subprocess.run(["mount", "-o", "remount,size=8m", str(folder)], check=True)
        rerun = subprocess.run([*MLC, "collect", "-c", str(config), "--no-progress"], env=env,
                               capture_output=True, text=True, timeout=300)
        with Catalog(PostgresCatalog(url, tmp_path), readonly=True) as c:
            ended = {r["status"]: json.loads(r["summary"] or "{}").get("error") for r in c.runs()}
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "DiskFull" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("mlc: cannot write to the catalog postgresql://") and \
        "the PostgreSQL server's disk is full (SQLSTATE 53100: " in last, last
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert set(ended) == {"failed", "completed"}, ended
    assert "SQLSTATE 53100" in ended["failed"]
