"""Train a classifier on a published dataset version and write a self-describing model bundle.

The default recipe is multi-label: a sigmoid per class trained with BCE, where "other" images carry
no label at all, so the loss pushes every class towards 0 on them (`other_mode='negative'`). That is
what lets the model answer "none of these". Two baselines use the same code path: an explicit
"other" class under the sigmoid head (`other_mode='class'`), and a single-label softmax with "other"
as a class (`head='softmax'`).

Everything defaults to what fits a 2-core CPU without pretrained weights (see docs/training.md for
the measured speeds behind the defaults).
"""

from __future__ import annotations

import dataclasses
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
    AccumMetric, BCEWithLogitsLossFlat, CancelFitException, CategoryBlock, Callback,
    ColReader, ColSplitter, CrossEntropyLossFlat, DataBlock, ImageBlock, Learner, MultiCategoryBlock, Normalize,
    MixUp, RandomResizedCrop, Recorder, Resize, ResizeMethod, accuracy, aug_transforms, default_split,
    imagenet_stats, model_meta, set_seed, vision_learner,
)
from fastai.metrics import ActivationType

from mlc_pipeline import __version__

from mlc_pipeline.model import nets
from mlc_pipeline.model.bundle import export_learner
from mlc_pipeline.manifest import read_manifest_frame
from mlc_pipeline.report.curves import plot_curves
from mlc_pipeline.fsutil import remove_dead_leftovers, sha256_file
from mlc_pipeline.model.weights import load_backbone_weights, resolve_training
from mlc_pipeline.model.metrics import (
    DEFAULT_F1_TOLERANCE, OTHER, THRESHOLD_MODES, calibrate_thresholds, capping_path, evaluate,
    evaluate_loaded_bundle, pick_capped,
)

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1

# fastai knows how to cut and split resnets, squeezenets, densenets...; it has no entry for the
# MobileNets, and without one it would call the removed `arch(pretrained=...)` API. torchvision's
# mobilenet_v3 children are (features, avgpool, classifier): the body is everything before avgpool.
for _arch in (torchvision.models.mobilenet_v3_small, torchvision.models.mobilenet_v3_large):
    model_meta.setdefault(_arch, {"cut": -2, "split": default_split, "stats": imagenet_stats, "weights": "DEFAULT"})


@dataclass
class TrainConfig:
    """Field names match `config.TrainSettings`, so `TrainConfig(**settings)` works."""

    arch: str = "auto"                # 'auto' (weights.RECIPES) | nets.WIDTHS name | a torchvision.models function name
    pretrained: str = "auto"          # 'auto' | 'imagenet' | 'none' | path to a state dict (mlc_pipeline/weights.py)
    image_size: int | None = None     # None: the recipe's (weights.RECIPES)
    epochs: int | None = None         # None: the recipe's
    batch_size: int = 64
    lr: float | None = None           # None: the recipe's, else 5e-3 mlcnet, 3e-3 torchvision from scratch, 2e-3 fine-tuning
    seed: int = 42
    other_mode: str = "negative"      # 'negative': "other" = no label | 'class': an explicit "other" class
    head: str = "sigmoid"             # 'sigmoid' (multi-label) | 'softmax' (single-label baseline)
    threshold_mode: str = "per-class-f1"   # | 'global-f1' | 'target-precision'
    target_precision: float = 0.95
    f1_tolerance: float = DEFAULT_F1_TOLERANCE  # F1 modes: highest threshold within this of the best F1
    workers: int = 0                  # DataLoader processes; 0 on a 2-core box (workers steal the cores)
    threads: int | None = None        # torch threads; None = every core this process may use
    max_train_seconds: float | None = None  # stop training early (after an epoch if possible) past this
    augment: bool = True              # flips, small rotations/zoom/lighting on the batch
    crop: str | None = None           # None: the recipe's | 'squish' the whole picture | 'random' resized crops
    min_scale: float = 0.35           # crop='random': smallest share of the picture a crop keeps
    mixup: float | None = None        # MixUp alpha (0 = off; None: the recipe's)
    tta: bool = False                 # score the picture and its mirror image, average (2x predict time)
    max_unknown_accepted: float | None = 0.05  # cap on held-out "other" images accepted (None: the F1 point)

    def __post_init__(self):
        if self.head not in ("sigmoid", "softmax"):
            raise ValueError(f"head must be 'sigmoid' or 'softmax', got {self.head!r}")
        if self.other_mode not in ("negative", "class"):
            raise ValueError(f"other_mode must be 'negative' or 'class', got {self.other_mode!r}")
        if self.max_unknown_accepted is not None and not 0 <= self.max_unknown_accepted <= 1:
            raise ValueError(f"max_unknown_accepted must be in [0, 1], got {self.max_unknown_accepted}")
        if self.crop not in (None, "squish", "random"):
            raise ValueError(f"crop must be 'squish' or 'random', got {self.crop!r}")
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ValueError(f"threshold_mode must be one of {THRESHOLD_MODES}, got {self.threshold_mode!r}")
        if self.arch != "auto" and not nets.is_local_arch(self.arch) and not callable(getattr(torchvision.models, self.arch, None)):
            raise ValueError(f"arch {self.arch!r} is neither one of {sorted(nets.WIDTHS)} "
                             f"nor a torchvision.models function (e.g. resnet18)")

    @classmethod
    def from_settings(cls, settings) -> "TrainConfig":
        """From a pydantic model or dict, ignoring keys that are not training options."""
        data = settings.model_dump() if hasattr(settings, "model_dump") else dict(settings)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def effective_other_mode(self) -> str:
        # A softmax must put "other" images somewhere: they are always a class there.
        return "class" if self.head == "softmax" else self.other_mode


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


