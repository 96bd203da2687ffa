"""End-to-end training on a tiny synthetic shapes dataset (seconds on 2 CPU cores).

"red" = red discs, "blue" = blue squares, some images hold both, "other" = noise, stripes or
yellow/grey/brown shapes (no label), probe = green triangles (a kind no query asked for: evaluation only).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlc_pipeline.model.train import TrainConfig, TrainingDiverged, train_model
from shapes import FAST, make_shapes_dataset, trained_bundle

from mlc_pipeline.manifest import read_manifest_frame

# ---------------------------------------------------------------- the main run

def test_bundle_is_complete_and_consistent():
    manifest, bundle = trained_bundle()
    for name in ("export.pkl", "bundle.json", "metrics.json", "loss.png"):
        assert (bundle / name).is_file(), name
    assert not [p for p in bundle.parent.iterdir() if ".tmp-" in p.name]  # built aside, renamed in
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["classes"] == ["blue", "red"] and meta["vocab"] == ["blue", "red"]
    assert meta["head"] == "sigmoid" and meta["other_mode"] == "negative"
    assert meta["dataset_version"] == "test-v1" and meta["image_size"] == FAST["image_size"]
    assert meta["pretrained"] == "none" and meta["config"]["epochs"] == FAST["epochs"]
    assert isinstance(meta["config"], dict) and meta["config"]["head"] == "sigmoid"   # a JSON object, not a repr (issue 17)
    from mlc_pipeline.fsutil import sha256_file
    assert meta["export_sha256"] == sha256_file(bundle / "export.pkl")
    assert [e["epoch"] for e in meta["history"]] == list(range(1, FAST["epochs"] + 1))
    assert all(e["train_loss"] > 0 and e["valid_loss"] > 0 for e in meta["history"])
    assert meta["images_per_second"] > 0
    from mlc_pipeline import __version__       # what made it: a format that moves, the package's version
    assert (meta["format"], meta["versions"]["mlc_pipeline"]) == (2, __version__)


def test_thresholds_are_calibrated_and_used_for_decoding():
    _, bundle = trained_bundle()
    meta = json.loads((bundle / "bundle.json").read_text())
    thresholds = np.array(meta["thresholds"])
    assert len(thresholds) == 2 and np.all((thresholds > 0) & (thresholds <= 1))
    assert np.any(np.abs(thresholds - 0.5) > 1e-3)  # chosen from the data, not the default
    from mlc_pipeline.model.bundle import load_bundle
    learn = load_bundle(bundle).learn
    np.testing.assert_allclose(learn.loss_func.thresh.numpy(), thresholds, rtol=1e-6)


def test_metrics_well_above_chance():
    _, bundle = trained_bundle()
    metrics = json.loads((bundle / "metrics.json").read_text())
    test = metrics["test"]
    for key in ("per_class", "macro_f1", "accuracy", "unknown_accepted", "probe_accepted",
                "fpr95_unknown", "fpr95_probe", "n_labelled", "n_unknown", "n_probe"):
        assert key in test, key
    assert set(test["per_class"]) == {"red", "blue"}
    assert test["n_probe"] == 48 and test["n_unknown"] == 8 and test["n_labelled"] == 20
    assert test["macro_f1"] > 0.8        # an always-yes guesser scores ~0.6 here, a coin ~0.45
    assert test["unknown_accepted"] <= 0.25
    assert test["probe_accepted"] < 0.5
    assert metrics["valid"]["macro_f1"] > 0.8


def test_operating_curve_runs_from_the_chosen_point_to_no_unknown_accepted():
    _, bundle = trained_bundle()
    curve = json.loads((bundle / "metrics.json").read_text())["test"]["curve"]
    meta = json.loads((bundle / "bundle.json").read_text())
    assert (bundle / "curve.png").is_file()
    rates = [p["valid_other_accepted"] for p in curve]
    assert rates == sorted(rates, reverse=True) and rates[-1] == 0.0 and len(set(rates)) == len(rates)
    [chosen] = [p for p in curve if p["chosen"]]
    assert np.allclose(chosen["thresholds"], meta["thresholds"], atol=1e-4)
    test = json.loads((bundle / "metrics.json").read_text())["test"]
    assert chosen["macro_f1"] == pytest.approx(test["macro_f1"]) and chosen["probe_accepted"] == pytest.approx(test["probe_accepted"])
    # Higher thresholds never accept more: each step only raises them.
    steps = np.array([p["thresholds"] for p in curve])
    assert (np.diff(steps, axis=0) >= -1e-9).all()


def _with_other_copies_of_red_valid_images(tmp_path, mined_round: str | None = None) -> tuple[Path, list[dict]]:
    """A small shapes dataset whose validation split also holds byte copies of its red images
    labelled "other" (from mining round `mined_round`, if given): the network scores them exactly as
    the red images, so its F1 point must accept some held-out "other" images, and only thresholds
    raised past red images can refuse them. Returns the manifest and the red images copied."""
    import csv
    import shutil
    manifest = make_shapes_dataset(tmp_path / "ds", n_per_kind=24)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    reds = [r for r in rows if r["labels"] == "red" and r["split"] == "valid"]
    mined = {} if mined_round is None else {"mined_round": mined_round}
    for r in rows if mined else ():
        r["mined_round"] = ""
    for i, r in enumerate(reds):
        rel = f"images/copy_{i:03d}.jpg"
        shutil.copy(tmp_path / "ds" / r["path"], tmp_path / "ds" / rel)
        rows.append({**r, "path": rel, "labels": "", "photo_id": f"copy{i}", **mined})
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest, reds


def test_a_cap_on_unknowns_accepted_is_met_on_validation(tmp_path):
    """train.max_unknown_accepted (on by default) moves the thresholds the bundle ships from the F1
    point to the best point of the capping path under the cap. Here the F1 point accepts twice the
    cap of the held-out "other" images, so a training that computed the capped point and shipped the
    F1 point's thresholds fails (the mutation27 audit: the test before trained a world where the F1
    point already accepted none, and passed either way)."""
    from mlc_pipeline.model.assess import evaluate_loaded_bundle
    from mlc_pipeline.model.bundle import load_bundle
    from mlc_pipeline.model.metrics import (allowed_other, calibrate_thresholds, capping_path, pick_capped,
                                            targets_from_labels)
    from mlc_pipeline.model.predict import score_paths
    (manifest, _), cap = _with_other_copies_of_red_valid_images(tmp_path), 0.25
    result = train_model(manifest, tmp_path / "capped", TrainConfig(max_unknown_accepted=cap, **FAST))
    meta = json.loads((tmp_path / "capped" / "bundle.json").read_text())
    assert meta["config"]["max_unknown_accepted"] == cap
    curve = result.metrics["test"]["curve"]
    f1_point, [chosen] = curve[0], [p for p in curve if p["chosen"]]
    assert f1_point["valid_other_accepted"] >= 2 * cap, "the F1 point meets the cap already: a useless test"
    bundle = load_bundle(tmp_path / "capped")
    valid = evaluate_loaded_bundle(bundle, manifest, splits=("valid",))
    n_other = valid["n_unknown"]
    assert valid["unknown_accepted"] <= allowed_other(cap, n_other) / n_other       # what the bundle ships
    assert chosen["valid_other_accepted"] <= allowed_other(cap, n_other) / n_other
    assert np.allclose(chosen["thresholds"], meta["thresholds"], atol=1e-4)
    assert not np.allclose(f1_point["thresholds"], meta["thresholds"], atol=1e-4)
    # the shipped thresholds are the product's own calibration of the bundle's validation scores
    frame = read_manifest_frame(manifest)
    rows = frame[frame["split"] == "valid"]
    probs = score_paths(bundle, list(rows["abs_path"]))
    targets = targets_from_labels(list(rows["label_list"]), bundle.vocab)
    start = calibrate_thresholds(probs, targets, classes=bundle.vocab)
    expected = pick_capped(capping_path(probs, targets, bundle.vocab, start=start), cap)
    np.testing.assert_allclose(meta["thresholds"], expected, atol=1e-4)


@pytest.mark.parametrize("head,other_mode", [("softmax", "negative"), ("sigmoid", "class")])
def test_baseline_variants_train_and_report(head, other_mode):
    manifest, bundle = trained_bundle(head, other_mode)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["vocab"] == ["blue", "red", "other"] and meta["other_mode"] == "class"
    assert (meta["thresholds"] is None) == (head == "softmax")
    test = json.loads((bundle / "metrics.json").read_text())["test"]
    assert set(test["per_class"]) == {"red", "blue"}
    assert test["macro_f1"] > 0.6  # softmax drops the two-label images and can't predict them
    if head == "sigmoid":
        _assert_other_vetoes_classes(bundle, manifest)


def _assert_other_vetoes_classes(bundle_dir: Path, manifest: Path) -> None:
    """other_mode 'class': every scorer (get_preds, hence calibration, prediction, mining) gives a class
    sigmoid(class) x (1 - sigmoid(other)); the "other" column keeps its sigmoid (model/losses.py)."""
    import torch
    from mlc_pipeline.model.bundle import load_bundle
    from mlc_pipeline.model.predict import score_paths
    bundle = load_bundle(bundle_dir)
    assert bundle.meta["class_score"] == "sigmoid(class) x (1 - sigmoid(other))"
    df = read_manifest_frame(manifest)
    test = df[df["split"] == "test"]
    is_other = test["label_list"].map(len) == 0
    paths = list(test[is_other]["abs_path"])[:6] + list(test[~is_other]["abs_path"])[:6]
    scores = score_paths(bundle, paths)
    learn = bundle.learn
    dl = learn.dls.test_dl(paths, bs=len(paths), num_workers=0)
    with torch.no_grad():
        logits = learn.model.eval()(dl.one_batch()[0]).float()
    o = bundle.vocab.index("other")
    p = torch.sigmoid(logits).numpy()
    expected = p * (1 - p[:, [o]])
    expected[:, o] = p[:, o]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert (scores[:, o] > 0.5).any() and not np.allclose(scores, torch.sigmoid(logits).numpy(), atol=1e-3)


# ---------------------------------------------------------------- small runs and inputs

def _small_dataset(tmp_path) -> Path:
    return make_shapes_dataset(tmp_path / "ds", n_per_kind=10)


def test_validation_f1_without_mined_negatives_is_recorded_beside_the_whole_splits(tmp_path):
    """Mining puts a share of its negatives into validation (mine.calibration_share); the macro F1
    that rounds are compared on leaves them out. Here the "mined" images are copies of red valid
    images labelled "other", so the model must accept some of them: the whole split's F1 falls and
    the shared images' F1 does not."""
    manifest, reds = _with_other_copies_of_red_valid_images(tmp_path, mined_round="1")
    # at the F1 point (no cap): the cap would reject red altogether, and every F1 would be equal
    train_model(manifest, tmp_path / "m", TrainConfig(**FAST, max_unknown_accepted=None))
    valid = json.loads((tmp_path / "m" / "metrics.json").read_text())["valid"]
    assert valid["n_mined"] == len(reds) > 0
    assert valid["macro_f1_without_mined"] > valid["macro_f1"]
    from mlc_pipeline.rounds import record
    assert record(1, "v2", "m", {"test": {"macro_f1": 0.5}, "valid": valid}).valid_macro_f1 == \
        valid["macro_f1_without_mined"]


