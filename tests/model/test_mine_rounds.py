"""A bundle that mines more than one round (a reused model mining again, `mlc mine --round 2` by hand)
keeps each round's own record, and the report shows what the catalog holds now: a negative undone
since is marked, not counted as added."""

from __future__ import annotations

import csv

import pytest
from test_mine import _bundle_here, _planted_world

from mlc_pipeline.catalog import Catalog, CatalogError
from mlc_pipeline.model.mine import MINED_COLUMNS, mine_round, undo_round
from mlc_pipeline.model.mine_record import write_csv
from mlc_pipeline.report.analysis import mining_section


def _decisions(path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {r["photo_id"]: r["decision"] for r in csv.DictReader(f)}


def test_each_round_keeps_its_own_record_in_the_bundle_that_mined_it(tmp_path):
    cfg, *_ = _planted_world(tmp_path, max_per_round=100)
    bundle_dir = _bundle_here(cfg)                  # the shared bundle stays unmined
    first = mine_round(cfg, bundle_dir, round_no=1)
    assert first.added and first.held, "round 1 mined or held nothing: a useless test"
    second = mine_round(cfg, bundle_dir, round_no=2)        # what round 1 moved or held is not scored again
    one, two = _decisions(bundle_dir / "mined-r1.csv"), _decisions(bundle_dir / "mined-r2.csv")
    assert {p for p, d in one.items() if d == "added"} == {n["photo_id"] for n in first.negatives}
    assert {p for p, d in one.items() if d.startswith("held:")} == {h["photo_id"] for h in first.held}
    assert {p for p, d in two.items() if d == "added"} == {n["photo_id"] for n in second.negatives}
    assert not set(one) & set(two)
    # mined.csv: the bundle's latest mining, as it was before the per-round records
    assert _decisions(bundle_dir / "mined.csv") == two


def test_the_report_marks_a_negative_undone_since_and_counts_it_apart(tmp_path):
    cfg, *_ = _planted_world(tmp_path, max_per_round=100)
    bundle_dir = _bundle_here(cfg)                  # the shared bundle stays unmined
    mined = mine_round(cfg, bundle_dir, round_no=1)
    assert mined.added >= 2, "too few negatives to undo one and keep one: a useless test"
    negatives = sorted(n["photo_id"] for n in mined.negatives)
    assert undo_round(cfg, 1, negatives[:1]) == 1           # `mlc mine --undo --round 1 --photo-id ...`
    page = mining_section([(1, bundle_dir)], cfg.catalog_path)
    assert (f"Mining round 1: {mined.added - 1} hard negatives added (of {mined.added}: 1 undone since), "
            f"{len(mined.held)} held") in page
    assert page.count(" · undone</figcaption>") == 1
    assert f"<figcaption>{negatives[0]}: taken for " in page and f"<figcaption>{negatives[1]}: taken for " in page
    undone = page.index(f"<figcaption>{negatives[0]}: taken for ")
    assert page.index(" · undone</figcaption>", undone) < page.index("</figure>", undone)
    # without a catalog to ask (as before), the record alone: every negative it added
    assert f"Mining round 1: {mined.added} hard negatives added, " in mining_section([(1, bundle_dir)])


def test_a_round_mined_again_keeps_its_record_and_its_cap_and_new_rounds_are_numbered_on(tmp_path, caplog):
    """A user's audit: mining round 1 again (a plain `mlc mine` rerun, or a later `mlc run`, whose
    rounds restarted at 1) rewrote mined-r1.csv with only its own decisions, so the report said "0
    hard negatives added" while the catalog trained on 43, and each call added another cap's worth
    under the same round (3 x 5 with a cap of 5)."""
    caplog.set_level("INFO", logger="mlc_pipeline.model.mine")
    cfg, *_ = _planted_world(tmp_path, hold_above=1.01, max_per_round=2)
    bundle_dir = _bundle_here(cfg)
    first = mine_round(cfg, bundle_dir, round_no=1)
    assert first.added == 2 and first.over_cap > 0, "the cap did not bind: a useless test"
    again = mine_round(cfg, bundle_dir, round_no=1)         # the same round by number: its cap is spent
    assert again.added == 0 and again.over_cap > 0
    assert "over the round's cap of 2 (2 added earlier)" in caplog.text     # said "of 0" (verify17 audit)
    record = _decisions(bundle_dir / "mined-r1.csv")
    assert {p for p, d in record.items() if d == "added"} == {n["photo_id"] for n in first.negatives}
    assert _decisions(bundle_dir / "mined.csv") == record
    assert "Mining round 1: 2 hard negatives added" in mining_section([(1, bundle_dir)], cfg.catalog_path)
    later = mine_round(cfg, bundle_dir)                      # no number: the round after the catalog's last
    assert later.round == 2 and later.added == 2
    assert {p for p, d in _decisions(bundle_dir / "mined-r2.csv").items() if d == "added"} == {
        n["photo_id"] for n in later.negatives}


def _failing_commit(monkeypatch):
    """Fault injection: the catalog fails in the round's commit, at its first move (after the whole
    pool was scored). Nothing real fails there on demand: a round number past SQL's integers did
    (the mining26 audit), and `check_round` now refuses that before anything is scored."""
    original = Catalog.set_status

    def failing(self, cid, status, reason, run_id, stage, **fields):
        if stage == "mine":
            raise CatalogError("disk I/O error (injected)")
        return original(self, cid, status, reason, run_id, stage, **fields)

    monkeypatch.setattr(Catalog, "set_status", failing)


def _moved(cfg, round_no: int) -> set[int]:
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        return {r["id"] for r in catalog.mined_in_round(round_no)}


def test_a_round_whose_commit_fails_leaves_no_record_and_no_phantom_round_in_the_report(tmp_path, monkeypatch):
    """The mining26 audit: the record was written before the catalog's moves, so a round that failed
    in its commit left mined-r<N>.csv and mined.csv listing 103 "added" negatives the catalog never
    moved, and the report said "0 hard negatives added (of 103: 103 undone since)"."""
    cfg, *_ = _planted_world(tmp_path, max_per_round=100)
    bundle_dir = _bundle_here(cfg)
    _failing_commit(monkeypatch)
    with pytest.raises(CatalogError, match="injected"):
        mine_round(cfg, bundle_dir, round_no=1)
    assert sorted(p.name for p in bundle_dir.glob("*mined*")) == [], "a record of a round the catalog never committed"
    assert _moved(cfg, 1) == set()
    assert mining_section([(1, bundle_dir)], cfg.catalog_path) == ""
    monkeypatch.undo()
    again = mine_round(cfg, bundle_dir, round_no=1)          # the rerun records what it commits
    assert again.added and _recorded_moves(bundle_dir / "mined-r1.csv") == _moved(cfg, 1)


def _ids(path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {r["candidate_id"]: r["decision"] for r in csv.DictReader(f)}


def _recorded_moves(path) -> set[int]:
    "The images a record says its round added or held."
    return {int(c) for c, d in _ids(path).items() if d == "added" or d.startswith("held:")}


def test_a_record_a_killed_round_left_is_published_only_when_the_catalog_committed_the_round(tmp_path, monkeypatch):
    """Killed (no `except` runs) between the commit and the record's rename, the pending record is the
    only account of the moves: the next round with the bundle publishes it. Killed before the commit,
    it lists moves that never happened: the next round removes it. (Every reader of the records
    settles them too, a real SIGKILL included: test_mine_killed.py.)"""
    import mlc_pipeline.model.mine as mine
    cfg, *_ = _planted_world(tmp_path, max_per_round=3, hold_above=1.01)
    bundle_dir = _bundle_here(cfg)

    def killed(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:            # killed right after the commit
        m.setattr(mine, "publish_record", killed)
        m.setattr(mine, "settle_record", lambda *args: None)
        with pytest.raises(KeyboardInterrupt):
            mine_round(cfg, bundle_dir, round_no=1)
    assert _moved(cfg, 1) and not (bundle_dir / "mined-r1.csv").exists()
    assert len(list(bundle_dir.glob(".mined-r1.csv.*.pending"))) == 1   # readers settle it too: test_mine_killed
    with monkeypatch.context() as m:            # the next round starts (round 1's record is published), and
        _failing_commit(m)                      # is killed in its commit
        m.setattr(mine, "settle_record", lambda *args: None)
        with pytest.raises(CatalogError):
            mine_round(cfg, bundle_dir, round_no=2)
    assert _recorded_moves(bundle_dir / "mined-r1.csv") == _moved(cfg, 1)
    assert _ids(bundle_dir / "mined.csv") == _ids(bundle_dir / "mined-r1.csv")
    assert _moved(cfg, 2) == set() and [p.name[:14] for p in bundle_dir.glob(".mined-r*")] == [".mined-r2.csv."]
    third = mine_round(cfg, bundle_dir, round_no=3)      # round 2's record is removed, never published
    assert third.added and not list(bundle_dir.glob(".mined-r*")) and not (bundle_dir / "mined-r2.csv").exists()
    assert _ids(bundle_dir / "mined.csv") == _ids(bundle_dir / "mined-r3.csv")
    assert "Mining round 2" not in mining_section([(1, bundle_dir)], cfg.catalog_path)


def test_the_report_does_not_call_a_record_the_catalog_never_committed_undone(tmp_path):
    """A record mining left before 2026-12-07 for a round whose commit failed: its pool images were
    never moved, so they were not undone either."""
    cfg, images, items, ids, _ = _planted_world(tmp_path)
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    pool = [pid for pid, purpose, *_ in items if purpose == "pool"][:3]
    rows = [{"candidate_id": ids[pid], "photo_id": pid, "score": 0.9, "accepted_as": "red", "likeness": "",
             "decision": "added" if k < 2 else "held:like-class:red", "file": images / f"{pid}.jpg"}
            for k, pid in enumerate(pool)]
    write_csv(bundle_dir / "mined-r9.csv", rows, MINED_COLUMNS)
    page = mining_section([(9, bundle_dir)], cfg.catalog_path)
    assert "undone" not in page and "released" not in page
    assert ("Mining round 9: 0 hard negatives added (of 2: 2 never recorded in the catalog), 0 held or over the cap "
            "(of the 1 it held: 1 never recorded in the catalog)") in page, page
    assert "3 of this record's decisions were never recorded in the catalog" in page


def test_holds_an_undo_released_are_not_counted_as_held_by_the_round(tmp_path):
    """The mining26 audit: after `mlc mine --undo --round 2` released its 19 held images (and round 4
    held them again), the report still counted them as held by round 2 as well as by round 4."""
    cfg, *_ = _planted_world(tmp_path, max_per_round=100)
    bundle_dir = _bundle_here(cfg)
    first = mine_round(cfg, bundle_dir, round_no=1)
    assert first.added and first.held, "round 1 mined or held nothing: a useless test"
    rest = first.accepted - first.added - len(first.held)       # over the cap, decided in review
    undo_round(cfg, 1)
    second = mine_round(cfg, bundle_dir, round_no=2)            # scores the released images again
    page = mining_section([(1, bundle_dir)], cfg.catalog_path)
    held = len(first.held)
    assert (f"Mining round 1: 0 hard negatives added (of {first.added}: {first.added} undone since), {rest} held "
            f"or over the cap (of the {held} it held: {held} released since)") in page, page
    assert f"Mining round 2: {second.added} hard negatives added, {len(second.held) + second.over_cap} held" in page
