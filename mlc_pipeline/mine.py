"""Mine hard negatives: pool images ("other" candidates collected for the purpose) that the model
wrongly accepts as a class become training negatives of the next dataset version.

Only pool images move (purpose pool -> train, label other); evaluation probes never do. Class images
the model confidently rejects are listed for review (possible label noise), never moved.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .catalog import Catalog
from .config import Config
from .evaluate import predict_matrix
from .predict import load_bundle, score_with_errors

log = logging.getLogger(__name__)
REVIEW_BELOW = 0.05     # a class image whose own label scores under this is listed for review


@dataclass
class MineResult:
    round: int
    model: str
    scored: int = 0
    added: int = 0                     # hard negatives moved into the training "other" set
    errors: int = 0
    review: list[dict] = field(default_factory=list)
    negatives: list[dict] = field(default_factory=list)   # photo_id, score, top class


def accepted_classes(bundle, probs: np.ndarray) -> np.ndarray:
    """Boolean (N, vocab) of the classes each image is accepted as (never the "other" column)."""
    ok = ~np.isnan(probs).any(axis=1)
    pred = np.zeros(probs.shape, dtype=bool)
    pred[ok] = predict_matrix(probs[ok], bundle.thresholds, bundle.vocab, bundle.head)
    return pred


def mine_round(cfg: Config, bundle_dir: str | Path, round_no: int) -> MineResult:
    bundle = load_bundle(bundle_dir)
    model = Path(bundle_dir).name
    result = MineResult(round_no, model)
    with Catalog(cfg.catalog_path) as catalog:
        run_id = catalog.start_run(f"mine-{round_no}")
        pool = catalog.candidates("status='accepted' AND purpose='pool'")
        probs, errors = score_with_errors(bundle, [r["file_path"] for r in pool])
        result.scored, result.errors = len(pool) - len(errors), len(errors)
        accepted = accepted_classes(bundle, probs)
        with catalog.transaction():
            for i, row in enumerate(pool):
                if not accepted[i].any():
                    continue
                j = int(np.nanargmax(np.where(accepted[i], probs[i], -1)))
                score = float(probs[i, j])
                catalog.set_status(row["id"], "accepted", f"hard-negative:round={round_no}", run_id, "mine",
                                   purpose="train", curated_label="other", mined_round=round_no,
                                   mined_score=score, mined_model=model)
                result.negatives.append({"photo_id": row["photo_id"], "score": round(score, 4),
                                         "accepted_as": bundle.vocab[j]})
        result.added = len(result.negatives)
        result.review = review_class_images(catalog, bundle, cfg)
        catalog.finish_run(run_id, "completed", {"scored": result.scored, "added": result.added})
    write_review(Path(bundle_dir) / "review.csv", result.review)
    log.info("mining round %d: %d of %d pool images accepted as a class -> hard negatives; %d class images to review",
             round_no, result.added, result.scored, len(result.review))
    return result


def review_class_images(catalog: Catalog, bundle, cfg: Config) -> list[dict]:
    """Training class images whose own label the model scores very low: possible label noise."""
    rows = [r for r in catalog.candidates("status='accepted' AND purpose='train'")
            if r["curated_label"] and r["curated_label"] != "other"]
    if not rows:
        return []
    probs, _ = score_with_errors(bundle, [r["file_path"] for r in rows])
    out = []
    for row, p in zip(rows, probs):
        if np.isnan(p).any():
            continue
        for label in row["curated_label"].split():
            if label in bundle.vocab and p[bundle.vocab.index(label)] < REVIEW_BELOW:
                out.append({"candidate_id": row["id"], "photo_id": row["photo_id"], "label": label,
                            "score": round(float(p[bundle.vocab.index(label)]), 4), "file": row["file_path"]})
    return out


def write_review(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, ["candidate_id", "photo_id", "label", "score", "file"])
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