def test_pool_images_labelled_in_review_are_left_out_of_the_shared_validation_f1():
    """A pool image a reviewer labelled takes the splits mined images take (manifest purpose 'pool',
    no mining round): like a mined negative, it is not among the validation images every round shares."""
    import pandas as pd
    from mlc_pipeline.model.assess import mined_valid_mask
    rows = pd.DataFrame({"is_valid": [True, True, True, False], "mined_round": ["", "1", "", ""],
                         "purpose": ["train", "train", "pool", "pool"]})
    assert mined_valid_mask(rows).tolist() == [False, True, True]
    assert mined_valid_mask(rows.drop(columns="purpose")).tolist() == [False, True, False]    # older manifests


def test_weight_decay_reaches_the_learner(tmp_path):
    """`wd` (a bench knob, docs/training.md) is the Learner's weight decay; None keeps fastai's."""
    from mlc_pipeline.model.bundle import load_bundle
    manifest = _small_dataset(tmp_path)
    for name, wd in (("a", 0.1), ("b", None)):
        train_model(manifest, tmp_path / name, TrainConfig(image_size=32, epochs=1, batch_size=8, threads=1,
                                                          pretrained="none", arch="mlcnet", wd=wd))
        assert load_bundle(tmp_path / name).learn.wd == wd


def test_same_seed_same_model(tmp_path):
    manifest = _small_dataset(tmp_path)
    cfg = TrainConfig(image_size=32, epochs=1, batch_size=8, seed=3, augment=False)  # default threads
    a = train_model(manifest, tmp_path / "a", cfg)
    b = train_model(manifest, tmp_path / "b", cfg)
    assert a.history == b.history and a.thresholds == b.thresholds


