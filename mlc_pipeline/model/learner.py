"""What a training run feeds fastai: data loaders and their transforms, the metric, and the
callbacks that record losses and keep to a time budget.

Names here are pickled by reference into every exported learner (`macro_f1_at_half`), so they must
stay importable from this module; a move needs an entry in model/bundle.py's LEGACY_MODULES.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from PIL import Image
from fastai.metrics import ActivationType
from fastai.vision.all import (
    AccumMetric, CancelValidException, CategoryBlock, Callback, DataBlock, DisplayedTransform,
    ImageBlock, IndexSplitter, ItemGetter, MultiCategoryBlock, Normalize, PILImage, RandomResizedCrop, RandTransform,
    Recorder, Resize, ResizeMethod, aug_transforms, imagenet_stats,
)
from fastai.vision.core import load_image
from torchvision.transforms import TrivialAugmentWide

from mlc_pipeline.model.metrics import OTHER

if TYPE_CHECKING:
    from mlc_pipeline.model.options import TrainConfig

log = logging.getLogger(__name__)

# Decoded training pictures kept in memory during one run: ~4,000 pictures at the dataset's 256 px.
DECODED_CACHE_BYTES = 768 * 2**20

# ---------------------------------------------------------------- data and model

def training_frame(df: pd.DataFrame, cfg: TrainConfig) -> pd.DataFrame:
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
        get_x=ImageReader(),
        get_y=ItemGetter(1),
        splitter=IndexSplitter(np.flatnonzero(rows["is_valid"].to_numpy())),
        item_tfms=item_transforms(cfg),
        batch_tfms=batch_tfms,
    )
    # Plain [path, target] lists, not DataFrame rows: fastai reads a row per item and per epoch,
    # and pandas' row access alone was a fifth of the data loading time on 2 cores. (Not tuples:
    # fastai's transforms would map over a tuple's parts.)
    items = [[path, target] for path, target in zip(rows["abs_path"], rows["target"])]
    return block.dataloaders(items, bs=cfg.batch_size, num_workers=cfg.workers, device=device)


class ImageReader(DisplayedTransform):
    """get_x: the item's picture, decoded (RGB) once per training run and then kept, up to
    `budget_bytes` of pixels: decoding every file again in each of 30 epochs was another fifth of
    the data loading time on 2 cores. The transforms never modify a picture in place (crops and resizes return new
    ones). Pickled into the exported learner without its pixels."""

    def __init__(self, budget_bytes: int = DECODED_CACHE_BYTES):
        super().__init__()
        self.budget_bytes = budget_bytes
        self._cache: dict[str, Image.Image] = {}
        self._held = 0

    def encodes(self, item: list) -> Image.Image:
        path = item[0]
        image = self._cache.get(path)
        if image is None:
            image = load_image(path, mode="RGB")
            size = image.width * image.height * len(image.getbands())
            if self._held + size <= self.budget_bytes:
                self._cache[path] = image
                self._held += size
        return image

    def __getstate__(self):
        return {**self.__dict__, "_cache": {}, "_held": 0}


def item_transforms(cfg: TrainConfig) -> list:
    """Squish keeps every pixel; random resized crops (valid/predict: the squished picture, centre
    crop of 1/8) show the net parts of objects at several scales, which real photos need.
    Validation, calibration and prediction see `eval_size` px pictures when it is set."""
    crops = cfg.crop == "random"
    train = (RandomResizedCrop(cfg.image_size, min_scale=cfg.min_scale) if crops
             else Resize(cfg.image_size, method=ResizeMethod.Squish))
    size = [train]
    if cfg.distinct_eval_size:
        # FixRes: random crops make objects look larger in training than in a whole picture, so the
        # whole picture is shown larger too. One transform per split (fastai's split_idx).
        train.split_idx = 0
        size.append(EvalCrop(cfg.eval_size) if crops else EvalResize(cfg.eval_size, method=ResizeMethod.Squish))
    return size + [TrivialAugment()] if cfg.trivial_augment else size


class _EvalOnly:
    """Mixin: a sizing transform for validation and prediction alone (split 1)."""
    split_idx = 1

    def before_call(self, b, split_idx):
        # fastai prepares a random crop before it checks the split: on the training split that would
        # draw random numbers, and training would see other crops than without eval_size.
        if split_idx == 1:
            super().before_call(b, split_idx)


# Classes of their own: fastai's DataBlock keeps one item transform per class (the last).
class EvalCrop(_EvalOnly, RandomResizedCrop):
    """RandomResizedCrop's validation path alone (the picture less a thin border) at eval_size."""