# ---------------------------------------------------------------- data and model

def _training_frame(df: pd.DataFrame, cfg: TrainConfig) -> pd.DataFrame:
    """Train + valid rows with the target column the chosen head needs. Test and probe never train."""
    rows = df[df["split"].isin(["train", "valid"])].copy()
    rows["is_valid"] = rows["split"] == "valid"
    if cfg.head == "softmax":
        # A softmax can't say "both": drop two-label images rather than teach half the truth.
        multi = rows["label_list"].map(len) > 1
        if multi.any():
            log.info("softmax head: dropping %d multi-label train/valid images", int(multi.sum()))
        rows = rows[~multi].copy()
        rows["target"] = [labs[0] if labs else OTHER for labs in rows["label_list"]]
    elif cfg.other_mode == "class":
        rows["target"] = [labs if labs else [OTHER] for labs in rows["label_list"]]
    else:
        rows["target"] = rows["label_list"]
    for split in ("train", "valid"):
        if not (rows["split"] == split).any():
            raise ValueError(f"the manifest has no usable '{split}' image")
    return rows.reset_index(drop=True)


def build_dataloaders(rows: pd.DataFrame, classes: list[str], cfg: TrainConfig, device=None):
    vocab = classes + ([OTHER] if cfg.effective_other_mode == "class" else [])
    # Keep the given order (classes sorted, "other" last) in every head: CategoryBlock sorts by default.
    y_block = CategoryBlock(vocab=vocab, sort=False) if cfg.head == "softmax" else MultiCategoryBlock(vocab=vocab)
    # Always normalise with ImageNet stats (fastai adds it only when pretrained) so scratch and pretrained runs match.
    batch_tfms = [Normalize.from_stats(*imagenet_stats)]
    if cfg.augment:
        batch_tfms = aug_transforms(max_rotate=10, max_zoom=1.1, max_warp=0.1) + batch_tfms
    block = DataBlock(
        blocks=(ImageBlock, y_block),
        get_x=ColReader("abs_path"),
        get_y=ColReader("target"),
        splitter=ColSplitter("is_valid"),
        item_tfms=item_transforms(cfg),
        batch_tfms=batch_tfms,
    )
    return block.dataloaders(rows, bs=cfg.batch_size, num_workers=cfg.workers, device=device)


