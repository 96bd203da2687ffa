"""catalog/pairs.py's review pairs, on both backends (SQLite, and a real PostgreSQL server:
tests/pgserver.py): the note curate writes is the one the catalog reads, and `review_partners` reads
the notes of the ids asked for and those naming them, not the whole events table (review29 #10)."""

from pathlib import Path

from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.catalog.pairs import REVIEW_PAIR, review_note, review_partner
from mlc_pipeline.config import parse_config


def found(photo_id: str) -> Found:
    return Found("flickr", photo_id, "train", "ants", "ants", "http://img.test/x.jpg", "url_m", 500, 375, 4, "CC BY",
                 "o1", "Owner One", "a title", "2020-01-01 10:00:00", 1577872800, "tag1")


def test_the_note_curate_writes_is_the_one_read():
    assert review_note(1234, 3, 0.951) == f"{REVIEW_PAIR}1234:d=3:s=0.95"
    assert review_partner(review_note(1234, 3, 0.951)) == (1234, 3, 0.95)
    assert review_partner("near-duplicate:d=2") is None and review_partner(f"{REVIEW_PAIR}12") is None


def events_read(c: Catalog, ask) -> int:
    """How much of the events table the database went through to answer `ask()`: on SQLite the
    virtual machine's steps (a scan of the table is thousands per thousand rows), on PostgreSQL the
    rows its sequential scans of events read (pg_stat_xact_user_tables, this transaction's)."""
    if c.dialect == "sqlite":
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0
        c.db.set_progress_handler(count, 100)
        try:
            ask()
        finally:
            c.db.set_progress_handler(None, 100)
        return steps[0] * 100
    with c.transaction():
        ask()
        return c.db.execute("SELECT seq_tup_read AS n FROM pg_stat_xact_user_tables WHERE relname='events'").fetchone()["n"]


def test_review_partners_reads_the_notes_of_the_ids_and_those_naming_them_not_every_event(catalog_settings,
                                                                                          tmp_path: Path):
    cfg = parse_config({"data_dir": str(tmp_path / "data"), **catalog_settings,
                        "classes": {"ants": {"queries": ["ants"], "count": 1}},
                        "other": {"queries": ["scenery"], "count": 1}})
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("curate")
        c.upsert_found([found(str(i)) for i in range(8)], run)
        a, b, x, d, e, f, g, h = (c.get_by_photo("flickr", str(i))["id"] for i in range(8))
        # a~b (each names the other), x~a (x names a, a's note names b: one note a row), d~e apart;
        # f~g recorded in their events only: f taken down since, g's note dropped by the next curate
        for me, other, score in ((a, b, 0.95), (b, a, 0.95), (x, a, 0.93), (d, e, 0.94), (e, d, 0.94),
                                 (f, g, 0.96), (g, f, 0.96)):
            c.set_status(me, "accepted", review_note(other, 2, score), run, "curate")
        c.set_status(f, "removed", "owner request", run, "remove")
        c.set_status(g, "accepted", None, run, "curate")
        asked = [a, f, g, h]
        expected = {a: {b: 0.95, x: 0.93}, f: {g: 0.96}, g: {f: 0.96}}
        assert c.review_partners(asked) == expected
        assert c.review_partners([x, 10 ** 9]) == {x: {a: 0.93}} and c.review_partners([]) == {}
        few = events_read(c, lambda: c.review_partners(asked))
        # A long history: 40,000 events of other images, 4,000 of them other pairs' notes (naming ids
        # 10-16, 100-106 and 1000-1006, beside the ones asked for: an index on the text would mix them up)
        unrelated = [(10 ** 6 + k, run, 0.0, "curate", "accepted", review_note(k % 7 + 10 ** (k % 3 + 1), 2, 0.95)
                      if k % 10 == 0 else f"near-duplicate:d={k % 9}") for k in range(40_000)]
        with c.transaction():
            c.db.executemany("INSERT INTO events (candidate_id, run_id, at, stage, status, reason) "
                             "VALUES (?, ?, ?, ?, ?, ?)", unrelated)
        if c.dialect == "postgresql":
            c.db.execute("ANALYZE events")        # as autovacuum would: the planner sees the history's size
        assert c.review_partners(asked) == expected
        many = events_read(c, lambda: c.review_partners(asked))
        # a scan of the events read all 40,000 (on SQLite ~10 steps a row): now the same few reads
        assert many <= few + 2_000, (few, many)