def test_long_fits_validate_at_a_few_epochs_and_how_often_does_not_change_the_model(tmp_path, monkeypatch):
    """A 12-epoch fit validates every 2nd epoch (VALID_POINTS = 6): the skipped epochs record no
    valid loss (null in bundle.json), the validated ones a real one, and the bundle is complete.
    Validation passes draw from torch's global generator; SparseValidation restores it, so a fit
    that validates every epoch trains the same weights."""
    import mlc_pipeline.model.learner as learner
    manifest = _small_dataset(tmp_path)
    cfg = TrainConfig(image_size=32, epochs=12, batch_size=8, threads=1, pretrained="none", arch="mlcnet")
    result = train_model(manifest, tmp_path / "b", cfg)
    validated = [e["epoch"] for e in result.history if e["valid_loss"] is not None]
    assert validated == [2, 4, 6, 8, 10, 12]
    assert all(e["valid_loss"] > 0 for e in result.history if e["valid_loss"] is not None)
    assert all(e["train_loss"] > 0 for e in result.history)
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["history"][0]["valid_loss"] is None and meta["history"][-1]["valid_loss"] > 0
    assert (tmp_path / "b" / "loss.png").is_file()

    monkeypatch.setattr(learner, "VALID_POINTS", 12)
    every = train_model(manifest, tmp_path / "every", cfg)
    assert sum(e["valid_loss"] is None for e in result.history) == 6
    assert all(e["valid_loss"] is not None for e in every.history)
    assert [e["train_loss"] for e in result.history] == [e["train_loss"] for e in every.history]
    assert result.thresholds == every.thresholds


@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_bfloat16_runs_the_training_batches_only_and_float32_nothing(tmp_path, monkeypatch, precision):
    """precision bfloat16: the training batches' convolutions run in bf16; validation (and so
    calibration) and the bundle's scoring stay float32; the bundle records it. float32: nothing bf16."""
    import torch
    from mlc_pipeline.model import nets
    from mlc_pipeline.model.bundle import load_bundle
    seen = set()
    pool = nets.ConcatPool.forward

    def recording(self, x):         # the body's output: what its convolutions computed in
        seen.add((self.training, x.dtype))
        return pool(self, x)
    monkeypatch.setattr(nets.ConcatPool, "forward", recording)   # on the class: nothing pickled
    manifest = _small_dataset(tmp_path)
    train_model(manifest, tmp_path / "b", TrainConfig(image_size=32, epochs=2, batch_size=8, threads=1,
                                                      pretrained="none", arch="mlcnet", precision=precision))
    if precision == "bfloat16":
        assert seen == {(True, torch.bfloat16), (False, torch.float32)}
    else:
        assert seen == {(True, torch.float32), (False, torch.float32)}
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["precision"] == precision and meta["config"]["precision"] == precision
    from mlc_pipeline.report.model import bundle_network_line
    assert f"32 px, 2 epochs in {precision}" in bundle_network_line(tmp_path / "b")   # the report says it
    loaded = load_bundle(tmp_path / "b").learn
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert not [cb for cb in loaded.cbs if type(cb).__name__ == "CPUBFloat16"]   # scoring is float32


def test_progressive_resizing_trains_small_first_and_the_bundle_keeps_the_full_size(tmp_path, monkeypatch):
    """start_size: the first start_share of the epochs train on smaller pictures, the rest (and every
    pass after the fit: calibration, the bundle's scoring) at image_size."""
    from mlc_pipeline.model import nets
    from mlc_pipeline.model.bundle import load_bundle
    seen = []
    pool = nets.ConcatPool.forward

    def recording(self, x):         # the body's output, whose size follows the pictures'
        seen.append((self.training, x.shape[-1]))
        return pool(self, x)
    monkeypatch.setattr(nets.ConcatPool, "forward", recording)
    manifest = _small_dataset(tmp_path)
    result = train_model(manifest, tmp_path / "b", TrainConfig(image_size=64, start_size=32, start_share=0.5, epochs=4,
                                                              batch_size=8, threads=1, pretrained="none", arch="mlcnet"))
    train_sizes = [size for training, size in seen if training]
    n = len(train_sizes) // 4        # batches per epoch
    assert set(train_sizes[:2 * n]) == {min(train_sizes)} and set(train_sizes[2 * n:]) == {max(train_sizes)}
    assert max(train_sizes) == 2 * min(train_sizes)
    assert seen[-1] == (False, max(train_sizes))     # the last pass (test and probes) at the full size
    assert result.history and len(result.history) == 4
    from mlc_pipeline.report.model import bundle_network_line
    assert "64 px, 4 epochs (the first 2 at 32 px)" in bundle_network_line(tmp_path / "b")
    learn = load_bundle(tmp_path / "b").learn
    sizes = {tuple(t.size) for dl in (learn.dls.train, learn.dls.valid) for t in dl.after_item.fs if hasattr(t, "size")}
    assert sizes == {(64, 64)}
    for bad in ({"start_share": 1.0}, {"start_share": 0.0}, {"start_size": 8}):
        with pytest.raises(ValueError):
            TrainConfig(**{"start_size": 32, **bad})


def test_time_budget_stops_early_but_still_writes_a_bundle(tmp_path, caplog):
    manifest = _small_dataset(tmp_path)
    result = train_model(manifest, tmp_path / "b", TrainConfig(image_size=32, epochs=5, batch_size=8, threads=1,
                                                               max_train_seconds=0.01))
    assert result.stopped_early and len(result.history) < 5
    assert (tmp_path / "b" / "export.pkl").is_file() and "time budget" in caplog.text


class Clock:
    """The budget's clock: each epoch takes what `Tick` says, whatever the box is doing."""
    now = 0.0

    @classmethod
    def monotonic(cls):
        return cls.now


def ticking(seconds):
    """A callback that lets `seconds(epoch)` pass in each epoch, before the plan reads the time."""
    from fastai.callback.core import Callback
    from mlc_pipeline.model.budget import FitToBudget

    class Tick(Callback):
        order = FitToBudget.order - 1

        def after_epoch(self):
            Clock.now += seconds(self.epoch)
    return Tick()


def budget_fit(monkeypatch, budget: float, seconds, fits=(10,), batches: int = 2, names=("one-cycle",)):
    """Fits of a synthetic learner (several: fine_tune's frozen one, then the rest) under one FitToBudget."""
    from fastai.test_utils import synth_learner
    from mlc_pipeline.model import budget as budget_module
    monkeypatch.setattr(budget_module, "time", Clock)
    Clock.now, learn, plan = 0.0, synth_learner(n_trn=batches), budget_module.FitToBudget(budget, names=names)
    for n in fits:
        learn.fit_one_cycle(n, 1e-2, cbs=[ticking(seconds), plan])
    return plan, learn


def test_the_time_budget_is_a_bound_and_the_shortened_fit_still_anneals(monkeypatch):
    """FitToBudget (audit dayone26 D3: a 6-minute budget trained 22.8 minutes, at least 3 epochs
    whatever they cost): planned from the first epoch on, a fit ends within its budget, on a shorter
    schedule whose learning rate still anneals to the one-cycle's end; one that fits is left alone."""
    plan, learn = budget_fit(monkeypatch, 25, lambda epoch: 10.0, batches=20)
    assert (plan.planned, plan.epochs, plan.shortened, plan.over_seconds) == (10, 2, True, 0.0)
    assert Clock.now == 20 <= 25                         # not 30: no third epoch "to anneal" past the budget
    n_iter = len(learn.dls.train)
    assert len(learn.recorder.lrs) == 2 * n_iter
    assert learn.recorder.lrs[-1] < 1e-2 / 50 < max(learn.recorder.lrs)     # annealed within the 2 epochs
    from mlc_pipeline.model.budget import budget_line
    assert budget_line(plan, 25 / 60).startswith("fitted to train.max_minutes (0.416667): 2 of 10 epochs, at 10 s")
    plan, learn = budget_fit(monkeypatch, 600, lambda epoch: 10.0, fits=(4,), batches=20)
    assert (plan.epochs, plan.shortened, plan.over_seconds) == (4, False, 0.0) and len(learn.recorder.lrs) == 4 * n_iter