def item_transforms(cfg: TrainConfig):
    """Squish keeps every pixel; random resized crops (valid/predict: the squished picture, centre
    crop of 1/8) show the net parts of objects at several scales, which real photos need."""
    if cfg.crop == "random":
        return RandomResizedCrop(cfg.image_size, min_scale=cfg.min_scale)
    return Resize(cfg.image_size, method=ResizeMethod.Squish)


def macro_f1_at_half(preds: torch.Tensor, targs: torch.Tensor) -> float:
    """Training-time progress metric: macro F1 at 0.5 (calibrated numbers come after training)."""
    pred, targ = preds >= 0.5, targs.bool()
    tp = (pred & targ).sum(0).float()
    denom = pred.sum(0).float() + targ.sum(0).float()
    return (2 * tp / denom.clamp(min=1)).mean().item()


def macro_f1_metric():
    return AccumMetric(macro_f1_at_half, activation=ActivationType.Sigmoid, flatten=False)


# ---------------------------------------------------------------- callbacks

class LossHistory(Callback):
    """Per-batch train loss and per-epoch train/valid loss, kept across fine_tune's two fits
    (fastai's Recorder resets at every fit)."""

    order = Recorder.order + 1

    def __init__(self):
        self.batch_losses, self.epochs = [], []
        self.train_phase_seconds = 0.0  # time in training batches only: the img/s we report
        self._phase_start = None

    def before_train(self):
        self._phase_start = time.monotonic()

    def after_train(self):
        self.train_phase_seconds += time.monotonic() - self._phase_start
        self._phase_start = None

    def after_cancel_fit(self):  # a time-budget stop skips after_train
        if self._phase_start is not None:
            self.after_train()

    def after_batch(self):
        if self.training:
            self.batch_losses.append(self.learn.loss.item())

    def after_epoch(self):
        train_loss, valid_loss = self.learn.recorder.values[-1][:2]
        self.epochs.append({"epoch": len(self.epochs) + 1, "train_loss": float(train_loss),
                            "valid_loss": float(valid_loss), "n_batches": len(self.batch_losses)})
        log.info("epoch %d: train loss %.4f, valid loss %.4f", len(self.epochs), train_loss, valid_loss)


class TimeBudget(Callback):
    """Stop training when the next epoch would overrun `max_seconds`, or hard at `max_seconds`."""

    order = LossHistory.order + 1  # after Recorder and LossHistory have logged the finished epoch

    def __init__(self, max_seconds: float):
        self.max_seconds, self.start, self.stopped = max_seconds, None, False
        self.epoch_start = None

    def before_fit(self):
        if self.start is None:
            self.start = time.monotonic()

    def before_epoch(self):
        self.epoch_start = time.monotonic()

    def after_batch(self):
        if self.training and time.monotonic() - self.start > self.max_seconds:
            self._stop("mid-epoch")

    def after_epoch(self):
        now = time.monotonic()
        if now - self.start + (now - self.epoch_start) > self.max_seconds and self.epoch < self.n_epoch - 1:
            self._stop(f"after epoch {self.epoch + 1}/{self.n_epoch}")

    def _stop(self, where: str):
        self.stopped = True
        log.warning("training time budget of %.0f s reached: stopping %s", self.max_seconds, where)
        raise CancelFitException()


# ---------------------------------------------------------------- training

