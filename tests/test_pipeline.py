"""`mlc run`, the README's main command, end to end: the same stage loop the Prefect flow runs
(pipeline.run_stages), here in-process behind the CLI, against the bundled offline server."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from helpers import ENV, MLC

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.config import load_config
from mlc_pipeline.manifest import read_manifest
from mlc_pipeline.pipeline import Stages


def test_mlc_run_collects_trains_mines_retrains_and_reports(tiny_project):
    res = subprocess.run(MLC + ["run", "-c", str(tiny_project), "--no-progress"], env=ENV, text=True,
                         capture_output=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = load_config(tiny_project)
    data = cfg.data_dir

    # The loop ran every stage: two dataset versions (the second with the mined negatives) and two models.
    summary = json.loads((data / "reports" / "latest.json").read_text())
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert [r["dataset_version"] for r in rounds] == ["v1", "v2"]
    assert rounds[1]["negatives_added"] > 0
    assert set(summary["seconds"]) >= {"collect", "curate", "build", "train", "mine", "report"}
    # the shipped model: round 1's unless it accepted more unknowns than round 0 (tested below)
    shipped = rounds[0]["bundle"] if summary["not_shipped"] else rounds[1]["bundle"]
    assert (data / "models" / "LATEST").read_text().strip() == summary["shipped"] == shipped
    # mine.retrain: continue (the default): round 1 went on from round 0's network, and says so
    r1 = json.loads((data / "models" / rounds[1]["bundle"] / "bundle.json").read_text())
    assert r1["weights"]["continued_from"] == rounds[0]["bundle"]
    assert not [w for w in r1["warnings"] if "retrained from scratch" in w]     # (a costly cap may warn)
    assert summary["report"] == str(data / "reports" / "latest.html")
    html = (data / "reports" / "latest.html").read_text()
    assert "Mining rounds" in html and rounds[1]["bundle"] in html
    if summary["not_shipped"]:        # the report names the shipped model, and says why not round 1's
        assert "id='not-shipped'" in html and "round 1&#x27;s model" in html
    else:                             # the shipped model's Network line
        assert f"continued from {rounds[0]['bundle']}" in html and "id='not-shipped'" not in html
    assert "id='alternatives-off'" in html and "train.compare_baselines=true" in html   # off by default: says how
    # the error analysis of the last model, and what round 1 mined (thumbnails, mined.csv, review.csv)
    assert "id='confusion'" in html and "id='top-losses'" in html and "id='thresholds'" in html
    mined_by = data / "models" / rounds[0]["bundle"]
    assert "id='mined-1'" in html and f"href='{(mined_by / 'review.csv').as_uri()}'" in html
    assert html.count("taken for") >= rounds[1]["negatives_added"]

    # What was mined in round 1 is in v2's training "other" set, and nowhere in v1.
    v1 = read_manifest(cfg.layout.version("v1") / "manifest.csv")
    v2 = read_manifest(cfg.layout.version("v2") / "manifest.csv")
    mined = {r["photo_id"] for r in v2 if r["mined_round"] == "1"}
    assert len(mined) == rounds[1]["negatives_added"]
    assert all(r["labels"] == "" and r["split"] in ("train", "valid", "test") for r in v2 if r["photo_id"] in mined)
    assert not mined & {r["photo_id"] for r in v1}

    # Below the rounds table, what round 1 did with the pool: the images it held for review too
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        held = [r for r in catalog.candidates(reason_prefix="held:") if r["reason"].endswith(":round=1")]
    assert re.search(rf"^mining round 1: \d+ pool images scored, \d+ accepted as a class: "
                     rf"{rounds[1]['negatives_added']} hard negatives added, {len(held)} held for review \(`mlc "
                     rf"review`\), \d+ over the round's cap$", res.stdout, re.M), res.stdout
    assert summary["mined"][0]["held"] == len(held) and summary["mined"][0]["round"] == 1

    # Every class has its count of usable images, or the run said why not.
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        for label, qs in cfg.classes.items():
            usable = catalog.set_tally("train", label, "any")["accepted"]
            assert usable >= qs.count or label in res.stdout, (label, usable)
    assert f"report: {data / 'reports' / 'latest.html'}" in res.stdout


def test_mlc_run_trains_the_comparison_heads_only_when_asked(tiny_project):
    """`train.compare_baselines` is off by default (it doubles the nightly's training time); set, the
    same run also trains the negatives-only and softmax heads on round 0 and reports them beside
    the product model, which alone stays LATEST."""
    res = subprocess.run(MLC + ["run", "-c", str(tiny_project), "--no-progress", "--set", "train.compare_baselines=true",
                                "--set", "mine.rounds=0"], env=ENV, text=True, capture_output=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    data = load_config(tiny_project).data_dir
    summary = json.loads((data / "reports" / "latest.json").read_text())
    assert set(summary["alternatives"]) == {"sigmoid-negatives", "softmax-other-class"}
    assert all("macro_f1" in m["test"] for m in summary["alternatives"].values())
    assert "alternatives" in summary["seconds"]
    bundles = sorted(p.name for p in (data / "models").iterdir() if p.is_dir())
    assert len(bundles) == 3 and sum("softmax-other-class" in b for b in bundles) == 1
    assert (data / "models" / "LATEST").read_text().strip() == summary["rounds"][0]["bundle"]
    html = (data / "reports" / "latest.html").read_text()
    assert "softmax-other-class" in html and "sigmoid-negatives" in html and "id='alternatives-off'" not in html
    assert "product, round 0 (sigmoid-other-class)" in html     # the product's head, whatever the config picks
    assert load_config(tiny_project).train.compare_baselines is False   # what the file does not set


class ScriptedStages(Stages):
    """The loop's stages with scripted results (the real ones are run above, end to end): here only
    what the loop decides from them is under test. Training publishes LATEST as train_version does.
    `unknowns`: per round, (test other, probe) accepted; `valid_f1`, `test_f1`: per round macro F1
    (default 0.9 each)."""

    def __init__(self, unknowns: list[tuple[float, float]], valid_f1: list[float] | None = None,
                 test_f1: list[float] | None = None):
        super().__init__(progress=False)
        self.unknowns, self.calls = unknowns, []
        self.valid_f1, self.test_f1 = valid_f1 or [0.9] * len(unknowns), test_f1 or [0.9] * len(unknowns)

    def collect(self, cfg):
        return {}

    def build(self, cfg):
        return {"path": "unused"}

    def train(self, cfg, dataset_dir, round_no, previous=None, publish=True, **answered):
        from mlc_pipeline.model.stage import publish_latest
        other, probe = self.unknowns[round_no]
        name = f"bundle-r{round_no}"
        self.calls.append((round_no, previous and Path(previous).name, publish))
        if publish:
            publish_latest(cfg, name)
        return {"round": round_no, "bundle": name, "bundle_dir": str(cfg.layout.models / name),
                "dataset_version": f"v{round_no + 1}",
                "metrics": {"test": {"macro_f1": self.test_f1[round_no], "unknown_accepted": other,
                                     "probe_accepted": probe},
                            "valid": {"macro_f1": self.valid_f1[round_no]}}}

    def mine(self, cfg, bundle_dir, round_no):
        return {"added": 5}

    def report(self, cfg, result):
        return ""


def _loop_config(tmp_path, rounds: int):
    from mlc_pipeline.config import Config
    cfg = Config(data_dir=tmp_path / "data", classes={"a": {"queries": ["a"], "count": 1}},
                 other={"queries": ["o"], "count": 1}, mine={"rounds": rounds, "pool": {"queries": ["p"], "count": 1}})
    cfg.layout.models.mkdir(parents=True)
    cfg.layout.reports.mkdir(parents=True)      # the real report stage makes it
    return cfg


def test_a_mining_round_that_accepts_more_unknowns_is_not_shipped(tmp_path):
    """The loop exists to lower unknowns accepted: when a retrain raises them (mean of test other and
    probe), models/LATEST goes back to the round before, the run says why, and the loop stops."""
    from mlc_pipeline.pipeline import run_stages
    from mlc_pipeline.report.rounds import rounds_markdown, shipped_round
    cfg = _loop_config(tmp_path, rounds=3)
    stages = ScriptedStages([(0.00, 0.04), (0.10, 0.09), (0.0, 0.0)])
    out = run_stages(cfg, stages)
    assert [r.round for r in out.rounds] == [0, 1] and out.stopped_early
    # round 1 continued round 0's bundle and left LATEST to the loop, which never pointed it at round 1
    assert stages.calls == [(0, None, True), (1, "bundle-r0", False)]
    assert (cfg.layout.models / "LATEST").read_text().strip() == "bundle-r0" == out.shipped
    assert shipped_round(out).round == 0
    assert "round 1's model bundle-r1 accepted more unknowns than round 0's (0.020 -> 0.095" in out.not_shipped
    assert "| 0 (shipped) | v1 | bundle-r0 |" in rounds_markdown(out) and "| 1 | v2 | bundle-r1 |" in rounds_markdown(out)
    saved = json.loads((cfg.layout.reports / "latest.json").read_text())
    assert saved["shipped"] == "bundle-r0" and saved["not_shipped"] == out.not_shipped
    from mlc_pipeline.report.summary import summary_markdown
    models = [{"round": r.round, "dataset_version": r.dataset_version, "bundle": r.bundle,
               "metrics": {"test": {"macro_f1": r.macro_f1}}} for r in out.rounds]
    text = summary_markdown({"status": "completed", "config_path": "c.yaml", "models": models,
                             "shipped": out.shipped, "not_shipped": out.not_shipped})
    assert f"**Not shipped:** {out.not_shipped}" in text


def test_a_mining_round_that_lowers_unknowns_is_shipped_and_the_loop_goes_on(tmp_path):
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path, rounds=2)
    stages = ScriptedStages([(0.10, 0.30), (0.05, 0.20), (0.05, 0.10)])
    out = run_stages(cfg, stages)
    assert [r.round for r in out.rounds] == [0, 1, 2] and not out.stopped_early
    assert stages.calls == [(0, None, True), (1, "bundle-r0", False), (2, "bundle-r1", False)]
    assert (cfg.layout.models / "LATEST").read_text().strip() == "bundle-r2" == out.shipped
    assert out.not_shipped == ""


def test_a_mining_round_that_buys_fewer_unknowns_with_too_much_f1_is_not_shipped(tmp_path):
    """Measured on real photos (docs/training.md, "Mining"): a retrain took unknowns from 7.3% to 1.0%
    by dropping most class images (test F1 0.70 -> 0.43). That round must not replace the one before,
    and the loop must not go on from it; a loss within mine.max_f1_loss ships."""
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path / "lost", rounds=3)
    stages = ScriptedStages([(0.04, 0.10), (0.0, 0.02), (0.0, 0.0)], valid_f1=[0.70, 0.48, 0.9],
                            test_f1=[0.70, 0.40, 0.9])
    out = run_stages(cfg, stages)
    assert [r.round for r in out.rounds] == [0, 1] and out.stopped_early
    assert [(r.valid_macro_f1, r.macro_f1) for r in out.rounds] == [(0.70, 0.70), (0.48, 0.40)]
    assert (cfg.layout.models / "LATEST").read_text().strip() == "bundle-r0" == out.shipped
    assert out.not_shipped == ("round 1's model bundle-r1 lost 0.260 of macro F1 against round 0's (0.700 -> 0.440, "
                               "mean of validation and test; mine.max_f1_loss is 0.05): models/LATEST stays bundle-r0")
    from mlc_pipeline.report.rounds import rounds_markdown
    report = rounds_markdown(out)       # each F1 column says which split it was measured on
    assert "| macro F1 (test) | macro F1 (valid, without mined) |" in report
    assert "| 1 | v2 | bundle-r1 | 0.400 | 0.480 |" in report
    from mlc_pipeline.report.summary import summary_markdown     # the Prefect run summary shows both columns too
    # the summary reads metrics.json, whose valid F1 counts the round's mined negatives: it shows the
    # figure shipping compared (without them), as the report does; older models have only the whole split's
    models = [{"round": r.round, "dataset_version": r.dataset_version, "bundle": r.bundle,
               "metrics": {"test": {"macro_f1": r.macro_f1},
                           "valid": {"macro_f1": r.valid_macro_f1 - 0.1 * r.round,
                                     **({"macro_f1_without_mined": r.valid_macro_f1} if r.round else {})}}}
              for r in out.rounds]
    summary = summary_markdown({"status": "completed", "config_path": "c.yaml", "models": models,
                                "shipped": out.shipped})
    assert "| macro F1 (test) | macro F1 (valid, without mined) |" in summary
    assert "| 0 (shipped) | v1 | bundle-r0 | 0.700 | 0.700 |" in summary
    assert "| 1 | v2 | bundle-r1 | 0.400 | 0.480 |" in summary

    # within the tolerance: shipped, and the loop goes on
    cfg = _loop_config(tmp_path / "kept", rounds=2)
    stages = ScriptedStages([(0.04, 0.10), (0.0, 0.02), (0.0, 0.01)], valid_f1=[0.70, 0.66, 0.62],
                            test_f1=[0.70, 0.66, 0.62])
    out = run_stages(cfg, stages)
    assert [r.round for r in out.rounds] == [0, 1, 2] and out.not_shipped == "" and out.shipped == "bundle-r2"

    # One split alone must not decide. Real photos, insects world, seed 0 (2026-12-02): validation F1
    # fell 0.695 -> 0.634 while test F1 rose 0.620 -> 0.625 and unknowns fell 9.5% -> 5.8%: shipped.
    cfg = _loop_config(tmp_path / "split", rounds=1)
    out = run_stages(cfg, ScriptedStages([(0.073, 0.117), (0.049, 0.067)], valid_f1=[0.695, 0.634],
                                         test_f1=[0.620, 0.625]))
    assert out.shipped == "bundle-r1" and out.not_shipped == ""

    # the user's tolerance decides: with none allowed, a 0.05 loss is not shipped
    cfg = _loop_config(tmp_path / "strict", rounds=2)
    cfg.mine.max_f1_loss = 0.0
    out = run_stages(cfg, ScriptedStages([(0.04, 0.10), (0.0, 0.02)], valid_f1=[0.70, 0.65], test_f1=[0.70, 0.65]))
    assert out.shipped == "bundle-r0" and "lost 0.050 of macro F1" in out.not_shipped


def test_a_round_that_adds_no_negative_stops_and_says_why(tmp_path):
    """Held images are accepted ones: the message must not claim the model accepted none."""
    from mlc_pipeline.pipeline import mining_stop
    cfg = _loop_config(tmp_path, rounds=2)
    why = mining_stop(cfg, 1, added=0)
    assert "no hard negative added" in why and "held for review" in why
    assert mining_stop(cfg, 1, added=3) is None


class EmptyPoolStages(ScriptedStages):
    """Mining scores the pool and accepts none of it (as mine_round returns it, plain)."""

    def mine(self, cfg, bundle_dir, round_no):
        return {"round": round_no, "model": Path(bundle_dir).name, "scored": 41, "added": 0, "errors": 0,
                "review": [{"photo_id": str(i)} for i in range(7)], "negatives": [], "held": [], "over_cap": 0}


def test_the_run_summary_says_why_mining_stopped(tmp_path):
    """The Prefect run summary said "Mining stopped early (nothing left to mine, or no further
    improvement)", a fixed sentence, though the loop knew which; and "early" with mine.rounds 1."""
    from mlc_pipeline.report.summary import summary_markdown
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path / "empty", rounds=1)
    out = run_stages(cfg, EmptyPoolStages([(0.1, 0.2), (0.1, 0.2)]))
    assert out.stop_reason == mining_stop_text(cfg, 1)
    models = [{"round": r.round, "dataset_version": r.dataset_version, "bundle": r.bundle,
               "metrics": {"test": {"macro_f1": r.macro_f1}}} for r in out.rounds]
    mined = [EmptyPoolStages([]).mine(cfg, "x/bundle-r0", 1)]
    text = summary_markdown({"status": "Completed", "config_path": "c.yaml", "models": models, "mined": mined,
                             "stopped_early": out.stopped_early, "stop_reason": out.stop_reason})
    assert "nothing left to mine, or no further improvement" not in text and "early" not in text, text
    assert f"Mining stopped: {out.stop_reason}." in text, text
    from html import escape
    from mlc_pipeline.report.model import run_notes         # the HTML report says it too (day24 audit)
    assert f"<p id='mining-stopped'><b>Mining stopped:</b> {escape(out.stop_reason)}.</p>" in run_notes(out)
    assert ("Round 1 scored 41 pool images: 0 accepted as a class (0 added as hard negatives, 0 held for review, "
            "0 over the round's cap).") in text, text

    cfg = _loop_config(tmp_path / "flat", rounds=3)      # no further improvement: the figures that say so
    out = run_stages(cfg, ScriptedStages([(0.10, 0.30), (0.10, 0.30), (0.0, 0.0), (0.0, 0.0)]))
    assert [r.round for r in out.rounds] == [0, 1] and out.stopped_early
    assert out.stop_reason == ("round 1: unknowns accepted 0.200 -> 0.200, no longer improving (by 0.000, at "
                               "most mine.min_improvement = 0)")
    cfg = _loop_config(tmp_path / "worse", rounds=3)
    out = run_stages(cfg, ScriptedStages([(0.00, 0.04), (0.10, 0.09), (0.0, 0.0)]))
    assert out.stop_reason == "round 1's model was not shipped: a further round would go on from it"
    cfg = _loop_config(tmp_path / "all", rounds=2)
    out = run_stages(cfg, ScriptedStages([(0.10, 0.30), (0.05, 0.20), (0.05, 0.10)]))
    assert out.stop_reason == "" and not [n for n in run_notes(out) if "mining-stopped" in n]
    mined = [{"round": r, "model": "b", "scored": 41, "added": 5 - r, "held": [{"photo_id": "7"}] * r,
              "over_cap": 0} for r in (1, 2)]
    text = summary_markdown({"status": "Completed", "config_path": "c.yaml", "models": models, "mined": mined,
                             "stop_reason": ""})       # every round ran: the summary still says what each held
    assert ("Mining: Round 1 scored 41 pool images: 5 accepted as a class (4 added as hard negatives, 1 held "
            "for review, 0 over the round's cap). Round 2 scored 41 pool images: 5 accepted as a class (3 added "
            "as hard negatives, 2 held for review, 0 over the round's cap).") in text, text


