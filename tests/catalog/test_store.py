"""catalog/store.py: `Catalog`'s own methods, those not about one part of the catalog."""

import sqlite3
from pathlib import Path

from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.catalog.removals import RemovalQueries


def test_a_snapshot_of_an_open_catalog_holds_what_was_written(tmp_path: Path):
    """`snapshot` (sync's upload of an object-store data root's catalog) copies what is written, the WAL
    included, while the catalog stays open; it is the Catalog's own method, not a takedown statement
    (it sat in the takedowns' mixin)."""
    with Catalog(tmp_path / "catalog.sqlite") as c:
        run = c.start_run("collect")
        c.upsert_found([Found("flickr", str(i), "train", "ants", "ants", "http://img.test/x.jpg", "url_m", 500, 375, 4,
                              "CC BY", "o1", "Owner One", "a title", "2020-01-01 10:00:00", 1577872800, "tag1")
                        for i in range(3)], run)
        c.snapshot(tmp_path / "copy.sqlite")
        copy = sqlite3.connect(tmp_path / "copy.sqlite")
        try:
            assert [r[0] for r in copy.execute("SELECT photo_id FROM candidates ORDER BY id")] == ["0", "1", "2"]
        finally:
            copy.close()
    assert "snapshot" in vars(Catalog) and not hasattr(RemovalQueries, "snapshot")
