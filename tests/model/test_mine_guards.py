"""Mining's guards against poisoning a class, found by the 2026-12-06 audit: the hold looks at every
class, an undone negative stays out of later rounds, pool queries are compared with classes the way
search matches words, an undo that would change nothing says why, and a bundle trained on other
classes, or one outside this data root's models folder, is refused before anything is mined.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from shapes import draw, trained_bundle
from test_mine import _bundle_here, _plant, _planted_world, two_rounds_root

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.config import Config
from mlc_pipeline.model.mine import mine_round, undo_round


def _taken_for(folder, taken_for: str):
    """The shapes bundle, copied into the models folder of folder's data root, with thresholds that
    take every image for the class `taken_for` and none for the other: like the audit's balloon
    photos scored as kites."""
    bundle_dir = folder / "data" / "models" / "bundle"
    shutil.copytree(trained_bundle()[1], bundle_dir)
    info = json.loads((bundle_dir / "bundle.json").read_text())
    info["thresholds"] = [{"red": 1.01, "blue": 1.01, taken_for: 0.0}.get(c, t)
                          for c, t in zip(info["vocab"], info["thresholds"])]
    (bundle_dir / "bundle.json").write_text(json.dumps(info))
    return bundle_dir


def _pool_world(folder, classes=("red", "blue"), **mine):
    """A catalog whose pool holds red discs (members of the red class a pool query found) and noise."""
    rng = np.random.default_rng(11)
    cfg = Config(data_dir=folder / "data", classes={c: {"queries": [c], "count": 1} for c in classes},
                 other={"queries": ["noise"], "count": 1},
                 mine={"max_per_round": 100, "pool": {"queries": ["pool"], "count": 16}, **mine})
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    (folder / "files").mkdir()
    items = ([(f"pool-red{i}", "pool", "other", draw("red", rng)) for i in range(10)]
             + [(f"pool-noise{i}", "pool", "other", draw("other", rng)) for i in range(6)]
             + [(f"class-red{i}", "train", "red", draw("red", rng)) for i in range(3)]
             + [(f"class-blue{i}", "train", "blue", draw("blue", rng)) for i in range(3)])
    with Catalog(cfg.catalog_path) as catalog:
        ids = _plant(catalog, catalog.start_run("plant"), folder / "files", items)
    return cfg, ids


def _decisions(bundle_dir) -> dict[str, dict]:
    with open(bundle_dir / "mined.csv") as f:
        return {r["photo_id"]: r for r in csv.DictReader(f)}


def test_a_class_member_taken_for_another_class_is_held_as_if_taken_for_its_own(tmp_path):
    """Red discs in the pool, taken for red by one model and for blue by another (the same network,
    other thresholds): the likeness hold compares them with every class, so the same discs are held
    as looking like red either way, not mined as blue negatives that teach 'a red disc is nothing'.
    Before the fix it compared them with blue only and mined them all."""
    held = {}
    for taken_for in ("red", "blue"):
        bundle_dir = _taken_for(tmp_path / taken_for, taken_for)
        cfg, ids = _pool_world(tmp_path / taken_for)
        mine_round(cfg, bundle_dir, round_no=1)
        decisions = _decisions(bundle_dir)
        members = {pid for pid in decisions if pid.startswith("pool-red")}
        assert len(members) == 10 and {decisions[p]["accepted_as"] for p in members} == {taken_for}
        held[taken_for] = {p: decisions[p]["decision"] for p in members if decisions[p]["decision"] != "added"}
        with Catalog(cfg.catalog_path) as catalog:
            for pid, decision in held[taken_for].items():
                assert catalog.get(ids[pid])["reason"] == f"{decision}:round=1"
    assert held["red"], "no red disc looks like red to the model: a useless test"
    assert held["blue"] == held["red"] and set(held["blue"].values()) == {"held:like-class:red"}, held


def test_the_score_hold_reads_the_images_highest_score_over_all_classes(tmp_path):
    """`mine.hold_above`: a red disc taken for blue at a low blue score, but scored as red above the
    line, is held as confidently red (the image's highest score), not mined."""
    bundle_dir = _taken_for(tmp_path, "blue")
    cfg, _ = _pool_world(tmp_path, hold_above=0.5)
    mine_round(cfg, bundle_dir, round_no=1)
    decisions = _decisions(bundle_dir)
    members = [pid for pid in decisions if pid.startswith("pool-red")]
    low_blue = [pid for pid in members if float(decisions[pid]["score"]) < 0.5]
    assert low_blue, "every red disc scores high as blue: a useless test"
    assert {decisions[pid]["decision"] for pid in low_blue} == {"held:confident:red"}, decisions


def test_an_undone_negative_is_never_mined_again(tmp_path):
    """`mlc mine --undo` says "this is not a negative": the photos it puts back carry a mark that every
    later round respects (a curate in between keeps it). Before the fix round 2 mined them again."""
    from mlc_pipeline.catalog import overrides as co
    from mlc_pipeline.catalog import review as cr
    from mlc_pipeline.curate.stage import curate
    cfg, images, items, ids, _ = _planted_world(tmp_path, hold_above=1.01, max_per_round=100)
    bundle_dir = _bundle_here(cfg)
    cfg.curate.min_side = 16                     # the drawn shapes are 40 px
    first = mine_round(cfg, bundle_dir, round_no=1)
    mined = [n["photo_id"] for n in first.negatives]
    assert len(mined) >= 3 and first.held, "too little mined or held to undo: a useless test"
    assert undo_round(cfg, 1, [mined[0]]) == 1          # one by photo id, then the rest of the round
    assert undo_round(cfg, 1) == len(mined) - 1 + len(first.held)
    curate(cfg)
    second = mine_round(cfg, bundle_dir, round_no=2)
    assert not set(mined) & set(_decisions(bundle_dir)), "an undone negative was scored again"
    assert second.scored and not second.negatives
    with Catalog(cfg.catalog_path) as catalog:
        for pid in mined:
            row = catalog.get(ids[pid])
            assert (row["purpose"], row["status"], row["reason"], row["mined_round"]) == \
                   ("pool", "accepted", "not-a-negative:round=1", None)
        co.ensure_schema(catalog)          # the review app's queue lists them, as inspect's reasons do
        listed = {r["photo_id"] for r in cr.browse(catalog, {"reason": "not-a-negative"}, "default", 100, 0)[0]}
        assert listed == set(mined)
        assert {"status": "accepted", "reason": "not-a-negative:round=1", "n": len(mined)} in catalog.reasons()


def test_pool_queries_are_compared_with_classes_as_search_matches_words():
    """Search finds 'kite' photos for 'kites' (the bundled server and Flickr fold plurals) and splits
    'kite,string' at the comma: each of those pool queries warns, as 'Balloon' and 'hot-air balloon'
    did before the fix; a query sharing no word with a class does not."""
    from mlc_pipeline.model.mine import pool_overlaps
    overlapping = ["balloons", "kites", "Kite.", "kite,string", "Balloon", "hot-air balloon", "glass boxes"]
    cfg = Config(data_dir="d", classes={"balloon": {"queries": ["balloon"], "count": 1},
                                        "kite": {"queries": ["kite"], "count": 1},
                                        "jar": {"queries": ["glasses box"], "count": 1}},
                 other={"queries": ["sky"], "count": 1},
                 mine={"pool": {"queries": [*overlapping, "plush rabbit", "kit", "houses"], "count": 1}})
    warned = {w.split("'")[1] for w in pool_overlaps(cfg)}
    assert warned == set(overlapping)


def test_an_undo_that_would_change_nothing_is_an_error_naming_what_there_is(tmp_path):
    """`mlc mine --undo --round 7` (no such round), `--round 0`, `--round -1` (no round number), or a photo
    id not in the round: one line on stderr, exit 2, nothing changed (before: "0 ... put back", exit 0)."""
    import subprocess
    from helpers import ENV, MLC
    config, ids, before = two_rounds_root(tmp_path)

    def mlc(*args):
        res = subprocess.run([*MLC, "mine", "-c", str(config), "--undo", *args], env=ENV, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, (args, res.stderr, res.stdout)
        return res.stderr.strip()

    assert mlc("--round", "7") == ("mlc: mine --undo: round 7 has no mined or held images to put back (rounds "
                                   "with mined or held images: 1, 2)")
    for round_no in ("0", "-1"):        # no round at all (test_mine_cli.py)
        assert mlc("--round", round_no).startswith("mlc: mine --undo --round: a mining round is a whole number from 1")
    said = mlc("--round", "1", "--photo-id", "999")
    assert said.startswith("mlc: mine --undo: photo id 999 is not among round 1's 1 mined or held images"), said
    said = mlc("--round", "2", "--photo-id", "h2", "--photo-id", "m1")         # m1 is round 1's
    assert said.startswith("mlc: mine --undo: photo id m1 is not among round 2's"), said
    with Catalog(tmp_path / "data" / "catalog.sqlite", readonly=True) as catalog:
        assert catalog.candidates() == before and not [r for r in catalog.runs() if "undo" in r["command"]]

    # a rerun of an undo that was done is no mistake: nothing changes, exit 0 (photo by photo, or the round)
    for args in (("--round", "1", "--photo-id", "m1"), ("--round", "1", "--photo-id", "m1"), ("--round", "1")):
        res = subprocess.run([*MLC, "mine", "-c", str(config), "--undo", *args], env=ENV, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, (args, res.stderr)
    with Catalog(tmp_path / "data" / "catalog.sqlite", readonly=True) as catalog:
        m1 = catalog.get(ids["m1"])
    assert m1["reason"] == "not-a-negative:round=1" and m1["purpose"] == "pool"
    assert "photo id m1 is not among" in mlc("--round", "2", "--photo-id", "m1")      # still: not round 2's
    # round 1 is wholly put back now: a mistyped id is still named (it said "round 1 has no mined or
    # held images to put back", as if the round were the mistake)
    assert mlc("--round", "1", "--photo-id", "999").startswith(
        "mlc: mine --undo: photo id 999 is not among round 1's 0 mined or held images (1 put back already"), \
        mlc("--round", "1", "--photo-id", "999")


def _mine_cli(cfg, *args):
    """`mlc mine` on cfg's data root, as a user runs it (a config file, a subprocess)."""
    import subprocess
    import yaml
    from helpers import ENV, MLC
    config = cfg.data_dir.parent / "mine.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(cfg.data_dir), "other": {"queries": ["noise"], "count": 1},
                                      "classes": {c: {"queries": [c], "count": 1} for c in cfg.classes},
                                      "mine": {"pool": {"queries": ["pool"], "count": 16}}}, sort_keys=False))
    return subprocess.run([*MLC, "mine", "-c", str(config), "--no-progress", *args], env=ENV, capture_output=True,
                          text=True, timeout=300)