def mining_stop_text(cfg, round_no: int) -> str:
    from mlc_pipeline.pipeline import mining_stop
    return mining_stop(cfg, round_no, added=0)


class NightlyStages(ScriptedStages):
    """ScriptedStages whose bundles exist (metrics.json, as train_model writes it) and whose builds
    return the versions given, (name, published) in turn, as build_dataset does; each model is trained
    on the version built last."""

    def __init__(self, unknowns, builds: list[tuple[str, bool]]):
        super().__init__(unknowns)
        self.builds, self.version = list(builds), None

    def build(self, cfg):
        self.version, published, *fingerprint = self.builds.pop(0)
        if not fingerprint:
            return {"path": "unused", "version": self.version, "published": published}
        folder = cfg.layout.datasets / self.version      # what shipping reads of a version: its fingerprint
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dataset.json").write_text(json.dumps({"version": self.version, "fingerprint": fingerprint[0]}))
        return {"path": "unused", "version": self.version, "published": published, "fingerprint": fingerprint[0]}

    def train(self, cfg, dataset_dir, round_no, previous=None, publish=True, **answered):
        model = super().train(cfg, dataset_dir, round_no, previous, False, **answered)
        model["bundle"] = f"{cfg.build.name}-{self.version}-r{round_no}"
        model["dataset_version"] = self.version
        bundle = cfg.layout.models / model["bundle"]
        bundle.mkdir(exist_ok=True)
        (bundle / "metrics.json").write_text(json.dumps(model["metrics"]))
        (bundle / "export.pkl").write_bytes(b"a network" * 100)       # whole, as registry.check_bundle reads it
        from mlc_pipeline.fsutil import sha256_file
        (bundle / "bundle.json").write_text(json.dumps({
            "vocab": [*cfg.classes, "other"], "classes": list(cfg.classes), "head": "sigmoid", "image_size": 64,
            "thresholds": [0.5] * (len(cfg.classes) + 1), "export_sha256": sha256_file(bundle / "export.pkl")}))
        model["bundle_dir"] = str(bundle)
        if publish:
            from mlc_pipeline.model.stage import publish_latest
            publish_latest(cfg, model["bundle"])
        return model


