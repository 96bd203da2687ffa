"""Threshold calibration and evaluation of a multi-label classifier that should say "none of these".

Everything here is plain numpy on arrays of probabilities, so it is fast to test with hand-made
numbers. Scoring a model bundle on a dataset version is model/assess.py.

Conventions used throughout:
- `probs` is (N, K): one column per entry of `classes` (the model's output vocabulary, which holds an
  explicit "other" column when the model was trained with one).
- `targets` is (N, K) of 0/1 over the same columns.
- "real" classes are all columns except "other". An image with no real label is an "other" image.
- An image is "accepted" when the model claims at least one real class for it. For an image of a kind
  the model was never meant to know, acceptance is the failure we measure.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)

OTHER = "other"  # the explicit "other" class name (config.RESERVED_LABELS keeps real classes off it)
THRESHOLD_MODES = ("per-class-f1", "global-f1", "target-precision")
DEFAULT_THRESHOLD = 0.5
# F1 modes: the highest threshold whose validation F1 is within this of the best. On a few hundred
# validation images F1 is flat over a wide range of thresholds and the exact argmax is noise; the
# highest cut in that flat range rejects far more unknown images for the same F1 (docs/training.md).
DEFAULT_F1_TOLERANCE = 0.02
CAP_TOLERANCE = 0.1          # max_unknown_accepted is met to within a tenth of itself (allowed_other)
CAP_COST_WARNING = 0.1       # a cap costing more validation macro F1 than this is worth a warning


# ---------------------------------------------------------------- calibration

def calibrate_thresholds(probs: np.ndarray, targets: np.ndarray, mode: str = "per-class-f1",
                         target_precision: float | None = None,
                         f1_tolerance: float = DEFAULT_F1_TOLERANCE, classes: list[str] | None = None) -> np.ndarray:
    """One decision threshold per column, chosen on held-out (valid) predictions (`classes` names the
    columns in warnings).

    - 'per-class-f1': each class gets the highest threshold whose F1 is within `f1_tolerance` of
      the best F1 it can reach (0: the F1 maximum itself).
    - 'global-f1': one threshold shared by all classes, the same rule on micro F1 over every
      (image, class).
    - 'target-precision': each class gets the lowest threshold whose precision reaches
      `target_precision` (so recall is as high as that precision allows).

    A chosen threshold sits halfway between the lowest accepted and the highest rejected score rather
    than exactly on a validation score: with a few hundred validation images that margin generalises
    better than a cut that touches one sample. A class with no positive (or no negative) validation
    example cannot be calibrated and keeps 0.5, with a warning.
    """
    probs, targets = _as_2d(probs, targets)
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"threshold mode must be one of {THRESHOLD_MODES}, got {mode!r}")
    if mode == "target-precision" and not (target_precision and 0 < target_precision <= 1):
        raise ValueError("threshold mode 'target-precision' needs 0 < target_precision <= 1")
    if not 0 <= f1_tolerance < 1:
        raise ValueError(f"f1_tolerance must be in [0, 1), got {f1_tolerance}")
    n_classes = probs.shape[1]
    if mode == "global-f1":
        return np.full(n_classes, _best_f1_threshold(probs.ravel(), targets.ravel(), f1_tolerance))
    thresholds = np.full(n_classes, DEFAULT_THRESHOLD)
    for c in range(n_classes):
        n_pos, name = int(targets[:, c].sum()), f"class {classes[c]!r}" if classes else f"class column {c}"
        if n_pos == 0 or n_pos == len(targets):
            log.warning("%s has %d positives out of %d validation images: keeping threshold %.2f",
                        name, n_pos, len(targets), DEFAULT_THRESHOLD)
            continue
        if mode == "per-class-f1":
            thresholds[c] = _best_f1_threshold(probs[:, c], targets[:, c], f1_tolerance)
        else:
            thresholds[c] = _precision_threshold(probs[:, c], targets[:, c], target_precision, name)
    return thresholds


def calibrate_capped(probs: np.ndarray, targets: np.ndarray, classes: list[str], max_accepted: float,
                     start: np.ndarray | None = None, f1_tolerance: float = DEFAULT_F1_TOLERANCE) -> np.ndarray:
    """Per-class thresholds that accept at most `max_accepted` of the held-out "other" images (rows
    with no real label), keeping as much macro F1 as that allows: `capping_path` + `pick_capped`."""
    return pick_capped(capping_path(probs, targets, classes, start, f1_tolerance), max_accepted)


class CapPoint(NamedTuple):
    """One operating point of a `capping_path`."""
    accepted: int               # held-out "other" rows these thresholds accept
    n_other: int                # held-out "other" rows in all
    thresholds: np.ndarray
    valid_f1: float             # validation macro F1 over the real classes at these thresholds


def allowed_other(max_accepted: float, n_other: int, tolerance: float = CAP_TOLERANCE) -> int:
    """How many of `n_other` held-out "other" images a cap of `max_accepted` lets a class accept.

    The cap is met to within a tenth of itself (`tolerance`): a valid split holds a few dozen "other"
    images, where one image is a large step (2.6% of 39), and a strict reading made a 5% cap on 39
    images allow 1 (2.6%) instead of 2 (5.1%), which cost a real-photo model 0.16 of test macro F1
    (docs/training.md). Unlike rounding to the nearest image, the rate never exceeds 1.1 times the
    cap: a cap of 5% on 10 images allows 0 (not 1, 10%), and a cap of 0 is always 0."""
    return int(np.floor(max_accepted * n_other * (1 + tolerance) + 1e-9))


def pick_capped(path: list[CapPoint], max_accepted: float, tolerance: float = CAP_TOLERANCE) -> np.ndarray:
    """The thresholds of the `capping_path` point with the highest validation macro F1 (ties: the one
    accepting fewer) among those that accept at most `allowed_other` of its "other" rows. F1 usually
    falls along the path, but a step that drops two "other" rows at once can be followed by a higher
    F1: the first point under the cap was then worse on both axes than a later one (the curve23
    audit). With no "other" row there is nothing to cap: the path's start is returned (cap_warning
    says so)."""
    if not 0 <= max_accepted <= 1:
        raise ValueError(f"max_accepted must be in [0, 1], got {max_accepted}")
    if not path[0].n_other:     # cap_warning says so, in the bundle's warnings
        return path[0].thresholds
    allowed = allowed_other(max_accepted, path[0].n_other, tolerance)
    under = [i for i, point in enumerate(path) if point.accepted <= allowed]
    return path[max(under, key=lambda i: (path[i].valid_f1, i))].thresholds     # later = fewer accepted


def cap_warning(probs: np.ndarray, targets: np.ndarray, classes: list[str], start: np.ndarray,
                chosen: np.ndarray, max_accepted: float) -> str | None:
    """A sentence for the bundle's warnings when the cap could not be applied (no "other" image in
    the validation split), or when meeting it costs more than CAP_COST_WARNING of validation macro F1
    against the path's start (the calibrated point: the F1 point by default); None otherwise. On real
    photos from scratch a 5% cap can cost a model most of its F1 (docs/training.md): the user should
    learn that from the run, not from a test score."""
    probs, targets = _as_2d(probs, targets)
    real = real_class_indices(classes)
    if targets[:, real].astype(bool).any(axis=1).all():
        return (f"train.max_unknown_accepted {max_accepted:g} was not applied: the validation split holds no "
                "'other' image to measure it on, so the thresholds are the F1 point's and nothing bounded what "
                "this model accepts of unknown images; collect more 'other' images (other.count) so that the "
                "build puts some in validation")
    before = _macro_f1(probs[:, real], targets[:, real], np.asarray(start)[real])
    after = _macro_f1(probs[:, real], targets[:, real], np.asarray(chosen)[real])
    if before - after <= CAP_COST_WARNING:
        return None
    return (f"train.max_unknown_accepted {max_accepted:g} costs {before - after:.2f} of validation macro F1 "
            f"({before:.2f} without the cap, {after:.2f} under it): this model scores held-out 'other' "
            "images like its classes. The operating curve shows what each cap costs; more varied 'other' "
            "images, more class images or pretrained weights move the whole curve")


def capping_path(probs: np.ndarray, targets: np.ndarray, classes: list[str], start: np.ndarray | None = None,
                 f1_tolerance: float = DEFAULT_F1_TOLERANCE) -> list[CapPoint]:
    """The thresholds from `start` to "accept no held-out other image", one "other" row at a time:
    a list of `CapPoint`s, acceptance strictly falling, each with its validation macro F1.

    Each step removes the accepted "other" row whose removal costs the least validation macro F1:
    every class that accepts it gets its threshold raised to just above that row's score (halfway to
    the next higher score in that column). Greedy and exact on the validation rows; a few hundred
    rows make it cheap. Every point is an operating point a user can pick (`max_unknown_accepted`).
    """
    probs, targets = _as_2d(probs, targets)
    thresholds = (calibrate_thresholds(probs, targets, "per-class-f1", f1_tolerance=f1_tolerance)
                  if start is None else np.asarray(start, dtype=float).copy())
    real = real_class_indices(classes)
    other_rows = np.nonzero(~targets[:, real].astype(bool).any(axis=1))[0]

    def accepted_rows(thr):
        return [r for r in other_rows if (probs[r, real] >= thr[real]).any()]

    def f1_at(thr):
        return _macro_f1(probs[:, real], targets[:, real], thr[real])

    accepted = accepted_rows(thresholds)
    path = [CapPoint(len(accepted), len(other_rows), thresholds, f1_at(thresholds))]
    while accepted:
        best = None
        for r in accepted:
            trial = thresholds.copy()
            for c in real:
                if probs[r, c] >= trial[c]:
                    higher = probs[:, c][probs[:, c] > probs[r, c]]
                    trial[c] = (probs[r, c] + higher.min()) / 2 if len(higher) else probs[r, c] + 1e-6
            f1 = f1_at(trial)
            if best is None or f1 > best[0]:
                best = (f1, trial)
        f1, thresholds = best
        accepted = accepted_rows(thresholds)
        path.append(CapPoint(len(accepted), len(other_rows), thresholds, f1))
    return path


def _macro_f1(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> float:
    pred, truth = probs >= thresholds[None, :], targets.astype(bool)
    tp = (pred & truth).sum(0)
    denom = pred.sum(0) + truth.sum(0)
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))


def _ranked(scores: np.ndarray, truth: np.ndarray):
    """Scores sorted high to low, with cumulative true positives at each cut.

    Cutting after position k accepts the k+1 highest scores. Only cuts between two *different*
    scores are valid (ties must fall on the same side), hence `valid_cut`.
    """
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order].astype(float)
    tp = np.cumsum(t)
    n_accepted = np.arange(1, len(s) + 1)
    next_lower = np.append(s[1:], -np.inf)
    valid_cut = s > next_lower
    return s, tp, n_accepted, next_lower, valid_cut


def _cut_threshold(score: float, next_lower: float) -> float:
    """Halfway between the lowest accepted score and the highest rejected one."""
    if np.isinf(next_lower):  # everything accepted: go a bit below the lowest score
        return float(max(0.0, score - 1e-3))
    return float((score + next_lower) / 2)


def _best_f1_threshold(scores: np.ndarray, truth: np.ndarray, tolerance: float = 0.0) -> float:
    s, tp, n_accepted, next_lower, valid_cut = _ranked(scores, truth)
    n_pos = truth.sum()
    if n_pos == 0:
        return DEFAULT_THRESHOLD
    f1 = 2 * tp / (n_accepted + n_pos)  # 2TP / (2TP + FP + FN) with TP+FP = accepted, TP+FN = pos
    f1 = np.where(valid_cut, f1, -1)
    # Scores run high to low, so the first cut that is good enough is the highest threshold.
    k = int(np.nonzero(f1 >= f1.max() - tolerance - 1e-12)[0].min())
    return _cut_threshold(s[k], next_lower[k])


def _precision_threshold(scores: np.ndarray, truth: np.ndarray, target: float, column: str) -> float:
    s, tp, n_accepted, next_lower, valid_cut = _ranked(scores, truth)
    precision = tp / n_accepted
    ok = valid_cut & (precision >= target)
    if not ok.any():
        # Unreachable: accept nothing rather than pretend. Above the top score no image passes.
        log.warning("%s never reaches precision %.2f on validation: it will accept (almost) nothing",
                    column, target)
        # Not clamped to 1.0: float32 sigmoids saturate at exactly 1.0, and decisions are `>=`.
        return float(s[0]) + 1e-6
    k = int(np.nonzero(ok)[0].max())  # the largest accepted set that still meets the target
    return _cut_threshold(s[k], next_lower[k])


# ---------------------------------------------------------------- decisions

def real_class_indices(classes: list[str]) -> list[int]:
    return [i for i, c in enumerate(classes) if c != OTHER]


def predict_matrix(probs: np.ndarray, thresholds: np.ndarray | None, classes: list[str],
                   head: str = "sigmoid") -> np.ndarray:
    """Boolean (N, K) decisions over `classes`; the "other" column is never a claimed label.

    sigmoid: every real class whose score reaches its threshold (an other_mode='class' model's class
    scores are already weighed against its "other" output, model/losses.py; "other" images are
    recognised by claiming nothing).
    softmax: the argmax class, unless the argmax is "other".
    """
    probs = np.asarray(probs, dtype=float)
    if head == "softmax":
        pred = np.zeros(probs.shape, dtype=bool)
        pred[np.arange(len(probs)), probs.argmax(axis=1)] = True
    elif head == "sigmoid":
        if thresholds is None:
            raise ValueError("the sigmoid head needs thresholds")
        pred = probs >= np.asarray(thresholds, dtype=float)[None, :]
    else:
        raise ValueError(f"head must be 'sigmoid' or 'softmax', got {head!r}")
    if OTHER in classes:
        pred[:, classes.index(OTHER)] = False
    return pred


# ---------------------------------------------------------------- metrics

def evaluate(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | None, classes: list[str],
             is_unknown_mask: np.ndarray | None = None, head: str = "sigmoid") -> dict:
    """Score predictions. Rows flagged in `is_unknown_mask` are probe images (kinds that appear under
    no query): they count only towards `probe_accepted`.

    Returned keys:
      per_class[c]: precision, recall, f1, support (over labelled + "other" rows, probes excluded)
      macro_f1: mean F1 over real classes; a class with no test image that nothing was taken for has
        F1 None and is left out of it (listed in classes_unscored)
      accuracy: exact match (predicted set == true set) over images with at least one label
      unknown_accepted: fraction of "other" rows (no label, not probe) that got any real class
      probe_accepted: the same fraction over probe rows
      fpr95_unknown / fpr95_probe: threshold-free comparison across heads: score = max real-class
        probability; the cut keeps 95% of labelled images; fraction of unknowns still above it
        (the "FPR at 95% TPR" of the open-set literature; for softmax this is max-softmax thresholding)
      n_labelled, n_unknown, n_probe
    Rates with no rows to measure are None (JSON null), never a misleading 0.
    """
    probs, targets = _as_2d(probs, targets)
    n = len(probs)
    probe = np.zeros(n, dtype=bool) if is_unknown_mask is None else np.asarray(is_unknown_mask, dtype=bool)
    real = real_class_indices(classes)
    pred = predict_matrix(probs, thresholds, classes, head)[:, real]
    truth = targets[:, real].astype(bool)
    accepted = pred.any(axis=1)
    labelled = truth.any(axis=1) & ~probe
    unknown = ~truth.any(axis=1) & ~probe
    scored = ~probe

    per_class = {}
    for j, ci in enumerate(real):
        p, t = pred[scored, j], truth[scored, j]
        tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        # No test image of the class and none taken for it: nothing to score (None), and left out of
        # the macro mean rather than counted 0 (a small dataset's missing class sank macro F1).
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
        per_class[classes[ci]] = {"precision": precision, "recall": recall, "f1": f1, "support": int(t.sum())}
    scored_f1 = [m["f1"] for m in per_class.values() if m["f1"] is not None]

    score = probs[:, real].max(axis=1) if real else np.zeros(n)
    return {
        "per_class": per_class,
        "macro_f1": float(np.mean(scored_f1)) if scored_f1 else 0.0,
        "classes_unscored": [c for c, m in per_class.items() if m["f1"] is None],
        "accuracy": _rate((pred == truth).all(axis=1), labelled),
        "unknown_accepted": _rate(accepted, unknown),
        "probe_accepted": _rate(accepted, probe),
        "fpr95_unknown": fpr_at_tpr95(score, labelled, unknown),
        "fpr95_probe": fpr_at_tpr95(score, labelled, probe),
        "n_labelled": int(labelled.sum()),
        "n_unknown": int(unknown.sum()),
        "n_probe": int(probe.sum()),
    }


def fpr_at_tpr95(score: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """Share of `negatives` scoring at least the cut that keeps 95% of `positives` (boolean masks over
    `score`, higher = more like a class): how well a score ranks unknowns below the classes with no
    threshold chosen. None when either side has no rows."""
    if not positives.any() or not negatives.any():
        return None
    return _rate(score >= float(np.quantile(score[positives], 0.05)), negatives)


def _rate(hit: np.ndarray, rows: np.ndarray) -> float | None:
    return float(hit[rows].mean()) if rows.any() else None


def _as_2d(probs, targets):
    probs, targets = np.asarray(probs, dtype=float), np.asarray(targets)
    if probs.ndim == 1:
        probs, targets = probs[:, None], targets.reshape(-1, 1)
    if probs.shape != targets.shape:
        raise ValueError(f"probs {probs.shape} and targets {targets.shape} must have the same shape")
    return probs, targets


def targets_from_labels(label_lists: list[list[str]], classes: list[str]) -> np.ndarray:
    """Multi-hot (N, K) targets. An image with no label is an "other" image: it gets the "other"
    column when the vocabulary has one. Labels outside `classes` are an error, not silently dropped."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(label_lists), len(classes)), dtype=np.int8)
    for row, labels in enumerate(label_lists):
        unknown = [lab for lab in labels if lab not in index]
        if unknown:
            raise ValueError(f"label(s) {unknown} are not in the model's classes {classes}")
        for lab in labels:
            out[row, index[lab]] = 1
        if not labels and OTHER in index:
            out[row, index[OTHER]] = 1
    return out


