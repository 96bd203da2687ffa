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
    """Plans a fit to end within `seconds`, a bound: after every epoch (from the first on, which also
    decodes every picture into the cache) the median epoch's time says how many more epochs end
    within what is left, and the fit is planned to that many: shortened, or lengthened again up to
    the plan when later epochs show an early one was slow. When not one more fits, the fit ends there.
    fastai re-reads `n_epoch` at each epoch's start (the one-cycle schedule's position is
    epoch / n_epoch), so a shortened fit still anneals to its end within the budget: a shorter
    schedule, not a cut-off one (TimeBudget). Across fine_tune's two fits the clock runs from the first,
    and the second is planned at its start from the first's epochs. Only an epoch slower than the
    ones before (or the very first) can end past the budget: `over_seconds` says by how much, and
    `last_epoch_seconds` what that epoch took. `planned` and `epochs` say what the last fit asked for
    and trained (the epochs `train.epochs` counts: fine_tune's unfrozen stage); `stages`, what each
    fit did, named by `names` (fine_tune: "frozen", "unfrozen"), as bundle.json's `time_budget` keeps
    them (`record`)."""

    order = LossHistory.order + 2   # after the epoch is logged and shown: its end may end the fit

    def __init__(self, seconds: float, bar=None, names: tuple[str, ...] = ("one-cycle",)):
        self.seconds, self.bar, self.names, self.stages = seconds, bar, names, []
        self.start = self.epoch_start = None
        self.planned = self.epochs = self.runs = None     # this fit's epochs: asked for, trained, at most
        self.epoch_seconds, self.measured, self.batches = None, [], 0   # batches: across fits (the bar's count)
        self.last_epoch_seconds, self.over_seconds = None, 0.0

    def before_fit(self):
        now = time.monotonic()
        if self.start is None:
            self.start = now
        self.planned, self.epochs, self.runs = self.n_epoch, 0, None
        name = self.names[len(self.stages)] if len(self.stages) < len(self.names) else f"fit {len(self.stages) + 1}"
        self.stages.append({"stage": name, "epochs_planned": self.n_epoch, "epochs_trained": 0})
        if self.measured:       # fine_tune's second fit: planned from the first's epochs
            self._plan(0, now)
        self.runs = self.n_epoch    # fastai's loop runs over the epochs planned at the fit's start

    def before_epoch(self):
        self.epoch_start = time.monotonic()

    def after_batch(self):
        self.batches += self.training

    def after_epoch(self):
        done, now = self.epoch + 1, time.monotonic()
        self.epochs = self.stages[-1]["epochs_trained"] = done
        # the median epoch: one epoch slowed by another process must not decide the fit
        self.last_epoch_seconds = now - self.epoch_start
        self.measured.append(self.last_epoch_seconds)
        self.epoch_seconds = float(np.median(self.measured))
        if done < min(self.planned, self.runs):
            self._plan(done, now)

    def after_fit(self):
        self.over_seconds = max(0.0, time.monotonic() - self.start - self.seconds)

    def _plan(self, done: int, now: float) -> None:
        """Plan this fit to the epochs that end within the budget; end it when no more does."""
        fits = done + int(max(0.0, self.seconds - (now - self.start)) // self.epoch_seconds)
        target = min(self.planned, self.runs or self.planned, fits)
        if target != self.n_epoch:
            log.info("the %d planned epochs would take %.0f min at %.0f s each: training %d, to end within %g min "
                     "(train.max_minutes)", self.planned,
                     (now - self.start + (self.planned - done) * self.epoch_seconds) / 60, self.epoch_seconds,
                     target, self.seconds / 60)
            self.learn.n_epoch = target
            if self.bar is not None:    # the terminal's time left
                self.bar.total(self.batches + (target - done) * self.n_iter)
        if done >= target:
            raise CancelFitException()

    @property
    def shortened(self) -> bool:
        return self.epochs is not None and self.epochs < self.planned

    def record(self, max_minutes: float) -> dict:
        """bundle.json's `time_budget`: the budget, the last fit's planned and trained epochs (those
        `train.epochs` counts, as the bundle's config does), each fit's, the median epoch, the overrun."""
        return {"max_minutes": max_minutes, "epochs_planned": self.planned, "epochs_trained": self.epochs,
                "stages": [dict(s) for s in self.stages],
                "epoch_seconds": None if self.epoch_seconds is None else round(self.epoch_seconds, 2),
                "over_seconds": round(self.over_seconds, 2)}

    def trained(self) -> str:
        """'10 of 38 epochs'; after fine_tune's frozen fit, '1 frozen epoch, then 2 of 6 unfrozen epochs'."""
        *before, last = self.stages
        done = [f"{s['epochs_trained']} {s['stage']} epoch{'s' * (s['epochs_trained'] != 1)}" for s in before]
        return ", then ".join(done + [f"{last['epochs_trained']} of {last['epochs_planned']} "
                                      f"{last['stage'] + ' ' if before else ''}epochs"])

    def unrun(self) -> str:
        """What it means that the budget left no time for the last fit (fine_tune's unfrozen stage), or ''."""
        last = self.stages[-1]
        if len(self.stages) < 2 or last["epochs_trained"]:
            return ""
        kept = ": only the head (and the BatchNorm layers) trained" if last["stage"] == "unfrozen" else ""
        return f"; no time was left for the {last['stage']} stage{kept}"


def budget_line(fitted: FitToBudget, max_minutes: float) -> str:
    """What the budget did, for the log, bundle.json's warnings and the report (which puts "training: "
    before it): fitted to it, or over it, by an epoch that took longer than the budget left."""
    if fitted.over_seconds:
        return (f"over train.max_minutes ({max_minutes:g}): one epoch took {fitted.last_epoch_seconds / 60:.1f} min; "
                f"{fitted.trained()} trained in {max_minutes + fitted.over_seconds / 60:.1f} min on this machine"
                f"{fitted.unrun()}; raise it, or set it to null, to train them all")
    return (f"fitted to train.max_minutes ({max_minutes:g}): {fitted.trained()}, at {fitted.epoch_seconds:.0f} s an "
            f"epoch on this machine{fitted.unrun()}; raise it, or set it to null, to train them all")