class HoldingStages(ScriptedStages):
    """Mining as mine_round returns it (plain): of 41 pool images scored, 9 accepted as a class: 5
    added, 3 held for review, 1 over the round's cap."""

    def mine(self, cfg, bundle_dir, round_no):
        held = [{"photo_id": f"h{i}", "decision": "held:like-class:a"} for i in range(3)]
        return {"round": round_no, "model": Path(bundle_dir).name, "scored": 41, "accepted": 9, "added": 5,
                "errors": 0, "review": [], "negatives": [{"photo_id": f"n{i}"} for i in range(5)], "held": held,
                "over_cap": 1, "decided_in_review": 0}


def test_mlc_run_says_how_many_images_each_mining_round_held_for_review(tmp_path):
    """`mlc run` printed the rounds table (negatives added) and nothing of the images a round held,
    which wait for a reviewer (`mlc mine` says both)."""
    from mlc_pipeline.pipeline import run_stages
    from mlc_pipeline.report.rounds import mining_text
    cfg = _loop_config(tmp_path, rounds=2)
    out = run_stages(cfg, HoldingStages([(0.10, 0.30), (0.05, 0.20), (0.02, 0.10)]))
    assert [r.round for r in out.rounds] == [0, 1, 2]
    assert mining_text(out) == "".join(
        f"mining round {r}: 41 pool images scored, 9 accepted as a class: 5 hard negatives added, 3 held for "
        "review (`mlc review`), 1 over the round's cap\n" for r in (1, 2))
    saved = json.loads((cfg.layout.reports / "latest.json").read_text())["mined"]
    assert saved == [{"round": r, "added": 5, "held": 3, "scored": 41, "accepted": 9, "over_cap": 1,
                      "decided_in_review": 0} for r in (1, 2)]
    assert mining_text(run_stages(_loop_config(tmp_path / "scripted", rounds=1),
                                  ScriptedStages([(0.1, 0.3), (0.05, 0.2)]))) == (
        "mining round 1: 5 hard negatives added, 0 held for review (`mlc review`)\n")


