"""A mining round killed with SIGKILL (no `except`, no `finally`) between its pending record and
the record's publishing: every reader of mining records settles the record against the catalog
itself, so that none shows a round the catalog never committed nor misses one it did, without
waiting for that bundle's next mining (the mining26 leftovers). A real subprocess kills itself at
the point; each reader then meets the crash's state on its own copy of the data root."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
from helpers import ENV
from test_mine import _bundle_here, _planted_world

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.config import Config, ConfigError
from mlc_pipeline.model.mine import MINED_COLUMNS, undo_round
from mlc_pipeline.model.mine_record import PENDING, record_round
from mlc_pipeline.report.analysis import mining_section
from mlc_pipeline.review.queues import mining_bundle, scores_for

# Mines round 1, and kills itself with SIGKILL: "committed" once the catalog committed the round's
# moves (where the pending record would be published), "in-commit" at its second move, the moves
# not committed (the transaction dies with the process).
KILLED_AT = r"""
import json, os, signal, sys
from mlc_pipeline.catalog import Catalog
from mlc_pipeline.config import Config
import mlc_pipeline.model.mine as mine

where, settings, bundle = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if where == "committed":
    mine.publish_record = die
else:
    real, moves = Catalog.set_status, []
    def set_status(self, cid, status, reason, run_id, stage, **fields):
        if stage == "mine":
            moves.append(cid)
            if len(moves) == 2:
                die()
        return real(self, cid, status, reason, run_id, stage, **fields)
    Catalog.set_status = set_status
