"""Train a classifier on a published dataset version and write a self-describing model bundle.

The default recipe is multi-label: one output per class and one for "other", trained with BCE
(`other_mode='class'`), and a class's score is sigmoid(class) x (1 - sigmoid(other)): the class, and
not "other" (model/losses.py). An image no class claims is "none of these". Two alternatives use the same
code path: "other" images with no label at all, so the loss only pushes every class towards 0 on
them (`other_mode='negative'`, the default until 2026-12-02), and a single-label softmax with
"other" as a class (`head='softmax'`).

Everything defaults to what fits a 2-core CPU without pretrained weights (see docs/training.md for
the measured speeds behind the defaults).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision
from fastai.vision.all import (
    BCEWithLogitsLossFlat, CrossEntropyLossFlat, CutMix, Learner, MixUp, accuracy, default_split, imagenet_stats,
    model_meta, set_seed, vision_learner,
)
from pydantic import ValidationError

from mlc_pipeline import __version__
from mlc_pipeline.config import error_line
from mlc_pipeline.model import nets
from mlc_pipeline.model.choices import is_local_arch
from mlc_pipeline.model.losses import CLASS_AND_NOT_OTHER, PLAIN_SIGMOID, ClassAndNotOtherBCE
from mlc_pipeline.model.options import TrainConfig
from mlc_pipeline.model.bundle import BUNDLE_FORMAT, export_learner, move_into_place, remove_stale_tmp_dirs, write_meta
from mlc_pipeline.model.lineage import learning_record
from mlc_pipeline import progress
from mlc_pipeline.model.rotation import RotationAux
from mlc_pipeline.model.learner import (
    CPUBFloat16, EpochBar, LossHistory, ProgressiveResize, SmoothTargets, SparseValidation,
    build_dataloaders, format_loss, macro_f1_metric, training_frame,
)
from mlc_pipeline.model.budget import FitToBudget, Interruptible, TimeBudget, budget_line
from mlc_pipeline.model.precision import training_precision
from mlc_pipeline.manifest import read_manifest_frame
from mlc_pipeline.model.plots import plot_curves, plot_losses
from mlc_pipeline.fsutil import sha256_file
from mlc_pipeline.model.weights import resolve_continued, resolve_training
from mlc_pipeline.model.weights_files import load_backbone_weights
from mlc_pipeline.model.metrics import (
    OTHER, calibrate_thresholds, cap_warning, capping_path, evaluate, pick_capped,
)
from mlc_pipeline.model.assess import (
    SCORES_FILE, evaluate_loaded_bundle, mined_valid_mask, typical_positive_scores, valid_predictions, without_photos,
)
from mlc_pipeline.model.predict import mirrored_probabilities

log = logging.getLogger(__name__)

# fastai knows how to cut and split resnets, squeezenets, densenets...; it has no entry for the
# MobileNets, and without one it would call the removed `arch(pretrained=...)` API. torchvision's
# mobilenet_v3 children are (features, avgpool, classifier): the body is everything before avgpool.
for _arch in (torchvision.models.mobilenet_v3_small, torchvision.models.mobilenet_v3_large):
    model_meta.setdefault(_arch, {"cut": -2, "split": default_split, "stats": imagenet_stats, "weights": "DEFAULT"})


@dataclass
class TrainResult:
    bundle_dir: Path
    classes: list[str]                # the real classes
    vocab: list[str]                  # the model's output columns (may include "other")
    thresholds: list[float] | None    # per vocab column; None for the softmax head (argmax decides)
    metrics: dict                     # what metrics.json holds
    history: list[dict]               # per epoch: train_loss, valid_loss
    train_seconds: float
    images_per_second: float
    stopped_early: bool
    pretrained_used: str              # 'none' | 'imagenet' | the weights path


# ---------------------------------------------------------------- manifest

def classes_in(df: pd.DataFrame, classes: list[str] | None = None) -> list[str]:
    """The union of labels (sorted), or the explicit list after checking the manifest against it."""
    found = sorted({lab for labs in df["label_list"] for lab in labs})
    if OTHER in found:
        raise ValueError(f"'{OTHER}' is reserved: 'other' images have an empty labels cell")
    if classes is None:
        if not found:
            raise ValueError("the manifest has no labelled image")
        return found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"manifest labels {unknown} are not among the given classes {classes}")
    return list(classes)


# ---------------------------------------------------------------- training

def train_model(manifest_csv: str | Path, out_dir: str | Path, cfg: TrainConfig | None = None,
                dataset_version: str = "", classes: list[str] | None = None,
                overwrite: bool = False, warnings: list[str] | None = None, takedowns: dict | None = None) -> TrainResult:
    """Train on the train split, calibrate on valid, evaluate on test + probe, write the bundle.
    `takedowns`: what the version's rows lose to takedowns (model/stage.without_takedowns), left out
    of every split here and recorded in bundle.json.

    The bundle folder is built next to `out_dir` and renamed into place, so a crash never leaves a
    half-written bundle that looks complete.
    """
    cfg = cfg or TrainConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists (pass overwrite=True to replace it)")
    df = without_photos(read_manifest_frame(manifest_csv), (takedowns or {}).get("left_out"))
    classes = classes_in(df, classes)
    rows = training_frame(df, cfg)

    # arch 'auto', the recipe's image size/epochs/lr/batch size, the starting weights (may download): before anything is built
    parent = None
    if cfg.init_from:
        from mlc_pipeline.model.bundle import load_bundle
        parent = load_bundle(cfg.init_from)
        cfg, weights = resolve_continued(cfg, parent.meta, parent.path)
    else:
        cfg, weights = resolve_training(cfg, n_train=int((rows["split"] == "train").sum()))
    # checked again as resolved: `arch: auto` made a torchvision network (cosine_head, rotation_aux are
    # mlcnet's), or a continued bundle's options met this config's (its rotation_aux beside a cutmix set since)
    try:
        cfg = TrainConfig.model_validate(cfg.model_dump())
    except ValidationError as exc:      # one line, as a config file's problem is said (not pydantic's dump)
        raise ValueError(error_line(exc, "train (as resolved)")) from None
    torch.set_num_threads(cfg.threads or available_cores())
    # Seed before building the loaders (their shuffling RNG is drawn from the global one) and the
    # model (its init). On CPU with workers=0 two runs with the same seed give the same weights.
    set_seed(cfg.seed, reproducible=True)
    dls = build_dataloaders(rows, classes, cfg)
    vocab = list(dls.vocab)
    pretrained = weights.pretrained

    if cfg.head == "softmax":
        loss_func, metrics, class_score = CrossEntropyLossFlat(), [accuracy], "softmax"
    elif cfg.effective_other_mode == "class":
        # "other" vetoes the classes in every score (losses.ClassAndNotOtherBCE)
        loss_func, metrics = ClassAndNotOtherBCE(other_index=vocab.index(OTHER), thresh=0.5), [macro_f1_metric()]
        class_score = CLASS_AND_NOT_OTHER
    else:
        loss_func, metrics, class_score = BCEWithLogitsLossFlat(thresh=0.5), [macro_f1_metric()], PLAIN_SIGMOID
    if is_local_arch(cfg.arch):
        learn = Learner(dls, nets.mlcnet(len(vocab), cfg.arch, cosine_scale=cfg.cosine_head,
                                         rotation_head=cfg.rotation_aux > 0),
                        loss_func=loss_func, metrics=metrics,
                        splitter=nets.body_head_splitter, wd=cfg.wd)
    else:
        learn = vision_learner(dls, getattr(torchvision.models, cfg.arch), pretrained=False,  # weights: below
                               normalize=False, loss_func=loss_func, metrics=metrics, wd=cfg.wd)
    if parent is not None:
        if list(parent.vocab) != vocab:
            raise ValueError(f"cannot continue {parent.path.name}: its outputs are {parent.vocab}, "
                             f"this dataset's are {vocab}")
        learn.model.load_state_dict(parent.learn.model.state_dict())
        del parent      # its network stays in memory otherwise, for the whole training
    elif weights.file:
        load_backbone_weights(learn, cfg.arch, weights.file)
        learn.freeze()
    precision = training_precision(cfg.precision)
    if precision == "float16":
        learn.to_fp16()
    else:
        # Channels-last weights let oneDNN's CPU convolutions skip their layout conversions: mlcnet
        # trains ~25 % faster on 2 cores, resnet18 ~15 % (docs/training.md, "Measured speeds").
        learn.model.to(memory_format=torch.channels_last)

    history, budget = LossHistory(), TimeBudget(cfg.max_train_seconds or float("inf"))
    fit_cbs = [history, budget, Interruptible(), SparseValidation()] + ([MixUp(cfg.mixup)] if cfg.mixup > 0 else [])
    fit_cbs += [CutMix(cfg.cutmix)] if cfg.cutmix > 0 else []
    fit_cbs += [SmoothTargets(cfg.label_smoothing)] if cfg.label_smoothing > 0 else []
    fit_cbs += [RotationAux(cfg.rotation_aux)] if cfg.rotation_aux > 0 else []
    fit_cbs += [CPUBFloat16()] if precision == "bfloat16" else []    # a fit's callback: not in the bundle
    n_train = len(dls.train_ds)
    log.info("training %s (%s, %s, pretrained=%s, %s) on %d images, validating on %d, vocab %s",
             cfg.arch, cfg.head, cfg.effective_other_mode, pretrained, precision, n_train, len(dls.valid_ds), vocab)
    continuing = weights.continued_from is not None
    lr = cfg.lr or default_lr(cfg.arch, pretrained, continuing)
    start = time.monotonic()
    one_cycle = pretrained == "none" or continuing
    if cfg.start_size and pretrained == "none" and not continuing:
        fit_cbs.append(ProgressiveResize(cfg.start_size, cfg.start_share))
    elif cfg.start_size:
        log.warning("start_size %d ignored: progressive resizing is for a first training from scratch", cfg.start_size)
    n_epochs = cfg.epochs + (0 if one_cycle else 1)    # fine_tune: one frozen epoch first
    # progress goes to `log` through LossHistory, and to the terminal's bar (time left) through EpochBar
    with learn.no_bar(), learn.no_logging(), progress.bar(f"train {cfg.arch}", total=n_epochs * len(dls.train),
                                                          unit="batches") as bar:
        fit_cbs.append(EpochBar(bar))
        # each fit's name in bundle.json's time_budget: fine_tune's two, or one
        names = ("one-cycle",) if pretrained == "none" else ("unfrozen",) if continuing else ("frozen", "unfrozen")
        fitted = FitToBudget(cfg.max_minutes * 60, bar, names) if cfg.max_minutes else None
        fit_cbs += [fitted] if fitted else []
        if continuing and pretrained != "none":
            # fine_tune's unfrozen stage again: lower rates for the early ImageNet layers
            learn.fit_one_cycle(cfg.epochs, slice(lr / 100, lr), cbs=fit_cbs)
        elif one_cycle:
            learn.fit_one_cycle(cfg.epochs, lr, cbs=fit_cbs)
        else:
            learn.fine_tune(cfg.epochs, lr, cbs=fit_cbs)
    train_seconds = time.monotonic() - start
    images_seen = len(history.batch_losses) * cfg.batch_size
    short = budget_line(fitted, cfg.max_minutes) if fitted and (fitted.shortened or fitted.over_seconds) else None
    if short:
        log.warning("%s", short)
        warnings = [*(warnings or []), short]
        cfg = cfg.model_copy(update={"epochs": fitted.epochs})   # what trained: a continuation takes a third of it
    if precision == "float16":
        learn.to_fp32()  # the bundle must load on a CPU-only machine

    # Calibrate on valid: these images were not trained on, the test split stays untouched.
    valid_probs, valid_targets = valid_predictions(learn, cfg.head)
    if cfg.tta:
        # Every scorer of the bundle averages in the mirror image (predict.py): so must calibration.
        valid_probs = (valid_probs + mirrored_probabilities(learn, list(rows.loc[rows["is_valid"], "abs_path"]),
                                                            max(cfg.batch_size, 64))) / 2
    # Not stopped at the first NaN loss (fastai's TerminateOnNaN): on CUDA a float16 overflow batch
    # is skipped by the grad scaler and the fit goes on fine. Only scores that are not numbers fail it.
    if not np.isfinite(valid_probs).all():
        raise TrainingDiverged(_diverged_message(history, lr))
    skipped = sum(not np.isfinite(loss) for loss in history.batch_losses)
    if skipped:
        note = f"{skipped} training batches had a loss that was not a number; the network's scores are finite"
        log.warning("%s", note)
        warnings = [*(warnings or []), note]
    thresholds, curve_path = None, []
    if cfg.head == "sigmoid":
        thresholds = calibrate_thresholds(valid_probs, valid_targets, cfg.threshold_mode, cfg.target_precision,
                                          cfg.f1_tolerance, classes=vocab)
        # Every point from these thresholds to "accept no held-out other image": the report's curve,
        # and the operating point when the user caps unknown acceptance.
        curve_path = capping_path(valid_probs, valid_targets, vocab, start=thresholds)
        if cfg.max_unknown_accepted is not None:
            thresholds = pick_capped(curve_path, cfg.max_unknown_accepted)
            said = cap_warning(valid_probs, valid_targets, vocab, curve_path[0].thresholds, thresholds,
                               cfg.max_unknown_accepted)
            if said:
                log.warning("%s", said)
                warnings = [*(warnings or []), said]
        # fastai's `predict`/decoded preds use the loss's thresh; a per-class tensor broadcasts over
        # the class axis, so `learn.predict` on the exported learner agrees with the bundle.
        learn.loss_func.thresh = torch.tensor(thresholds, dtype=torch.float32)
    elif cfg.max_unknown_accepted is not None:      # said, not silently dropped (the curve23 audit)
        said = (f"train.max_unknown_accepted {cfg.max_unknown_accepted:g} was not applied: a softmax head has no "
                "thresholds to move (the highest of the classes and 'other' decides), so nothing bounded what "
                "this model accepts of unknown images; the sigmoid head (the default) is calibrated under the cap")
        log.warning("%s", said)
        warnings = [*(warnings or []), said]
    valid_metrics = evaluate(valid_probs, valid_targets, thresholds, vocab, head=cfg.head)
    mined = mined_valid_mask(rows)
    if mined.any():
        # Mining adds negatives to validation each round; the F1 that rounds are compared on
        # (shipping.held_out_f1) must be measured on the validation images they all share.
        shared = evaluate(valid_probs[~mined], valid_targets[~mined], thresholds, vocab, head=cfg.head)
        valid_metrics["n_mined"] = int(mined.sum())
        valid_metrics["macro_f1_without_mined"] = shared["macro_f1"]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp_dirs(out_dir.parent)
    # The writer's pid is in the name, so a later run can tell a killed writer's leftovers from a
    # bundle another live process is still writing.
    tmp_dir = out_dir.parent / f"{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    try:
        export_learner(learn, tmp_dir / "export.pkl")
        meta = {
            "format": BUNDLE_FORMAT,
            "classes": classes,
            "vocab": vocab,
            "thresholds": None if thresholds is None else [float(t) for t in thresholds],
            "typical_positive_scores": typical_positive_scores(valid_probs, valid_targets),
            "head": cfg.head,
            "other_mode": cfg.effective_other_mode,
            "class_score": class_score,       # how the thresholds' scores are made (model/losses.py)
            "arch": cfg.arch,
            "image_size": cfg.image_size,
            "precision": precision,           # of the training batches; scoring is always float32
            "pretrained": pretrained,
            "weights": weights.record(),
            "dataset_version": dataset_version,
            "manifest": str(Path(manifest_csv).resolve()),
            "takedowns": takedowns,           # the photos taken down since the version was published: left out
            # every training this network learned in: the continued bundle's record plus this one (model/lineage.py)
            "learned_from": learning_record(cfg.init_from, dataset_version, takedowns),
            "export_sha256": sha256_file(tmp_dir / "export.pkl"),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": cfg.model_dump(),
            "lr": lr,
            "n_train": n_train,
            "n_valid": len(dls.valid_ds),
            "history": history.epochs,
            "train_seconds": round(train_seconds, 2),
            "images_per_second": round(images_seen / max(history.train_phase_seconds, 1e-9), 2),
            "stopped_early": budget.stopped,
            "time_budget": None if fitted is None else fitted.record(cfg.max_minutes),   # each fit's epochs
            "warnings": list(warnings or []),     # the data's (models.other_set_warnings) and the cap's
            "versions": {"mlc_pipeline": __version__, "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "fastai": _fastai_version()},
        }
        write_meta(tmp_dir, meta)
        # Score the exported artifact itself, through the same loader users get.
        from mlc_pipeline.model.bundle import load_bundle
        test_metrics = evaluate_loaded_bundle(load_bundle(tmp_dir), manifest_csv, batch_size=max(cfg.batch_size, 64),
                                              curve_path=curve_path, scores_csv=tmp_dir / SCORES_FILE,
                                              left_out=(takedowns or {}).get("left_out"))
        metrics = {"valid": valid_metrics, "test": test_metrics, "warnings": meta["warnings"]}
        (tmp_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        plot_losses(history, tmp_dir / "loss.png", title=f"{cfg.arch} {cfg.head}/{cfg.effective_other_mode}")
        if test_metrics.get("curve"):
            plot_curves({out_dir.name: test_metrics["curve"]}, tmp_dir / "curve.png")
        move_into_place(tmp_dir, out_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)

    test = metrics["test"]
    progress.summary(f"train: {out_dir.name}", [
        ("network", f"{cfg.arch}, {cfg.head}, {cfg.image_size} px, pretrained {pretrained}"),
        ("epochs", f"{len(history.epochs)}, last: " + " · ".join(
            f"{e['epoch']}: {format_loss(e['train_loss'], 3)}/{format_loss(e['valid_loss'], 3)}"
            for e in history.epochs[-4:])
         + " (train/valid loss)" + (", stopped by the time budget" if budget.stopped else "")
         + (f": {fitted.trained()}, {short.split(':')[0]}" if short else "")),
        ("seconds", f"{train_seconds:.0f} ({meta['images_per_second']} img/s)"),
        ("macro F1 (test)", f"{test['macro_f1']:.3f}"),
        ("unknown accepted", f"test other {_pct(test['unknown_accepted'])}, probe {_pct(test['probe_accepted'])}")])
    return TrainResult(
        bundle_dir=out_dir, classes=classes, vocab=vocab, thresholds=meta["thresholds"], metrics=metrics,
        history=history.epochs, train_seconds=train_seconds, images_per_second=meta["images_per_second"],
        stopped_early=budget.stopped, pretrained_used=pretrained,
    )


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def default_lr(arch: str, pretrained: str, continuing: bool = False) -> float:
    """Measured on the offline world (docs/training.md); no lr_find, which costs an epoch's time."""
    if pretrained != "none":
        return 1e-3 if continuing else 2e-3    # continuing: fine_tune's unfrozen stage, base_lr / 2
    return 5e-3 if is_local_arch(arch) else 3e-3


class TrainingDiverged(RuntimeError):
    """The network's scores are not numbers (its weights blew up): nothing is written, nothing ships."""


def _diverged_message(history, lr) -> str:
    bad = next((i for i, loss in enumerate(history.batch_losses) if not np.isfinite(loss)), None)
    when = "" if bad is None else f"the loss first became {history.batch_losses[bad]} at training batch {bad + 1}, "
    return (f"training diverged ({when}learning rate {lr:g}): the network scores validation images as NaN, "
            f"so no bundle was written. Lower train.lr, or use train.precision: float32")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _fastai_version() -> str:
    import fastai
    return fastai.__version__