def test_a_run_with_nothing_new_to_learn_mines_from_the_shipped_model_instead_of_training_it_again(tmp_path, monkeypatch):
    """A nightly run whose build publishes nothing new, with the same training settings, would train
    round 0 on the data the shipped model already learnt (24 minutes on a slow 2-core box, to find it
    again): round 0 is that model, and mining goes on from it. New data, other settings, a model
    promoted by hand since, other training code, or ImageNet weights at hand now: round 0 trains."""
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path, rounds=1)
    first = NightlyStages([(0.10, 0.30), (0.05, 0.20)], [("v1", True), ("v2", True)])
    out = run_stages(cfg, first)
    assert [c[0] for c in first.calls] == [0, 1] and out.shipped == "default-v2-r1" and not out.reused

    # The next night: the pool grew (mining has new images), the classes did not: the build is unchanged.
    night = NightlyStages([(0.05, 0.20), (0.04, 0.10)], [("v2", False), ("v3", True)])
    out = run_stages(cfg, night)
    assert night.calls == [(1, "default-v2-r1", False)]       # no round 0 training: round 1 went on from it
    assert (out.rounds[0].round, out.rounds[0].bundle, out.rounds[0].dataset_version) == (0, "default-v2-r1", "v2")
    assert "round 0 is that model, not trained again" in out.reused and "default-v2-r1" in out.reused
    assert out.shipped == "default-v3-r1" == (cfg.layout.models / "LATEST").read_text().strip()
    assert json.loads((cfg.layout.reports / "latest.json").read_text())["reused"] == out.reused
    from mlc_pipeline.report.model import run_notes         # the report says so
    assert run_notes(out)[0].startswith("<p id='reused'><b>Round 0:</b> dataset v2 and the training settings")
    from mlc_pipeline.report.summary import summary_markdown  # and the Prefect run, whose round 0 is listed
    from flows.collect_and_train import Run, TaskStages
    run = Run("collect-and-train", "c.yaml", None)
    model = {"round": 0, "bundle": "default-v2-r1", "dataset_version": "v2", "metrics": {"test": {"macro_f1": 0.9}}}
    assert TaskStages(run).reuse(cfg, model) == model and run.data["models"] == [model]
    text = summary_markdown({"status": "completed", "config_path": "c.yaml", "models": run.data["models"],
                             "shipped": "default-v2-r1", "reused": out.reused})
    assert f"**Round 0:** {out.reused}" in text and "| 0 | v2 | default-v2-r1 |" in text

    def new_data(builds, last):
        builds[0] = ("v9", True)

    def other_settings(builds, last):
        cfg.train.epochs = 7

    def promoted_by_hand(builds, last):       # the last run's other round, on the version it trained on
        other = next(r for r in last["rounds"] if r["bundle"] != last["shipped"])
        (cfg.layout.models / "LATEST").write_text(other["bundle"] + "\n")
        builds[0] = (other["dataset_version"], False)

    def other_training_code(builds, last):
        monkeypatch.setattr("mlc_pipeline.shipping.training_code_fingerprint", lambda: "changed")

    def imagenet_weights_now_at_hand(builds, last):
        monkeypatch.setattr("mlc_pipeline.shipping.weights_at_hand", lambda c: "imagenet:resnet34:cached")

    def shipped_model_damaged(builds, last):       # mining crashed on it every night (verify23)
        export = cfg.layout.models / last["shipped"] / "export.pkl"
        export.write_bytes(export.read_bytes()[:10])

    for change in (new_data, other_settings, promoted_by_hand, other_training_code, imagenet_weights_now_at_hand,
                   shipped_model_damaged):
        latest = (cfg.layout.models / "LATEST").read_text().strip()
        last = json.loads((cfg.layout.reports / "latest.json").read_text())
        version = last["rounds"][-1]["dataset_version"]
        builds = [(version, False), (version + "m", True)]        # unchanged, but for the change
        change(builds, last)
        again = NightlyStages([(0.05, 0.20), (0.04, 0.10)], builds)
        out = run_stages(cfg, again)
        assert not out.reused and again.calls[0][0] == 0, (change.__name__, latest, again.calls)