def test_an_epoch_longer_than_the_budget_is_the_only_overrun_and_is_said(monkeypatch):
    """The first epoch cannot be known before it ran: when it alone takes more than the budget, the
    fit ends after it (not two more), and what the budget did is said as an overrun, not "fitted"."""
    from mlc_pipeline.model.budget import budget_line
    plan, _ = budget_fit(monkeypatch, 6 * 60, lambda epoch: 457.0, fits=(38,))
    assert (plan.epochs, plan.planned, Clock.now) == (1, 38, 457.0)
    assert round(plan.over_seconds) == 97 and plan.last_epoch_seconds == 457.0
    line = budget_line(plan, 6)
    assert line.startswith("over train.max_minutes (6): one epoch took 7.6 min; 1 of 38 epochs trained in 7.6 min")
    assert "fitted" not in line


def test_fine_tunes_second_fit_is_planned_from_the_first(monkeypatch):
    """fine_tune: one frozen epoch, then the unfrozen fit, planned at its start from the first's
    time, so it anneals within the budget; and not started when no epoch of it fits."""
    plan, learn = budget_fit(monkeypatch, 45, lambda epoch: 10.0, fits=(1, 10), batches=20)
    assert (plan.planned, plan.epochs, Clock.now, plan.over_seconds) == (10, 3, 40, 0.0)
    assert learn.recorder.lrs[-1] < 1e-2 / 50
    plan, _ = budget_fit(monkeypatch, 15, lambda epoch: 10.0, fits=(1, 10))
    assert (plan.planned, plan.epochs, Clock.now, plan.over_seconds) == (10, 0, 10, 0.0)


def test_a_budget_that_leaves_no_time_for_fine_tunes_unfrozen_stage_says_what_each_stage_trained(monkeypatch):
    """The frozen epoch trained, the unfrozen stage did not: "0 of 10 epochs" said nothing trained
    (audit of train.max_minutes, 2026-12-07); each fit is kept, and the line says what trained."""
    from mlc_pipeline.model.budget import budget_line
    fine_tune = dict(fits=(1, 10), names=("frozen", "unfrozen"))
    plan, _ = budget_fit(monkeypatch, 15, lambda epoch: 10.0, **fine_tune)
    assert plan.stages == [{"stage": "frozen", "epochs_planned": 1, "epochs_trained": 1},
                           {"stage": "unfrozen", "epochs_planned": 10, "epochs_trained": 0}]
    record = plan.record(0.25)
    assert (record["epochs_planned"], record["epochs_trained"], record["stages"]) == (10, 0, plan.stages)
    line = budget_line(plan, 0.25)
    assert line.startswith("fitted to train.max_minutes (0.25): 1 frozen epoch, then 0 of 10 unfrozen epochs, "
                           "at 10 s an epoch on this machine; no time was left for the unfrozen stage: only the head")
    plan, _ = budget_fit(monkeypatch, 45, lambda epoch: 10.0, **fine_tune)   # 3 of the 10 fit after the frozen one
    assert budget_line(plan, 0.75).startswith("fitted to train.max_minutes (0.75): 1 frozen epoch, then 3 of 10 "
                                              "unfrozen epochs, at 10 s an epoch on this machine; raise it")
    plan, _ = budget_fit(monkeypatch, 25, lambda epoch: 10.0)       # one fit: said as before
    assert plan.stages == [{"stage": "one-cycle", "epochs_planned": 10, "epochs_trained": 2}]
    assert budget_line(plan, 25 / 60).startswith("fitted to train.max_minutes (0.416667): 2 of 10 epochs, at 10 s")


def test_one_slow_epoch_does_not_shorten_a_fit_that_fits(monkeypatch):
    """The plan reads the median epoch: a 100 s epoch among 10 s ones (another process on the box)
    leaves a fit that still fits alone; the same epoch read alone would have cut it to 6 of 10. A
    slow second epoch shortens the fit until the next epochs show it was the exception, and the fit
    grows back to its plan."""
    plan, _ = budget_fit(monkeypatch, 250, lambda epoch: 100.0 if epoch == 4 else 10.0)
    assert (plan.epochs, plan.shortened, plan.epoch_seconds) == (10, False, 10.0)
    plan, _ = budget_fit(monkeypatch, 150, lambda epoch: 100.0 if epoch == 4 else 10.0)
    assert plan.shortened and plan.epochs == 6     # 140 s at epoch 5: one 10 s epoch left in 150
    plan, learn = budget_fit(monkeypatch, 250, lambda epoch: 100.0 if epoch == 1 else 10.0)
    assert (plan.epochs, plan.shortened) == (10, False) and Clock.now == 190
    assert learn.recorder.lrs[-1] < 1e-2 / 50      # annealed (two batches an epoch: the last at 95%)


def test_the_time_budget_fits_a_training_says_so_and_its_continuation_takes_a_third(tmp_path, caplog):
    caplog.set_level("INFO")
    manifest = _small_dataset(tmp_path)
    base = dict(image_size=32, batch_size=8, threads=1, pretrained="none", arch="mlcnet")
    result = train_model(manifest, tmp_path / "r0", TrainConfig(epochs=9, max_minutes=1e-8, **base))
    meta = json.loads((tmp_path / "r0" / "bundle.json").read_text())
    assert len(result.history) == 1 and not result.stopped_early    # the first epoch alone overran it
    assert meta["time_budget"]["epochs_planned"] == 9 and meta["time_budget"]["epochs_trained"] == 1
    assert meta["time_budget"]["over_seconds"] > 0
    assert meta["config"]["epochs"] == 1          # what trained: a continuation's third is of it
    said = [w for w in meta["warnings"] if "max_minutes" in w]
    assert len(said) == 1 and said[0].startswith("over train.max_minutes (1e-08): one epoch took "), said
    assert "1 of 9 epochs" in said[0] and "the 9 planned epochs would take" in caplog.text
    from mlc_pipeline.report.model import bundle_network_line
    assert "1 epoch of 9 planned (over train.max_minutes 1e-08 by 0.0 min)" in bundle_network_line(tmp_path / "r0")
    child = train_model(manifest, tmp_path / "r1", TrainConfig(init_from=str(tmp_path / "r0"), **base))
    assert len(child.history) == 1
    unbounded = train_model(manifest, tmp_path / "r2", TrainConfig(epochs=4, max_minutes=None, **base))
    assert len(unbounded.history) == 4
    assert json.loads((tmp_path / "r2" / "bundle.json").read_text())["time_budget"] is None