class EvalResize(_EvalOnly, Resize):
    """Resize (squish) for validation and prediction alone, at eval_size."""


class TrivialAugment(RandTransform):
    """torchvision's TrivialAugmentWide on each training picture after its crop: one randomly chosen
    operation (colour, contrast, posterize, solarize, shear, ...) at a random strength. Valid and
    predict never see it (split_idx 0)."""

    split_idx, order = 0, 2         # after the crop/resize (order 1), before the tensor (order 5)

    def __init__(self):
        super().__init__(p=1.0)
        self.augment = TrivialAugmentWide()

    def encodes(self, image: PILImage) -> PILImage:
        return PILImage(self.augment(image))


def macro_f1_at_half(preds: torch.Tensor, targs: torch.Tensor) -> float:
    """Training-time progress metric: macro F1 at 0.5 (calibrated numbers come after training)."""
    pred, targ = preds >= 0.5, targs.bool()
    tp = (pred & targ).sum(0).float()
    denom = pred.sum(0).float() + targ.sum(0).float()
    return (2 * tp / denom.clamp(min=1)).mean().item()


def macro_f1_metric():
    return AccumMetric(macro_f1_at_half, activation=ActivationType.Sigmoid, flatten=False)


# ---------------------------------------------------------------- callbacks

# How many validation passes one fit makes (plus its last epoch): enough points for the loss plot.
# A pass over the valid split cost ~1 s of a ~9 s epoch on 2 cores (mlcnet, 64 px), and nothing
# but the plot and the log reads the per-epoch valid loss: calibration predicts valid afterwards.
VALID_POINTS = 6


def epoch_valid_loss(recorder) -> float | None:
    """The finished epoch's valid loss, or None when SparseValidation skipped its pass (fastai's
    Recorder then records the train loss alone)."""
    return None if recorder.cancel_valid else float(recorder.values[-1][1])


def format_loss(value: float | None, digits: int = 4) -> str:
    """A loss for logs and summaries; "-" for an epoch that was not validated."""
    return "-" if value is None else f"{value:.{digits}f}"


class SparseValidation(Callback):
    """Validate every k-th epoch of a fit and its last one, so that a fit makes about
    `points` validation passes instead of one per epoch.

    A validation pass draws from torch's global random generator (the DataLoader's base seed), which
    the next epoch's augmentation also draws from: the generator's state is put back after every
    pass, run or skipped, so the trained weights do not depend on how often a fit validates."""

    def __init__(self, points: int | None = None):
        self.points, self._rng_state = points or VALID_POINTS, None

    def before_validate(self):
        self._rng_state = torch.get_rng_state()
        every = max(1, round(self.n_epoch / self.points))
        if (self.epoch + 1) % every and self.epoch != self.n_epoch - 1:
            raise CancelValidException()

    def after_validate(self):       # also after a skipped pass
        if self._rng_state is not None:
            torch.set_rng_state(self._rng_state)
            self._rng_state = None


class LossHistory(Callback):
    """Per-batch train loss and per-epoch train/valid loss (None for an epoch SparseValidation
    skipped), kept across fine_tune's two fits (fastai's Recorder resets at every fit)."""

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
        train_loss, valid_loss = float(self.learn.recorder.values[-1][0]), epoch_valid_loss(self.learn.recorder)
        self.epochs.append({"epoch": len(self.epochs) + 1, "train_loss": train_loss,
                            "valid_loss": valid_loss, "n_batches": len(self.batch_losses)})
        log.info("epoch %d: train loss %.4f, valid loss %s", len(self.epochs), train_loss, format_loss(valid_loss))


