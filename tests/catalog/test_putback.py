"""catalog/putback.py: the copies a review put back, each with the image kept in its place, on both
backends (SQLite, and a real PostgreSQL server: tests/pgserver.py). The build's splits and curate's
test check read them (docs/curation.md, "Splits")."""

from pathlib import Path

from mlc_pipeline.catalog import Catalog, overrides
from mlc_pipeline.catalog.putback import put_back_pairs

from test_overrides import CLASSES, accepted_catalog


def test_a_copy_is_paired_with_its_twin_while_the_review_keeps_it_in(catalog_settings, tmp_path: Path):
    path, ids = accepted_catalog(tmp_path, catalog_settings)
    one, two, three, four = (ids[k] for k in "1234")
    with Catalog(path) as c:
        assert put_back_pairs(c) == []        # a catalog the review app never opened
        run = c.start_run("curate")
        for copy in (one, three):
            c.set_status(copy, "duplicate", "near-duplicate:d=2", run, "curate", duplicate_of=two,
                         file_path=str(tmp_path / f"{copy}.jpg"))
        c.set_status(four, "duplicate", "near-duplicate-of-test:v1:d=2", run, "curate", duplicate_of=two)
        overrides.ensure_schema(c)
        assert put_back_pairs(c) == []
        done = overrides.act(c, one, "not-duplicate", "another picture", "t", CLASSES)
        overrides.act(c, three, "restore", "keep it", "t", CLASSES)
        twin = {"twin": two, "source": "flickr", "photo_id": "2"}
        assert put_back_pairs(c) == [{"copy": one, **twin}, {"copy": three, **twin}]
        # a curate that accepted the copy (and dropped its twin for it) before 2026-12-07: the record of
        # "not a duplicate" names the pair; a restored copy's pair goes with its duplicate_of
        c.set_status(one, "accepted", None, run, "curate", duplicate_of=None, curated_label="ants")
        c.set_status(three, "accepted", None, run, "curate", duplicate_of=None, curated_label="ants")
        c.set_status(two, "duplicate", "near-duplicate-of-test:v3:d=0", run, "curate", duplicate_of=one)
        assert put_back_pairs(c) == [{"copy": one, **twin}]
        overrides.undo(c, one, done.action_id, "my mistake", "t")
        assert put_back_pairs(c) == []
        c.set_status(one, "duplicate", "near-duplicate:d=2", run, "curate", duplicate_of=two)
        overrides.act(c, one, "not-duplicate", "another picture", "t", CLASSES)
        overrides.act(c, one, "reject", "no, the same", "t", CLASSES)     # out again: no pair
        assert put_back_pairs(c) == []