def test_a_budget_that_leaves_no_unfrozen_epoch_still_ships_says_so_and_the_continuation_takes_one(tmp_path):
    """fine_tune under train.max_minutes, when the frozen epoch leaves no time for the unfrozen stage:
    the bundle is still calibrated and scored; bundle.json keeps each stage (1 frozen epoch trained,
    0 of 6 unfrozen) and the config the 0 unfrozen epochs it trained; the warning (the report's
    "training:" line) and the network line say it. A mining round continues it under the same budget
    for a third of what trained, at least 1: not the scratch recipe's 10, which the 0 fell back to."""
    import math
    import torch
    from mlc_pipeline.model.nets import mlcnet
    from mlc_pipeline.report.model import bundle_network_line
    torch.manual_seed(0)
    torch.save(mlcnet(5).state_dict(), tmp_path / "donor.pth")      # weights: fine_tune, as ImageNet's are
    manifest = _small_dataset(tmp_path)
    base = dict(image_size=32, batch_size=8, threads=1, arch="mlcnet", max_minutes=1e-8)
    result = train_model(manifest, tmp_path / "r0", TrainConfig(epochs=6, pretrained=str(tmp_path / "donor.pth"), **base))
    meta = json.loads((tmp_path / "r0" / "bundle.json").read_text())
    assert len(result.history) == 1 and meta["config"]["epochs"] == 0
    assert meta["time_budget"]["stages"] == [{"stage": "frozen", "epochs_planned": 1, "epochs_trained": 1},
                                             {"stage": "unfrozen", "epochs_planned": 6, "epochs_trained": 0}]
    assert all(math.isfinite(t) and 0 < t <= 1 for t in meta["thresholds"])      # calibrated all the same
    assert math.isfinite(result.metrics["test"]["macro_f1"])                   # scored through load_bundle
    [said] = [w for w in result.metrics["warnings"] if "max_minutes" in w]     # what the model report shows
    assert "1 frozen epoch, then 0 of 6 unfrozen epochs trained in" in said
    assert "no time was left for the unfrozen stage" in said
    assert "0 epochs of 6 planned after 1 frozen epoch (over train.max_minutes 1e-08" in bundle_network_line(tmp_path / "r0")
    child = train_model(manifest, tmp_path / "r1", TrainConfig(init_from=str(tmp_path / "r0"), **base))
    budget = json.loads((tmp_path / "r1" / "bundle.json").read_text())["time_budget"]
    assert len(child.history) == 1
    assert budget["stages"] == [{"stage": "unfrozen", "epochs_planned": 1, "epochs_trained": 1}]


def test_weights_file_is_loaded_and_fine_tuned(tmp_path):
    import torch
    import torchvision
    weights = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    manifest = _small_dataset(tmp_path)
    result = train_model(manifest, tmp_path / "b", TrainConfig(arch="resnet18", image_size=32, epochs=1, batch_size=8,
                                                               threads=1, pretrained=str(weights)))
    assert result.pretrained_used == str(weights)
    assert len(result.history) == 2  # fine_tune: one frozen epoch, then the unfrozen one


def test_mlcnet_weights_from_an_earlier_model_are_loaded(tmp_path):
    import torch
    from mlc_pipeline.model.nets import mlcnet
    from mlc_pipeline.model.bundle import load_bundle
    torch.manual_seed(0)
    donor = mlcnet(5)  # another vocab size: only the body is reused, the head is new
    weights = tmp_path / "mlcnet.pth"
    torch.save(donor.state_dict(), weights)
    manifest = _small_dataset(tmp_path)
    cfg = TrainConfig(image_size=32, epochs=1, batch_size=8, threads=1, pretrained=str(weights), lr=1e-9)
    result = train_model(manifest, tmp_path / "b", cfg)
    assert result.pretrained_used == str(weights) and len(result.history) == 2
    body = load_bundle(tmp_path / "b").learn.model[0]
    first_conv = body[0][0].weight.detach()
    assert torch.allclose(first_conv, donor[0][0][0].weight, atol=1e-4)  # lr ~0: still the donor's
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    # neither network's: refused when the weights are resolved (before collecting), naming what to do
    with pytest.raises(ValueError, match="bad.pth is not torchvision resnet18 weights .*name its network"):
        train_model(manifest, tmp_path / "c", TrainConfig(image_size=32, epochs=1, batch_size=8, threads=1,
                                                          pretrained=str(tmp_path / "bad.pth")))
    with pytest.raises(ValueError, match="bad.pth is not an earlier mlcnet model's weights"):
        train_model(manifest, tmp_path / "c", TrainConfig(image_size=32, epochs=1, batch_size=8, threads=1,
                                                          arch="mlcnet", pretrained=str(tmp_path / "bad.pth")))


def test_a_training_continues_a_bundles_network(tmp_path):
    """`init_from` (mining's retrain, mine.retrain: continue): the bundle's whole network, head included,
    is the starting point; its image size is kept whatever the config says; `epochs` counts the
    continuation (one_cycle, no frozen epoch); bundle.json and the report's network line say so."""
    import torch
    from mlc_pipeline.model.bundle import load_bundle
    from mlc_pipeline.report.model import bundle_network_line
    manifest = _small_dataset(tmp_path)
    base = dict(batch_size=8, threads=1, pretrained="none", arch="mlcnet")
    train_model(manifest, tmp_path / "r0", TrainConfig(image_size=32, epochs=6, **base))
    result = train_model(manifest, tmp_path / "r1", TrainConfig(image_size=48, epochs=1, lr=1e-9,
                                                                init_from=str(tmp_path / "r0"), **base))
    parent, child = load_bundle(tmp_path / "r0"), load_bundle(tmp_path / "r1")
    for (name, p), c in zip(parent.learn.model.named_parameters(), child.learn.model.parameters()):
        assert torch.allclose(p, c, atol=1e-5), name        # lr ~0: still the parent's, head too
    meta = child.meta
    assert meta["image_size"] == 32 and meta["config"]["epochs"] == 1 and len(result.history) == 1
    assert meta["weights"]["continued_from"] == "r0" and meta["weights"]["pretrained"] == "none"
    assert meta["weights"]["sha256"] == parent.meta["export_sha256"]
    assert "continued from r0 for 1 epoch (that network started from scratch)" in bundle_network_line(tmp_path / "r1")
    # without an explicit epochs: a third of the parent's (6 -> 2) ...
    default = train_model(manifest, tmp_path / "r1b", TrainConfig(image_size=32, init_from=str(tmp_path / "r0"), **base))
    assert len(default.history) == 2
    # ... and a continuation of a continuation is as long as that one, not a third of a third
    grand = train_model(manifest, tmp_path / "r2", TrainConfig(init_from=str(tmp_path / "r1b"), **base))
    assert len(grand.history) == 2
    assert json.loads((tmp_path / "r2" / "bundle.json").read_text())["weights"]["continued_from"] == "r1b"
    # without a batch size, the parent's batches (8 here), not the recipe's
    no_batch = {k: v for k, v in base.items() if k != "batch_size"}
    train_model(manifest, tmp_path / "r2b", TrainConfig(epochs=1, init_from=str(tmp_path / "r1b"), **no_batch))
    assert json.loads((tmp_path / "r2b" / "bundle.json").read_text())["config"]["batch_size"] == 8
    with pytest.raises(ValueError, match="its head is 'sigmoid'"):
        train_model(manifest, tmp_path / "x", TrainConfig(head="softmax", init_from=str(tmp_path / "r0"), **base))


