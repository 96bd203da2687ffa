"""What the latest model bundle says about images, read from its CSV files (no torch import): the
class images it scores low on their own label (review.csv: possible label noise) and every mining
decision with its score (mined.csv). Cached per file modification time."""

from __future__ import annotations

import csv
from pathlib import Path

from mlc_pipeline.config import Config

_cache: dict[Path, tuple[float, list[dict]]] = {}


def latest_bundle(cfg: Config) -> Path | None:
    """data/models/LATEST names the newest bundle (as models.latest_model reads it)."""
    pointer = cfg.data_dir / "models" / "LATEST"
    if not pointer.is_file():
        return None
    path = cfg.data_dir / "models" / pointer.read_text().strip()
    return path if path.is_dir() else None


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


def model_review_list(cfg: Config) -> tuple[Path | None, list[dict]]:
    """Class images the model rejects, the lowest score (the surest disagreement) first."""
    bundle = latest_bundle(cfg)
    rows = bundle_csv(bundle, "review.csv")
    return bundle, sorted(rows, key=lambda r: (r["score"] is None, r["score"] or 0.0))


def scores_for(cfg: Config, cid: int) -> list[dict]:
    """Every line of the latest bundle's review.csv and mined.csv about one candidate."""
    bundle = latest_bundle(cfg)
    out = []
    for name in ("review.csv", "mined.csv"):
        out += [{**r, "file": name} for r in bundle_csv(bundle, name) if r.get("candidate_id") == str(cid)]
    return out