def _unchanged(cfg, bundle_dir, catalog_before, files_before):
    """Nothing mined: no record in the bundle, no mining run, every catalog row as it was."""
    from helpers import tree_digest
    assert tree_digest(bundle_dir) == files_before
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        assert catalog.candidates() == catalog_before
        assert not [r for r in catalog.runs() if r["command"].startswith("mine")]


def test_a_bundle_trained_on_other_classes_is_refused(tmp_path):
    """The audit promoted a cat/dog bundle in a balloon/kite/sailboat project: `mlc mine` took balloon
    photos for dogs and held them as `like-class:dog`, exit 0. A bundle whose classes are not the
    config's is refused in one line, exit 2 (a config error), with nothing mined, by the library (what
    `mlc run` and the flow call) and by `mlc mine` with LATEST. Before the fix both mined."""
    from helpers import tree_digest
    from mlc_pipeline.config import ConfigError
    cfg, _ = _pool_world(tmp_path, classes=("red", "green"))       # the shapes bundle knows red and blue
    bundle_dir = _bundle_here(cfg)
    (cfg.layout.models / "LATEST").write_text("bundle\n")          # promoted, as in the audit
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        before = catalog.candidates()
    files = tree_digest(bundle_dir)
    with pytest.raises(ConfigError) as refused:
        mine_round(cfg, bundle_dir, round_no=1)
    assert str(refused.value).startswith("mine: bundle was trained on classes blue, red, not on the config's "
                                         "(red, green): its scores say nothing about this project's pool; "
                                         "nothing was mined"), refused.value
    _unchanged(cfg, bundle_dir, before, files)
    res = _mine_cli(cfg, "--round", "2")
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == f"mlc: {refused.value}", res.stderr[-2000:]
    assert "mlc: " not in "".join(res.stderr.strip().splitlines()[:-1]), res.stderr[-2000:]
    _unchanged(cfg, bundle_dir, before, files)


