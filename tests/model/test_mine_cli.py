"""`mlc mine` as a user types it: a round number it refuses before anything is scored, and the undo
hint it prints only for a round an undo would accept (the mining26 audit, D2 and D5)."""

from __future__ import annotations

import shlex
from types import SimpleNamespace

import pytest
import yaml
from test_mine import _bundle_here, _planted_world

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.cli import main
from mlc_pipeline.model.mine import mine_round


def _project(tmp_path):
    """The planted world with its pool configured and the shapes bundle as LATEST: (config path, cfg, bundle)."""
    cfg, *_ = _planted_world(tmp_path, max_per_round=100)
    bundle = _bundle_here(cfg)
    (cfg.layout.models / "LATEST").write_text(bundle.name + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(cfg.data_dir), "classes": {"red": {"queries": ["red"], "count": 1},
                                                   "blue": {"queries": ["blue"], "count": 1}},
        "other": {"queries": ["noise"], "count": 1}, "mine": {"max_per_round": 100, "pool": {"queries": ["pool"], "count": 1}}}))
    return config, cfg, bundle


@pytest.fixture
def mlc(capsys):
    """`mlc mine -c CONFIG ARGS...` in this process (no torch import per call): its exit code and output."""
    def run(config, *args):
        capsys.readouterr()
        code = main(["mine", "-c", str(config), "--no-progress", *args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


@pytest.mark.parametrize("args", [["--round", "0"], ["--round", "-1"], ["--round", "99999999999999999999"],
                                  ["--undo", "--round", "0"], ["--undo", "--round", "99999999999999999999"]])
def test_a_round_number_outside_1_to_what_sql_holds_is_one_line_and_exit_2_before_anything_is_scored(tmp_path, mlc, args):
    """`--round 0` and `--round -1` mined for real (reasons `hard-negative:round=0`, a report section
    "Mining round 0"); `--round 99999999999999999999` scored the whole pool, then crashed in the commit
    (a traceback, and a phantom record), as did its undo."""
    config, cfg, bundle = _project(tmp_path)
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        before = catalog.candidates()
    res = mlc(config, *args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"mlc: mine{' --undo' if '--undo' in args else ''} --round: a mining round is a whole "
                               "number from 1 to 9223372036854775807, not "), lines
    assert lines[0].endswith("put back" if "--undo" in args else "nothing was mined")
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        assert catalog.candidates() == before and not [r for r in catalog.runs() if r["command"].startswith("mine")]
    assert not list(bundle.glob("*mined*"))


def test_a_round_that_added_and_held_nothing_prints_no_undo_that_would_be_refused(tmp_path, mlc):
    config, cfg, bundle = _project(tmp_path)
    first = mine_round(cfg, bundle, round_no=1)          # takes every pool image the model accepts
    assert first.added, "round 1 mined nothing: a useless test"
    res = mlc(config)                                   # round 2: nothing left to add or hold
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("round 2: scored ") and " 0 hard negatives added " in res.stdout, res.stdout
    assert " 0 held for review" in res.stdout and "--undo" not in res.stdout, res.stdout
    assert mlc(config, "--undo", "--round", "2").returncode == 2          # what the hint would have said
    res = mlc(config, "--round", "1", "--set", "mine.max_per_round=100")   # adds nothing, has images to put back
    hint = f"(undo: `mlc mine -c {config} --set mine.max_per_round=100 --undo --round 1`)"
    assert res.returncode == 0 and hint in res.stdout, res.stdout


def test_the_undo_hint_is_a_command_that_runs_as_copied(tmp_path, capsys):
    """The hint said `mlc mine --undo --round 1`: copied, a usage error (-c is required: the docs27 audit)."""
    config, cfg, bundle = _project(tmp_path)
    assert main(["mine", "-c", str(config), "--no-progress", "--round", "1"]) == 0
    out = capsys.readouterr().out
    hint = out.split("(undo: `", 1)[1].split("`)", 1)[0]
    words = shlex.split(hint)
    assert words[:2] == ["mlc", "mine"], hint
    assert main(words[1:]) == 0, capsys.readouterr().err
    put_back = capsys.readouterr().out
    assert put_back.startswith("round 1: ") and " mined or held pool images put back into the pool" in put_back
    assert int(put_back.split()[2]) > 0, put_back