def test_a_new_version_whose_attribution_alone_changed_does_not_train_round_0_again(tmp_path):
    """A changed ATTRIBUTION.md (a photo page found, an owner renamed) publishes a new version with the
    same rows (build.same_as_published): round 0 retrained once on the same images, because reuse was
    keyed on the version's name. Same fingerprint: the shipped model is round 0; another: it trains."""
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path, rounds=1)
    run_stages(cfg, NightlyStages([(0.10, 0.30), (0.05, 0.20)], [("v1", True, "fp-a"), ("v2", True, "fp-b")]))
    assert (cfg.layout.models / "LATEST").read_text().strip() == "default-v2-r1"

    night = NightlyStages([(0.05, 0.20), (0.04, 0.10)], [("v3", True, "fp-b"), ("v4", True, "fp-c")])
    out = run_stages(cfg, night)
    assert night.calls == [(1, "default-v2-r1", False)]       # no round 0 training
    assert (out.rounds[0].bundle, out.rounds[0].dataset_version) == ("default-v2-r1", "v2")
    assert "dataset v3 (the images, labels and splits of v2)" in out.reused

    other = NightlyStages([(0.05, 0.20), (0.04, 0.10)], [("v5", True, "fp-d"), ("v6", True, "fp-e")])
    out = run_stages(cfg, other)
    assert other.calls[0][0] == 0 and not out.reused


