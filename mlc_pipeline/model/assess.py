"""Assess a model bundle on a published dataset version: score its rows, then measure them with
model/metrics.py (F1, unknowns accepted, the operating curve, probe acceptance per query)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
                           splits: tuple[str, ...] = ("test",), curve_path: list | None = None) -> dict:
    """Score a loaded bundle on `splits` + probe rows. With a `capping_path` (from calibration),
    `result["curve"]` holds every operating point of that path scored on these rows."""
    df = read_manifest_frame(manifest_csv)
    rows = df[df["split"].isin(list(splits) + ["probe"])].reset_index(drop=True)
    probs = score_paths(bundle, list(rows["abs_path"]), batch_size=batch_size)
    readable = ~np.isnan(probs).any(axis=1)
    rows, probs = rows[readable].reset_index(drop=True), probs[readable]
    targets = targets_from_labels([[] if s == "probe" else labs for labs, s in zip(rows["label_list"], rows["split"])],
                                  bundle.vocab)
    result = evaluate(probs, targets, bundle.thresholds, bundle.vocab,
                      is_unknown_mask=(rows["split"] == "probe").to_numpy(), head=bundle.head)
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
