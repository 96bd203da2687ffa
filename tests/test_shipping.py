"""What decides that round 0 trains again (shipping.round0_key): the weights a training would get now,
and the training code. Real files: a weights file in TORCH_HOME, a copy of the package with one file
changed. And the rule a mining round's model must meet to replace the one before (`not_shipped_reason`),
on hand-made round records and through the stage loop with scripted stages (test_pipeline.py runs
the loop end to end)."""

import json
import shutil
from pathlib import Path

import pytest

from mlc_pipeline import shipping
from mlc_pipeline.config import parse_config
from mlc_pipeline.fsutil import sha256_file
from mlc_pipeline.rounds import RoundRecord
from test_pipeline import NightlyStages, ScriptedStages, _loop_config

PACKAGE = Path(shipping.__file__).parent


def config(data_dir=None, mine=None, **train):
    return parse_config({"classes": {"a": {"queries": ["a"], "count": 1}}, "other": {"queries": ["o"], "count": 1},
                         "train": train, "mine": mine or {}, **({"data_dir": str(data_dir)} if data_dir else {})})


def kept_model(cfg, key):
    "The model a new round 0 must beat (`shipping.incumbent_model`), as `mlc run` asks it."
    return shipping.incumbent_model(cfg, shipping.shipped_model(cfg, key))


def test_the_weights_at_hand_name_what_a_training_would_start_from_now(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert shipping.weights_at_hand(config()) == "imagenet:resnet18:not cached"
    assert shipping.weights_at_hand(config(pretrained="imagenet")) == "imagenet:resnet18:not cached"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")                  # read by name only: no torch.load here
    assert shipping.weights_at_hand(config()) == "imagenet:resnet18:cached"      # weights arrived: train again
    assert shipping.weights_at_hand(config(arch="resnet34")) == "imagenet:resnet34:not cached"
    assert shipping.weights_at_hand(config(arch="mlcnet")) == "none"   # no ImageNet weights for it
    assert shipping.weights_at_hand(config(pretrained="none")) == "none"
    assert shipping.weights_at_hand(config(pretrained=False)) == "none"
    mine = tmp_path / "mine.pth"
    assert shipping.weights_at_hand(config(pretrained=str(mine))) == f"missing:{mine}"
    mine.write_bytes(b"one")
    first = shipping.weights_at_hand(config(pretrained=str(mine)))
    mine.write_bytes(b"two")                        # the same path, other content: train again
    second = shipping.weights_at_hand(config(pretrained=str(mine)))
    assert first.startswith("file:") and first != second and second == f"file:{sha256_file(mine)}"
    keys = {str(shipping.round0_key(config(pretrained=p))) for p in ("auto", "none", str(mine))}
    assert len(keys) == 3


@pytest.mark.parametrize("edit, retrains", [("model/train.py", True), ("model/losses.py", True),
                                            ("model/stage.py", True), ("model/mine.py", False),
                                            ("model/predict_cli.py", False), ("model/registry.py", False),
                                            ("review/app.py", False), ("curate/stage.py", False)])
def test_a_change_to_the_training_code_and_only_to_it_moves_the_fingerprint(tmp_path, monkeypatch, edit, retrains):
    """The fingerprint reads the package beside shipping.py: here a copy of it, then the copy edited."""
    copy = tmp_path / "mlc_pipeline"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(shipping, "__file__", str(copy / "shipping.py"))
    before = shipping.training_code_fingerprint()
    assert before == fingerprint_here(), "a copy of the same code must give the same fingerprint"
    with open(copy / edit, "a") as f:
        f.write("\n# one more line\n")
    assert (shipping.training_code_fingerprint() != before) is retrains


def fingerprint_here() -> str:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shipping, "__file__", str(PACKAGE / "shipping.py"))
        return shipping.training_code_fingerprint()


def latest_is_model_1(tmp_path):
    """A data root whose models/LATEST names the bundle model-1, with a reports folder: (the config,
    the bundle, its round0_key)."""
    cfg = config(tmp_path / "data")
    bundle = cfg.layout.models / "model-1"
    bundle.mkdir(parents=True)
    (cfg.layout.models / "LATEST").write_text("model-1\n")
    cfg.layout.reports.mkdir(parents=True)
    return cfg, bundle, shipping.round0_key(cfg)