class ShippedModelStages(NightlyStages):
    """NightlyStages whose bundles are whole enough for `incumbent_model` (bundle.json with the
    classes), and whose `assess` scores a bundle on the version built last as `scored` says:
    bundle name -> (test F1, test other, probe accepted)."""

    def __init__(self, unknowns, builds, test_f1, scored):
        super().__init__(unknowns, builds)
        self.test_f1, self.valid_f1, self.scored, self.assessed, self.reused = test_f1, test_f1, scored, [], []

    def train(self, cfg, dataset_dir, round_no, previous=None, publish=True, **answered):
        model = super().train(cfg, dataset_dir, round_no, previous, publish, **answered)
        meta = json.loads((Path(model["bundle_dir"]) / "bundle.json").read_text())
        (Path(model["bundle_dir"]) / "bundle.json").write_text(json.dumps({**meta, "classes": list(cfg.classes)}))
        return model

    def assess(self, cfg, bundle_dir, ds):
        name = Path(bundle_dir).name
        self.assessed.append((name, ds["version"]))
        f1, other, probe = self.scored[name]
        return {"round": 0, "bundle": name, "bundle_dir": bundle_dir, "dataset_version": ds["version"],
                "metrics": {"test": {"macro_f1": f1, "unknown_accepted": other, "probe_accepted": probe},
                            "valid": {"macro_f1": f1}}}

    def reuse(self, cfg, model):        # the flow's summary lists round 0 from these calls
        self.reused.append(model["bundle"])
        return super().reuse(cfg, model)


def test_a_new_round_0_replaces_the_shipped_model_only_if_it_does_as_well_on_the_same_version(tmp_path):
    """A user's audit: a night with nothing new after a refused mining round trained round 0 again on
    that round's version and moved LATEST to it unconditionally: test F1 0.540 -> 0.275. A new round 0
    now meets the rule a mining round meets, against the shipped model scored on the new version."""
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path, rounds=1)
    night1 = ShippedModelStages([(0.10, 0.30), (0.30, 0.40)], [("v1", True), ("v2", True)], [0.54, 0.32], {})
    out = run_stages(cfg, night1)
    assert out.shipped == "default-v1-r0" and "accepted more unknowns" in out.not_shipped   # round 1 refused

    # Night 2, nothing new: v2 again. Round 0 trains on v2 (LATEST learnt v1) and is worse.
    night2 = ShippedModelStages([(0.10, 0.30), (0.05, 0.25)], [("v2", False), ("v3", True)], [0.275, 0.52],
                                {"default-v1-r0": (0.54, 0.10, 0.30)})
    out = run_stages(cfg, night2)
    assert night2.assessed == [("default-v1-r0", "v2")]
    assert night2.calls[0] == (0, None, False)                       # round 0 left LATEST alone
    assert "lost 0.265 of macro F1 against the shipped model, scored on v2" in out.not_shipped, out.not_shipped
    assert "round 0 is the shipped model default-v1-r0" in out.not_shipped
    assert night2.reused == ["default-v1-r0"]      # round 0 is the kept model, as the flow's summary shows
    assert (out.rounds[0].bundle, out.rounds[0].dataset_version) == ("default-v1-r0", "v2")
    assert night2.calls[1] == (1, "default-v1-r0", False)            # mining went on from the shipped model
    assert out.shipped == "default-v3-r1" == (cfg.layout.models / "LATEST").read_text().strip()

    # Night 3, new data: a round 0 that does as well ships, as before.
    night3 = ShippedModelStages([(0.05, 0.20), (0.05, 0.25)], [("v4", True), ("v5", True)], [0.60, 0.50],
                                {"default-v3-r1": (0.52, 0.05, 0.25)})
    out = run_stages(cfg, night3)
    assert night3.assessed == [("default-v3-r1", "v4")] and night3.calls[0] == (0, None, False)
    assert out.rounds[0].bundle == "default-v4-r0" and not out.not_shipped.startswith("round 0")
    assert night3.reused == []
    assert out.shipped == "default-v4-r0" == (cfg.layout.models / "LATEST").read_text().strip()   # round 1 refused


def test_a_shipped_model_that_cannot_be_scored_lets_round_0_ship(tmp_path, caplog):
    """The comparison is a guard, not a new way for a nightly run to fail."""
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path, rounds=0)
    run_stages(cfg, ShippedModelStages([(0.1, 0.3)], [("v1", True)], [0.5], {}))

    class Broken(ShippedModelStages):
        def assess(self, cfg, bundle_dir, ds):
            raise OSError("bundle damaged")
    out = run_stages(cfg, Broken([(0.2, 0.4)], [("v2", True)], [0.3], {}))
    assert out.shipped == "default-v2-r0" == (cfg.layout.models / "LATEST").read_text().strip()
    assert "could not be scored on v2 (OSError: bundle damaged): round 0's model ships" in caplog.text

    class Buggy(ShippedModelStages):
        def assess(self, cfg, bundle_dir, ds):
            return {}["metrics"]                 # a bug, not a damaged bundle: it is not hidden
    with pytest.raises(KeyError):
        run_stages(cfg, Buggy([(0.2, 0.4)], [("v3", True)], [0.3], {}))


class FlowRecordedStages(ShippedModelStages):
    """ShippedModelStages whose results also go into a flow run's record (flows/collect_and_train.Run)
    as TaskStages puts them there; TaskStages' own stage methods submit Prefect tasks, which
    tests/test_flows.py runs."""

    def __init__(self, *args):
        super().__init__(*args)
        from flows.collect_and_train import Run
        self.run = Run("collect-and-train", "c.yaml", None)

    def train(self, cfg, dataset_dir, round_no, previous=None, publish=True, **answered):
        model = super().train(cfg, dataset_dir, round_no, previous, publish, **answered)
        self.run.data["models"].append(model)
        return model

    def reuse(self, cfg, model):
        from flows.collect_and_train import TaskStages
        super().reuse(cfg, model)
        return TaskStages.reuse(self, cfg, model)

    def mine(self, cfg, bundle_dir, round_no):
        mined = {**super().mine(cfg, bundle_dir, round_no), "round": round_no}     # as mine_round returns it
        self.run.data["mined"].append(mined)
        return mined

    def report(self, cfg, result):
        self.run.data.update(shipped=result.shipped, not_shipped=result.not_shipped, reused=result.reused)
        return ""


