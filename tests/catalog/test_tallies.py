"""catalog/tallies.py on both backends (SQLite, and a real PostgreSQL server: tests/pgserver.py)."""

import uuid
from pathlib import Path

import pytest

from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.config import parse_config


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-en-US"])
def ordered_settings(request) -> dict:
    """Each backend, and PostgreSQL whose text sorts by a language's rules (ICU en-US: "_" and case
    weigh little there, where SQLite and a C server compare code points): what is listed in an
    order must come in the same one from all three."""
    if request.param == "sqlite":
        return {}
    server = request.getfixturevalue("postgres_server")
    icu = "en-US" if request.param.endswith("en-US") else None
    return {"catalog": {"url": server.create_database("t_" + uuid.uuid4().hex[:12], icu_locale=icu)}}


def found(photo_id: str) -> Found:
    return Found("flickr", photo_id, "train", "ants", "ants", "http://img.test/x.jpg", "url_m", 500, 375, 4, "CC BY",
                 "o1", "Owner One", "a title", "2020-01-01 10:00:00", 1577872800, "tag1")


def test_reasons_with_equal_counts_come_in_the_same_order_on_both_backends(ordered_settings, tmp_path: Path):
    """`mlc inspect --json` lists the reasons: equal counts were in the database's own order, which
    differed between SQLite and PostgreSQL (a takedown and a mining hold swapped places). Now: most
    first, then by status and reason, as Python compares strings (no database collation)."""
    cfg = parse_config({"data_dir": str(tmp_path / "data"), **ordered_settings,
                        "classes": {"ants": {"queries": ["ants"], "count": 1}},
                        "other": {"queries": ["scenery"], "count": 1}})
    # Written in an order that is neither sorted nor reverse-sorted; "Z" and "_" sort apart by
    # collation (a locale puts "_" first or ignores it, code points put "Z" before "_" and "a").
    reasons = [("rejected", "too-small"), ("failed", "transient:timeout"), ("rejected", "held:like-class:kite:round=1"),
               ("failed", "empty-body"), ("rejected", "takedown:owner request"), ("failed", "Z_upper"),
               ("failed", "_under"), ("rejected", "decode-error"), ("failed", "not-an-image:bad-magic"),
               ("rejected", "too-small")]
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("collect")
        c.upsert_found([found(str(i)) for i in range(len(reasons))], run)
        for i, (status, reason) in enumerate(reasons):
            c.set_status(c.get_by_photo("flickr", str(i))["id"], status, reason, run, "download")
        got = [(r["status"], r["reason"], r["n"]) for r in c.reasons()]
    ties = sorted({r for r in reasons if r != ("rejected", "too-small")})
    assert got == [("rejected", "too-small", 2)] + [(s, r, 1) for s, r in ties]


def test_counts_come_in_code_point_order_on_every_backend(ordered_settings, tmp_path: Path):
    """`mlc inspect` starts from counts(): PostgreSQL sorted them by the database's collation, so
    on a server with a language's locale labels such as "a-b", "a_b" and "a0" came in another order
    than from SQLite (ICU puts "_" before "-" and both before digits), and `mlc inspect --json`
    differed between the two."""
    labels = ["ants", "a_b", "a0", "ants bees", "a-b", "a_b", "ants"]
    cfg = parse_config({"data_dir": str(tmp_path / "data"), **ordered_settings,
                        "classes": {c: {"queries": [c], "count": 1} for c in ("a-b", "a0", "a_b", "ants", "bees")},
                        "other": {"queries": ["scenery"], "count": 1}})
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("collect")
        c.upsert_found([Found("flickr", str(i), "train", label, label, "http://img.test/x.jpg", "url_m", 500, 375, 4,
                              "CC BY", "o1", "Owner One", "t", "2020-01-01 10:00:00", 1577872800, "")
                        for i, label in enumerate(labels)], run)
        got = [(r["label"], r["n"]) for r in c.counts()]
    assert got == [("a-b", 1), ("a0", 1), ("a_b", 2), ("ants", 2), ("ants bees", 1)]


def test_labels_found_by_a_query_counts_where_its_photos_are_filed(ordered_settings, tmp_path: Path):
    """A renamed class has no photo filed under its new name until the next collect: training says
    where its queries' photos are (labels_found_by), on every backend."""
    cfg = parse_config({"data_dir": str(tmp_path / "data"), **ordered_settings,
                        "classes": {"kites": {"queries": ["kite"], "count": 1}},
                        "other": {"queries": ["sky"], "count": 1}})
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("collect")
        c.upsert_found([Found("flickr", str(i), "train", label, query, "http://img.test/x.jpg", "url_m", 500, 375,
                              4, "CC BY", "o1", "Owner One", "t", "2020-01-01 10:00:00", 1577872800, "")
                        for i, (label, query) in enumerate([("kite", "kite"), ("kite", "kite"), ("other", "sky"),
                                                            ("other", "kite")])], run)
        assert c.labels_found_by(["kite"]) == {"kite": 2, "other": 1}
        assert c.labels_found_by(["kite", "sky"]) == {"kite": 2, "other": 2}
        assert c.labels_found_by(["kite"], purpose="pool") == {} and c.labels_found_by([]) == {}


def test_status_and_event_counts_say_what_the_catalog_holds(ordered_settings, tmp_path: Path):
    """Candidates per status and events per stage: what the benches read to check a run (they opened
    catalog.sqlite with sqlite3 for it, and could not read a PostgreSQL catalog), on every backend."""
    cfg = parse_config({"data_dir": str(tmp_path / "data"), **ordered_settings,
                        "classes": {"ants": {"queries": ["ants"], "count": 1}},
                        "other": {"queries": ["scenery"], "count": 1}})
    with Catalog(cfg.catalog_path) as c:
        assert c.status_counts() == {} and c.event_counts() == {}
        run = c.start_run("collect")
        c.upsert_found([found(str(i)) for i in range(5)], run)
        c.upsert_found([found("0")], run)           # found again: no second search event
        ids = [c.get_by_photo("flickr", str(i))["id"] for i in range(5)]
        for cid in ids[:3]:
            c.set_status(cid, "downloaded", None, run, "download")
        c.set_status(ids[3], "failed", "transient:timeout", run, "download")
        c.set_status(ids[0], "accepted", None, run, "curate")
        assert c.status_counts() == {"accepted": 1, "downloaded": 2, "failed": 1, "pending": 1}
        assert c.event_counts() == {"curate": 1, "download": 4, "search": 5}
    with Catalog(cfg.catalog_path, readonly=True) as c:          # what a report reads, writing nothing
        assert c.status_counts()["downloaded"] == 2 and list(c.event_counts()) == ["curate", "download", "search"]