def test_a_bundle_outside_this_data_roots_models_folder_is_refused(tmp_path):
    """`mlc mine --model <another project's bundle>` wrote mined-r<N>.csv, mined.csv and review.csv into
    that project's bundle, where its report reads them. Mining refuses any bundle folder outside this
    data root's models folder, a link to one included, and leaves it untouched. Before the fix it mined."""
    from helpers import tree_digest
    from mlc_pipeline.config import ConfigError
    cfg, _ = _pool_world(tmp_path / "here")
    foreign = tmp_path / "there" / "data" / "models" / "bundle"     # the same classes: only where it is differs
    shutil.copytree(trained_bundle()[1], foreign)
    cfg.layout.models.mkdir(parents=True)
    (cfg.layout.models / "linked").symlink_to(foreign, target_is_directory=True)
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        before = catalog.candidates()
    files = tree_digest(foreign)
    for given in (foreign, cfg.layout.models / "linked"):
        with pytest.raises(ConfigError) as refused:
            mine_round(cfg, given, round_no=1)
        assert str(refused.value).startswith(f"mine: {given} is not in this data root's models folder "
                                             f"{cfg.layout.models.resolve()}: mining writes its decisions into "
                                             "the bundle it mines with"), refused.value
        assert f"cp -r {given} {cfg.layout.models.resolve()}/" in str(refused.value)
    _unchanged(cfg, foreign, before, files)
    res = _mine_cli(cfg, "--model", str(foreign), "--round", "4")
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith(
        f"mlc: mine: {foreign} is not in this data root's models folder"), res.stderr[-2000:]
    _unchanged(cfg, foreign, before, files)