def test_the_html_report_and_the_run_summary_print_the_same_rounds_table(tmp_path):
    """The HTML report (and `mlc run`) and the Prefect run summary had a rounds table each, and they
    drifted: the summary's had a model column and a row for a round 0 trained but not shipped, the
    report's marked the shipped model. One table now, the same text in both for the same run."""
    from mlc_pipeline.pipeline import run_stages
    from mlc_pipeline.report.latest import latest_result
    from mlc_pipeline.report.rounds import ROUNDS_HEADER, rounds_markdown
    from mlc_pipeline.report.summary import summary_markdown
    cfg = _loop_config(tmp_path, rounds=1)
    run_stages(cfg, ShippedModelStages([(0.10, 0.30), (0.05, 0.20)], [("v1", True), ("v2", True)], [0.54, 0.54], {}))
    night2 = FlowRecordedStages([(0.10, 0.30), (0.05, 0.20)], [("v3", True), ("v4", True)], [0.275, 0.52],
                                {"default-v2-r1": (0.54, 0.05, 0.20)})
    out = run_stages(cfg, night2)        # round 0 refused (the shipped model kept), round 1 shipped
    assert out.shipped == "default-v4-r1" and out.rounds[0].bundle == "default-v2-r1"

    summary = summary_markdown({**night2.run.data, "status": "Completed"})
    table = summary[summary.index(ROUNDS_HEADER):].split("\n\n")[0]
    assert [row.split(" | ")[:3] for row in table.splitlines()[2:]] == [
        ["| 0", "v3", "default-v2-r1"], ["| 0, trained, not shipped", "v3", "default-v3-r0"],
        ["| 1 (shipped)", "v4", "default-v4-r1"]], table
    # the HTML report's model section (report/model.model_section) and `mlc run` print rounds_markdown
    # of the result (the written page: tests/test_flows.py::test_flow_completes_with_artifacts)
    assert rounds_markdown(out) == table + "\n"
    # and the report written again from latest.json (`mlc inspect --html`) shows it too
    assert rounds_markdown(latest_result(cfg)) == table + "\n"


def test_a_later_runs_mining_rounds_are_numbered_on_from_the_catalog(tmp_path):
    """A user's audit: every `mlc run` mined "round 1" again, so a later run's negatives joined an
    earlier run's under one round (its cap, its record, its undo). Rounds now number on from the
    catalog's last."""
    from mlc_pipeline.catalog import Found
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path, rounds=2)
    with Catalog(cfg.catalog_path) as c:            # an earlier run mined up to round 3
        run_id = c.start_run("earlier")
        c.upsert_found([Found("local", "p1", "pool", "other", "o", "http://x/p1", "url_m", 40, 40, 4,
                              "CC BY 2.0", "o", "owner", "t", None, None, "t")], run_id)
        c.set_status(c.get_by_photo("local", "p1")["id"], "accepted", "hard-negative:round=3", run_id, "mine",
                     purpose="train", curated_label="other", mined_round=3)
    stages = ScriptedStages([(0.3, 0.3)] * 4 + [(0.2, 0.2), (0.1, 0.1)])
    out = run_stages(cfg, stages)
    assert [r.round for r in out.rounds] == [0, 4, 5] and [c[0] for c in stages.calls] == [0, 4, 5]


def test_a_refused_round_0_and_a_refused_mining_round_are_both_told(tmp_path):
    """A user's audit: when the new round 0 and then round 1 were both refused, round 1's reason
    replaced round 0's in the summary, the report and latest.json."""
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path, rounds=1)
    run_stages(cfg, ShippedModelStages([(0.10, 0.30), (0.05, 0.20)], [("v1", True), ("v2", True)], [0.54, 0.54], {}))
    night2 = ShippedModelStages([(0.10, 0.30), (0.30, 0.40)], [("v3", True), ("v4", True)], [0.275, 0.52],
                                {"default-v2-r1": (0.54, 0.05, 0.20)})
    out = run_stages(cfg, night2)
    assert out.not_shipped.startswith("round 0's model default-v3-r0 accepted more unknowns than the shipped model"), \
        out.not_shipped
    assert "; round 1's model default-v4-r1 accepted more unknowns than round 0's" in out.not_shipped, out.not_shipped
    assert "not shipped" not in out.not_shipped      # printed after "not shipped: " (it read "...: not shipped; ...")


class StoppedWhileMining(ShippedModelStages):
    """Ctrl-C once mining has started: round 0 trained, compared and shipped, reports/latest.json not
    written (the CLI turns SIGTERM into the same KeyboardInterrupt)."""

    def mine(self, cfg, bundle_dir, round_no):
        raise KeyboardInterrupt


def _stopped_after_shipping_round_0(cfg):
    """A run that completed (LATEST default-v2-r1), then one that trained round 0 on new images (v3),
    found it better than the shipped model, shipped it and was stopped in mining."""
    from mlc_pipeline.pipeline import run_stages
    run_stages(cfg, ShippedModelStages([(0.10, 0.30), (0.05, 0.20)], [("v1", True), ("v2", True)], [0.6, 0.6], {}))
    stopped = StoppedWhileMining([(0.05, 0.20)], [("v3", True)], [0.62], {"default-v2-r1": (0.6, 0.05, 0.20)})
    with pytest.raises(KeyboardInterrupt):
        run_stages(cfg, stopped)
    assert stopped.assessed == [("default-v2-r1", "v3")] and _latest(cfg) == "default-v3-r0"


def _latest(cfg) -> str:
    return (cfg.layout.models / "LATEST").read_text().strip()


