"""catalog/removals.py's reads for takedown holds, on both backends (SQLite, and a real PostgreSQL
server: tests/pgserver.py)."""

import uuid
from pathlib import Path

import pytest

from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.config import parse_config


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_settings(request) -> dict:
    if request.param == "sqlite":
        return {}
    server = request.getfixturevalue("postgres_server")
    return {"catalog": {"url": server.create_database("t_" + uuid.uuid4().hex[:12])}}


def found(photo_id: str) -> Found:
    return Found("flickr", photo_id, "train", "ants", "ants", "http://img.test/x.jpg", "url_m", 500, 375, 4, "CC BY",
                 "o1", "Owner One", "a title", "2020-01-01 10:00:00", 1577872800, "tag1")


def test_first_accepted_reads_the_rows_asked_for_in_chunks(catalog_settings, tmp_path: Path):
    """It grouped the whole events table on every curate with photos taken down: now only the ids
    compared, chunked (a chunk of 2 here, so 5 ids take three statements), each with its FIRST
    acceptance, none for an id never accepted."""
    cfg = parse_config({"data_dir": str(tmp_path / "data"), **catalog_settings,
                        "classes": {"ants": {"queries": ["ants"], "count": 1}},
                        "other": {"queries": ["scenery"], "count": 1}})
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("curate")
        c.upsert_found([found(str(i)) for i in range(6)], run)
        ids = [c.get_by_photo("flickr", str(i))["id"] for i in range(6)]
        for cid in ids[:4]:
            c.set_status(cid, "accepted", None, run, "curate")
        first = {r["candidate_id"]: r["at"] for r in c.db.execute(
            "SELECT candidate_id, at FROM events WHERE status='accepted'")}
        c.set_status(ids[0], "duplicate", "near", run, "curate")
        c.set_status(ids[0], "accepted", None, run, "curate")     # accepted again: the first one counts
        assert not c.has_removed_hashes()
        got = c.first_accepted([ids[0], ids[1], ids[3], ids[4], ids[5], ids[0]], chunk=2)
    assert got == {ids[0]: first[ids[0]], ids[1]: first[ids[1]], ids[3]: first[ids[3]]}


def test_has_removed_hashes_says_whether_a_photo_taken_down_kept_its_hashes(catalog_settings, tmp_path: Path):
    cfg = parse_config({"data_dir": str(tmp_path / "data"), **catalog_settings,
                        "classes": {"ants": {"queries": ["ants"], "count": 1}},
                        "other": {"queries": ["scenery"], "count": 1}})
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("remove")
        c.upsert_found([found("1"), found("2")], run)
        a, b = (c.get_by_photo("flickr", p) for p in ("1", "2"))
        c.record_removal(a, "photo-id:1", "owner request", run, [])      # no hashes: never downloaded
        assert not c.has_removed_hashes() and c.removed_hashes() == []
        c.db.execute("UPDATE candidates SET phash=? WHERE id=?", ("8000000000000000", b["id"]))
        c.record_removal(c.get_by_photo("flickr", "2"), "photo-id:2", "owner request", run, [])
        assert c.has_removed_hashes() and [r["id"] for r in c.removed_hashes()] == [b["id"]]