@pytest.mark.parametrize("meta_text, incumbent", [
    (json.dumps({"classes": ["a"]}), True),             # a whole bundle of the config's classes
    (json.dumps({"classes": ["b"]}), False),            # other classes: not the one to beat
    ("[]", False), ('"a model"', False), ("null", False),   # JSON, but no object: crashed the run (AttributeError)
    ("{not json", False), ("", False)])
def test_the_incumbent_is_a_bundle_whose_bundle_json_names_the_classes(tmp_path, meta_text, incumbent):
    """The shipped LATEST is the model a new round 0 must beat only when its bundle.json is an object
    naming the config's classes; any other bundle.json makes round 0 ship as before, with no crash."""
    cfg, bundle, key = latest_is_model_1(tmp_path)
    (bundle / "bundle.json").write_text(meta_text)
    (cfg.layout.reports / "latest.json").write_text(json.dumps({"trained_with": key, "shipped": "model-1"}))
    assert kept_model(cfg, key) == (bundle if incumbent else None)


OTHER_EPOCHS = {"epochs": -1}       # trained_with another round0_key: train.epochs differs


OTHER_SETTINGS = ("round 0 is trained with other settings than the shipped model model-1 (train.epochs differ): "
                  "it replaces models/LATEST without a comparison; `mlc promote model-1` puts it back")
NO_SETTINGS = ("the shipped model model-1 has no training settings on record (trained by an older mlc-pipeline): "
               "round 0 replaces models/LATEST without a comparison; `mlc promote model-1` puts it back")


@pytest.mark.parametrize("record, reused, replaced", [
    ({"shipped": "model-1", "dataset_version": "v1"}, True, None),   # shipped with this key: reused, compared
    ({"shipped": "model-1", "dataset_version": "v1", "other": OTHER_EPOCHS}, False, OTHER_SETTINGS),
    ({"shipped": "model-0", "dataset_version": "v1", "other": OTHER_EPOCHS}, False, None),  # LATEST by hand
    ({"shipped": "model-1", "dataset_version": "v1", "trained_with": "k"}, False, NO_SETTINGS),  # no key of a run
    ("[]", False, None), ("null", False, None), ('"model-1"', False, None),  # JSON, but no object
    ("{not json", False, None), ("", False, None)])
def test_one_reader_of_the_shipped_record_for_reuse_and_for_the_replaced_line(tmp_path, caplog, record, reused,
                                                                                  replaced):
    """reports/shipped.json is read once, by `shipped_record`, for both `shipped_with` (round 0 reused or
    compared) and `replaced_without_comparison` (round 0 replaces LATEST unsaid): the same record, the
    same shape checks, and an unreadable record said once, by `shipped_with`."""
    cfg, bundle, key = latest_is_model_1(tmp_path)
    if isinstance(record, dict):
        other = record.get("other")
        record = json.dumps({"trained_with": {**key, "train": {**key["train"], **other}} if other else key,
                             **{k: v for k, v in record.items() if k != "other"}})
    (cfg.layout.reports / shipping.SHIPPED_RECORD).write_text(record)
    assert shipping.shipped_with(cfg, key) == (("v1", bundle) if reused else None)
    assert shipping.replaced_without_comparison(cfg, key) == replaced
    assert caplog.text.count("unreadable") == (record in ("{not json", ""))


def test_in_a_root_no_run_wrote_shipped_json_in_latest_json_says_what_was_shipped(tmp_path):
    """In a data root no run has written shipped.json in yet (every root made before 2026-12-07),
    reports/latest.json says what was shipped, for reuse (`shipped_with`, its rounds give the version)
    and for the replaced line alike: the first run after an upgrade replaced LATEST unsaid (the
    upgrade29 audit: test F1 0.400 -> 0.182)."""
    cfg, bundle, key = latest_is_model_1(tmp_path)
    rounds = [{"bundle": "model-1", "dataset_version": "v3"}]
    (cfg.layout.reports / "latest.json").write_text(json.dumps({"trained_with": key, "shipped": "model-1",
                                                                "rounds": rounds}))
    assert shipping.shipped_with(cfg, key) == ("v3", bundle)
    assert shipping.replaced_without_comparison(cfg, key) is None       # compared: nothing to say
    other = {**key, "train": {**key["train"], **OTHER_EPOCHS}}
    assert shipping.shipped_with(cfg, other) is None
    assert shipping.replaced_without_comparison(cfg, other) == OTHER_SETTINGS


