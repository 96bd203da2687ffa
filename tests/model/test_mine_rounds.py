"""A bundle that mines more than one round (a reused model mining again, `mlc mine --round 2` by hand)
keeps each round's own record, and the report shows what the catalog holds now: a negative undone
since is marked, not counted as added."""

from __future__ import annotations

import csv

from test_mine import _bundle_here, _planted_world

from mlc_pipeline.model.mine import mine_round, undo_round
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
