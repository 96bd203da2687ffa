"""catalog/rows.py on both backends: candidate rows asked for by what they are (keyword filters)."""

from pathlib import Path

import pytest

from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.config import parse_config


def found(photo_id: str, purpose: str = "train", label: str = "ants") -> Found:
    return Found("flickr", photo_id, purpose, label, label, f"http://img.test/{photo_id}.jpg", "url_m", 500, 375, 4,
                 "CC BY", "o1", "Owner One", "a title", "2020-01-01 10:00:00", 1577872800, "tag1")


def test_keyword_filters_select_what_the_sql_conditions_did(catalog_settings, tmp_path: Path):
    """The library asked for rows with SQL conditions of its own (`"source=? AND status='failed' AND
    reason LIKE 'transient:%'"`) from seven modules outside the catalog; it asks by keywords now, and
    each keyword query returns what its SQL condition returns."""
    cfg = parse_config({"data_dir": str(tmp_path / "data"), **catalog_settings,
                        "classes": {"ants": {"queries": ["ants"], "count": 1}},
                        "other": {"queries": ["scenery"], "count": 1}})
    states = [("failed", "transient:timeout"), ("failed", "transient_timeout"), ("failed", "host-not-allowed:x.test"),
              ("rejected", "too-small"), ("accepted", None), ("duplicate", "near-duplicate:d=2"), ("pending", None),
              ("failed", "transient%:odd")]
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("collect")
        c.upsert_found([found(str(i), "pool" if i == 4 else "train") for i in range(len(states))], run)
        ids = {r["photo_id"]: r["id"] for r in c.candidates()}
        for i, (status, reason) in enumerate(states):
            c.set_status(ids[str(i)], status, reason, run, "test")
        c.update_fields(ids["5"], duplicate_of=ids["4"])
        pairs = [
            (dict(source="flickr", status="failed", reason_prefix="transient:"),
             "source=? AND status='failed' AND reason LIKE 'transient:%'", ("flickr",)),
            (dict(status="failed", reason_prefix="transient%"), "reason='transient%:odd'", ()),  # % is no wildcard
            (dict(status=("rejected", "duplicate")), "status IN ('rejected','duplicate')", ()),
            (dict(status="accepted", purpose="pool"), "status='accepted' AND purpose='pool'", ()),
            (dict(duplicate_of=ids["4"], status="duplicate"), "duplicate_of=? AND status='duplicate'", (ids["4"],)),
            (dict(photo_id="6", purpose="train"), "photo_id='6' AND purpose='train'", ()),
            (dict(reason="too-small"), "reason='too-small'", ()),
            (dict(status=[]), "1=0", ()),
            ({}, "1=1", ()),
        ]
        for filters, where, params in pairs:
            got = [r["photo_id"] for r in c.candidates(**filters)]
            assert got == [r["photo_id"] for r in c.candidates(where, params)], (filters, got)
        assert [r["photo_id"] for r in c.candidates(status="failed", reason_prefix="transient:")] == ["0"]
        with pytest.raises(TypeError, match="cannot filter on stauts"):
            c.candidates(stauts="accepted")
        with pytest.raises(TypeError, match="not both"):
            c.candidates("1=1", status="accepted")
