"""A fit's time: `TimeBudget`, the runtime hard stop (`max_train_seconds`), and `FitToBudget`, which
plans a fit's epochs to end within `train.max_minutes` (docs/training.md, "What a training run
does" and "A time budget for each training")."""

from __future__ import annotations

import logging
import time

import numpy as np
from fastai.vision.all import CancelFitException, Callback

from mlc_pipeline import interrupts
from mlc_pipeline.model.learner import LossHistory

log = logging.getLogger(__name__)


class Interruptible(Callback):
    """A Ctrl-C that a finalizer swallowed (the garbage collector runs them as training allocates)
    stops the fit at the next batch, as a Ctrl-C anywhere else would (interrupts.py)."""

    def after_batch(self):
        interrupts.check()

    def after_epoch(self):
        interrupts.check()


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


class FitToBudget(Callback):
    """Plans a fit to end within `seconds`: from the second epoch on (the first also decodes every
    picture into the cache), the median epoch's time says how many epochs fit in what is left, and when
    fewer than planned do, the fit is shortened (and lengthened again, up to the plan, if later
    epochs show that the early ones were slow). fastai re-reads `n_epoch` at each epoch's start
    (the one-cycle schedule's position is epoch / n_epoch), so a shortened fit still warms up and
    anneals to its end: a shorter schedule, not a cut-off one (TimeBudget). `planned` and `epochs`
    say what it did; across fine_tune's two fits the clock runs from the first."""

    order = LossHistory.order + 2   # after the epoch is logged and shown: its end may end the fit
    MEASURE_FROM = 2        # epochs done before an epoch's time is trusted

    def __init__(self, seconds: float, bar=None):
        self.seconds, self.bar = seconds, bar
        self.start = self.epoch_start = None
        self.planned = self.epochs = None       # this fit's epochs: asked for, and trained
        self.epoch_seconds, self.measured, self.batches = None, [], 0   # batches: across fits (the bar's count)

    def before_fit(self):
        if self.start is None:
            self.start = time.monotonic()
        self.planned = self.epochs = self.n_epoch

    def before_epoch(self):
        self.epoch_start = time.monotonic()

    def after_batch(self):
        self.batches += self.training

    def after_epoch(self):
        done, now = self.epoch + 1, time.monotonic()
        if self.MEASURE_FROM <= done < self.planned:
            # the median epoch: one epoch slowed by another process must not decide the fit. The plan
            # may grow back (up to the planned epochs) when later epochs show an early one was slow.
            self.measured.append(now - self.epoch_start)
            self.epoch_seconds = float(np.median(self.measured))
            fits = done + int(max(0.0, self.seconds - (now - self.start)) // self.epoch_seconds)
            # a fit cut mid-schedule gets one more epoch, to anneal; one planned to end here may end
            target = min(self.planned, max(fits, done + 1 if done < self.n_epoch else done))
            if target != self.n_epoch:
                log.info("the %d planned epochs would take %.0f min at %.0f s each: training %d, to end within %g min "
                         "(train.max_minutes)", self.planned,
                         (now - self.start + (self.planned - done) * self.epoch_seconds) / 60, self.epoch_seconds,
                         target, self.seconds / 60)
                self.learn.n_epoch = target
                if self.bar is not None:    # the terminal's time left
                    self.bar.total(self.batches + (target - done) * self.n_iter)
        self.epochs = self.n_epoch
        if done >= self.n_epoch and done < self.planned:
            raise CancelFitException()

    @property
    def shortened(self) -> bool:
        return self.epochs is not None and self.epochs < self.planned
