"""A bundle mined before the per-round records (2026-12-06) holds its round's decisions in mined.csv
alone. Mining again with it keeps that record as mined-r<its round>.csv before the new round replaces
mined.csv, so the report still shows the earlier round (the upgrade29 audit, finding 5: round 1's
43 decisions were gone)."""

from __future__ import annotations

import csv
import logging

from test_mine import _bundle_here, _planted_world

from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.model.mine import mine_round, undo_round
from mlc_pipeline.model.mine_record import keep_legacy_record, record_round, settle_stopped
from mlc_pipeline.report.analysis import mining_section


def _decisions(path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {r["photo_id"]: r["decision"] for r in csv.DictReader(f)}


def _legacy_bundle(tmp_path, undo=False):
    """A bundle that mined round 1 as code before 2026-12-06 left it: mined.csv, no mined-r1.csv."""
    cfg, *_ = _planted_world(tmp_path, max_per_round=100)
    bundle_dir = _bundle_here(cfg)
    first = mine_round(cfg, bundle_dir, round_no=1)
    assert first.added and first.held, "round 1 mined or held nothing: a useless test"
    (bundle_dir / "mined-r1.csv").unlink()
    if undo:                                    # `mlc mine --undo --round 1`: mined_round cleared
        assert undo_round(cfg, 1) > 0
    return cfg, bundle_dir, first, (bundle_dir / "mined.csv").read_bytes()


def test_mining_again_keeps_the_earlier_rounds_mined_csv_as_its_round_record(tmp_path):
    cfg, bundle_dir, first, legacy = _legacy_bundle(tmp_path)
    second = mine_round(cfg, bundle_dir, round_no=2)
    assert (bundle_dir / "mined-r1.csv").read_bytes() == legacy
    assert _decisions(bundle_dir / "mined.csv") == _decisions(bundle_dir / "mined-r2.csv")
    page = mining_section([(2, bundle_dir)], cfg.catalog_path)
    assert f"Mining round 1: {first.added} hard negatives added" in page, page[:3000]
    assert f"Mining round 2: {second.added} hard negatives added" in page, page[:3000]


def test_a_legacy_round_mined_again_by_number_adds_to_its_record(tmp_path):
    cfg, bundle_dir, first, _ = _legacy_bundle(tmp_path)
    mine_round(cfg, bundle_dir, round_no=1)     # the cap is left; what round 1 decided stays in its record
    record = _decisions(bundle_dir / "mined-r1.csv")
    assert {p for p, d in record.items() if d == "added"} >= {n["photo_id"] for n in first.negatives}
    assert {p for p, d in record.items() if d.startswith("held:")} >= {h["photo_id"] for h in first.held}


def test_the_round_is_found_after_an_undo_cleared_it(tmp_path):
    cfg, bundle_dir, _, legacy = _legacy_bundle(tmp_path, undo=True)
    mine_round(cfg, bundle_dir, round_no=3)
    assert (bundle_dir / "mined-r1.csv").read_bytes() == legacy
    assert not (bundle_dir / "mined-legacy.csv").exists()


def _catalog(tmp_path, marks: list[str | None]):
    """A catalog with one pool candidate per mark, each set to it in a mining run; their ids."""
    cat = Catalog(tmp_path / "catalog.sqlite")
    run = cat.start_run("mine-1")
    cat.upsert_found([Found("flickr", f"p{i}", "pool", "other", "toys", "http://img.test/x.jpg", "url_m", 500, 375,
                            4, "CC BY", "o1", "Owner", "t", None, None, "") for i in range(len(marks))], run)
    ids = [cat.get_by_photo("flickr", f"p{i}")["id"] for i in range(len(marks))]
    with cat.transaction():
        for cid, mark in zip(ids, marks):
            if mark:
                cat.set_status(cid, "accepted", mark, run, "mine")
    cat.finish_run(run, "completed", {})
    return cat, ids


def _write_legacy(folder, rows: list[tuple[int, str]]):
    folder.mkdir(exist_ok=True)
    with open(folder / "mined.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["candidate_id", "photo_id", "score", "decision"])
        w.writerows([cid, f"p{cid}", "0.9", decision] for cid, decision in rows)
    return (folder / "mined.csv").read_bytes()


def test_a_record_whose_round_the_catalog_cannot_tell_is_kept_as_mined_legacy_and_said(tmp_path, caplog):
    cat, ids = _catalog(tmp_path, ["hard-negative:round=1", "held:like-class:kite:round=4", None])
    folder = tmp_path / "bundle"
    legacy = _write_legacy(folder, [(ids[0], "added"), (ids[1], "held:like-class:kite"), (ids[2], "over-cap")])
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline.model.mine_record"), cat:
        assert keep_legacy_record(cat, folder) == folder / "mined-legacy.csv"
    assert (folder / "mined-legacy.csv").read_bytes() == legacy
    assert not list(folder.glob("mined-r*.csv"))
    assert "bundle: mined.csv, written before per-round records, kept as mined-legacy.csv" in caplog.text


def test_nothing_is_kept_twice_nor_where_per_round_records_exist(tmp_path):
    cat, ids = _catalog(tmp_path, ["hard-negative:round=2", None])
    folder = tmp_path / "bundle"
    _write_legacy(folder, [(ids[0], "added"), (ids[1], "over-cap")])      # taken down since: tells nothing
    with cat:
        assert keep_legacy_record(cat, folder) == folder / "mined-r2.csv"
        (folder / "mined.csv").write_text("candidate_id,photo_id,score,decision\n")
        assert keep_legacy_record(cat, folder) is None
    assert _decisions(folder / "mined-r2.csv") == {f"p{ids[0]}": "added", f"p{ids[1]}": "over-cap"}


def test_a_reader_publishing_a_stopped_round_keeps_the_legacy_record_first(tmp_path):
    """A round that committed and was killed before publishing its record, in a legacy bundle: the
    reader that publishes it (report, review, undo) keeps the earlier round's mined.csv first."""
    cat, ids = _catalog(tmp_path, ["hard-negative:round=1", None])
    folder = tmp_path / "bundle"
    legacy = _write_legacy(folder, [(ids[0], "added")])
    with cat:
        run = cat.start_run("mine-2")
        cat.set_status(ids[1], "accepted", "hard-negative:round=2", run, "mine", mined_round=2)
        cat.finish_run(run, "crashed", {})
        record_round(folder, 2, [{"candidate_id": ids[1], "photo_id": f"p{ids[1]}", "score": "0.8",
                                  "decision": "added"}], ["candidate_id", "photo_id", "score", "decision"], run)
        settle_stopped(cat, [folder])
    assert (folder / "mined-r1.csv").read_bytes() == legacy
    assert _decisions(folder / "mined-r2.csv") == _decisions(folder / "mined.csv") == {f"p{ids[1]}": "added"}