def operating_curve(path: list[CapPoint], probs: np.ndarray, targets: np.ndarray, classes: list[str],
                    is_probe: np.ndarray, chosen: np.ndarray | None = None) -> list[dict]:
    """Each point of a `capping_path` scored on held-out rows: the share of validation "other"
    images it accepts (what `max_unknown_accepted` caps) and its validation macro F1 (what the cap
    picks by), and on these rows the macro F1 and the shares of "other" and probe images accepted.
    The point equal to `chosen` is marked."""
    points = []
    for n_acc, n_other, thr, valid_f1 in path:
        m = evaluate(probs, targets, thr, classes, is_unknown_mask=is_probe)
        points.append({"valid_other_accepted": n_acc / n_other if n_other else None,
                       "valid_macro_f1": valid_f1, "macro_f1": m["macro_f1"], "unknown_accepted": m["unknown_accepted"],
                       "probe_accepted": m["probe_accepted"],
                       "chosen": chosen is not None and np.allclose(thr, chosen),
                       "thresholds": [round(float(t), 4) for t in thr]})
    return points


def probe_by_query(probs: np.ndarray, queries: list[str], thresholds, classes: list[str],
                   head: str = "sigmoid") -> dict[str, dict]:
    """For each probe query (a kind never trained on): how many images, the share accepted, and as
    which classes. Says *what* the model mistakes for a class, not only how often."""
    pred = predict_matrix(probs, thresholds, classes, head) if len(probs) else np.zeros((0, len(classes)), bool)
    out = {}
    for query in sorted(set(queries)):
        rows = np.array([q == query for q in queries])
        hits = pred[rows]
        out[query] = {"n": int(rows.sum()), "accepted": float(hits.any(axis=1).mean()),
                      "accepted_as": {classes[j]: int(hits[:, j].sum()) for j in real_class_indices(classes)
                                      if hits[:, j].any()}}
    return out
