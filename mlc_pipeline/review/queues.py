"""What the latest model bundle says about images, read from its CSV files (no torch import): the
class images it scores low on their own label (review.csv: possible label noise) and every mining
decision with its score (mined.csv). Cached per file modification time."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from mlc_pipeline.config import Config
from mlc_pipeline.model import registry
from mlc_pipeline.model.bundle import MetaError, read_meta
from mlc_pipeline.model.mine_record import bundle_folders, settle_in

log = logging.getLogger(__name__)

_cache: dict[Path, tuple[float, list[dict]]] = {}


def bundle_csv(bundle: Path | None, name: str) -> list[dict]:
    if bundle is None or not (bundle / name).is_file():
        return []
    path = bundle / name
    mtime = path.stat().st_mtime
    hit = _cache.get(path)
    if hit is None or hit[0] != mtime:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            r["score"] = float(r["score"]) if r.get("score") not in (None, "") else None
        hit = _cache[path] = (mtime, rows)
    return hit[1]


def mining_bundle(cfg: Config) -> Path | None:
    """The bundle the latest mining round wrote its review.csv and mined.csv into: the latest bundle
    when it mined, else the most recently mined one. A run that ships its retrained round ships a
    bundle that never mined, and the queues page said "lists none" beside a run summary counting the
    round's class images to review (the day24 audit). A record a stopped round left pending is
    settled against the catalog first (mine_record.settle_in): a round killed after its commit shows."""
    models = cfg.layout.models
    folders = bundle_folders(models)        # settling writes inside bundles, never a folder: listed once
    settle_in(cfg.catalog_path, folders)
    latest = registry.latest_bundle(models)
    if latest is not None and any((latest / name).is_file() for name in ("review.csv", "mined.csv")):
        return latest
    mined = [p for p in folders if (p / "mined.csv").is_file()]
    return max(mined, key=lambda p: (p / "mined.csv").stat().st_mtime, default=latest)


def model_review_list(cfg: Config) -> tuple[Path | None, list[dict]]:
    """Class images the model rejects (the latest mining round's review.csv), the lowest score (the
    surest disagreement) first."""
    bundle = mining_bundle(cfg)
    rows = bundle_csv(bundle, "review.csv")
    return bundle, sorted(rows, key=lambda r: (r["score"] is None, r["score"] or 0.0))


def scores_for(cfg: Config, cid: int) -> list[dict]:
    """Every line of the latest mining round's review.csv and mined.csv about one candidate."""
    bundle = mining_bundle(cfg)
    out = []
    for name in ("review.csv", "mined.csv"):
        out += [{**r, "file": name} for r in bundle_csv(bundle, name) if r.get("candidate_id") == str(cid)]
    return out


def probes_accepted(cfg: Config, catalog) -> tuple[Path | None, list[dict]]:
    """Unknown-kind (probe) images the latest model still accepts as a class, from its test_scores.csv
    (written since 0.2) and its thresholds: the surest wrong acceptance (score furthest above its
    class's threshold) first. Each row: candidate_id, photo_id, class, score, threshold."""
    bundle = registry.latest_bundle(cfg.layout.models)
    if bundle is None or not (bundle / "test_scores.csv").is_file() or not (bundle / "bundle.json").is_file():
        return bundle, []
    try:
        meta = read_meta(bundle)
    except MetaError as exc:            # the queue is empty, and says why in the log
        log.warning("no probe queue: %s", exc)
        return bundle, []
    if meta.get("thresholds") is None:      # a softmax comparison head: no per-class thresholds
        return bundle, []
    classes = [c for c in meta["vocab"] if c in meta["classes"]]
    threshold = dict(zip(meta["vocab"], meta["thresholds"]))
    with open(bundle / "test_scores.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split") == "probe"]
    out = []
    for r in rows:
        margin, label = max((float(r[f"score:{c}"]) - threshold[c], c) for c in classes)
        if margin < 0:
            continue
        found = catalog.candidates(photo_id=r.get("photo_id", ""), purpose="probe")
        if found:
            out.append({"candidate_id": found[0]["id"], "photo_id": r["photo_id"], "label": label,
                        "score": float(r[f"score:{label}"]), "threshold": threshold[label], "margin": margin})
    return bundle, sorted(out, key=lambda r: -r["margin"])
