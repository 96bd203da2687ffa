"""Assess a model bundle on a published dataset version: score its rows, then measure them with
model/metrics.py (F1, unknowns accepted, the operating curve, probe acceptance per query); and the
validation scores a training calibrates on (`valid_predictions`, `mined_valid_mask`,
`typical_positive_scores`: model/train.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlc_pipeline.fsutil import write_text_atomic
from mlc_pipeline.manifest import read_manifest_frame
from mlc_pipeline.model.bundle import load_bundle
from mlc_pipeline.model.metrics import evaluate, operating_curve, probe_by_query, targets_from_labels
from mlc_pipeline.model.predict import score_paths


def evaluate_bundle(bundle_dir: str | Path, manifest_csv: str | Path, batch_size: int = 64) -> dict:
    """Score a model bundle on a dataset version's test split (probe rows as the unknown kinds).

    Rows whose image cannot be decoded are left out and counted in `n_unreadable`.
    """
    return evaluate_loaded_bundle(load_bundle(bundle_dir), manifest_csv, batch_size)


def evaluate_loaded_bundle(bundle, manifest_csv: str | Path, batch_size: int = 64,
                           splits: tuple[str, ...] = ("test",), curve_path: list | None = None,
                           scores_csv: str | Path | None = None, left_out: list[str] | None = None) -> dict:
    """Score a loaded bundle on `splits` + probe rows. With a `capping_path` (from calibration),
    `result["curve"]` holds every operating point of that path scored on these rows. With
    `scores_csv`, every scored row's probabilities are written there (SCORES_FILE of a bundle: the
    report's error analysis reads it). `left_out`: photos ("source:photo_id") not scored (`without_photos`)."""
    df = without_photos(read_manifest_frame(manifest_csv), left_out)
    rows = df[df["split"].isin(list(splits) + ["probe"])].reset_index(drop=True)
    probs = score_paths(bundle, list(rows["abs_path"]), batch_size=batch_size)
    readable = ~np.isnan(probs).any(axis=1)
    rows, probs = rows[readable].reset_index(drop=True), probs[readable]
    targets = targets_from_labels([[] if s == "probe" else labs for labs, s in zip(rows["label_list"], rows["split"])],
                                  bundle.vocab)
    result = evaluate(probs, targets, bundle.thresholds, bundle.vocab,
                      is_unknown_mask=(rows["split"] == "probe").to_numpy(), head=bundle.head)
    if scores_csv:
        write_scores(scores_csv, rows, probs, bundle.vocab)
    result["splits"] = list(splits)
    result["n_unreadable"] = int((~readable).sum())
    if curve_path:
        result["curve"] = operating_curve(curve_path, probs, targets, bundle.vocab,
                                          (rows["split"] == "probe").to_numpy(), bundle.thresholds)
    if "query" in rows.columns:
        is_probe = (rows["split"] == "probe").to_numpy()
        result["probe_by_query"] = probe_by_query(probs[is_probe], rows["query"][is_probe].tolist(),
                                                  bundle.thresholds, bundle.vocab, bundle.head)
    return result


def without_photos(df, left_out: list[str] | None):
    """A manifest frame less the photos named "source:photo_id" (a training leaves out the photos taken
    down since its version was published: model/stage.without_takedowns)."""
    if not left_out:
        return df
    return df[~(df["source"] + ":" + df["photo_id"]).isin(set(left_out))].reset_index(drop=True)


def assess_on_version(bundle_dir: str | Path, manifest_csv: str | Path, batch_size: int = 64) -> dict:
    """A bundle's metrics on a version, in the shape training writes them (metrics.json): test and
    probes as `evaluate_bundle`, and validation at the bundle's own thresholds on the images every
    model shares (not a mining round's negatives: `macro_f1_without_mined`). What a model trained
    on an earlier version is compared on with one trained on this one (pipeline: round 0)."""
    bundle = load_bundle(bundle_dir)
    df = read_manifest_frame(manifest_csv)
    shared = df[df["split"] == "valid"]
    if "mined_round" in shared.columns:             # older manifests have no mined negatives
        shared = shared[shared["mined_round"] == ""]
    shared = shared.reset_index(drop=True)
    probs = score_paths(bundle, list(shared["abs_path"]), batch_size=batch_size)
    readable = ~np.isnan(probs).any(axis=1)
    targets = targets_from_labels([labs for labs, ok in zip(shared["label_list"], readable) if ok], bundle.vocab)
    valid = evaluate(probs[readable], targets, bundle.thresholds, bundle.vocab, head=bundle.head)
    valid["macro_f1_without_mined"] = valid["macro_f1"]
    return {"valid": valid, "test": evaluate_loaded_bundle(bundle, manifest_csv, batch_size)}


SCORES_FILE = "test_scores.csv"   # in a bundle since 0.2: per test/probe image, the score of each vocab column
SCORE_PREFIX = "score:"


def write_scores(path: str | Path, rows, probs: np.ndarray, vocab: list[str]) -> None:
    """One row per scored image: manifest path, split, labels, query, photo id, source (since
    2026-12-07: a photo id is unique only within its source), then a score column per vocab entry
    (`score:<class>`)."""
    keep = [c for c in ("path", "split", "labels", "query", "photo_id", "source") if c in rows.columns]
    out = rows[keep].copy()
    for j, name in enumerate(vocab):
        # Exact (a float32 is exact as a float64, whose repr reads back the same): rounded, a score
        # next to its threshold could be decided otherwise by the report than by metrics.json.
        out[SCORE_PREFIX + name] = probs[:, j].astype(float)
    write_text_atomic(Path(path), out.to_csv(index=False))


# ---------------------------------------------------------------- validation, as training scores it

def valid_predictions(learn, head: str) -> tuple[np.ndarray, np.ndarray]:
    """The validation scores and targets of a trained Learner, as calibration reads them."""
    with learn.no_bar(), learn.no_logging():
        probs, targs = learn.get_preds(ds_idx=1)  # activation applied: sigmoid or softmax
    probs = probs.float().numpy()
    if head == "softmax":
        targets = np.zeros_like(probs, dtype=np.int8)
        targets[np.arange(len(targs)), targs.long().numpy()] = 1
    else:
        targets = targs.numpy().astype(np.int8)
    return probs, targets


def mined_valid_mask(rows) -> np.ndarray:
    """Which validation images (in the loaders' order: `training_frame`'s rows) came from the mining
    pool: mined negatives, and pool images labelled in review (purpose 'pool')."""
    valid = rows[rows["is_valid"]]
    if "mined_round" not in valid.columns:     # manifests written before mining existed
        return np.zeros(len(valid), dtype=bool)
    mined = valid["mined_round"] != ""          # read as strings, no NaN (read_manifest_frame)
    if "purpose" in valid.columns:
        mined |= valid["purpose"] == "pool"
    return mined.to_numpy()


def typical_positive_scores(probs: np.ndarray, targets: np.ndarray) -> list[float | None]:
    """Per column, the median score of its validation positives (None without any): how sure the
    model is of a typical image of the class. Mining holds pool images it is surer of than that when
    it has no dataset to compare their features with (mine.hold_for_review); the report shows it."""
    return [float(np.median(probs[targets[:, c] == 1, c])) if (targets[:, c] == 1).any() else None
            for c in range(probs.shape[1])]