@pytest.mark.parametrize("latest, said", [
    ({"shipped": "model-1", "rounds": [{"bundle": "model-1"}]}, True),      # 2026-12-02 to 12-05: no trained_with
    ({"rounds": [{"bundle": "model-0"}, {"bundle": "model-1"}]}, True),     # 0.1.0: every round was LATEST
    ({"rounds": [{"bundle": "model-1"}, {"bundle": "model-2"}]}, False),    # 0.1.0, promoted by hand since
    ({"shipped": "model-0", "rounds": [{"bundle": "model-1"}]}, False),     # promoted by hand since
    ({"rounds": "model-1"}, False), ({}, False)])                          # no round to read
def test_a_shipped_model_trained_by_older_code_is_said_to_be_replaced_without_a_comparison(tmp_path, latest, said):
    """Older code recorded no training settings (`trained_with`) and, before 2026-12-02, not what it
    shipped: its last round was. Round 0 then replaces the model it shipped without a comparison, and
    the run says so, naming it and the way back, as the docs promise."""
    cfg, bundle, key = latest_is_model_1(tmp_path)
    (cfg.layout.reports / "latest.json").write_text(json.dumps(latest))
    assert shipping.shipped_with(cfg, key) is None and kept_model(cfg, key) is None
    assert shipping.replaced_without_comparison(cfg, key) == (NO_SETTINGS if said else None)


def test_the_first_run_after_an_upgrade_says_it_replaces_the_model_an_older_run_shipped(tmp_path, caplog):
    """Through the stage loop: a root whose last run was by older code (no shipped.json; a latest.json
    with no `trained_with`) gets the line before round 0 trains, and LATEST moves to the new round 0."""
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path, rounds=0)
    run_stages(cfg, NightlyStages([(0.10, 0.30)], [("v1", True)]))
    shipped = (cfg.layout.models / "LATEST").read_text().strip()
    (cfg.layout.reports / shipping.SHIPPED_RECORD).unlink()             # as older code left the root
    latest = json.loads((cfg.layout.reports / "latest.json").read_text())
    del latest["trained_with"]
    (cfg.layout.reports / "latest.json").write_text(json.dumps(latest))
    caplog.clear()
    run_stages(cfg, NightlyStages([(0.05, 0.20)], [("v2", True)]))
    assert (f"the shipped model {shipped} has no training settings on record (trained by an older mlc-pipeline): "
            f"round 0 replaces models/LATEST without a comparison; `mlc promote {shipped}` puts it back") in caplog.text
    assert (cfg.layout.models / "LATEST").read_text().strip() == "default-v2-r0" != shipped