def train_model(manifest_csv: str | Path, out_dir: str | Path, cfg: TrainConfig | None = None,
                dataset_version: str = "", classes: list[str] | None = None,
                overwrite: bool = False, warnings: list[str] | None = None) -> TrainResult:
    """Train on the train split, calibrate on valid, evaluate on test + probe, write the bundle.

    The bundle folder is built next to `out_dir` and renamed into place, so a crash never leaves a
    half-written bundle that looks complete.
    """
    cfg = cfg or TrainConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists (pass overwrite=True to replace it)")
    df = read_manifest_frame(manifest_csv)
    classes = classes_in(df, classes)
    rows = _training_frame(df, cfg)

    # arch 'auto', the recipe's image size/epochs/lr, the starting weights (may download): before anything is built
    cfg, weights = resolve_training(cfg)
    torch.set_num_threads(cfg.threads or available_cores())
    # Seed before building the loaders (their shuffling RNG is drawn from the global one) and the
    # model (its init). On CPU with workers=0 two runs with the same seed give the same weights.
    set_seed(cfg.seed, reproducible=True)
    dls = build_dataloaders(rows, classes, cfg)
    vocab = list(dls.vocab)
    pretrained = weights.pretrained

    if cfg.head == "softmax":
        loss_func, metrics = CrossEntropyLossFlat(), [accuracy]
    else:
        loss_func, metrics = BCEWithLogitsLossFlat(thresh=0.5), [macro_f1_metric()]
    if nets.is_local_arch(cfg.arch):
        learn = Learner(dls, nets.mlcnet(len(vocab), cfg.arch), loss_func=loss_func, metrics=metrics,
                        splitter=nets.body_head_splitter)
    else:
        learn = vision_learner(dls, getattr(torchvision.models, cfg.arch), pretrained=False,  # weights: below
                               normalize=False, loss_func=loss_func, metrics=metrics)
    if weights.file:
        load_backbone_weights(learn, cfg.arch, weights.file)
        learn.freeze()
    if torch.cuda.is_available():
        learn.to_fp16()

    history, budget = LossHistory(), TimeBudget(cfg.max_train_seconds or float("inf"))
    fit_cbs = [history, budget] + ([MixUp(cfg.mixup)] if cfg.mixup > 0 else [])
    n_train = len(dls.train_ds)
    log.info("training %s (%s, %s, pretrained=%s) on %d images, validating on %d, vocab %s",
             cfg.arch, cfg.head, cfg.effective_other_mode, pretrained, n_train, len(dls.valid_ds), vocab)
    lr = cfg.lr or default_lr(cfg.arch, pretrained)
    start = time.monotonic()
    with learn.no_bar(), learn.no_logging():  # progress goes to `log` through LossHistory
        if pretrained == "none":
            learn.fit_one_cycle(cfg.epochs, lr, cbs=fit_cbs)
        else:
            learn.fine_tune(cfg.epochs, lr, cbs=fit_cbs)
    train_seconds = time.monotonic() - start
    images_seen = len(history.batch_losses) * cfg.batch_size
    if torch.cuda.is_available():
        learn.to_fp32()  # the bundle must load on a CPU-only machine

    # Calibrate on valid: these images were not trained on, the test split stays untouched.
    valid_probs, valid_targets = _valid_predictions(learn, cfg, vocab)
    thresholds, curve_path = None, []
    if cfg.head == "sigmoid":
        thresholds = calibrate_thresholds(valid_probs, valid_targets, cfg.threshold_mode, cfg.target_precision,
                                          cfg.f1_tolerance)
        # Every point from these thresholds to "accept no held-out other image": the report's curve,
        # and the operating point when the user caps unknown acceptance.
        curve_path = capping_path(valid_probs, valid_targets, vocab, start=thresholds)
        if cfg.max_unknown_accepted is not None:
            thresholds = pick_capped(curve_path, cfg.max_unknown_accepted)
        # fastai's `predict`/decoded preds use the loss's thresh; a per-class tensor broadcasts over
        # the class axis, so `learn.predict` on the exported learner agrees with the bundle.
        learn.loss_func.thresh = torch.tensor(thresholds, dtype=torch.float32)
    valid_metrics = evaluate(valid_probs, valid_targets, thresholds, vocab, head=cfg.head)

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
            "arch": cfg.arch,
            "image_size": cfg.image_size,
            "pretrained": pretrained,
            "weights": weights.record(),
            "dataset_version": dataset_version,
            "manifest": str(Path(manifest_csv).resolve()),
            "export_sha256": sha256_file(tmp_dir / "export.pkl"),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": dataclasses.asdict(cfg),
            "lr": lr,
            "n_train": n_train,
            "n_valid": len(dls.valid_ds),
            "history": history.epochs,
            "train_seconds": round(train_seconds, 2),
            "images_per_second": round(images_seen / max(history.train_phase_seconds, 1e-9), 2),
            "stopped_early": budget.stopped,
            "warnings": list(warnings or []),     # about the data, e.g. models.other_set_warnings
            "versions": {"mlc_pipeline": __version__, "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "fastai": _fastai_version()},
        }
        (tmp_dir / "bundle.json").write_text(json.dumps(meta, indent=2))
        # Score the exported artifact itself, through the same loader users get.
        from mlc_pipeline.model.bundle import load_bundle
        test_metrics = evaluate_loaded_bundle(load_bundle(tmp_dir), manifest_csv, batch_size=max(cfg.batch_size, 64),
                                              curve_path=curve_path)
        metrics = {"valid": valid_metrics, "test": test_metrics, "warnings": meta["warnings"]}
        (tmp_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        plot_losses(history, tmp_dir / "loss.png", title=f"{cfg.arch} {cfg.head}/{cfg.effective_other_mode}")
        if test_metrics.get("curve"):
            plot_curves({out_dir.name: test_metrics["curve"]}, tmp_dir / "curve.png")
        _move_into_place(tmp_dir, out_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)

    return TrainResult(
        bundle_dir=out_dir, classes=classes, vocab=vocab, thresholds=meta["thresholds"], metrics=metrics,
        history=history.epochs, train_seconds=train_seconds, images_per_second=meta["images_per_second"],
        stopped_early=budget.stopped, pretrained_used=pretrained,
    )


def typical_positive_scores(probs: np.ndarray, targets: np.ndarray) -> list[float | None]:
    """Per column, the median score of its validation positives (None without any): how sure the
    model is of a typical image of the class. Mining holds pool images it is surer of than that."""
    return [float(np.median(probs[targets[:, c] == 1, c])) if (targets[:, c] == 1).any() else None
            for c in range(probs.shape[1])]


def default_lr(arch: str, pretrained: str) -> float:
    """Measured on the offline world (docs/training.md); no lr_find, which costs an epoch's time."""
    if pretrained != "none":
        return 2e-3
    return 5e-3 if nets.is_local_arch(arch) else 3e-3


def _valid_predictions(learn, cfg: TrainConfig, vocab: list[str]) -> tuple[np.ndarray, np.ndarray]:
    with learn.no_bar(), learn.no_logging():
        probs, targs = learn.get_preds(ds_idx=1)  # activation applied: sigmoid or softmax
    probs = probs.float().numpy()
    if cfg.head == "softmax":
        targets = np.zeros_like(probs, dtype=np.int8)
        targets[np.arange(len(targs)), targs.long().numpy()] = 1
    else:
        targets = targs.numpy().astype(np.int8)
    return probs, targets


def remove_stale_tmp_dirs(parent: Path) -> list[Path]:
    """Delete half-written bundles (`*.tmp-<pid>-*`) whose writer is gone (killed, e.g. kill -9)."""
    removed = remove_dead_leftovers([p for p in parent.glob("*.tmp-*-*") if p.is_dir()],
                                    lambda p: p.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
    for path in removed:
        log.info("removed %s, left by a training that did not finish", path)
    return removed


def _move_into_place(tmp_dir: Path, out_dir: Path) -> None:
    if out_dir.exists():  # overwrite: swap, so a reader sees the old or the new bundle, never neither
        old = out_dir.parent / f"{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        out_dir.rename(old)
        tmp_dir.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp_dir.rename(out_dir)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _fastai_version() -> str:
    import fastai
    return fastai.__version__


def plot_losses(history: LossHistory, path: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    batches = np.asarray(history.batch_losses)
    if len(batches):
        ax.plot(np.arange(1, len(batches) + 1), batches, color="tab:blue", alpha=0.3, label="train (batch)")
    ends = [e["n_batches"] for e in history.epochs]
    ax.plot(ends, [e["train_loss"] for e in history.epochs], "o-", color="tab:blue", label="train (epoch)")
    ax.plot(ends, [e["valid_loss"] for e in history.epochs], "o-", color="tab:orange", label="valid")
    values = np.r_[batches, [e["valid_loss"] for e in history.epochs]]
    if len(values):  # one early from-scratch spike (valid loss 5+) would flatten every other point
        ax.set_ylim(0, 1.1 * float(np.percentile(values, 98)))
    ax.set_xlabel("batch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