def test_a_fine_tuned_network_continues_unfrozen(tmp_path):
    """Continuing a network that started from a weights file: no second frozen epoch (fine_tune's
    unfrozen stage again, one_cycle over discriminative rates), and the record keeps where it started."""
    import torch
    import torchvision
    from mlc_pipeline.report.model import bundle_network_line
    weights = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    manifest = _small_dataset(tmp_path)
    base = dict(arch="resnet18", image_size=32, batch_size=8, threads=1)
    train_model(manifest, tmp_path / "r0", TrainConfig(epochs=1, pretrained=str(weights), **base))
    result = train_model(manifest, tmp_path / "r1", TrainConfig(epochs=1, init_from=str(tmp_path / "r0"), **base))
    assert len(result.history) == 1 and result.pretrained_used == str(weights)
    meta = json.loads((tmp_path / "r1" / "bundle.json").read_text())
    assert meta["lr"] == 1e-3 and meta["weights"]["continued_from"] == "r0"
    assert f"that network started weights from {weights}" in bundle_network_line(tmp_path / "r1")


def test_a_diverged_training_says_so_and_writes_no_bundle(tmp_path):
    """A learning rate of 1e20 blows the weights up: the network scores validation images as
    NaN, so thresholds, metrics and plots would be nonsense. It fails clearly and leaves nothing."""
    manifest = _small_dataset(tmp_path)
    with pytest.raises(TrainingDiverged, match=r"training diverged \(the loss first became nan at training batch"):
        train_model(manifest, tmp_path / "models" / "b", TrainConfig(image_size=32, epochs=2, batch_size=8,
                                                                     threads=1, lr=1e20))
    assert not list(tmp_path.glob("models/*"))


def test_existing_bundle_is_not_overwritten_silently(tmp_path):
    manifest = _small_dataset(tmp_path)
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError):
        train_model(manifest, tmp_path / "b", TrainConfig(epochs=1))


def test_pretrained_auto_falls_back_to_scratch_offline(tmp_path, monkeypatch, caplog):
    from mlc_pipeline.model.weights import resolve_pretrained
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    r18 = dict(arch="resnet18")
    assert resolve_pretrained(TrainConfig(pretrained="auto", **r18)) == "none"
    assert "training from scratch" in caplog.text
    with pytest.raises(FileNotFoundError, match="no download"):
        resolve_pretrained(TrainConfig(pretrained="imagenet", **r18))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")                     # an empty file is no weights: auto falls back, and says so
    caplog.clear()
    assert resolve_pretrained(TrainConfig(pretrained="auto", **r18)) == "none"
    assert "resnet18-f37072fd.pth is in the cache, but it is not a weights file torch can load" in caplog.text
    import torchvision
    torch_state = torchvision.models.resnet18(weights=None).state_dict()
    import torch
    torch.save(torch_state, cached)             # resnet18's layers and shapes: used
    assert resolve_pretrained(TrainConfig(pretrained="auto", **r18)) == "imagenet"
    assert resolve_pretrained(TrainConfig(pretrained="none", **r18)) == "none"
    # mlcnet has no published weights: 'auto' means scratch without a warning, 'imagenet' is an error
    caplog.clear()
    assert resolve_pretrained(TrainConfig(arch="mlcnet", pretrained="auto")) == "none"
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # said at INFO: nothing went wrong
    with pytest.raises(ValueError, match="no ImageNet weights for mlcnet"):
        resolve_pretrained(TrainConfig(arch="mlcnet", pretrained="imagenet"))
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        resolve_pretrained(TrainConfig(pretrained=str(tmp_path / "nope.pth")))


def test_config_validation():
    with pytest.raises(ValueError, match="head"):
        TrainConfig(head="tanh")
    with pytest.raises(ValueError, match="arch"):
        TrainConfig(arch="resnet_nonexistent")
    cfg = TrainConfig.from_settings({"epochs": 2, "compare_baselines": True})
    assert cfg.epochs == 2 and TrainConfig(head="softmax").effective_other_mode == "class"


def test_manifest_reading(tmp_path):
    manifest = _small_dataset(tmp_path)
    df = read_manifest_frame(manifest)
    assert df["label_list"].map(len).max() == 2 and (df["label_list"].map(len) == 0).any()
    assert Path(df["abs_path"][0]).is_file()
    text = manifest.read_text()
    (tmp_path / "bad_split.csv").write_text(text.replace(",valid,", ",validation,"))
    with pytest.raises(ValueError, match="unknown split"):
        read_manifest_frame(tmp_path / "bad_split.csv")
    (tmp_path / "no_labels.csv").write_text("path,split\na.jpg,train\n")
    with pytest.raises(ValueError, match="missing column"):
        read_manifest_frame(tmp_path / "no_labels.csv")
    with pytest.raises(FileNotFoundError):
        read_manifest_frame(tmp_path / "absent.csv")
    from mlc_pipeline.model.train import classes_in
    assert classes_in(df) == ["blue", "red"]
    with pytest.raises(ValueError, match="not among the given classes"):
        classes_in(df, ["red"])
    (tmp_path / "other.csv").write_text("path,labels,split\na.jpg,other,train\n")
    with pytest.raises(ValueError, match="reserved"):
        classes_in(read_manifest_frame(tmp_path / "other.csv"))


def test_half_written_bundles_of_dead_writers_are_removed(tmp_path):
    import os
    import subprocess
    from mlc_pipeline.model.bundle import remove_stale_tmp_dirs
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid names no process now
    stale = tmp_path / f"m1.tmp-{dead.pid}-abcd1234"
    live = tmp_path / f"m2.tmp-{os.getpid()}-abcd1234"
    bundle = tmp_path / "m3"
    for d in (stale, live, bundle):
        d.mkdir()
        (d / "export.pkl").write_bytes(b"x")
    assert remove_stale_tmp_dirs(tmp_path) == [stale]
    assert not stale.exists() and live.is_dir() and bundle.is_dir()