def test_images_a_flagged_pool_query_found_are_held_when_taken_for_its_class(tmp_path):
    """A user's audit: a pool query the product warned about ("Balloons!" beside a balloon class) still
    had its results mined as "other" when they did not look like the class's training images in
    the model's features (half of them): the warning changed nothing. Such an image the model takes
    for the very class its query overlaps is now held for review; images of the other pool queries
    are decided as before."""
    cfg, images, items, ids, _ = _planted_world(tmp_path, max_per_round=100, hold_above=1.01,   # no score hold
                                                pool={"queries": ["red balls", "q"], "count": 1})
    flagged = {f"pool-red{i}" for i in range(0, 8, 2)}          # half the red pool found by "red balls"
    with Catalog(cfg.catalog_path) as c:
        for pid in flagged:
            c.update_fields(ids[pid], queries=json.dumps(["red balls"]))
    result = mine_round(cfg, _bundle_here(cfg), round_no=1)
    decided = {h["photo_id"]: h["decision"] for h in result.held}
    taken_red = {n["photo_id"] for n in result.negatives} | set(decided)
    assert flagged & taken_red, "the model took none of them for red: a useless test"
    assert all(decided.get(p) == "held:query-overlaps:red" for p in flagged & taken_red), decided
    assert not {p for p, d in decided.items() if d == "held:query-overlaps:red"} - flagged
    assert {n["photo_id"] for n in result.negatives} & ({f"pool-red{i}" for i in range(8)} - flagged), \
        "the unflagged red pool images were not mined as before"