def test_the_modules_left_out_of_the_fingerprint_are_not_imported_by_training():
    """model/mine.py and the CLI's modules are left out of the training-code fingerprint: a change to
    them must not be able to change a trained model, so the training's own modules never import them
    (model/stage.py may name a bundle through the registry; naming trains nothing)."""
    import ast
    model = PACKAGE / "model"

    def imported(name: str) -> set[str]:
        tree = ast.parse((model / name).read_text())
        found = {a.name.split(".")[-1] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        found |= {n.module.split(".")[-1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        found |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                  and n.module.endswith("model") for a in n.names}
        return {f"{m}.py" for m in found if (model / f"{m}.py").is_file()}

    seen, todo = set(), ["train.py"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += sorted(imported(name))
    assert "learner.py" in seen and "weights.py" in seen, "the import walk sees nothing: a useless test"
    assert not seen & set(shipping.NOT_TRAINING_CODE), sorted(seen & set(shipping.NOT_TRAINING_CODE))


def round_of(n: int, test_f1: float = 0.8, valid_f1: float | None = 0.8, other: float | None = 0.1,
             probe: float | None = 0.1) -> RoundRecord:
    return RoundRecord(n, f"v{n + 1}", f"bundle-r{n}", test_f1, other, probe, 5 if n else 0, valid_f1)


@pytest.mark.parametrize("max_f1_loss", [0.05, 0.1])
def test_a_round_may_lose_up_to_max_f1_loss_and_no_more(max_f1_loss):
    """mine.max_f1_loss: a loss of exactly the setting ships (float noise in the last bit included),
    a hundredth more is refused with the figures; a gain always ships."""
    cfg = config(mine={"max_f1_loss": max_f1_loss})
    before = round_of(0, 0.7, 0.7)
    at = 0.7 - max_f1_loss
    assert shipping.not_shipped_reason(cfg, before, round_of(1, at, at)) is None
    assert shipping.not_shipped_reason(cfg, before, round_of(1, 0.95, 0.95)) is None        # better: ships
    over = at - 0.01
    assert shipping.not_shipped_reason(cfg, before, round_of(1, over, over)) == (
        f"round 1's model bundle-r1 lost {max_f1_loss + 0.01:.3f} of macro F1 against round 0's "
        f"(0.700 -> {over:.3f}, mean of validation and test; mine.max_f1_loss is {max_f1_loss:g})")


def test_the_f1_compared_is_the_mean_of_validation_and_test():
    """Either split alone is ~100 images: the loss is measured on their mean (`held_out_f1`), so a
    round that keeps its test F1 and loses 0.2 on validation lost 0.1, and one that trades 0.08 of
    test for 0.08 of validation lost nothing."""
    cfg = config()
    assert shipping.held_out_f1(round_of(0, 0.8, 0.6)) == pytest.approx(0.7)
    assert shipping.held_out_f1(round_of(0, 0.8, None)) == 0.8          # models from before valid F1 was kept
    before = round_of(0, 0.8, 0.8)
    assert "lost 0.100 of macro F1" in shipping.not_shipped_reason(cfg, before, round_of(1, 0.8, 0.6))
    assert shipping.not_shipped_reason(cfg, before, round_of(1, 0.72, 0.88)) is None


def test_a_round_accepting_as_many_unknowns_ships_and_one_accepting_more_does_not():
    """The unknowns compared are the mean of test "other" and probe acceptance (either alone when the
    other is not measured); equal is not worse."""
    cfg = config()
    assert shipping.unknown_rate(0.1, 0.3) == pytest.approx(0.2) and shipping.unknown_rate(None, 0.3) == 0.3
    before = round_of(0, other=0.10, probe=0.30)
    assert shipping.not_shipped_reason(cfg, before, round_of(1, other=0.30, probe=0.10)) is None   # the same mean
    assert shipping.not_shipped_reason(cfg, before, round_of(1, other=0.10, probe=0.31)) == (
        "round 1's model bundle-r1 accepted more unknowns than round 0's (0.200 -> 0.205, mean of test other and probe)")
    assert "than the shipped model, scored on v2 (" in shipping.not_shipped_reason(
        cfg, before, round_of(1, other=0.2, probe=0.3), "the shipped model, scored on v2")


@pytest.mark.parametrize("loss, shipped", [(0.05, "bundle-r1"), (0.06, "bundle-r0")])
def test_a_refused_round_leaves_latest_on_the_round_before(tmp_path, loss, shipped):
    """Through the stage loop: a round within mine.max_f1_loss becomes models/LATEST; one beyond it is
    not shipped, LATEST stays the round before's, and the run says why."""
    from mlc_pipeline.pipeline import run_stages
    cfg = _loop_config(tmp_path, rounds=1)
    out = run_stages(cfg, ScriptedStages([(0.10, 0.30), (0.05, 0.20)], valid_f1=[0.8, 0.8 - loss],
                                         test_f1=[0.8, 0.8 - loss]))
    assert (cfg.layout.models / "LATEST").read_text().strip() == shipped == out.shipped
    assert [r.bundle for r in out.rounds] == ["bundle-r0", "bundle-r1"]
    if shipped == "bundle-r0":
        assert out.not_shipped.endswith(": models/LATEST stays bundle-r0") and "lost 0.060" in out.not_shipped
    else:
        assert out.not_shipped == ""