def test_the_rerun_of_a_run_stopped_while_mining_goes_on_from_the_round_0_it_shipped(tmp_path):
    """The mining26 audit: the rerun trained round 0 from scratch again (an identical model, 2.7 of its
    8 minutes), though `mlc run` said "finished stages are kept": only reports/latest.json, which the
    stopped run never wrote, said what a run had shipped."""
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path, rounds=1)
    _stopped_after_shipping_round_0(cfg)
    again = StoppedWhileMining([(0.05, 0.20)], [("v3", False)], [0.62], {})      # nothing new: v3 again
    with pytest.raises(KeyboardInterrupt):
        run_stages(cfg, again)
    assert again.calls == [] and again.reused == ["default-v3-r0"] and again.assessed == []
    done = ShippedModelStages([(0.05, 0.20), (0.04, 0.10)], [("v3", False), ("v4", True)], [0.62, 0.62], {})
    out = run_stages(cfg, done)           # completes: mining went on from the stopped run's round 0
    assert done.calls == [(1, "default-v3-r0", False)] and "round 0 is that model, not trained again" in out.reused
    assert out.shipped == "default-v4-r1" == _latest(cfg)
    shipped = json.loads((cfg.layout.reports / "shipped.json").read_text())
    assert (shipped["shipped"], shipped["dataset_version"]) == ("default-v4-r1", "v4")
    assert shipped["trained_with"] == json.loads((cfg.layout.reports / "latest.json").read_text())["trained_with"]


def test_after_a_run_stopped_while_mining_a_new_round_0_must_beat_the_round_0_it_shipped(tmp_path):
    """By the code (the audit could not see it): LATEST, the stopped run's round 0, looked promoted by
    hand, so the next round 0 was published with no comparison, however much worse it was."""
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path, rounds=1)
    _stopped_after_shipping_round_0(cfg)
    worse = ShippedModelStages([(0.30, 0.40), (0.05, 0.20)], [("v4", True), ("v5", True)], [0.30, 0.62],
                               {"default-v3-r0": (0.62, 0.05, 0.20)})
    out = run_stages(cfg, worse)          # new images: round 0 trains on v4, and is worse
    assert worse.assessed == [("default-v3-r0", "v4")] and worse.reused == ["default-v3-r0"]
    assert "round 0 is the shipped model default-v3-r0" in out.not_shipped
    assert worse.calls[1] == (1, "default-v3-r0", False) and out.rounds[0].bundle == "default-v3-r0"


def test_a_round_0_with_other_settings_says_it_replaces_the_shipped_model_without_a_comparison(tmp_path, caplog):
    """A one-epoch look on the main job's data root (other train settings) replaced the shipped model
    with no comparison and nothing said (the dayone28 audit): by design (other settings are the user's
    new choice), but now said, with what differs and the way back. Same settings: not said."""
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path, rounds=1)
    run_stages(cfg, NightlyStages([(0.10, 0.30), (0.05, 0.20)], [("v1", True), ("v2", True)]))
    shipped = (cfg.layout.models / "LATEST").read_text().strip()
    caplog.clear()
    run_stages(cfg, NightlyStages([(0.05, 0.20), (0.04, 0.10)], [("v3", True), ("v4", True)]))
    assert "without a comparison" not in caplog.text        # same settings: compared (ShippedModelStages' tests)
    shipped = (cfg.layout.models / "LATEST").read_text().strip()
    cfg.train.epochs = 1
    run_stages(cfg, NightlyStages([(0.05, 0.20), (0.04, 0.10)], [("v5", True), ("v6", True)]))
    assert (f"round 0 is trained with other settings than the shipped model {shipped} (train.epochs differ): it "
            f"replaces models/LATEST without a comparison; `mlc promote {shipped}` puts it back") in caplog.text


def test_what_an_upgrade_made_the_run_do_once_is_in_its_summary_not_only_in_the_log(tmp_path):
    """The first curate after an upgrade migrates the catalog and inspects JPEGs again (curate's
    `upgrade`, tests/dataset/test_curate_build.py): `mlc run` printed it as a log line only, which
    scrolled past. The run's result, its printed summary, the HTML report, latest.json and the
    Prefect run summary say it now."""
    from html import escape
    from mlc_pipeline.pipeline import run_stages
    from mlc_pipeline.report.model import run_notes, upgrade_lines
    from mlc_pipeline.report.summary import summary_markdown
    said = ["catalog migrated from schema 2 to 3 (...)", "2 JPEG(s) curated before JPEGs were decoded strictly "
            "(mlc-pipeline before 0.3.0) inspected again, once: 1 rejected now as damaged"]

    class Upgraded(ScriptedStages):
        def collect(self, cfg):
            return {"short": [], "curate": {"accepted": 3, "inspected": 2, "reused": 1, "upgrade": said}}

    cfg = _loop_config(tmp_path, rounds=1)
    out = run_stages(cfg, Upgraded([(0.1, 0.3), (0.05, 0.2)]))
    assert out.upgrade == said
    assert upgrade_lines(out) == [f"once after an upgrade: {line}" for line in said]        # what `mlc run` prints
    assert [n for n in run_notes(out) if "upgrade" in n] == [
        f"<p class='upgrade'><b>Once after an upgrade:</b> {escape(line)}</p>" for line in said]
    assert json.loads((cfg.layout.reports / "latest.json").read_text())["upgrade"] == said
    text = summary_markdown({"status": "Completed", "config_path": "c.yaml",
                             "curate": {"accepted": 3, "inspected": 2, "reused": 1, "upgrade": said}})
    assert "**Once after an upgrade:**\n\n- catalog migrated from schema 2 to 3 (...)\n- 2 JPEG(s) curated" in text, text
    nothing = run_stages(_loop_config(tmp_path / "fresh", rounds=1), ScriptedStages([(0.1, 0.3), (0.05, 0.2)]))
    assert nothing.upgrade == [] and upgrade_lines(nothing) == []