class EpochBar(Callback):
    """Moves a progress bar (mlc_pipeline.progress) by one per training batch; its note says the
    epoch and the smoothed train loss, then the last epoch's valid loss."""

    order = LossHistory.order + 1

    def __init__(self, bar):
        self.bar, self.done = bar, 0

    def after_batch(self):
        if self.training:
            self.bar.advance()
            self.bar.note(f"epoch {self.done + 1} loss {float(self.learn.smooth_loss):.4f}")

    def after_epoch(self):
        self.done += 1
        train_loss, valid_loss = float(self.learn.recorder.values[-1][0]), epoch_valid_loss(self.learn.recorder)
        self.bar.note(f"epoch {self.done} train loss {train_loss:.4f} valid loss {format_loss(valid_loss)}")


def sizing_transforms(dls) -> list:
    """The item transforms that set the pictures' size (crop or resize, training and evaluation
    ones), each once, across the training and validation loaders."""
    return list({id(t): t for dl in (dls.train, dls.valid) for t in dl.after_item.fs
                 if isinstance(t, (RandomResizedCrop, Resize))}.values())


class ProgressiveResize(Callback):
    """Progressive resizing: the first `share` of a fit's epochs see pictures at `start_size`, the
    rest at the size the item transform was built with, which is restored after the fit (validation,
    calibration and the bundle use it). Early epochs, at a high learning rate, learn coarse features
    cheaply on small pictures; the last ones, at a low rate, at the full size. A share, read at each
    epoch, so that a fit FitToBudget shortens still ends at the full size."""

    order = LossHistory.order + 1

    def __init__(self, start_size: int, share: float):
        self.start_size, self.share, self._crops, self._full = start_size, share, [], None

    def before_fit(self):
        self._crops = sizing_transforms(self.dls)
        self._full = [t.size for t in self._crops]      # each its own: training and eval_size may differ

    def before_epoch(self):
        self._set(self.start_size if self.epoch < round(self.n_epoch * self.share) else None)

    def after_fit(self):
        self._set(None)

    def _set(self, size: int | None):
        for t, full in zip(self._crops, self._full):
            t.size = full if size is None else type(full)((size, size))


class SmoothTargets(Callback):
    """Label smoothing for the sigmoid heads: each training batch's 0/1 targets become eps/2 and
    1 - eps/2, so no output is pushed towards an infinite logit. A fit's callback, not exported;
    validation and calibration see the true targets. Linear in the targets, so it commutes with
    MixUp and CutMix."""

    run_valid = False

    def __init__(self, eps: float):
        self.eps = eps

    def before_batch(self):
        self.learn.yb = tuple(y * (1 - self.eps) + self.eps / 2 for y in self.yb)


# ---------------------------------------------------------------- precision

class CPUBFloat16(Callback):
    """bfloat16 autocast for the training batches' forward pass and loss on CPU (fastai's
    MixedPrecision autocasts on CUDA only). Weights, optimiser state and gradients stay float32, and
    validation, calibration and prediction run in float32, so the bundle is the same kind of model;
    bf16 keeps float32's range, so no loss scaling is needed. ~1.6-1.8x the convolutions' speed on a
    CPU with AVX512-BF16 (docs/training.md, "bfloat16 on the CPU")."""

    order = 10      # where fastai's MixedPrecision sits: before the callbacks that read pred or loss

    def __init__(self):
        self._autocast = None

    def before_batch(self):
        if self.training:
            self._autocast = torch.autocast("cpu", dtype=torch.bfloat16)
            self._autocast.__enter__()

    def after_pred(self):
        if self._autocast is not None:
            self.learn.pred = self.pred.float()     # the loss in float32

    def after_loss(self):
        self._leave()

    def after_batch(self):      # also after a cancelled batch, which skips after_loss
        self._leave()

    def after_fit(self):        # a fit cancelled mid-batch (CancelFitException) skips after_batch
        self._leave()

    def _leave(self):
        if self._autocast is not None:
            self._autocast.__exit__(None, None, None)
            self._autocast = None
