"""A bundle that mines more than one round (a reused model mining again, `mlc mine --round 2` by hand)
keeps each round's own record: the report and an undo read what that round did, not the latest."""

from __future__ import annotations

import csv
import shutil

from shapes import trained_bundle
from test_mine import _planted_world

from mlc_pipeline.model.mine import mine_round


def _decisions(path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {r["photo_id"]: r["decision"] for r in csv.DictReader(f)}


def test_each_round_keeps_its_own_record_in_the_bundle_that_mined_it(tmp_path):
    _, trained = trained_bundle()
    bundle_dir = shutil.copytree(trained, tmp_path / "bundle")     # the shared bundle stays unmined
    cfg, *_ = _planted_world(tmp_path, max_per_round=100)
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