mine.mine_round(Config(**settings), bundle, round_no=1)
print("not killed")
"""


def _killed_round(tmp_path, where: str) -> Config:
    cfg, *_ = _planted_world(tmp_path, max_per_round=3, hold_above=1.01)
    bundle_dir = _bundle_here(cfg)
    (cfg.layout.models / "LATEST").write_text("bundle\n")
    settings = json.dumps(cfg.model_dump(mode="json", exclude_unset=True))
    res = subprocess.run([sys.executable, "-c", KILLED_AT, where, settings, str(bundle_dir)], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == -9, res.stdout + res.stderr[-3000:]
    # the state the crash left: a pending record, no published one, the run recorded as running
    assert [PENDING.fullmatch(p.name)["round"] for p in bundle_dir.glob(".mined-r*")] == ["1"]
    assert not (bundle_dir / "mined-r1.csv").exists() and not (bundle_dir / "mined.csv").exists()
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        assert [r["status"] for r in catalog.runs() if r["command"] == "mine-1"] == ["crashed"]
    return cfg


def _copy(cfg: Config, tmp_path, name: str) -> Config:
    """The crashed data root copied for one reader (the image files stay where the catalog names them)."""
    shutil.copytree(cfg.data_dir, tmp_path / name)
    return Config(**{**cfg.model_dump(mode="json", exclude_unset=True), "data_dir": str(tmp_path / name)})


def _moved(cfg: Config) -> dict[int, str]:
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        return {r["id"]: "added" if r["mined_round"] == 1 else r["reason"].rsplit(":round=", 1)[0]
                for r in catalog.mined_in_round(1)}


def _record(cfg: Config, name: str = "mined-r1.csv") -> dict[int, str]:
    "What the bundle's record says round 1 added or held."
    with open(cfg.layout.models / "bundle" / name, newline="") as f:
        return {int(r["candidate_id"]): r["decision"] for r in csv.DictReader(f)
                if r["decision"] == "added" or r["decision"].startswith("held:")}


def _no_pending(cfg: Config) -> bool:
    return not list((cfg.layout.models / "bundle").glob(".mined-r*"))


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("committed")
    return _killed_round(tmp, "committed"), tmp


@pytest.fixture(scope="module")
def in_commit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("in-commit")
    return _killed_round(tmp, "in-commit"), tmp


def test_killed_after_its_commit_the_report_shows_the_round_as_the_catalog_holds_it(committed):
    """The HTML report of `mlc run` and `mlc inspect --html` (report/analysis.mining_section)."""
    crashed, tmp = committed
    cfg = _copy(crashed, tmp, "report")
    moved = _moved(cfg)
    added = sum(d == "added" for d in moved.values())
    assert added, "the round moved nothing: a useless test"
    page = mining_section([(1, cfg.layout.models / "bundle")], cfg.catalog_path)
    assert f"Mining round 1: {added} hard negatives added, " in page, page
    assert "never recorded" not in page and "undone" not in page
    assert _record(cfg) == moved and _record(cfg, "mined.csv") == moved and _no_pending(cfg)
    assert mining_section([(1, cfg.layout.models / "bundle")], cfg.catalog_path) == page     # settled once


def test_killed_after_its_commit_the_review_app_shows_its_decisions(committed):
    crashed, tmp = committed
    cfg = _copy(crashed, tmp, "review")
    moved = _moved(cfg)
    cid, decision = next(iter(moved.items()))
    assert [(r["file"], r["decision"]) for r in scores_for(cfg, cid)] == [("mined.csv", decision)]
    assert mining_bundle(cfg) == cfg.layout.models / "bundle" and _no_pending(cfg)


def test_killed_after_its_commit_its_undo_puts_it_back_and_the_record_says_undone(committed):
    crashed, tmp = committed
    cfg = _copy(crashed, tmp, "undo")
    moved = _moved(cfg)
    assert undo_round(cfg, 1) == len(moved)
    assert _record(cfg) == moved and _no_pending(cfg)
    added = sum(d == "added" for d in moved.values())
    assert (f"Mining round 1: 0 hard negatives added (of {added}: {added} undone since)"
            in mining_section([(1, cfg.layout.models / "bundle")], cfg.catalog_path))


def test_killed_in_its_commit_no_reader_shows_the_round(in_commit):
    crashed, tmp = in_commit
    assert _moved(crashed) == {}
    cfg = _copy(crashed, tmp, "report")
    assert mining_section([(1, cfg.layout.models / "bundle")], cfg.catalog_path) == ""
    assert _no_pending(cfg) and not (cfg.layout.models / "bundle" / "mined-r1.csv").exists()
    cfg = _copy(crashed, tmp, "review")
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        pool = [r["id"] for r in catalog.candidates(purpose="pool")]
    assert not [r for cid in pool for r in scores_for(cfg, cid)] and _no_pending(cfg)
    cfg = _copy(crashed, tmp, "undo")
    with pytest.raises(ConfigError, match="round 1 has no mined or held images"):
        undo_round(cfg, 1)
    assert _no_pending(cfg) and not (cfg.layout.models / "bundle" / "mined.csv").exists()


def test_a_reader_leaves_the_pending_record_of_a_round_still_mining_alone(tmp_path):
    """Its own process publishes it once the catalog commits: a reader that settled it then would
    remove a record of moves about to be committed."""
    cfg, *_ = _planted_world(tmp_path)
    bundle_dir = cfg.layout.models / "bundle"
    bundle_dir.mkdir(parents=True)
    with Catalog(cfg.catalog_path) as catalog:
        run_id = catalog.start_run("mine-1")            # running, in this live process
        pool = catalog.candidates(purpose="pool")[:2]
    rows = [{"candidate_id": r["id"], "photo_id": r["photo_id"], "score": 0.9, "accepted_as": "red", "likeness": "",
             "decision": "added", "file": r["file_path"]} for r in pool]
    pending = record_round(bundle_dir, 1, rows, MINED_COLUMNS, run_id)
    assert mining_section([(1, bundle_dir)], cfg.catalog_path) == "" and scores_for(cfg, pool[0]["id"]) == []
    assert pending.is_file()


def test_a_record_that_cannot_be_settled_is_said_and_the_reader_reads_on(committed, caplog):
    """`mlc inspect --html` wrote nothing into a bundle before: a record it cannot settle (a models
    folder it may not write into; here, as root, a pending name that is a folder) must not crash the
    report."""
    crashed, tmp = committed
    cfg = _copy(crashed, tmp, "unsettled")
    bundle_dir = cfg.layout.models / "bundle"
    pending = next(bundle_dir.glob(".mined-r*"))
    pending.unlink()
    pending.mkdir()
    assert mining_section([(1, bundle_dir)], cfg.catalog_path) == ""
    assert "could not be settled" in caplog.text and not _no_pending(cfg)