def test_a_bundle_replaced_by_a_killed_writer_comes_back(tmp_path):
    """overwrite=True renames the old bundle aside, then the new one into its name; a writer killed
    between the two left neither under the name: the old one is put back, and never listed aside."""
    import os
    import subprocess
    from mlc_pipeline.model.registry import list_bundles
    from mlc_pipeline.model.bundle import remove_stale_tmp_dirs
    dead = subprocess.Popen(["true"])
    dead.wait()
    interrupted = tmp_path / f"m1.old-{dead.pid}-abcd1234"        # its new bundle never took the name
    finished = tmp_path / f"m2.old-{dead.pid}-abcd1234"           # swapped, but not yet deleted
    replacing = tmp_path / f"m3.old-{os.getpid()}-abcd1234"       # a live writer's, mid-swap
    for d in (interrupted, finished, tmp_path / "m2", replacing):
        d.mkdir()
        (d / "bundle.json").write_text("{}")
    assert [b.name for b in list_bundles(tmp_path)] == ["m2"]
    remove_stale_tmp_dirs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m1", "m2", replacing.name]


def test_training_pictures_are_decoded_once_within_a_budget_and_never_pickled(tmp_path):
    import pickle

    from PIL import Image
    from mlc_pipeline.model.learner import ImageReader

    paths = []
    for i, colour in enumerate(["red", "green", "blue"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (20, 10), colour).save(paths[-1])
    reader = ImageReader(budget_bytes=2 * 20 * 10 * 3)     # room for two of the three pictures
    first = [reader([str(p), []]) for p in paths]
    again = [reader([str(p), []]) for p in paths]
    assert [a is b for a, b in zip(first, again)] == [True, True, False]   # the third was decoded again
    assert first[2].getpixel((0, 0)) == again[2].getpixel((0, 0)) == (0, 0, 255)
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._cache == {} and copy.budget_bytes == reader.budget_bytes and reader._cache
    assert copy([str(paths[0]), []]).getpixel((0, 0)) == (255, 0, 0)


def test_bundle_holds_no_decoded_training_pictures():
    _, bundle_dir = trained_bundle()
    from mlc_pipeline.model.bundle import load_bundle
    reader = load_bundle(bundle_dir).learn.dls.train_ds.tls[0].tfms.fs[0]
    assert type(reader).__name__ == "ImageReader" and reader._cache == {}
    assert (bundle_dir / "export.pkl").stat().st_size < 5 * 2**20


def test_trivial_augment_changes_training_pictures_only_and_exports(tmp_path):
    """trivial_augment: each training picture gets one random TrivialAugmentWide operation after its
    crop; validation (and so calibration and prediction) sees the plain picture. The exported
    learner (here mlcnet5, the five-stage net) loads and predicts."""
    from mlc_pipeline.model import learner
    from mlc_pipeline.model.bundle import load_bundle
    manifest = _small_dataset(tmp_path)
    frame = read_manifest_frame(manifest)

    def pictures(cfg, split):
        rows = learner.training_frame(frame, cfg)
        dls = learner.build_dataloaders(rows, sorted({c for labs in rows["label_list"] for c in labs}), cfg)
        item = dls.train_ds.tls[0].tfms(dls.train_ds.items[0])       # the decoded picture
        loader = dls.train if split == "train" else dls.valid
        loader.after_item.split_idx = loader.dataset.split_idx       # what fastai's before_iter sets
        return [np.asarray(loader.after_item(item), dtype=float) for _ in range(12)]

    base = dict(crop="squish", image_size=32, batch_size=8, threads=1)
    plain = pictures(TrainConfig(**base), "train")[0]
    augmented = pictures(TrainConfig(**base, trivial_augment=True), "train")
    changed = [np.abs(a - plain).mean() > 1 for a in augmented]
    assert sum(changed) >= 4          # a few of TrivialAugmentWide's 14 operations are identities at some strengths
    assert all((v == plain).all() for v in pictures(TrainConfig(**base, trivial_augment=True), "valid"))
    train_model(manifest, tmp_path / "b", TrainConfig(**base, epochs=2, arch="mlcnet5", pretrained="none",
                                                      trivial_augment=True))
    learn = load_bundle(tmp_path / "b").learn
    assert any(type(t).__name__ == "TrivialAugment" for t in learn.dls.train.after_item.fs)
    assert len(learn.model[0]) == 5 * 3               # five stages of conv, conv, pool


def test_cutmix_mixes_training_batches_only_and_is_not_exported(tmp_path, monkeypatch):
    """cutmix: each training batch gets a patch of a shuffled copy of itself, and its targets are
    mixed by the patch's area (fractional targets); validation batches are left alone; the bundle
    scores plain pictures (no CutMix in the exported learner). mixup and cutmix exclude each other."""
    import torch
    from fastai.callback.mixup import CutMix
    from mlc_pipeline.model.bundle import load_bundle
    seen = []
    before_batch = CutMix.before_batch

    def recording(self):
        x = self.learn.xb[0].clone()
        before_batch(self)
        seen.append((self.training, (self.learn.xb[0] != x).any().item(), self.learn.yb[0].clone()))
    monkeypatch.setattr(CutMix, "before_batch", recording)     # on the class: the learner's instance uses it
    manifest = _small_dataset(tmp_path)
    train_model(manifest, tmp_path / "b", TrainConfig(image_size=32, epochs=2, batch_size=8, threads=1,
                                                      pretrained="none", arch="mlcnet", cutmix=1.0))
    assert seen and all(training for training, _, _ in seen)
    assert sum(changed for _, changed, _ in seen) >= len(seen) // 2
    assert any(((y > 0) & (y < 1)).any() for _, _, y in seen)
    assert all(((y >= 0) & (y <= 1)).all() and y.dtype == torch.float32 for _, _, y in seen)
    assert not [cb for cb in load_bundle(tmp_path / "b").learn.cbs if isinstance(cb, CutMix)]
    with pytest.raises(ValueError, match="set one of them"):
        TrainConfig(mixup=0.4, cutmix=1.0)


def test_label_smoothing_softens_training_targets_only_and_is_not_exported(tmp_path, monkeypatch):
    """label_smoothing: the loss sees targets eps/2 and 1 - eps/2 on training batches and the true
    0/1 targets on validation; the bundle has no SmoothTargets; the softmax head refuses it."""
    import torch
    from mlc_pipeline.model import losses
    from mlc_pipeline.model.bundle import load_bundle
    from mlc_pipeline.model.learner import SmoothTargets
    seen = []
    call = losses.ClassAndNotOtherBCE.__call__

    def recording(self, inp, targ, **kwargs):
        seen.append((inp.requires_grad, torch.unique(targ).tolist()))
        return call(self, inp, targ, **kwargs)
    monkeypatch.setattr(losses.ClassAndNotOtherBCE, "__call__", recording)
    manifest = _small_dataset(tmp_path)
    train_model(manifest, tmp_path / "b", TrainConfig(image_size=32, epochs=2, batch_size=8, threads=1,
                                                      pretrained="none", arch="mlcnet", label_smoothing=0.1))
    training = [values for grad, values in seen if grad]
    validation = [values for grad, values in seen if not grad]
    assert training and validation
    assert all(v == pytest.approx([0.05, 0.95]) for v in training), training
    assert all(set(v) <= {0.0, 1.0} for v in validation), validation
    assert not [cb for cb in load_bundle(tmp_path / "b").learn.cbs if isinstance(cb, SmoothTargets)]
    with pytest.raises(ValueError, match="softmax head"):
        TrainConfig(head="softmax", label_smoothing=0.1)


def test_eval_size_scores_larger_pictures_than_training_and_continuations_keep_it(tmp_path, monkeypatch):
    """eval_size (FixRes): training batches at image_size; validation, calibration, the bundle's
    scoring and prediction at eval_size; with progressive resizing each transform gets its own size
    back; a continued training (mining's retrain) keeps it, and the report's network line says it."""
    from mlc_pipeline.model import nets, weights
    from mlc_pipeline.model.bundle import load_bundle
    from mlc_pipeline.report.model import bundle_network_line
    seen = []
    pool = nets.ConcatPool.forward

    def recording(self, x):
        seen.append((self.training, x.shape[-1]))
        return pool(self, x)
    monkeypatch.setattr(nets.ConcatPool, "forward", recording)
    manifest = _small_dataset(tmp_path)
    train_model(manifest, tmp_path / "b", TrainConfig(image_size=32, eval_size=64, start_size=16, epochs=2,
                                                      batch_size=8, threads=1, pretrained="none", arch="mlcnet"))
    train_sizes = [size for training, size in seen if training]
    assert sorted(set(train_sizes)) == [1, 2], seen             # 16 px, then 32 px, through four 2x2 pools
    assert seen[-1] == (False, 4)                           # the bundle's scoring at 64 px
    learn = load_bundle(tmp_path / "b").learn
    sizes = {(t.split_idx, tuple(t.size)) for t in learn.dls.train.after_item.fs if hasattr(t, "size")}
    assert sizes == {(0, (32, 32)), (1, (64, 64))}          # training crops; validation and prediction
    assert "scored at 64 px" in bundle_network_line(tmp_path / "b")
    same = dict(image_size=32, epochs=2, batch_size=8, threads=1, pretrained="none", arch="mlcnet")
    for crop in ("random", "squish"):     # the scoring size leaves what training sees, draw for draw, alone
        losses = [[e["train_loss"] for e in train_model(manifest, tmp_path / f"{crop}-{size}", TrainConfig(
            **same, crop=crop, eval_size=size)).history] for size in (None, 48)]
        assert losses[0] == losses[1], crop
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    continued, _ = weights.resolve_continued(TrainConfig(pretrained="none"), meta, tmp_path / "b")
    assert (continued.image_size, continued.eval_size) == (32, 64)
    old = {**meta, "config": {k: v for k, v in meta["config"].items() if k != "eval_size"}}
    assert weights.resolve_continued(TrainConfig(pretrained="none"), old, tmp_path / "b")[0].eval_size is None


def test_cosine_head_scores_directions_only_and_continuations_keep_it(tmp_path):
    """cosine_head: mlcnet's last layer is a CosineLinear, whose logits ignore the feature's length
    and stay within scale of the bias; mining's feature hook (the last linear layer's input) still
    finds it; a continued training keeps it (its state dict would load into a plain Linear too);
    a torchvision network refuses it."""
    import torch
    from mlc_pipeline.model.bundle import load_bundle
    from mlc_pipeline.model.nets import CosineLinear
    from mlc_pipeline.model.predict import _last_linear
    layer = CosineLinear(6, 3, scale=16.0)
    x = torch.rand(4, 6)
    assert torch.allclose(layer(x), layer(5 * x), atol=1e-5)
    assert ((layer(x) - layer.bias).abs() <= 16.0 + 1e-4).all()
    manifest = _small_dataset(tmp_path)
    base = dict(image_size=32, epochs=2, batch_size=8, threads=1, pretrained="none", arch="mlcnet")
    train_model(manifest, tmp_path / "b", TrainConfig(**base, cosine_head=16.0))
    model = load_bundle(tmp_path / "b").learn.model
    assert isinstance(model[1][-1], CosineLinear) and model[1][-1].scale == 16.0
    assert _last_linear(model) is model[1][-1]
    train_model(manifest, tmp_path / "c", TrainConfig(**{**base, "epochs": 1}, init_from=str(tmp_path / "b")))
    continued = load_bundle(tmp_path / "c")
    assert isinstance(continued.learn.model[1][-1], CosineLinear)
    assert continued.meta["config"]["cosine_head"] == 16.0
    train_model(manifest, tmp_path / "d", TrainConfig(**base))
    assert type(load_bundle(tmp_path / "d").learn.model[1][-1]) is torch.nn.Linear
    with pytest.raises(ValueError, match="cosine_head"):
        TrainConfig(arch="resnet18", cosine_head=16.0)


def test_test_time_flips_calibrate_on_the_scores_they_are_used_with(tmp_path, monkeypatch):
    """With tta, every scorer averages in the mirror image; thresholds fitted on plain scores did not
    hold the cap on the scores actually used. Calibration now sees what score_paths gives."""
    import mlc_pipeline.model.train as train
    from mlc_pipeline.model.bundle import load_bundle
    from mlc_pipeline.model.predict import score_paths
    seen, real = {}, train.calibrate_thresholds

    def calibrate(probs, *args, **kwargs):      # the real calibration, watched
        seen["probs"] = probs
        return real(probs, *args, **kwargs)

    monkeypatch.setattr(train, "calibrate_thresholds", calibrate)
    manifest = _small_dataset(tmp_path)
    train_model(manifest, tmp_path / "b", TrainConfig(image_size=32, epochs=2, batch_size=8, threads=1, tta=True,
                                                      pretrained="none"))
    df = read_manifest_frame(manifest)
    valid = list(df.loc[df["split"] == "valid", "abs_path"])
    bundle = load_bundle(tmp_path / "b")
    used = score_paths(bundle, valid)
    np.testing.assert_allclose(seen["probs"], used, atol=1e-4)
    # ... and those scores are the mean of the picture's and its mirror image's (the mirrors saved as
    # lossless files and scored plainly): with test-time flips gone from both sides, this fails
    from PIL import Image
    mirrored = []
    for i, path in enumerate(valid):
        with Image.open(path) as im:
            im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / f"m{i}.png")
        mirrored.append(tmp_path / f"m{i}.png")
    bundle.meta["config"]["tta"] = False
    plain, mirror = score_paths(bundle, valid), score_paths(bundle, mirrored)
    assert np.abs(plain - mirror).max() > 1e-3, "mirror images score like the pictures: a useless test"
    np.testing.assert_allclose(used, (plain + mirror) / 2, atol=1e-4)
